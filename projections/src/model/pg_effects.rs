//! The PostgreSQL model's effect marks: how far each partition's outside effects were done, by
//! any generation (see `Projection::effects`).

use annals::Position;

use super::postgres::{backend, to_i64, to_u64};
use super::PartitionKey;
use crate::PgModel;

impl PgModel {
    /// The effect mark of `key`'s partition, its row locked until the transaction ends.
    pub(super) async fn effect_mark(
        &self,
        client: &tokio_postgres::Client,
        key: &PartitionKey,
    ) -> std::result::Result<Option<Position>, annals::Error> {
        let s = &self.schema;
        let partition = i32::try_from(key.partition).unwrap_or(i32::MAX);
        client
            .execute(
                &format!(
                    "INSERT INTO \"{s}\".projection_effects (projection, partition, commit_part, prepare_part)
                     VALUES ($1, $2, -1, -1) ON CONFLICT DO NOTHING"
                ),
                &[&key.projection.as_str(), &partition],
            )
            .await
            .map_err(backend)?;
        let row = client
            .query_one(
                &format!(
                    "SELECT commit_part, prepare_part FROM \"{s}\".projection_effects
                     WHERE projection = $1 AND partition = $2 FOR UPDATE"
                ),
                &[&key.projection.as_str(), &partition],
            )
            .await
            .map_err(backend)?;
        let commit: i64 = row.try_get(0).map_err(backend)?;
        let prepare: i64 = row.try_get(1).map_err(backend)?;
        if commit < 0 {
            return Ok(None);
        }
        Ok(Some(Position::new(
            to_u64(commit, "effect mark")?,
            to_u64(prepare, "effect mark")?,
        )))
    }

    pub(super) async fn set_effect_mark(
        &self,
        client: &tokio_postgres::Client,
        key: &PartitionKey,
        mark: Position,
    ) -> std::result::Result<(), annals::Error> {
        let partition = i32::try_from(key.partition).unwrap_or(i32::MAX);
        client
            .execute(
                &format!(
                    "UPDATE \"{}\".projection_effects SET commit_part = GREATEST(commit_part, $3),
                         prepare_part = CASE WHEN commit_part < $3 THEN $4 ELSE prepare_part END
                     WHERE projection = $1 AND partition = $2",
                    self.schema
                ),
                &[
                    &key.projection.as_str(),
                    &partition,
                    &to_i64(mark.commit(), "a position")?,
                    &to_i64(mark.prepare(), "a position")?,
                ],
            )
            .await
            .map_err(backend)?;
        Ok(())
    }
}
