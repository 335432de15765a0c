//! [`PgEventStore`]: the store traits on PostgreSQL.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::store::{resolve_retry, StoredEventRef};
use annals::{
    AppendResult, CheckpointStore, CommitNotifier, CommitWatch, Direction, Error, EventData,
    EventId, EventStore, ExpectedVersion, Limits, Metadata, Position, ReadAll, ReadStream,
    RecordedEvent, Result, Snapshot, SnapshotStore, StreamId, StreamInfo, Version,
};
use bytes::Bytes;
use deadpool_postgres::Pool;
use futures::stream::{self, BoxStream};
use futures::StreamExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use tracing::Instrument;
use uuid::Uuid;

use crate::builder::PgEventStoreBuilder;
use crate::error::{is_connection_error, map, map_append, map_pool, Stage, BACKEND};
use crate::heads::KnownHeads;
use crate::lease::PgLease;
use crate::schema;
use crate::schema::Sql;
use crate::types::{bits_to_i64, bits_to_u64, PgTime, Xid8};

/// How often an append is tried when its connection turns out dead or a concurrent append
/// with the same event ids wins a unique-key race. Retrying is safe: appends are idempotent.
const APPEND_ATTEMPTS: usize = 3;

/// How often an append with [`ExpectedVersion::Any`] may lose the race for the next version to
/// a concurrent append before giving up.
const APPEND_RACES: usize = 100;

/// Why the append statement wrote nothing.
enum Refused {
    /// The expected-version check failed at this version.
    Check(Version),
    /// Some event id is stored already.
    Ids,
    /// A concurrent append took the version first.
    Race,
}

