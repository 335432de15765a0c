//! The append path: one statement per append (chosen by the shape of the batch and what the
//! store knows of the stream's head), its retries on lost connections and lost races, and the
//! idempotency lookup when it writes nothing.

use std::collections::HashMap;

use annals::store::kit::{resolve_retry, StoredEventRef};
use annals::{
    AppendResult, Error, EventData, EventId, ExpectedVersion, RecordPlace, Result, StreamId,
    Version,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;
use uuid::Uuid;

use super::params::{check_storable, AppendParams, ExpectedCode};
use super::rows;
use super::PgEventStore;
use crate::error::{is_connection_error, map, map_append, Stage, BACKEND};
use crate::types::Xid8;

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

impl PgEventStore {
    /// Runs the append, then tells the heads, the local subscribers and the background task.
    pub(super) async fn append_now(
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
        let Some(code) = ExpectedCode::of(expected) else {
            // No stream reaches a version past i64::MAX: always a conflict.
            let client = self.client().await?;
            return Err(Error::VersionConflict {
                stream: stream.clone(),
                expected,
                actual: self.version_on(&client, stream).await?,
            });
        };
        // The row at the expected version is known to exist (or none is needed): the unique
        // key alone checks the expected version (see `KnownHeads`).
        let known = code
            .exact
            .is_some_and(|v| v == 0 || self.inner.heads.knows(stream, v));
        let exact = code.exact.is_some();
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
        let params = AppendParams::new(stream, code.code, events);
        let schema = self.inner.schema.as_str();
        let count = u64::try_from(events.len()).map_err(|e| Error::backend(BACKEND, e))?;
        // The error to give if no attempt answers: `AppendOutcomeUnknown` once an attempt was
        // sent and its connection died (until a later attempt learns the outcome).
        let mut unknown: Option<Error> = None;
        let mut lost_connections = 0;
        for _ in 0..APPEND_RACES {
            if lost_connections >= APPEND_ATTEMPTS {
                break;
            }
            let client = match self.client().await {
                Ok(client) => client,
                Err(e) => return Err(unknown.unwrap_or(e)),
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
                Ok(rows) => match answer(&rows, stream, single, count)? {
                    Some(answer) => return Ok(answer),
                    // The expected-version check failed: a conflict, unless this is a retry.
                    // Only the head-reading batch statement returns the head it read.
                    None => Refused::Check(match rows.first() {
                        Some(row) if !single && !exact => {
                            let place = RecordPlace::new().stream(stream.clone());
                            rows::version(rows::get(row, 0, &place)?, &place)?
                        }
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
    /// connection while it holds one). [`EventStore::stream_version`](annals::EventStore::stream_version)
    /// runs it on a pooled one.
    pub(super) async fn version_on(
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
        let place = RecordPlace::new().stream(stream.clone());
        rows::version(rows::get(&row, 0, &place)?, &place)
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
        let found = client
            .query(&statement, &[&ids])
            .await
            .map_err(|e| map_append(e, schema, stream, Stage::Writing))?;
        if found.is_empty() {
            return Ok(None);
        }
        let stored = found
            .iter()
            .map(rows::stored_ref)
            .collect::<Result<HashMap<Uuid, StoredEventRef>>>()?;
        let ids: Vec<EventId> = events.iter().map(|e| e.id).collect();
        let found: Vec<Option<StoredEventRef>> = ids
            .iter()
            .map(|id| stored.get(id.as_uuid()).cloned())
            .collect();
        Ok(Some(resolve_retry(stream, &ids, &found).and_then(|r| {
            r.ok_or_else(|| Error::backend(BACKEND, "stored ids vanished during an append"))
        })))
    }
}

/// The result of an append statement that inserted the batch of `count` events to `stream`,
/// or `None` when its check failed.
///
/// A single-event statement returns `version, transaction_id, seq` of its row (no row: the
/// check failed); a batch statement one row of the version it followed, the transaction id,
/// the first and last `seq` and the rows inserted (fewer than the batch: the check failed).
fn answer(
    found: &[Row],
    stream: &StreamId,
    single: bool,
    count: u64,
) -> Result<Option<AppendResult>> {
    let Some(row) = found.first() else {
        return Ok(None);
    };
    let place = RecordPlace::new().stream(stream.clone());
    let (first_version, xid, first_seq, last_seq) = if single {
        let seq: i64 = rows::get(row, 2, &place)?;
        let version = rows::version(rows::get(row, 0, &place)?, &place)?;
        (version, rows::get::<Xid8>(row, 1, &place)?, seq, seq)
    } else {
        let inserted: i64 = rows::get(row, 4, &place)?;
        if u64::try_from(inserted).ok() != Some(count) {
            return Ok(None);
        }
        let before = rows::version(rows::get(row, 0, &place)?, &place)?;
        (
            before.next(),
            rows::get::<Xid8>(row, 1, &place)?,
            rows::get(row, 2, &place)?,
            rows::get(row, 3, &place)?,
        )
    };
    Ok(Some(AppendResult {
        first_version,
        last_version: first_version.advance(count.saturating_sub(1)),
        first_position: rows::position(xid, first_seq, &place)?,
        last_position: rows::position(xid, last_seq, &place)?,
    }))
}

fn is_unique_violation(e: &tokio_postgres::Error, constraint: &str) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code() == &SqlState::UNIQUE_VIOLATION && db.constraint() == Some(constraint)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use annals::{EventStore, ReadStream, RecordedEvent};
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
                .open()
                .await
                .expect("open");
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
