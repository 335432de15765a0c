//! The schema: its name, its migrations and the SQL of every statement the store runs.

use std::ops::RangeInclusive;

use annals::{Error, Result};
use tokio_postgres::types::Type;

use crate::error::{column, map, BACKEND};

/// The migrations, in order: `(version, DDL)`. `__SCHEMA__` stands for the quoted schema name.
pub(crate) const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (
        2,
        include_str!("../migrations/0002_drop_schema_version_check.sql"),
    ),
    (3, include_str!("../migrations/0003_leases.sql")),
];

/// The schema version this crate creates and reads.
pub const SCHEMA_VERSION: i32 = 3;

/// The schema versions this build reads (older ones are migrated by `init`), as
/// [`Error::Format`] reports them.
const SUPPORTED: RangeInclusive<u32> = 1..=SCHEMA_VERSION.unsigned_abs();

/// `$2` of an append statement for [`ExpectedVersion::Any`](annals::ExpectedVersion::Any):
/// no check.
pub(crate) const EXPECT_ANY: i64 = -1;
/// `$2` of an append statement for
/// [`ExpectedVersion::StreamExists`](annals::ExpectedVersion::StreamExists): the stream has an
/// event.
pub(crate) const EXPECT_EXISTS: i64 = -2;
/// `$2` of an append statement for [`ExpectedVersion::NoStream`](annals::ExpectedVersion::NoStream):
/// the stream has no event. `Exact(n)` is `n` itself (`n` ≥ 0, so never one of the codes above).
pub(crate) const EXPECT_NO_STREAM: i64 = 0;

/// Checks a schema name: ASCII lower-case letters, digits and `_`, not starting with a digit,
/// at most 63 bytes (PostgreSQL's identifier limit), so it never needs escaping.
pub(crate) fn validate_schema_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.as_bytes()[0].is_ascii_digit()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::configuration(
            "schema",
            format!(
                "invalid schema name {name:?}: use 1 to 63 characters of a-z, 0-9 and _, not starting with a digit"
            ),
        ))
    }
}

/// The SQL of every statement, with the schema name filled in.
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) append: String,
    pub(crate) append_exact: String,
    pub(crate) append_exact_known: String,
    pub(crate) append_one: String,
    pub(crate) append_one_exact: String,
    pub(crate) append_one_exact_known: String,
    pub(crate) lookup: String,
    pub(crate) restore_heads: String,
    pub(crate) restore_copy: String,
    pub(crate) restore_last: String,
    pub(crate) read_all: String,
    pub(crate) read_stream_forward: String,
    pub(crate) read_stream_backward: String,
    pub(crate) stream_version: String,
    pub(crate) last_position: String,
    pub(crate) horizon: String,
    pub(crate) streams: String,
    pub(crate) save_snapshot: String,
    pub(crate) load_snapshot: String,
    pub(crate) save_checkpoint: String,
    pub(crate) load_checkpoint: String,
    pub(crate) verify_counts: String,
    pub(crate) verify_versions: String,
    pub(crate) verify_snapshots: String,
    pub(crate) verify_rows: String,
}

/// The columns of an event row, in the order `row_to_event` reads them.
const EVENT_COLUMNS: &str = "transaction_id, seq, stream_id, version, event_id, event_type, \
     schema_version, content_type, payload, correlation_id, causation_id, event_timestamp, \
     headers, recorded_at";

/// The line readers of the global log never cross: every transaction below it has ended.
const HORIZON: &str = "pg_snapshot_xmin(pg_current_snapshot())";

/// The columns of a batch insert from `unnest` of the array parameters `$3`–`$11`.
const UNNEST: &str = "unnest($3::uuid[], $4::text[], $5::int4[], $6::text[], $7::bytea[], \
     $8::uuid[], $9::uuid[], $10::timestamptz[], $11::jsonb[]) \
     WITH ORDINALITY AS u(id, typ, sv, ct, pl, co, ca, ts, hd, ord)";