/// An event store on PostgreSQL. Clones share one pool and one background task.
///
/// See the [crate docs](crate) for the schema, the global order and the wake-ups.
#[derive(Clone, Debug)]
pub struct PgEventStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) pool: Pool,
    pub(crate) schema: String,
    pub(crate) sql: Sql,
    pub(crate) limits: Limits,
    pub(crate) page_size: usize,
    pub(crate) notifier: CommitNotifier,
    /// Tells the background task that this process committed an append.
    pub(crate) local: Arc<crate::watcher::LocalCommits>,
    /// The stream heads this store has seen, which spare exact appends their probe.
    pub(crate) heads: KnownHeads,
    pub(crate) lease_check_interval: Duration,
    /// Dropped with the last clone: stops the background task.
    pub(crate) _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl PgEventStore {
    /// A [builder](PgEventStoreBuilder) with the defaults.
    pub fn builder() -> PgEventStoreBuilder {
        PgEventStoreBuilder::new()
    }

    /// A store with the default settings on the database of `connection_string`
    /// (see [`PgEventStoreBuilder::build`]).
    ///
    /// # Errors
    ///
    /// As [`PgEventStoreBuilder::build`].
    pub async fn connect(connection_string: &str) -> Result<PgEventStore> {
        PgEventStoreBuilder::new()
            .connection_string(connection_string)
            .build()
            .await
    }

    pub(crate) fn from_inner(inner: Inner) -> PgEventStore {
        PgEventStore {
            inner: Arc::new(inner),
        }
    }

    /// Creates the schema, or migrates it to this version of the crate; safe to call every time
    /// the application starts, from several processes at once. Returns the schema version.
    ///
    /// # Errors
    ///
    /// [`Error::Format`] when the schema is newer than this crate; [`Error::Unavailable`] when
    /// the server cannot be reached; [`Error::Backend`] when a migration fails.
    pub async fn init(&self) -> Result<i32> {
        let mut client = self.inner.pool.get().await.map_err(map_pool)?;
        let client: &mut tokio_postgres::Client = &mut client;
        schema::migrate(client, &self.inner.schema).await
    }

    /// The schema version recorded in the database, or `None` when [`init`](Self::init) has
    /// not run.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the server cannot be reached.
    pub async fn schema_version(&self) -> Result<Option<i32>> {
        let client = self.inner.pool.get().await.map_err(map_pool)?;
        schema::version(&client, &self.inner.schema).await
    }

    /// The schema holding the store's tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The connection pool (for running your own statements, e.g. a read model in the same
    /// database).
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Tries to become the one owner of the lease `name` (see [`PgLease`]); `None` when another
    /// session holds it. Lease names are scoped by the store's schema.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the server cannot be reached.
    pub async fn try_lease(&self, name: &str) -> Result<Option<PgLease>> {
        let key = crate::lease::lease_key(&self.inner.schema, name);
        PgLease::try_acquire(&self.inner.pool, key, self.inner.lease_check_interval).await
    }

    async fn append_now(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        let written = self.write(stream, expected, &events).await;
        match &written {
            // Also for a retry answered from the stored events: the first attempt may have
            // committed on a connection that died before anyone was told.
            Ok(result) => {
                self.inner.heads.saw(stream, result.last_version.get());
                self.inner.notifier.notify(result.last_position);
                self.inner.local.committed();
            }
            Err(Error::VersionConflict { actual, .. }) => {
                self.inner.heads.saw(stream, actual.get());
            }
            Err(_) => {}
        }
        written
    }

    /// Runs the append (without the wake-ups).
    async fn write(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[EventData],
    ) -> Result<AppendResult> {
        self.inner.limits.check(events)?;
        check_storable(events)?;
        let expected_code: i64 = match expected {
            ExpectedVersion::Any => -1,
            ExpectedVersion::NoStream => 0,
            ExpectedVersion::StreamExists => -2,
            ExpectedVersion::Exact(v) => match i64::try_from(v.get()) {
                Ok(v) => v,
                // No stream reaches such a version: always a conflict.
                Err(_) => {
                    let actual = self.stream_version(stream).await?;
                    return Err(Error::VersionConflict {
                        stream: stream.clone(),
                        expected,
                        actual,
                    });
                }
            },
        };
        let exact = expected_code >= 0;
        // The row at the expected version is known to exist (or none is needed): the unique
        // key alone checks the expected version (see `KnownHeads`).
        let known =
            exact && (expected_code == 0 || self.inner.heads.knows(stream, expected_code as u64));
        let single = events.len() == 1;
        let sql = &self.inner.sql;
        let sql = match (single, exact, known) {
            (true, true, true) => &sql.append_one_exact_known,
            (true, true, false) => &sql.append_one_exact,
            (true, false, _) => &sql.append_one,
            (false, true, true) => &sql.append_exact_known,
            (false, true, false) => &sql.append_exact,
            (false, false, _) => &sql.append,
        };
        let params = AppendParams::new(stream, expected_code, events);
        let schema = self.inner.schema.as_str();
        let n = events.len() as i64;
        // The error to give if no attempt answers: `AppendOutcomeUnknown` once an attempt was
        // sent and its connection died (until a later attempt learns the outcome).
        let mut unknown: Option<Error> = None;
        let mut lost_connections = 0;
        for _ in 0..APPEND_RACES {
            if lost_connections >= APPEND_ATTEMPTS {
                break;
            }
            let client = match self.inner.pool.get().await {
                Ok(client) => client,
                Err(e) => return Err(unknown.unwrap_or_else(|| map_pool(e))),
            };
            let statement = match client.prepare_cached(sql).await {
                Ok(statement) => statement,
                // A pooled connection that died while idle: nothing was sent, try another.
                Err(e) if is_connection_error(&e) => {
                    tracing::debug!(error = %e, "append: dead pooled connection, trying another");
                    unknown.get_or_insert_with(|| map(e, schema));
                    lost_connections += 1;
                    continue;
                }
                Err(e) => {
                    return Err(unknown
                        .unwrap_or_else(|| map_append(e, schema, stream, Stage::BeforeWrite)))
                }
            };
            let outcome = client.query(&statement, &params.as_params()).await;
            let refused = match outcome {
                Ok(rows) => match answer(&rows, single, n) {
                    Some(answer) => return Ok(answer),
                    // The expected-version check failed: a conflict, unless this is a retry.
                    // Only the head-reading batch statement returns the head it read.
                    None => Refused::Check(match rows.first() {
                        Some(row) if !single && !exact => Version::new(row.get::<_, i64>(0) as u64),
                        _ => self.version_on(&client, stream).await?,
                    }),
                },
                Err(e) if is_unique_violation(&e, "events_event_id_key") => Refused::Ids,
                Err(e) if is_unique_violation(&e, "events_stream_version_key") => Refused::Race,
                Err(e) if is_connection_error(&e) => {
                    tracing::debug!(error = %e, "append: connection lost in flight, trying again");
                    unknown = Some(map_append(e, schema, stream, Stage::Writing));
                    lost_connections += 1;
                    continue;
                }
                Err(e) => return Err(map_append(e, schema, stream, Stage::Writing)),
            };
            // Refused: were these ids stored already (a retry, or a concurrent twin)?
            if let Some(answer) = self.lookup(&client, stream, events).await? {
                return answer;
            }
            match refused {
                Refused::Check(actual) => {
                    return Err(Error::VersionConflict {
                        stream: stream.clone(),
                        expected,
                        actual,
                    })
                }
                // The ids' first writer rolled back: try again.
                Refused::Ids => continue,
                // Another append took the next version first.
                Refused::Race if expected == ExpectedVersion::Any => continue,
                Refused::Race => {
                    return Err(Error::VersionConflict {
                        stream: stream.clone(),
                        expected,
                        actual: self.version_on(&client, stream).await?,
                    })
                }
            }
        }
        Err(unknown.unwrap_or_else(|| {
            Error::backend(
                BACKEND,
                format!("the append to `{stream}` lost {APPEND_RACES} races in a row to concurrent appends"),
            )
        }))
    }

    /// The stream's version, read on `client` (an append must not wait for a second pooled
    /// connection while it holds one). [`EventStore::stream_version`] runs it on a pooled one.
    async fn version_on(
        &self,
        client: &deadpool_postgres::Client,
        stream: &StreamId,
    ) -> Result<Version> {
        let schema = &self.inner.schema;
        let statement = client
            .prepare_cached(&self.inner.sql.stream_version)
            .await
            .map_err(|e| map(e, schema))?;
        let row = client
            .query_one(&statement, &[&stream.as_str()])
            .await
            .map_err(|e| map(e, schema))?;
        Ok(Version::new(row.get::<_, i64>(0) as u64))
    }

    /// Looks up where the batch's event ids are stored: `None` when none is, else the answer
    /// of [`resolve_retry`].
    async fn lookup(
        &self,
        client: &deadpool_postgres::Client,
        stream: &StreamId,
        events: &[EventData],
    ) -> Result<Option<Result<AppendResult>>> {
        let schema = &self.inner.schema;
        let ids: Vec<Uuid> = events.iter().map(|e| *e.id.as_uuid()).collect();
        let statement = client
            .prepare_cached(&self.inner.sql.lookup)
            .await
            .map_err(|e| map_append(e, schema, stream, Stage::Writing))?;
        let rows = client
            .query(&statement, &[&ids])
            .await
            .map_err(|e| map_append(e, schema, stream, Stage::Writing))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut stored: HashMap<Uuid, StoredEventRef> = HashMap::new();
        for row in &rows {
            let id: Uuid = row.get(0);
            let xid: Xid8 = row.get(3);
            let seq: i64 = row.get(4);
            stored.insert(
                id,
                StoredEventRef {
                    stream_id: StreamId::new(row.get::<_, &str>(1))?,
                    version: Version::new(row.get::<_, i64>(2) as u64),
                    position: Position::new(xid.0, seq as u64),
                },
            );
        }
        let ids: Vec<EventId> = events.iter().map(|e| e.id).collect();
        let found: Vec<Option<StoredEventRef>> = ids
            .iter()
            .map(|id| stored.get(id.as_uuid()).cloned())
            .collect();
        Ok(Some(resolve_retry(stream, &ids, &found).and_then(|r| {
            r.ok_or_else(|| Error::backend(BACKEND, "stored ids vanished during an append"))
        })))
    }

    /// A paged read: `query(next, page)` runs one page; `advance` gives where the next page
    /// starts after an event, or `None` when nothing can follow.
    fn paged<K, Q, Fut, A>(
        &self,
        start: Option<K>,
        limit: usize,
        query: Q,
        advance: A,
    ) -> BoxStream<'static, Result<RecordedEvent>>
    where
        K: Send + 'static,
        Q: Fn(Arc<Inner>, K, usize) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Vec<RecordedEvent>>> + Send + 'static,
        A: Fn(&RecordedEvent) -> Option<K> + Send + Sync + 'static,
    {
        let page_size = self.inner.page_size;
        let advance = Arc::new(advance);
        let state = (self.inner.clone(), start, limit);
        stream::unfold(state, move |(inner, next, remaining)| {
            let fetch = next
                .filter(|_| remaining > 0)
                .map(|k| query(inner.clone(), k, page_size.min(remaining)));
            let advance = advance.clone();
            async move {
                let page_len = page_size.min(remaining);
                let events = match fetch?.await {
                    Ok(events) => events,
                    Err(e) => return Some((stream::iter(vec![Err(e)]), (inner, None, 0))),
                };
                let next = if events.len() < page_len {
                    None
                } else {
                    events.last().and_then(|e| advance(e))
                };
                let remaining = remaining - events.len();
                let items: Vec<Result<RecordedEvent>> = events.into_iter().map(Ok).collect();
                Some((stream::iter(items), (inner, next, remaining)))
            }
        })
        .flatten()
        .boxed()
    }
}

