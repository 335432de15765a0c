//! [`CheckpointStore`]: positions by name, stored as the bits of their two `u64` parts.

use annals::{CheckpointStore, Position, Result};

use super::params::check_text;
use super::{rows, PgEventStore};
use crate::error::map;
use crate::types::bits_to_i64;

impl CheckpointStore for PgEventStore {
    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        check_text("checkpoint name", name)?;
        let schema = &self.inner.schema;
        let client = self.client().await?;
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
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&self.inner.sql.load_checkpoint)
            .await
            .map_err(|e| map(e, schema))?;
        let row = client
            .query_opt(&statement, &[&name])
            .await
            .map_err(|e| map(e, schema))?;
        row.map(|row| rows::checkpoint(&row, name)).transpose()
    }
}
