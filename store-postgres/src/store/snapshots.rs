//! [`SnapshotStore`]: one snapshot per stream, the newest replacing the older.

use annals::{Result, Snapshot, SnapshotStore, StreamId};

use super::params::check_text;
use super::{rows, PgEventStore};
use crate::error::map;
use crate::types::{bits_to_i64, PgTime};

impl SnapshotStore for PgEventStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        check_text("snapshot content type", &snapshot.content_type)?;
        let schema = &self.inner.schema;
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.inner.sql.save_snapshot)
            .await
            .map_err(|e| map(e, schema))?;
        client
            .execute(
                &statement,
                &[
                    &snapshot.stream_id.as_str(),
                    // Any u64 round-trips (a version past i64::MAX reads as negative).
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
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.inner.sql.load_snapshot)
            .await
            .map_err(|e| map(e, schema))?;
        let row = client
            .query_opt(&statement, &[&stream.as_str()])
            .await
            .map_err(|e| map(e, schema))?;
        row.map(|row| rows::snapshot(&row, stream)).transpose()
    }
}
