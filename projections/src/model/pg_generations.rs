//! Generations of the PostgreSQL model: generation 1 writes the store's schema (as before
//! generations existed); generation `g ≥ 2` of a projection has a schema of its own,
//! `<store schema>_<projection slug>_<hash>_g<g>`, first on the `search_path` of its batches,
//! so a handler's unqualified statements and its `setup`'s `CREATE TABLE IF NOT EXISTS` land
//! there. The row of `projection_generations` says which one is active; a swap changes it in
//! one transaction that also locks both generations' checkpoints.

use annals::{Position, Timestamp};
use tokio_postgres::GenericClient;

use super::postgres::{backend, to_i64, to_u64};
use super::{Generations, PartitionKey, SwapError};
use crate::{PgModel, ProjectionName, Result};

/// The schema of `projection`'s generation `generation` in a store whose schema is `store`.
pub(crate) fn schema_name(store: &str, projection: &ProjectionName, generation: u32) -> String {
    if generation <= 1 {
        return store.to_owned();
    }
    let slug: String = projection
        .as_str()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(16)
        .collect();
    let store: String = store.chars().take(20).collect();
    let hash = crc32fast::hash(projection.as_str().as_bytes());
    format!("{store}_{slug}_{hash:08x}_g{generation}")
}

/// The generations row of `projection`, with the last generation number used.
async fn read_row(
    client: &impl GenericClient,
    schema: &str,
    projection: &ProjectionName,
    lock: bool,
) -> std::result::Result<(Generations, u32), annals::Error> {
    let row = client
        .query_opt(
            &format!(
                "SELECT active, building, last_generation, swapped_commit, swapped_prepare,
                        swapped_micros, kept, partitions, building_partitions
                 FROM \"{schema}\".projection_generations WHERE projection = $1{}",
                if lock { " FOR UPDATE" } else { "" }
            ),
            &[&projection.as_str()],
        )
        .await
        .map_err(backend)?;
    let Some(row) = row else {
        return Ok((Generations::default(), 1));
    };
    let n = |v: i32| u32::try_from(v).unwrap_or(0);
    let active: i32 = row.try_get(0).map_err(backend)?;
    let building: Option<i32> = row.try_get(1).map_err(backend)?;
    let last: i32 = row.try_get(2).map_err(backend)?;
    let commit: Option<i64> = row.try_get(3).map_err(backend)?;
    let prepare: Option<i64> = row.try_get(4).map_err(backend)?;
    let micros: Option<i64> = row.try_get(5).map_err(backend)?;
    let kept: Vec<i32> = row.try_get(6).map_err(backend)?;
    let partitions: Option<i32> = row.try_get(7).map_err(backend)?;
    let building_partitions: Option<i32> = row.try_get(8).map_err(backend)?;
    let swapped_at = match (commit, prepare) {
        (Some(c), Some(p)) => Some(Position::new(
            to_u64(c, "swap position")?,
            to_u64(p, "swap position")?,
        )),
        _ => None,
    };
    Ok((
        Generations {
            active: n(active),
            building: building.map(n),
            swapped_at,
            swapped_time: micros.map(Timestamp::from_unix_micros),
            kept: kept.into_iter().map(n).collect(),
            partitions: partitions.map(n),
            building_partitions: building_partitions.map(n),
        },
        n(last),
    ))
}

