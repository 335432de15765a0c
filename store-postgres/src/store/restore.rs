//! [`EventStore::restore`](annals::EventStore::restore): events of many streams, with their
//! versions and recording times, in one transaction, written with one binary `COPY`.
//!
//! An attempt runs on one pooled connection, in one `READ COMMITTED` transaction:
//!
//! 1. it gathers the heads of the batch's streams — each stream's version and the recording
//!    time of its last event — and where the batch's ids are stored, as the store's unique
//!    keys need (see "Gathering" below);
//! 2. [`plan_restore`] checks the batch against them and says what to write;
//! 3. the events to write go in with **one `COPY … FROM STDIN (FORMAT binary)`**, rows in
//!    batch order, `recorded_at` given; `transaction_id` and `seq` take their defaults, as for
//!    an append, so the positions are `(this transaction's id, seq)`, increasing in batch
//!    order;
//! 4. it reads the last row's position (`restore_last`) and commits.
//!
//! # Gathering
//!
//! In full, step 1 is two statements, sent together: `restore_heads` (one backward probe of
//! the unique `(stream_id, version)` index per stream, with the last row's `recorded_at`) and
//! `lookup` (every id of the batch, as an append's idempotency lookup).
//!
//! Most of that is known already when a copy goes on batch after batch, so a first attempt
//! gathers less, as an append at a known head skips its probe:
//!
//! - a stream whose head this store remembers with its recording time (it wrote or read that
//!   row: [`KnownHeads`](crate::heads)) is not probed;
//! - only the ids of events at versions the streams already hold are looked up (the events a
//!   re-run finds present); the `event_id` key refuses any other id stored already.
//!
//! Whatever was taken as known is checked by the unique keys when the rows go in: a head that
//! moved on since collides on `(stream_id, version)` (the restore writes the version after the
//! head it took), an id stored already collides on `event_id`. Then, and whenever the plan
//! refuses a batch on what was taken as known, the restore gathers in full and plans again:
//! every refusal it returns was planned on everything read from the server.
//!
//! # The global order
//!
//! The crate's invariants hold exactly as for appends (see the crate docs, "The global order
//! never skips"): every row of the batch carries the transaction's id, which readers of the
//! global log cross only once the transaction has ended; and the transaction gets its id at
//! its first row, in step 3, after the heads it follows were committed (step 1 read them, or
//! the store saw them committed before) — so the events a stream's new events follow were
//! written by transactions that committed before, with smaller ids.
//!
//! # Concurrent writers
//!
//! Nothing is locked. Each stream's first new event has the version after the head the plan
//! took, so a writer that added to that stream since collides with it on the unique
//! `(stream_id, version)` key, and one that stored an id of the batch collides on the unique
//! `event_id` key. The server makes the `COPY` wait for a colliding writer still running and
//! fails it once that writer commits (a writer that rolls back collides with nothing): the
//! attempt rolls back, having written nothing, and the restore starts again, gathering in full.
//! Its new plan sees the other writer's events and refuses the batch with the contract's error
//! ([`VersionConflict`](annals::Error::VersionConflict),
//! [`IdempotencyConflict`](annals::Error::IdempotencyConflict)), or counts them present when
//! they are this batch's own (the same restore run twice at once). Two restores that write the
//! same streams in opposite orders may deadlock; the server breaks the deadlock and the loser
//! starts again the same way.
//!
//! A connection that dies before the commit was sent loses nothing (the server rolls back); one
//! that dies while committing leaves the outcome unknown. Both are tried again on a fresh
//! connection, which is safe: what the lost attempt committed is found stored and counted
//! present.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::pin;

use annals::store::kit::{plan_restore, RestorePlan, StoredEventRef, StreamHead};
use annals::{
    Error, EventData, EventId, Position, RecordPlace, RestoreResult, RestoredEvent, Result,
    StreamId, Timestamp, Version,
};
use bytes::{BufMut, Bytes, BytesMut};
use deadpool_postgres::Transaction;
use futures::SinkExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use uuid::Uuid;