/// The columns an append inserts.
const INSERT_COLUMNS: &str = "stream_id, version, event_id, event_type, schema_version, \
     content_type, payload, correlation_id, causation_id, event_timestamp, headers";

/// The columns a restore writes: an append's, and the recording time. Their types, in
/// order, are [`RESTORE_TYPES`].
const RESTORE_COLUMNS: &str = "stream_id, version, event_id, event_type, schema_version, \
     content_type, payload, correlation_id, causation_id, event_timestamp, headers, recorded_at";

/// The types of [`RESTORE_COLUMNS`], as the binary `COPY` of a restore sends them.
pub(crate) const RESTORE_TYPES: [Type; 12] = [
    Type::TEXT,
    Type::INT8,
    Type::UUID,
    Type::TEXT,
    Type::INT4,
    Type::TEXT,
    Type::BYTEA,
    Type::UUID,
    Type::UUID,
    Type::TIMESTAMPTZ,
    Type::JSONB,
    Type::TIMESTAMPTZ,
];

/// The columns a batch append returns: the version the batch follows, the transaction id, the
/// first and last `seq`, and the number of rows inserted (fewer than the batch: the check failed).
const BATCH_ANSWER: &str = "(SELECT transaction_id FROM ins LIMIT 1), \
     (SELECT min(seq) FROM ins), (SELECT max(seq) FROM ins), (SELECT count(*) FROM ins)";