/// The result of an append statement that inserted the batch, or `None` when its check failed.
fn answer(rows: &[Row], single: bool, n: i64) -> Option<AppendResult> {
    let row = rows.first()?;
    let (first_version, xid, first_seq, last_seq) = if single {
        let seq: i64 = row.get(2);
        (row.get::<_, i64>(0), row.get::<_, Xid8>(1), seq, seq)
    } else {
        if row.get::<_, i64>(4) != n {
            return None;
        }
        (row.get::<_, i64>(0) + 1, row.get(1), row.get(2), row.get(3))
    };
    let first_version = Version::new(first_version as u64);
    Some(AppendResult {
        first_version,
        last_version: first_version.advance(n as u64 - 1),
        first_position: Position::new(xid.0, first_seq as u64),
        last_position: Position::new(xid.0, last_seq as u64),
    })
}

/// The parameters of an append statement: `$1` the stream, `$2` the expected-version code,
/// `$3`–`$11` the event columns (one value each for a single event, arrays for a batch).
struct AppendParams<'a> {
    stream: &'a str,
    expected: i64,
    columns: Columns<'a>,
}

enum Columns<'a> {
    One {
        id: &'a Uuid,
        event_type: &'a str,
        schema_version: i32,
        content_type: &'a str,
        payload: &'a [u8],
        correlation: Option<Uuid>,
        causation: Option<Uuid>,
        timestamp: PgTime,
        headers: serde_json::Value,
    },
    Batch {
        ids: Vec<Uuid>,
        types: Vec<&'a str>,
        schema_versions: Vec<i32>,
        content_types: Vec<&'a str>,
        payloads: Vec<&'a [u8]>,
        correlations: Vec<Option<Uuid>>,
        causations: Vec<Option<Uuid>>,
        timestamps: Vec<PgTime>,
        headers: Vec<serde_json::Value>,
    },
}

