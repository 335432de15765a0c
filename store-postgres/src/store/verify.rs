//! [`EventStore::verify`](annals::EventStore::verify): the store's own check, in SQL.
//!
//! Four statements, in one read-only `REPEATABLE READ` transaction (so they see one state of
//! the store), each answering at most [`VerifyReport::MAX_PROBLEMS`] rows with the count of
//! all: the memory used does not grow with the store.
//!
//! 1. Counts: events, streams, snapshots, checkpoints, and the last position of every
//!    committed event (not only those below the readers' horizon).
//! 2. Streams whose versions are not 1..n without gaps: one problem per bad stream, at its
//!    first missing version.
//! 3. Snapshots of a version their stream has not reached.
//! 4. Event rows the store cannot read back: a negative `seq`, a schema version out of the
//!    `u16` range (the schema's check was dropped in version 2), headers that are not an
//!    object of strings.
//!
//! The schema has no stream head rows (a stream's head is its highest version), so there is no
//! head to disagree with its events; the unique keys and `NOT NULL` columns are the server's to
//! enforce.

use annals::{Error, Problem, ProblemKind, RecordPlace, Result, StreamId, VerifyReport, Version};
use tokio_postgres::{IsolationLevel, Row};

use super::{rows, PgEventStore};
use crate::error::{column, map, BACKEND};
use crate::types::{bits_to_u64, Xid8};

impl PgEventStore {
    /// See the [module docs](self).
    pub(super) async fn check(&self) -> Result<VerifyReport> {
        let schema = self.inner.schema.as_str();
        let sql = &self.inner.sql;
        let mut client = self.client().await?;
        let client: &mut tokio_postgres::Client = &mut client;
        let tx = client
            .build_transaction()
            .read_only(true)
            .isolation_level(IsolationLevel::RepeatableRead)
            .start()
            .await
            .map_err(|e| map(e, schema))?;
        let most = i64::try_from(VerifyReport::MAX_PROBLEMS).unwrap_or(i64::MAX);
        let mut report = VerifyReport::new();

        let row = tx
            .query_one(&sql.verify_counts, &[])
            .await
            .map_err(|e| map(e, schema))?;
        report.events = count(&row, 0)?;
        report.streams = count(&row, 1)?;
        report.snapshots = count(&row, 2)?;
        report.checkpoints = count(&row, 3)?;
        let last: (Option<Xid8>, Option<i64>) = (column(&row, 4)?, column(&row, 5)?);
        if let (Some(xid), Some(seq)) = last {
            match rows::position(xid, seq, &RecordPlace::new()) {
                Ok(position) => report.last_position = Some(position),
                Err(e) => report.push(problem(ProblemKind::Corrupt, RecordPlace::new(), e)),
            }
        }

        let found = tx
            .query(&sql.verify_versions, &[&most])
            .await
            .map_err(|e| map(e, schema))?;
        for row in &found {
            let stream: &str = column(row, 0)?;
            let missing: i64 = column(row, 1)?;
            let events: i64 = column(row, 2)?;
            let head: i64 = column(row, 3)?;
            let place = stream_place(stream).version(version(missing)?);
            report.push(Problem::new(
                ProblemKind::VersionGap,
                place,
                format!("{events} events up to version {head}: version {missing} is missing"),
            ));
        }
        omit(&mut report, &found, 4)?;

        let found = tx
            .query(&sql.verify_snapshots, &[&most])
            .await
            .map_err(|e| map(e, schema))?;
        for row in &found {
            let stream: &str = column(row, 0)?;
            let snapshot = Version::new(bits_to_u64(column(row, 1)?));
            let head: i64 = column(row, 2)?;
            report.push(Problem::new(
                ProblemKind::SnapshotAhead,
                stream_place(stream).version(snapshot),
                format!("the snapshot is at version {snapshot}, the stream at version {head}"),
            ));
        }
        omit(&mut report, &found, 3)?;

        let found = tx
            .query(&sql.verify_rows, &[&most])
            .await
            .map_err(|e| map(e, schema))?;
        for row in &found {
            let xid: Xid8 = column(row, 0)?;
            let seq: i64 = column(row, 1)?;
            let stream: &str = column(row, 2)?;
            let stored: i64 = column(row, 3)?;
            let reason: String = column(row, 4)?;
            let mut place = stream_place(stream);
            if let Ok(position) = rows::position(xid, seq, &place) {
                place = place.position(position);
            }
            if let Ok(v) = rows::version(stored, &place) {
                place = place.version(v);
            }
            report.push(Problem::new(ProblemKind::Corrupt, place, reason));
        }
        omit(&mut report, &found, 5)?;

        tx.commit().await.map_err(|e| map(e, schema))?;
        Ok(report)
    }
}

/// A count (`bigint`, never negative).
fn count(row: &Row, idx: usize) -> Result<u64> {
    let n: i64 = column(row, idx)?;
    u64::try_from(n).map_err(|e| Error::backend(BACKEND, e))
}

/// A version the check computed (a row number, never negative).
fn version(n: i64) -> Result<Version> {
    u64::try_from(n)
        .map(Version::new)
        .map_err(|e| Error::backend(BACKEND, e))
}

/// The place of a stream, when its stored id is a valid one.
fn stream_place(stream: &str) -> RecordPlace {
    match StreamId::new(stream) {
        Ok(stream) => RecordPlace::new().stream(stream),
        Err(_) => RecordPlace::new(),
    }
}

/// A problem found while reading what the check found.
fn problem(kind: ProblemKind, place: RecordPlace, e: Error) -> Problem {
    Problem::new(kind, place, e.to_string())
}

/// Counts the problems a statement found beyond the rows it answered (column `total` of each
/// row holds the count of all).
fn omit(report: &mut VerifyReport, found: &[Row], total: usize) -> Result<()> {
    let Some(row) = found.first() else {
        return Ok(());
    };
    let all = count(row, total)?;
    let listed = u64::try_from(found.len()).map_err(|e| Error::backend(BACKEND, e))?;
    report.problems_omitted += all.saturating_sub(listed);
    Ok(())
}