impl Sql {
    pub(crate) fn new(schema: &str) -> Sql {
        let s = format!("\"{schema}\"");
        // The probe of the exact-version statements: the row at `$2` exists (or `$2` is 0).
        // Together with the unique (stream_id, version) key, which refuses the rows when the
        // stream is already past `$2`, it makes "the stream is exactly at `$2`" one index probe.
        let probe =
            format!("($2::bigint = {EXPECT_NO_STREAM} OR EXISTS (SELECT FROM {s}.events WHERE stream_id = $1 AND version = $2::bigint))");
        let batch_exact = |check: &str| {
            format!(
                "WITH ins AS (INSERT INTO {s}.events ({INSERT_COLUMNS}) \
                   SELECT $1, $2::bigint + u.ord, u.id, u.typ, u.sv, u.ct, u.pl, u.co, u.ca, u.ts, u.hd \
                   FROM {UNNEST} {check} \
                   ORDER BY u.ord \
                   RETURNING transaction_id, seq) \
                 SELECT $2::bigint, {BATCH_ANSWER}"
            )
        };
        Sql {
            // One statement: the expected-version check reads the stream's head and the insert
            // writes after it; the unique (stream_id, version) key stops a concurrent writer
            // that read the same head. Zero rows inserted means the check failed.
            append: format!(
                "WITH cur AS (SELECT coalesce(max(version), 0) AS v FROM {s}.events WHERE stream_id = $1), \
                 ins AS (INSERT INTO {s}.events ({INSERT_COLUMNS}) \
                   SELECT $1, cur.v + u.ord, u.id, u.typ, u.sv, u.ct, u.pl, u.co, u.ca, u.ts, u.hd \
                   FROM cur, {UNNEST} \
                   WHERE CASE WHEN $2::bigint = {EXPECT_ANY} THEN true \
                     WHEN $2::bigint = {EXPECT_EXISTS} THEN cur.v > 0 \
                     ELSE cur.v = $2::bigint END \
                   ORDER BY u.ord \
                   RETURNING transaction_id, seq) \
                 SELECT cur.v, {BATCH_ANSWER} FROM cur"
            ),
            // The batch append at an exact version (`$2` ≥ 0, 0 for `NoStream`): rows go in at
            // `$2 + 1…` when the probe finds the row at `$2`.
            append_exact: batch_exact(&format!("WHERE {probe}")),
            // The same when this store knows the row at `$2` exists (see `KnownHeads`): only the
            // unique key is left to refuse the rows.
            append_exact_known: batch_exact(""),
            // The single-event append, without the batch machinery: the same check and key.
            append_one: format!(
                "INSERT INTO {s}.events ({INSERT_COLUMNS}) \
                 SELECT $1, coalesce(max(version), 0) + 1, $3, $4, $5, $6, $7, $8, $9, $10, $11 \
                 FROM {s}.events WHERE stream_id = $1 \
                 HAVING CASE WHEN $2::bigint = {EXPECT_ANY} THEN true \
                   WHEN $2::bigint = {EXPECT_EXISTS} THEN coalesce(max(version), 0) > 0 \
                   ELSE coalesce(max(version), 0) = $2::bigint END \
                 RETURNING version, transaction_id, seq"
            ),
            // The single-event append at an exact version (`$2` ≥ 0, 0 for `NoStream`): the row
            // goes in at version `$2 + 1` when the probe finds the row at `$2`.
            append_one_exact: format!(
                "INSERT INTO {s}.events ({INSERT_COLUMNS}) \
                 SELECT $1, $2::bigint + 1, $3, $4, $5, $6, $7, $8, $9, $10, $11 \
                 WHERE {probe} \
                 RETURNING version, transaction_id, seq"
            ),
            // The same when this store knows the row at `$2` exists: a plain insert, as cheap as
            // a hand-written one.
            append_one_exact_known: format!(
                "INSERT INTO {s}.events ({INSERT_COLUMNS}) \
                 VALUES ($1, $2::bigint + 1, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                 RETURNING version, transaction_id, seq"
            ),
            lookup: format!(
                "SELECT event_id, stream_id, version, transaction_id, seq FROM {s}.events \
                 WHERE event_id = ANY ($1)"
            ),
            // The heads of a restore's streams (`$1`): each stream's last row, one backward
            // probe of the unique (stream_id, version) index per stream; streams without events
            // have no row.
            restore_heads: format!(
                "SELECT s.id, h.version, h.recorded_at FROM unnest($1::text[]) AS s(id) \
                 CROSS JOIN LATERAL (SELECT version, recorded_at FROM {s}.events \
                   WHERE stream_id = s.id ORDER BY version DESC LIMIT 1) AS h"
            ),
            // A restore's rows, in batch order: `transaction_id` and `seq` take their defaults,
            // as for an append (the transaction's id, then the sequence, row by row).
            restore_copy: format!(
                "COPY {s}.events ({RESTORE_COLUMNS}) FROM STDIN (FORMAT binary)"
            ),
            // The position of the last row the restore's transaction wrote (its primary key
            // starts with the transaction id).
            restore_last: format!(
                "SELECT transaction_id, seq FROM {s}.events \
                 WHERE transaction_id = pg_current_xact_id() ORDER BY seq DESC LIMIT 1"
            ),
            read_all: format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events \
                 WHERE (transaction_id, seq) >= ($1, $2) AND transaction_id < {HORIZON} \
                 AND (cardinality($3::text[]) = 0 OR split_part(stream_id, '-', 1) = ANY ($3)) \
                 AND (cardinality($4::text[]) = 0 OR event_type = ANY ($4)) \
                 ORDER BY transaction_id, seq LIMIT $5"
            ),
            read_stream_forward: format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events WHERE stream_id = $1 AND version >= $2 \
                 ORDER BY version LIMIT $3"
            ),
            read_stream_backward: format!(
                "SELECT {EVENT_COLUMNS} FROM {s}.events WHERE stream_id = $1 AND version <= $2 \
                 ORDER BY version DESC LIMIT $3"
            ),
            stream_version: format!(
                "SELECT coalesce(max(version), 0) FROM {s}.events WHERE stream_id = $1"
            ),
            last_position: format!(
                "SELECT transaction_id, seq FROM {s}.events WHERE transaction_id < {HORIZON} \
                 ORDER BY transaction_id DESC, seq DESC LIMIT 1"
            ),
            horizon: format!(
                "SELECT coalesce((SELECT transaction_id < {HORIZON} FROM {s}.events \
                   ORDER BY transaction_id DESC, seq DESC LIMIT 1), true), v.transaction_id, v.seq \
                 FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT transaction_id, seq FROM {s}.events \
                   WHERE transaction_id < {HORIZON} ORDER BY transaction_id DESC, seq DESC LIMIT 1) AS v \
                 ON true"
            ),
            streams: format!(
                "SELECT DISTINCT ON (stream_id) stream_id, version, transaction_id, seq, recorded_at \
                 FROM {s}.events ORDER BY stream_id, version DESC"
            ),
            save_snapshot: format!(
                "INSERT INTO {s}.snapshots (stream_id, version, schema_version, content_type, payload, taken_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (stream_id) DO UPDATE SET \
                 version = EXCLUDED.version, schema_version = EXCLUDED.schema_version, \
                 content_type = EXCLUDED.content_type, payload = EXCLUDED.payload, taken_at = EXCLUDED.taken_at"
            ),
            load_snapshot: format!(
                "SELECT version, schema_version, content_type, payload, taken_at \
                 FROM {s}.snapshots WHERE stream_id = $1"
            ),
            save_checkpoint: format!(
                "INSERT INTO {s}.checkpoints (name, commit_pos, prepare) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET commit_pos = EXCLUDED.commit_pos, \
                 prepare = EXCLUDED.prepare, updated_at = now()"
            ),
            load_checkpoint: format!(
                "SELECT commit_pos, prepare FROM {s}.checkpoints WHERE name = $1"
            ),
            // What `verify` counts: events and streams (one scan), snapshots, checkpoints, and
            // the last position of every committed row (not only the readers' horizon).
            verify_counts: format!(
                "SELECT e.events, e.streams, (SELECT count(*) FROM {s}.snapshots), \
                   (SELECT count(*) FROM {s}.checkpoints), last.transaction_id, last.seq \
                 FROM (SELECT count(*) AS events, count(DISTINCT stream_id) AS streams FROM {s}.events) AS e \
                 LEFT JOIN LATERAL (SELECT transaction_id, seq FROM {s}.events \
                   ORDER BY transaction_id DESC, seq DESC LIMIT 1) AS last ON true"
            ),
            // Streams whose versions are not 1..n: the i-th version of a stream (numbered in
            // version order, on the unique index) must be i; the first i that is not is the
            // first missing version. One row per bad stream, at most `$1`, each with the count
            // of every bad stream.
            verify_versions: format!(
                "SELECT stream_id, min(CASE WHEN version <> n THEN n END), count(*), max(version), \
                   count(*) OVER () \
                 FROM (SELECT stream_id, version, \
                   row_number() OVER (PARTITION BY stream_id ORDER BY version) AS n FROM {s}.events) AS v \
                 GROUP BY stream_id HAVING bool_or(version <> n) \
                 ORDER BY stream_id LIMIT $1"
            ),
            // Snapshots of a version their stream has not reached (a negative `version` holds a
            // u64 past i64::MAX: ahead of any stream). At most `$1`, with the count of all.
            verify_snapshots: format!(
                "SELECT sn.stream_id, sn.version, h.head, count(*) OVER () FROM {s}.snapshots AS sn \
                 CROSS JOIN LATERAL (SELECT coalesce(max(version), 0) AS head FROM {s}.events AS e \
                   WHERE e.stream_id = sn.stream_id) AS h \
                 WHERE sn.version < 0 OR sn.version > h.head \
                 ORDER BY sn.stream_id LIMIT $1"
            ),
            // Event rows the store cannot read back, with the reason. (`jsonb_each` fails on a
            // non-object: the CASE keeps it to objects.) At most `$1`, with the count of all.
            verify_rows: format!(
                "SELECT transaction_id, seq, stream_id, version, \
                   CASE WHEN seq < 0 THEN 'negative seq ' || seq \
                     WHEN schema_version NOT BETWEEN 1 AND 65535 \
                       THEN 'schema version ' || schema_version || ' is out of range' \
                     WHEN jsonb_typeof(headers) <> 'object' THEN 'headers are not an object' \
                     ELSE 'a header is not a string' END, \
                   count(*) OVER () \
                 FROM {s}.events \
                 WHERE seq < 0 OR schema_version NOT BETWEEN 1 AND 65535 \
                   OR CASE WHEN jsonb_typeof(headers) = 'object' \
                     THEN EXISTS (SELECT FROM jsonb_each(headers) AS h WHERE jsonb_typeof(h.value) <> 'string') \
                     ELSE true END \
                 ORDER BY transaction_id, seq LIMIT $1"
            ),
        }
    }
}