impl<'a> AppendParams<'a> {
    fn new(stream: &'a StreamId, expected: i64, events: &'a [EventData]) -> AppendParams<'a> {
        let columns = match events {
            [e] => Columns::One {
                id: e.id.as_uuid(),
                event_type: e.event_type.as_str(),
                schema_version: i32::from(e.schema_version),
                content_type: e.content_type.as_str(),
                payload: e.payload.as_ref(),
                correlation: e.metadata.correlation_id,
                causation: e.metadata.causation_id,
                timestamp: PgTime(e.metadata.timestamp),
                headers: headers_to_json(&e.metadata),
            },
            _ => Columns::Batch {
                ids: events.iter().map(|e| *e.id.as_uuid()).collect(),
                types: events.iter().map(|e| e.event_type.as_str()).collect(),
                schema_versions: events.iter().map(|e| i32::from(e.schema_version)).collect(),
                content_types: events.iter().map(|e| e.content_type.as_str()).collect(),
                payloads: events.iter().map(|e| e.payload.as_ref()).collect(),
                correlations: events.iter().map(|e| e.metadata.correlation_id).collect(),
                causations: events.iter().map(|e| e.metadata.causation_id).collect(),
                timestamps: events
                    .iter()
                    .map(|e| PgTime(e.metadata.timestamp))
                    .collect(),
                headers: events
                    .iter()
                    .map(|e| headers_to_json(&e.metadata))
                    .collect(),
            },
        };
        AppendParams {
            stream: stream.as_str(),
            expected,
            columns,
        }
    }

    fn as_params(&self) -> [&(dyn ToSql + Sync); 11] {
        match &self.columns {
            Columns::One {
                id,
                event_type,
                schema_version,
                content_type,
                payload,
                correlation,
                causation,
                timestamp,
                headers,
            } => [
                &self.stream,
                &self.expected,
                *id,
                event_type,
                schema_version,
                content_type,
                payload,
                correlation,
                causation,
                timestamp,
                headers,
            ],
            Columns::Batch {
                ids,
                types,
                schema_versions,
                content_types,
                payloads,
                correlations,
                causations,
                timestamps,
                headers,
            } => [
                &self.stream,
                &self.expected,
                ids,
                types,
                schema_versions,
                content_types,
                payloads,
                correlations,
                causations,
                timestamps,
                headers,
            ],
        }
    }
}

