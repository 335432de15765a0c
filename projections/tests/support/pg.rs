//! What the PostgreSQL tests share: the tallies table, written in order by their handlers and
//! read back to compare with a fold of the log.

use std::collections::HashMap;

use super::Tally;

/// The tallies table of `schema`.
pub fn tallies_ddl(schema: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS \"{schema}\".tallies (
             stream text PRIMARY KEY, count bigint NOT NULL,
             last_version bigint NOT NULL, sum bigint NOT NULL)"
    )
}

/// The upsert of one event into `table` (qualified): `$1` stream, `$2` version, `$3` n. It
/// changes no row when the event is not the next of its stream: the handler then reports the
/// order violated.
pub fn tallies_upsert(table: &str) -> String {
    format!(
        "INSERT INTO {table} (stream, count, last_version, sum) VALUES ($1, 1, $2, $3)
         ON CONFLICT (stream) DO UPDATE
         SET count = {table}.count + 1, last_version = EXCLUDED.last_version,
             sum = {table}.sum + EXCLUDED.sum
         WHERE {table}.last_version = EXCLUDED.last_version - 1"
    )
}

/// The tallies table's rows.
pub async fn read_tallies(client: &tokio_postgres::Client, schema: &str) -> HashMap<String, Tally> {
    client
        .query(
            &format!("SELECT stream, count, last_version, sum FROM \"{schema}\".tallies"),
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|row| {
            let (c, l, s): (i64, i64, i64) = (row.get(1), row.get(2), row.get(3));
            (
                row.get::<_, String>(0),
                Tally {
                    count: u64::try_from(c).unwrap(),
                    last_version: u64::try_from(l).unwrap(),
                    sum: u64::try_from(s).unwrap(),
                },
            )
        })
        .collect()
}