async fn write_row(
    client: &impl GenericClient,
    schema: &str,
    projection: &ProjectionName,
    g: &Generations,
    last: u32,
) -> std::result::Result<(), annals::Error> {
    let int = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let commit = g
        .swapped_at
        .map(|p| to_i64(p.commit(), "a position"))
        .transpose()?;
    let prepare = g
        .swapped_at
        .map(|p| to_i64(p.prepare(), "a position"))
        .transpose()?;
    let kept: Vec<i32> = g.kept.iter().map(|n| int(*n)).collect();
    client
        .execute(
            &format!(
                "INSERT INTO \"{schema}\".projection_generations
                     (projection, active, building, last_generation, swapped_commit,
                      swapped_prepare, swapped_micros, kept, partitions, building_partitions)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (projection) DO UPDATE SET active = EXCLUDED.active,
                     building = EXCLUDED.building, last_generation = EXCLUDED.last_generation,
                     swapped_commit = EXCLUDED.swapped_commit,
                     swapped_prepare = EXCLUDED.swapped_prepare,
                     swapped_micros = EXCLUDED.swapped_micros, kept = EXCLUDED.kept,
                     partitions = EXCLUDED.partitions,
                     building_partitions = EXCLUDED.building_partitions"
            ),
            &[
                &projection.as_str(),
                &int(g.active),
                &g.building.map(int),
                &int(last),
                &commit,
                &prepare,
                &g.swapped_time.map(Timestamp::unix_micros),
                &kept,
                &g.partitions.map(int),
                &g.building_partitions.map(int),
            ],
        )
        .await
        .map_err(backend)?;
    Ok(())
}

impl PgModel {
    /// The schema `projection`'s active generation lives in: qualify readers' queries with it
    /// (`SELECT … FROM "<schema>".balances`), or put it first on their `search_path`. It is
    /// the store's schema until the projection is first rebuilt; after a swap it names the
    /// new generation's, so resolve it per query (or on [`Generations::swapped_time`]
    /// changing), not once at start.
    ///
    /// # Errors
    ///
    /// The server's failure.
    pub async fn schema_of(&self, projection: &ProjectionName) -> Result<String> {
        let client = self.client().await?;
        let client: &tokio_postgres::Client = &client;
        let (generations, _) = read_row(client, &self.schema, projection, false).await?;
        Ok(schema_name(&self.schema, projection, generations.active))
    }

    pub(super) async fn generations_of(&self, projection: &ProjectionName) -> Result<Generations> {
        let client = self.client().await?;
        let client: &tokio_postgres::Client = &client;
        Ok(read_row(client, &self.schema, projection, false).await?.0)
    }

    /// Whether a batch of `key` may still commit (inside its transaction, last).
    pub(super) async fn generation_allows(
        &self,
        client: &tokio_postgres::Client,
        key: &PartitionKey,
        rebuilding: bool,
    ) -> std::result::Result<Option<u32>, annals::Error> {
        let (generations, _) = read_row(client, &self.schema, &key.projection, false).await?;
        Ok(generations
            .admit(key.generation, rebuilding)
            .err()
            .map(|_| generations.active))
    }