/// Where a global read starts, as `(transaction id, seq)`, or `None` when nothing can follow.
fn global_key(from: Position) -> Option<(u64, i64)> {
    match i64::try_from(from.prepare()) {
        Ok(seq) => Some((from.commit(), seq)),
        // No seq is that large: start at the next transaction.
        Err(_) => from.commit().checked_add(1).map(|c| (c, 0)),
    }
}

fn is_unique_violation(e: &tokio_postgres::Error, constraint: &str) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code() == &SqlState::UNIQUE_VIOLATION && db.constraint() == Some(constraint)
    })
}

/// PostgreSQL `text` and `jsonb` cannot hold U+0000: refuse it with the facts instead of a
/// server error.
fn check_storable(events: &[EventData]) -> Result<()> {
    for event in events {
        let reason = if event.content_type.contains('\0') {
            "the content type contains a NUL character (U+0000), which PostgreSQL text cannot store"
                .to_owned()
        } else if let Some((key, _)) = event
            .metadata
            .headers
            .iter()
            .find(|(k, v)| k.contains('\0') || v.contains('\0'))
        {
            format!(
                "header {key:?} contains a NUL character (U+0000), which PostgreSQL jsonb cannot store"
            )
        } else {
            continue;
        };
        return Err(Error::InvalidEvent {
            event_id: Some(event.id),
            reason,
        });
    }
    Ok(())
}

fn headers_to_json(metadata: &Metadata) -> serde_json::Value {
    serde_json::Value::Object(
        metadata
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    )
}

fn row_to_event(row: &Row) -> Result<RecordedEvent> {
    let bad = |e: tokio_postgres::Error| Error::corrupt(None, None, None, e.to_string());
    let xid: Xid8 = row.try_get(0).map_err(bad)?;
    let seq: i64 = row.try_get(1).map_err(bad)?;
    let position = Position::new(xid.0, seq as u64);
    let stream_text: &str = row.try_get(2).map_err(bad)?;
    let stream_id = StreamId::new(stream_text).map_err(|e| {
        Error::corrupt(None, None, Some(position), format!("stored stream id: {e}"))
    })?;
    let version = Version::new(row.try_get::<_, i64>(3).map_err(bad)? as u64);
    let at = |reason: String| {
        Error::corrupt(
            Some(stream_id.clone()),
            Some(version),
            Some(position),
            reason,
        )
    };
    let id: Uuid = row.try_get(4).map_err(|e| at(e.to_string()))?;
    let schema_version: i32 = row.try_get(6).map_err(|e| at(e.to_string()))?;
    let schema_version = u16::try_from(schema_version)
        .map_err(|_| at(format!("schema version {schema_version} is out of range")))?;
    let payload: Vec<u8> = row.try_get(8).map_err(|e| at(e.to_string()))?;
    let headers_json: serde_json::Value = row.try_get(12).map_err(|e| at(e.to_string()))?;
    let headers = match headers_json {
        serde_json::Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Ok((k, s)),
                other => Err(at(format!("header {k:?} is not a string: {other}"))),
            })
            .collect::<Result<BTreeMap<_, _>>>()?,
        other => return Err(at(format!("headers are not an object: {other}"))),
    };
    let timestamp: PgTime = row.try_get(11).map_err(|e| at(e.to_string()))?;
    let recorded_at: PgTime = row.try_get(13).map_err(|e| at(e.to_string()))?;
    Ok(RecordedEvent {
        stream_id: stream_id.clone(),
        version,
        position,
        recorded_at: recorded_at.0,
        id: EventId::from_uuid(id),
        event_type: row.try_get(5).map_err(|e| at(e.to_string()))?,
        schema_version,
        content_type: row.try_get(7).map_err(|e| at(e.to_string()))?,
        payload: Bytes::from(payload),
        metadata: Metadata {
            correlation_id: row.try_get(9).map_err(|e| at(e.to_string()))?,
            causation_id: row.try_get(10).map_err(|e| at(e.to_string()))?,
            timestamp: timestamp.0,
            headers,
        },
    })
}