/// Creates the schema or brings it up to [`SCHEMA_VERSION`], in one transaction, serialised
/// with any other `init` of the same schema by an advisory lock.
pub(crate) async fn migrate(client: &mut tokio_postgres::Client, schema: &str) -> Result<i32> {
    let quoted = format!("\"{schema}\"");
    let tx = client.transaction().await.map_err(|e| map(e, schema))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('annals.init:' || $1::text, 0))",
        &[&schema],
    )
    .await
    .map_err(|e| map(e, schema))?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {quoted}; \
         CREATE TABLE IF NOT EXISTS {quoted}.schema_version ( \
           version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await
    .map_err(|e| map(e, schema))?;
    let row = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {quoted}.schema_version"),
            &[],
        )
        .await
        .map_err(|e| map(e, schema))?;
    let current: i32 = column(&row, 0)?;
    if current > SCHEMA_VERSION {
        return Err(newer(schema, current));
    }
    for (version, ddl) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(&ddl.replace("__SCHEMA__", &quoted))
            .await
            .map_err(|e| {
                Error::backend(
                    BACKEND,
                    format!("migration {version} of schema `{schema}` failed: {e}"),
                )
            })?;
        tx.execute(
            &format!("INSERT INTO {quoted}.schema_version (version) VALUES ($1)"),
            &[version],
        )
        .await
        .map_err(|e| map(e, schema))?;
        tracing::info!(schema, version, "annals-postgres: applied migration");
    }
    tx.commit().await.map_err(|e| map(e, schema))?;
    Ok(SCHEMA_VERSION)
}