    pub(super) async fn begin(&self, projection: &ProjectionName, resume: bool) -> Result<u32> {
        let mut client = self.client().await?;
        let raw: &mut tokio_postgres::Client = &mut client;
        let tx = raw.transaction().await.map_err(backend)?;
        let s = &self.schema;
        let (mut generations, last) = read_row(&tx, s, projection, true).await?;
        if let Some(building) = generations.building {
            if resume {
                return Ok(building);
            }
            self.forget(&tx, projection, building).await?;
        }
        let generation = last.max(generations.active) + 1;
        generations.building = Some(generation);
        generations.building_partitions = None;
        write_row(&tx, s, projection, &generations, generation).await?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{}\"",
            schema_name(s, projection, generation)
        ))
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(generation)
    }

    /// Drops a generation's schema (never the store's), checkpoints and dead letters.
    async fn forget(
        &self,
        client: &impl GenericClient,
        projection: &ProjectionName,
        generation: u32,
    ) -> std::result::Result<(), annals::Error> {
        let s = &self.schema;
        if generation >= 2 {
            client
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                    schema_name(s, projection, generation)
                ))
                .await
                .map_err(backend)?;
        } else {
            tracing::info!(projection = %projection, schema = %s, "generation 1's tables are in the store's schema: they are left in place, drop them when no reader needs them");
        }
        let stored = super::stored_name(projection, generation);
        for table in ["projection_checkpoints", "projection_dead_letters"] {
            client
                .execute(
                    &format!("DELETE FROM \"{s}\".{table} WHERE projection = $1"),
                    &[&stored.as_ref()],
                )
                .await
                .map_err(backend)?;
        }
        Ok(())
    }

    pub(super) async fn swap_in(
        &self,
        projection: &ProjectionName,
        generation: u32,
        partitions: u32,
        at: Position,
        keep_old: bool,
    ) -> std::result::Result<Generations, SwapError> {
        let fail = |e: annals::Error| SwapError::Backend(e);
        let mut client = self.client().await.map_err(fail)?;
        let raw: &mut tokio_postgres::Client = &mut client;
        let tx = raw.transaction().await.map_err(|e| fail(backend(e)))?;
        let s = &self.schema;
        let (mut generations, last) = read_row(&tx, s, projection, true).await.map_err(fail)?;
        if generations.building != Some(generation) {
            return Err(SwapError::NotBuilding { generations });
        }
        let old = generations.active;
        // No batch with effects straddles the swap: batches take their partition's effect row
        // and check the generation after it.
        tx.execute(
            &format!("SELECT 1 FROM \"{s}\".projection_effects WHERE projection = $1 FOR UPDATE"),
            &[&projection.as_str()],
        )
        .await
        .map_err(|e| fail(backend(e)))?;
        // Lock both generations' checkpoints: the old one commits nothing between this
        // comparison and the swap (its batches check the generation after their checkpoint).
        let names = [
            super::stored_name(projection, old).into_owned(),
            super::stored_name(projection, generation).into_owned(),
        ];
        let rows = tx
            .query(
                &format!(
                    "SELECT projection, partition, commit_part, prepare_part
                     FROM \"{s}\".projection_checkpoints WHERE projection = ANY($1) FOR UPDATE"
                ),
                &[&names.as_slice()],
            )
            .await
            .map_err(|e| fail(backend(e)))?;
        let mut found = std::collections::HashMap::new();
        for row in rows {
            let name: String = row.get(0);
            let partition: i32 = row.get(1);
            let position = Position::new(
                to_u64(row.get(2), "checkpoint").map_err(fail)?,
                to_u64(row.get(3), "checkpoint").map_err(fail)?,
            );
            found.insert((name == names[1], partition), position);
        }
        super::check_caught_up(partitions, |partition| {
            let p = i32::try_from(partition).unwrap_or(i32::MAX);
            Ok((
                found.get(&(true, p)).copied(),
                found.get(&(false, p)).copied(),
            ))
        })?;
        generations.swapped(at, keep_old);
        write_row(&tx, s, projection, &generations, last)
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(|e| fail(backend(e)))?;
        if !keep_old {
            let client: &tokio_postgres::Client = &client;
            if let Err(error) = self.forget(client, projection, old).await {
                tracing::warn!(projection = %projection, generation = old, %error, "dropping the old generation failed; drop it later");
            }
        }
        Ok(generations)
    }

    pub(super) async fn record(
        &self,
        projection: &ProjectionName,
        generation: u32,
        partitions: u32,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let raw: &mut tokio_postgres::Client = &mut client;
        let tx = raw.transaction().await.map_err(backend)?;
        let (mut generations, last) = read_row(&tx, &self.schema, projection, true).await?;
        let before = generations.clone();
        generations.record_partitions(generation, partitions);
        if generations != before {
            write_row(&tx, &self.schema, projection, &generations, last).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(())
    }

    pub(super) async fn drop_old(
        &self,
        projection: &ProjectionName,
        generation: u32,
    ) -> Result<()> {
        let mut client = self.client().await?;
        let raw: &mut tokio_postgres::Client = &mut client;
        let tx = raw.transaction().await.map_err(backend)?;
        let (mut generations, last) = read_row(&tx, &self.schema, projection, true).await?;
        generations.check_droppable(projection, generation)?;
        self.forget(&tx, projection, generation).await?;
        generations.kept.retain(|g| *g != generation);
        write_row(&tx, &self.schema, projection, &generations, last).await?;
        tx.commit().await.map_err(backend)?;
        Ok(())
    }
}