/// Runs one read query on a pooled connection and converts its rows.
async fn query_events(
    inner: &Inner,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<RecordedEvent>> {
    let client = inner.pool.get().await.map_err(map_pool)?;
    let statement = client
        .prepare_cached(sql)
        .await
        .map_err(|e| map(e, &inner.schema))?;
    let rows = client
        .query(&statement, params)
        .await
        .map_err(|e| map(e, &inner.schema))?;
    rows.iter().map(row_to_event).collect()
}

fn limit_param(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl EventStore for PgEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        let span = tracing::debug_span!(
            "append",
            store = "postgres",
            stream = %stream,
            count = events.len(),
            version = tracing::field::Empty,
            position = tracing::field::Empty,
            duration_us = tracing::field::Empty,
        );
        async {
            let started = Instant::now();
            let result = self.append_now(stream, expected, events).await;
            let span = tracing::Span::current();
            span.record("duration_us", started.elapsed().as_micros() as u64);
            if let Ok(result) = &result {
                span.record("version", result.last_version.get());
                span.record("position", tracing::field::display(result.last_position));
            }
            result
        }
        .instrument(span)
        .await
    }

    fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> BoxStream<'static, Result<RecordedEvent>> {
        let _span =
            tracing::debug_span!("read_stream", store = "postgres", stream = %stream).entered();
        let stream_text = stream.as_str().to_owned();
        let stream = stream.clone();
        let (start, forward) = match options.direction {
            Direction::Forward => (options.from.get().max(1), true),
            Direction::Backward => (options.from.get(), false),
        };
        // Versions are bigint: a start past i64::MAX reads forward nothing, backward everything.
        let start = match (i64::try_from(start), forward) {
            (Ok(v), _) => Some(v),
            (Err(_), true) => None,
            (Err(_), false) => Some(i64::MAX),
        }
        .filter(|&v| v >= 1);
        self.paged(
            start,
            options.limit,
            move |inner, from: i64, page| {
                let stream_text = stream_text.clone();
                let stream = stream.clone();
                async move {
                    let sql = if forward {
                        &inner.sql.read_stream_forward
                    } else {
                        &inner.sql.read_stream_backward
                    };
                    let events =
                        query_events(&inner, sql, &[&stream_text, &from, &limit_param(page)])
                            .await?;
                    if let Some(head) = events.iter().map(|e| e.version.get()).max() {
                        inner.heads.saw(&stream, head);
                    }
                    Ok(events)
                }
            },
            move |last| {
                let v = last.version.get() as i64;
                if forward {
                    v.checked_add(1)
                } else {
                    Some(v - 1).filter(|&v| v >= 1)
                }
            },
        )
    }

    fn read_all(&self, options: ReadAll) -> BoxStream<'static, Result<RecordedEvent>> {
        let _span =
            tracing::debug_span!("read_all", store = "postgres", from = %options.from).entered();
        let categories = Arc::new(options.filter.categories);
        let event_types = Arc::new(options.filter.event_types);
        self.paged(
            global_key(options.from),
            options.limit,
            move |inner, (xid, seq): (u64, i64), page| {
                let categories = categories.clone();
                let event_types = event_types.clone();
                async move {
                    let started = Instant::now();
                    let events = query_events(
                        &inner,
                        &inner.sql.read_all,
                        &[
                            &Xid8(xid),
                            &seq,
                            &*categories,
                            &*event_types,
                            &limit_param(page),
                        ],
                    )
                    .await;
                    tracing::trace!(
                        from = %Position::new(xid, seq as u64),
                        count = events.as_ref().map_or(0, Vec::len),
                        duration_us = started.elapsed().as_micros() as u64,
                        "read_all page"
                    );
                    events
                }
            },
            |last| global_key(last.position.next()),
        )
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version> {
        let client = self.inner.pool.get().await.map_err(map_pool)?;
        let version = self.version_on(&client, stream).await?;
        self.inner.heads.saw(stream, version.get());
        Ok(version)
    }

    async fn last_position(&self) -> Result<Option<Position>> {
        let schema = &self.inner.schema;
        let client = self.inner.pool.get().await.map_err(map_pool)?;
        let statement = client
            .prepare_cached(&self.inner.sql.last_position)
            .await
            .map_err(|e| map(e, schema))?;
        let row = client
            .query_opt(&statement, &[])
            .await
            .map_err(|e| map(e, schema))?;
        Ok(row.map(|r| {
            let xid: Xid8 = r.get(0);
            let seq: i64 = r.get(1);
            Position::new(xid.0, seq as u64)
        }))
    }

    fn streams(&self) -> BoxStream<'static, Result<StreamInfo>> {
        let inner = self.inner.clone();
        stream::once(async move {
            let schema = &inner.schema;
            let client = inner.pool.get().await.map_err(map_pool)?;
            let rows = client
                .query(&inner.sql.streams, &[])
                .await
                .map_err(|e| map(e, schema))?;
            let mut infos = rows
                .iter()
                .map(|r| {
                    let xid: Xid8 = r.get(2);
                    let seq: i64 = r.get(3);
                    let at: PgTime = r.get(4);
                    Ok(StreamInfo {
                        stream_id: StreamId::new(r.get::<_, &str>(0))?,
                        version: Version::new(r.get::<_, i64>(1) as u64),
                        last_position: Position::new(xid.0, seq as u64),
                        last_recorded_at: at.0,
                    })
                })
                .collect::<Result<Vec<StreamInfo>>>()?;
            // Stream ids order by bytes, whatever the database's collation.
            infos.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
            Ok(infos)
        })
        .flat_map(|listed| match listed {
            Ok(infos) => stream::iter(infos.into_iter().map(Ok).collect::<Vec<_>>()),
            Err(e) => stream::iter(vec![Err(e)]),
        })
        .boxed()
    }

    fn watch_commits(&self) -> CommitWatch {
        self.inner.notifier.watch()
    }

    fn limits(&self) -> Limits {
        self.inner.limits
    }
}