/// The schema's recorded version, or `None` when it is not set up.
pub(crate) async fn version(client: &tokio_postgres::Client, schema: &str) -> Result<Option<i32>> {
    let row = client
        .query_one(
            "SELECT to_regclass(quote_ident($1::text) || '.schema_version') IS NOT NULL",
            &[&schema],
        )
        .await
        .map_err(|e| map(e, schema))?;
    if !column::<bool>(&row, 0)? {
        return Ok(None);
    }
    let row = client
        .query_one(
            &format!("SELECT max(version) FROM \"{schema}\".schema_version"),
            &[],
        )
        .await
        .map_err(|e| map(e, schema))?;
    column(&row, 0)
}

/// The error for a schema at version `found`, newer than this build knows.
pub(crate) fn newer(schema: &str, found: i32) -> Error {
    Error::Format {
        backend: BACKEND,
        found: u32::try_from(found).ok(),
        supported: SUPPORTED,
        reason: format!(
            "the Annals schema `{schema}` is at version {found}, newer than this annals-postgres \
             knows ({SCHEMA_VERSION}): upgrade annals-postgres"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        for ok in ["annals", "app_1", "_x", &"a".repeat(63)] {
            assert!(validate_schema_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1x", "Annals", "a-b", "a\"b", "a b", &"a".repeat(64)] {
            assert!(
                matches!(
                    validate_schema_name(bad),
                    Err(Error::Configuration {
                        setting: "schema",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }
}