use super::params::{check_storable, unstorable_time};
use super::{rows, PgEventStore};
use crate::error::{is_connection_error, map, map_append, Stage, BACKEND};
use crate::schema::RESTORE_TYPES;
use crate::types::{PgTime, Xid8};

/// How many attempts may lose their connection before the restore gives up.
const RESTORE_ATTEMPTS: usize = 3;

/// How many attempts may collide with concurrent writers (each collision with one that
/// committed ends in the contract's refusal, or in success, at the next attempt).
const RESTORE_RACES: usize = 100;

/// What one attempt wrote, and what it learnt of the streams' heads.
struct Restored {
    result: RestoreResult,
    /// The last position of the batch's events found already stored, if any.
    present_last: Option<Position>,
    /// Stream heads read or written: version and the recording time of that row.
    heads: HashMap<StreamId, (u64, Timestamp)>,
}

/// Why an attempt ended without an answer, or with a final one.
enum Failure {
    /// The answer: the plan refused the batch, or the server failed it for good.
    Final(Error),
    /// A unique key refused a row (a concurrent writer came first, or something taken as known
    /// was not so), or the server broke a deadlock: nothing was written, gather in full and
    /// plan again.
    Race,
    /// The connection died before the commit was sent: nothing was written.
    Lost(Error),
    /// The connection died while committing: the attempt may have committed.
    Unknown(Error),
}

/// How much an attempt gathers before planning (see the [module docs](self)).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gather {
    /// Remembered heads are taken as they are; only ids at held versions are looked up.
    Known,
    /// Every stream's head and every id, read from the server.
    Full,
}