fn check_text(what: &str, text: &str) -> Result<()> {
    if text.contains('\0') {
        return Err(Error::InvalidEvent {
            event_id: None,
            reason: format!(
                "the {what} contains a NUL character (U+0000), which PostgreSQL text cannot store"
            ),
        });
    }
    Ok(())
}

impl SnapshotStore for PgEventStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        check_text("snapshot content type", &snapshot.content_type)?;
        let schema = &self.inner.schema;
        let client = self.inner.pool.get().await.map_err(map_pool)?;
        let statement = client
            .prepare_cached(&self.inner.sql.save_snapshot)
            .await
            .map_err(|e| map(e, schema))?;
        client
            .execute(
                &statement,
                &[
                    &snapshot.stream_id.as_str(),
                    &bits_to_i64(snapshot.version.get()),
                    &i32::from(snapshot.schema_version),
                    &snapshot.content_type,
                    &snapshot.payload.as_ref(),
                    &PgTime(snapshot.taken_at),
                ],
            )
            .await
            .map_err(|e| map(e, schema))?;
        Ok(())
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        let schema = &self.inner.schema;
        let client = self.inner.pool.get().await.map_err(map_pool)?;
        let statement = client
            .prepare_cached(&self.inner.sql.load_snapshot)
            .await
            .map_err(|e| map(e, schema))?;
        let Some(row) = client
            .query_opt(&statement, &[&stream.as_str()])
            .await
            .map_err(|e| map(e, schema))?
        else {
            return Ok(None);
        };
        let schema_version: i32 = row.get(1);
        let taken_at: PgTime = row.get(4);
        Ok(Some(Snapshot {
            stream_id: stream.clone(),
            version: Version::new(bits_to_u64(row.get(0))),
            schema_version: u16::try_from(schema_version).map_err(|_| {
                Error::corrupt(
                    Some(stream.clone()),
                    None,
                    None,
                    format!("snapshot schema version {schema_version} is out of range"),
                )
            })?,
            content_type: row.get(2),
            payload: Bytes::from(row.get::<_, Vec<u8>>(3)),
            taken_at: taken_at.0,
        }))
    }
}

impl CheckpointStore for PgEventStore {
    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        check_text("checkpoint name", name)?;
        let schema = &self.inner.schema;
        let client = self.inner.pool.get().await.map_err(map_pool)?;
        let statement = client
            .prepare_cached(&self.inner.sql.save_checkpoint)
            .await
            .map_err(|e| map(e, schema))?;
        client
            .execute(
                &statement,
                &[
                    &name,
                    &bits_to_i64(position.commit()),
                    &bits_to_i64(position.prepare()),
                ],
            )
            .await
            .map_err(|e| map(e, schema))?;
        Ok(())
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>> {
        check_text("checkpoint name", name)?;
        let schema = &self.inner.schema;
        let client = self.inner.pool.get().await.map_err(map_pool)?;
        let statement = client
            .prepare_cached(&self.inner.sql.load_checkpoint)
            .await
            .map_err(|e| map(e, schema))?;
        let row = client
            .query_opt(&statement, &[&name])
            .await
            .map_err(|e| map(e, schema))?;
        Ok(row.map(|r| Position::new(bits_to_u64(r.get(0)), bits_to_u64(r.get(1)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use annals_testkit::postgres::PgServer;
    use futures::TryStreamExt;

    fn event(n: u64) -> EventData {
        EventData::json("Counted", &n).expect("event")
    }

    /// The store learns heads from its appends, its reads and its conflicts, and an exact
    /// append checked by the unique key alone still refuses every wrong version: past the head
    /// (another store wrote there) and behind it (a version this store never saw).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn known_heads_skip_the_probe_and_never_let_a_wrong_version_in() {
        let server = PgServer::shared();
        let open = || async {
            let store = PgEventStore::builder()
                .connection_string(server.connection_string())
                .schema("known_heads")
                .build()
                .await
                .expect("build");
            store.init().await.expect("init");
            store
        };
        let (a, b) = (open().await, open().await);
        let s = StreamId::new("heads-1").expect("id");
        a.append(&s, ExpectedVersion::NoStream, vec![event(1)])
            .await
            .expect("append");
        assert!(a.inner.heads.knows(&s, 1) && !b.inner.heads.knows(&s, 1));

        // `b` learns version 1 from a read; `a` moves the stream on to 3.
        let read: Vec<RecordedEvent> = b
            .read_stream(&s, ReadStream::forward())
            .try_collect()
            .await
            .expect("read");
        assert_eq!(read.len(), 1);
        assert!(b.inner.heads.knows(&s, 1));
        for v in 1..3 {
            a.append(&s, ExpectedVersion::exact(v), vec![event(v + 1)])
                .await
                .expect("append");
        }

        // Past the head: the unique key refuses, as a conflict naming the real head.
        let err = b
            .append(&s, ExpectedVersion::exact(1), vec![event(9)])
            .await
            .expect_err("stale");
        assert!(
            matches!(err, Error::VersionConflict { actual, .. } if actual == Version::new(3)),
            "{err:?}"
        );
        assert!(b.inner.heads.knows(&s, 3), "a conflict teaches the head");

        // Behind the head: a version nobody saw is probed, and refused without a gap.
        let err = b
            .append(&s, ExpectedVersion::exact(7), vec![event(9), event(10)])
            .await
            .expect_err("ahead");
        assert!(matches!(err, Error::VersionConflict { actual, .. } if actual == Version::new(3)));
        assert_eq!(
            b.stream_version(&s).await.expect("version"),
            Version::new(3)
        );

        // The known head takes a single event and a batch.
        b.append(&s, ExpectedVersion::exact(3), vec![event(4)])
            .await
            .expect("single at a known head");
        b.append(&s, ExpectedVersion::exact(4), vec![event(5), event(6)])
            .await
            .expect("batch at a known head");
        let versions: Vec<u64> = a
            .read_stream(&s, ReadStream::forward())
            .map_ok(|e| e.version.get())
            .try_collect()
            .await
            .expect("read");
        assert_eq!(versions, (1..=6).collect::<Vec<_>>());
    }
}