impl PgEventStore {
    /// Checks the batch, restores it (attempting again after collisions and lost connections),
    /// then tells the heads, the local subscribers and the background task.
    pub(super) async fn restore_now(&self, events: Vec<RestoredEvent>) -> Result<RestoreResult> {
        let events = self.checked(events)?;
        let mut seen: HashSet<&StreamId> = HashSet::new();
        let streams: Vec<&StreamId> = events
            .iter()
            .map(|e| &e.stream_id)
            .filter(|s| seen.insert(*s))
            .collect();
        let mut gather = Gather::Known;
        // The error to give if no attempt answers: an outcome unknown wins over a lost
        // connection that wrote nothing.
        let mut unknown: Option<Error> = None;
        let mut lost: Option<Error> = None;
        let mut lost_connections = 0;
        for _ in 0..RESTORE_RACES {
            if lost_connections >= RESTORE_ATTEMPTS {
                break;
            }
            let mut client = match self.client().await {
                Ok(client) => client,
                Err(e) => return Err(unknown.unwrap_or(e)),
            };
            let attempt = self
                .restore_once(&mut client, &events, &streams, gather)
                .await;
            match attempt {
                Ok(done) => {
                    for (stream, &(version, at)) in &done.heads {
                        self.inner.heads.saw_at(stream, version, at);
                    }
                    // After an attempt whose commit went unanswered, what it wrote is found
                    // present: announce it, as nobody did.
                    let announce = done
                        .result
                        .last_position
                        .max(unknown.is_some().then_some(done.present_last).flatten());
                    if let Some(position) = announce {
                        self.inner.notifier.notify(position);
                        self.inner.local.committed();
                    }
                    return Ok(done.result);
                }
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Race) => {
                    tracing::debug!("restore: a unique key refused a row, gathering in full");
                }
                Err(Failure::Lost(e)) => {
                    tracing::debug!(error = %e, "restore: connection lost, trying again");
                    lost = Some(e);
                    lost_connections += 1;
                }
                Err(Failure::Unknown(e)) => {
                    tracing::debug!(error = %e, "restore: connection lost committing, trying again");
                    unknown = Some(e);
                    lost_connections += 1;
                }
            }
            gather = Gather::Full;
        }
        Err(unknown.or(lost).unwrap_or_else(|| {
            Error::backend(
                BACKEND,
                format!(
                    "the restore collided {RESTORE_RACES} times in a row with concurrent writers \
                     that rolled back"
                ),
            )
        }))
    }

    /// The batch checked against the limits and what PostgreSQL can store, before anything is
    /// sent.
    fn checked(&self, events: Vec<RestoredEvent>) -> Result<Vec<RestoredEvent>> {
        let (places, data): (Vec<_>, Vec<EventData>) = events
            .into_iter()
            .map(|e| ((e.stream_id, e.version, e.recorded_at), e.event))
            .unzip();
        self.inner.limits.check(&data)?;
        check_storable(&data)?;
        places
            .into_iter()
            .zip(data)
            .map(|((stream_id, version, recorded_at), event)| {
                if let Some(reason) = unstorable_time("recording time", recorded_at) {
                    return Err(Error::InvalidEvent {
                        event_id: Some(event.id),
                        reason,
                    });
                }
                Ok(RestoredEvent::new(stream_id, version, recorded_at, event))
            })
            .collect()
    }

    /// One attempt, in one transaction on `client` (see the [module docs](self)).
    async fn restore_once(
        &self,
        client: &mut deadpool_postgres::Client,
        events: &[RestoredEvent],
        streams: &[&StreamId],
        gather: Gather,
    ) -> std::result::Result<Restored, Failure> {
        let schema = self.inner.schema.as_str();
        let failed = |e: tokio_postgres::Error| failure(e, schema);
        let tx = client.transaction().await.map_err(failed)?;

        let (mut heads, mut stored) = self.gather(&tx, events, streams, gather).await?;
        let plan = match plan_restore(events.to_vec(), &heads, &stored) {
            Ok(plan) => plan,
            // Refused on what was taken as known: refuse only on what the server holds.
            Err(_) if gather == Gather::Known => {
                (heads, stored) = self.gather(&tx, events, streams, Gather::Full).await?;
                plan_restore(events.to_vec(), &heads, &stored).map_err(Failure::Final)?
            }
            Err(e) => return Err(Failure::Final(e)),
        };
        let present_last = stored.values().map(|r| r.position).max();
        let mut learnt: HashMap<StreamId, (u64, Timestamp)> = heads
            .into_iter()
            .filter_map(|(stream, head)| {
                head.last_recorded_at
                    .map(|at| (stream, (head.version.get(), at)))
            })
            .collect();
        if plan.write.is_empty() {
            // Nothing to write: the transaction only read.
            return Ok(Restored {
                result: RestoreResult::new(0, plan.present, None),
                present_last,
                heads: learnt,
            });
        }
        let (count, last_position) = self.write_plan(&tx, &plan).await?;
        let first_stream = &plan.write[0].stream_id;
        tx.commit().await.map_err(|e| {
            if is_connection_error(&e) {
                Failure::Unknown(map_append(e, schema, first_stream, Stage::Writing))
            } else {
                failure(e, schema)
            }
        })?;
        for e in &plan.write {
            learnt.insert(e.stream_id.clone(), (e.version.get(), e.recorded_at));
        }
        Ok(Restored {
            result: RestoreResult::new(count, plan.present, Some(last_position)),
            present_last,
            heads: learnt,
        })
    }

    /// The streams' heads and where the batch's ids are stored, as much as `gather` asks for.
    async fn gather(
        &self,
        tx: &Transaction<'_>,
        events: &[RestoredEvent],
        streams: &[&StreamId],
        gather: Gather,
    ) -> std::result::Result<
        (
            HashMap<StreamId, StreamHead>,
            HashMap<EventId, StoredEventRef>,
        ),
        Failure,
    > {
        let schema = self.inner.schema.as_str();
        let sql = &self.inner.sql;
        let failed = |e: tokio_postgres::Error| failure(e, schema);
        let mut heads: HashMap<StreamId, StreamHead> = HashMap::new();
        let mut unknown: Vec<&str> = Vec::new();
        for &stream in streams {
            match self.inner.heads.head(stream) {
                Some((version, at)) if gather == Gather::Known => {
                    heads.insert(
                        stream.clone(),
                        StreamHead {
                            version: Version::new(version),
                            last_recorded_at: Some(at),
                        },
                    );
                }
                _ => unknown.push(stream.as_str()),
            }
        }
        let heads_statement = tx
            .prepare_cached(&sql.restore_heads)
            .await
            .map_err(failed)?;
        let lookup_statement = tx.prepare_cached(&sql.lookup).await.map_err(failed)?;
        let stored_rows = match gather {
            // Both statements at once (the connection pipelines them).
            Gather::Full => {
                let ids: Vec<Uuid> = events.iter().map(|e| *e.event.id.as_uuid()).collect();
                let heads_params: [&(dyn ToSql + Sync); 1] = [&unknown];
                let lookup_params: [&(dyn ToSql + Sync); 1] = [&ids];
                let (head_rows, stored_rows) = futures::try_join!(
                    tx.query(&heads_statement, &heads_params),
                    tx.query(&lookup_statement, &lookup_params),
                )
                .map_err(failed)?;
                read_heads(&head_rows, &mut heads)?;
                stored_rows
            }
            Gather::Known => {
                if !unknown.is_empty() {
                    let head_rows = tx
                        .query(&heads_statement, &[&unknown])
                        .await
                        .map_err(failed)?;
                    read_heads(&head_rows, &mut heads)?;
                }
                // The ids of events at versions their streams hold: the ones a re-run finds.
                let held: Vec<Uuid> = events
                    .iter()
                    .filter(|e| {
                        heads
                            .get(&e.stream_id)
                            .is_some_and(|head| e.version <= head.version)
                    })
                    .map(|e| *e.event.id.as_uuid())
                    .collect();
                if held.is_empty() {
                    Vec::new()
                } else {
                    tx.query(&lookup_statement, &[&held])
                        .await
                        .map_err(failed)?
                }
            }
        };
        let stored = stored_rows
            .iter()
            .map(|row| rows::stored_ref(row).map(|(id, r)| (EventId::from_uuid(id), r)))
            .collect::<Result<HashMap<EventId, StoredEventRef>>>()
            .map_err(Failure::Final)?;
        Ok((heads, stored))
    }

    /// Writes the plan's events with one binary `COPY`, in batch order, and reads the last
    /// one's position: how many rows went in, and where the last did.
    async fn write_plan(
        &self,
        tx: &Transaction<'_>,
        plan: &RestorePlan,
    ) -> std::result::Result<(u64, Position), Failure> {
        let schema = self.inner.schema.as_str();
        let sql = &self.inner.sql;
        let failed = |e: tokio_postgres::Error| failure(e, schema);
        let statement = tx.prepare_cached(&sql.restore_copy).await.map_err(failed)?;
        let sink = tx.copy_in::<_, Bytes>(&statement).await.map_err(failed)?;
        let mut sink = pin!(sink);
        let mut buf = BytesMut::with_capacity(COPY_CHUNK + COPY_CHUNK / 4);
        buf.put_slice(COPY_HEADER);
        for e in &plan.write {
            let version = i64::try_from(e.version.get()).map_err(|_| {
                Failure::Final(Error::InvalidEvent {
                    event_id: Some(e.event.id),
                    reason: format!(
                        "version {} of stream `{}` is past the highest PostgreSQL stores ({})",
                        e.version,
                        e.stream_id,
                        i64::MAX
                    ),
                })
            })?;
            let event = &e.event;
            let row: [&(dyn ToSql + Sync); 12] = [
                &e.stream_id.as_str(),
                &version,
                event.id.as_uuid(),
                &event.event_type.as_str(),
                &i32::from(event.schema_version),
                &event.content_type.as_str(),
                &event.payload.as_ref(),
                &event.metadata.correlation_id,
                &event.metadata.causation_id,
                &PgTime(event.metadata.timestamp),
                &JsonbHeaders(&event.metadata.headers),
                &PgTime(e.recorded_at),
            ];
            encode_row(&mut buf, &row).map_err(|reason| {
                Failure::Final(Error::InvalidEvent {
                    event_id: Some(event.id),
                    reason,
                })
            })?;
            if buf.len() >= COPY_CHUNK {
                sink.as_mut()
                    .send(buf.split().freeze())
                    .await
                    .map_err(failed)?;
            }
        }
        buf.put_i16(-1);
        sink.as_mut()
            .send(buf.split().freeze())
            .await
            .map_err(failed)?;
        let written = sink.as_mut().finish().await.map_err(failed)?;
        let count = u64::try_from(plan.write.len())
            .map_err(|e| Failure::Final(Error::backend(BACKEND, e)))?;
        if written != count {
            return Err(Failure::Final(Error::backend(
                BACKEND,
                format!("the restore's COPY wrote {written} rows of {count}"),
            )));
        }
        let statement = tx.prepare_cached(&sql.restore_last).await.map_err(failed)?;
        let row = tx.query_one(&statement, &[]).await.map_err(failed)?;
        let place = RecordPlace::new();
        let xid: Xid8 = rows::get(&row, 0, &place).map_err(Failure::Final)?;
        let seq: i64 = rows::get(&row, 1, &place).map_err(Failure::Final)?;
        let last = rows::position(xid, seq, &place).map_err(Failure::Final)?;
        Ok((count, last))
    }
}

/// How much row data a restore sends to the server at a time.
const COPY_CHUNK: usize = 64 * 1024;

/// The start of PostgreSQL's binary `COPY` format: its signature, no flags, no header extension.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Appends one row of [`RESTORE_TYPES`] in the binary `COPY` format: the field count, then
/// each field's length (-1 for `NULL`) and bytes. The reason, when a value cannot be encoded.
fn encode_row(
    buf: &mut BytesMut,
    row: &[&(dyn ToSql + Sync); 12],
) -> std::result::Result<(), String> {
    const FIELDS: i16 = 12;
    buf.put_i16(FIELDS);
    for (value, ty) in row.iter().zip(&RESTORE_TYPES) {
        let at = buf.len();
        buf.put_i32(0);
        let len = match value
            .to_sql_checked(ty, buf)
            .map_err(|e| format!("its {ty} column: {e}"))?
        {
            IsNull::Yes => -1,
            IsNull::No => i32::try_from(buf.len() - at - 4)
                .map_err(|_| format!("its {ty} column is larger than PostgreSQL takes"))?,
        };
        buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
    Ok(())
}

/// An event's headers as `jsonb`, written straight from the map (an object of strings).
#[derive(Debug)]
struct JsonbHeaders<'a>(&'a BTreeMap<String, String>);

impl ToSql for JsonbHeaders<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // The version of jsonb's binary format.
        out.put_u8(1);
        serde_json::to_writer(out.writer(), self.0)?;
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// Adds the rows of `restore_heads` to `heads`.
fn read_heads(
    found: &[tokio_postgres::Row],
    heads: &mut HashMap<StreamId, StreamHead>,
) -> std::result::Result<(), Failure> {
    for row in found {
        let (stream, head) = rows::stream_head(row).map_err(Failure::Final)?;
        heads.insert(stream, head);
    }
    Ok(())
}

/// How a statement of an attempt failed, before its commit was sent.
fn failure(e: tokio_postgres::Error, schema: &str) -> Failure {
    let race = e.as_db_error().is_some_and(|db| {
        let code = db.code();
        (code == &SqlState::UNIQUE_VIOLATION
            && matches!(
                db.constraint(),
                Some("events_stream_version_key" | "events_event_id_key")
            ))
            || code == &SqlState::T_R_DEADLOCK_DETECTED
            || code == &SqlState::T_R_SERIALIZATION_FAILURE
    });
    if race {
        Failure::Race
    } else if is_connection_error(&e) {
        Failure::Lost(map(e, schema))
    } else {
        Failure::Final(map(e, schema))
    }
}
