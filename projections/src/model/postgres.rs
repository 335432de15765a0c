//! The PostgreSQL read model: the handler writes through a connection inside the batch's
//! transaction; the checkpoint and dead letters are rows changed in the same transaction.

use annals::{Position, RecordedEvent, Timestamp};
use annals_postgres::PgEventStore;
use deadpool_postgres::{Object, Pool};

use super::{
    Batch, CommitError, DeadLetter, DeadLetterKind, Fence, Generations, PartitionKey, ReadModel,
    SwapError,
};
use crate::{Projection, ProjectionError, ProjectionName, Result};

/// The format of the rows this build writes; a newer one is refused, never misread.
const FORMAT: i32 = 1;

/// A read model in PostgreSQL, in the database (and schema) of a [`PgEventStore`]: the handler
/// writes its tables through the batch's connection ([`PgTx`]), inside the transaction that
/// also moves the partition's checkpoint, so a crash never applies a batch twice or skips one.
///
/// The runtime's own rows live in two tables of the store's schema,
/// `projection_checkpoints` and `projection_dead_letters`, made by [`init`](Self::init).
#[derive(Clone, Debug)]
pub struct PgModel {
    pool: Pool,
    pub(super) schema: String,
    /// For the fence checks of batches owned under a lease.
    store: PgEventStore,
}

/// One batch's connection, inside its open transaction: run the projection's statements on
/// [`client`](Self::client). They commit with the checkpoint, or roll back with it.
#[derive(Debug)]
pub struct PgTx {
    client: Object,
    fence: Option<Fence>,
}

impl PgTx {
    /// The connection, inside the batch's transaction.
    pub fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }

    /// The lease the batch's partition is owned under, when workers run it
    /// ([`ProjectionWorkers`](crate::ProjectionWorkers)): its epoch identifies this owner's
    /// tenure, e.g. in an idempotency key.
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }
}

pub(super) fn backend(e: tokio_postgres::Error) -> annals::Error {
    annals::Error::backend("postgres", e)
}

pub(super) fn to_i64(n: u64, what: &str) -> std::result::Result<i64, annals::Error> {
    i64::try_from(n)
        .map_err(|_| annals::Error::backend("postgres", format!("{what} {n} is beyond bigint")))
}

pub(super) fn to_u64(n: i64, what: &str) -> std::result::Result<u64, annals::Error> {
    u64::try_from(n).map_err(|_| {
        annals::Error::corrupt(
            annals::RecordPlace::new(),
            format!("a negative {what} ({n}) in the projection tables"),
        )
    })
}

impl PgModel {
    /// The read model in `store`'s database and schema, on its connection pool.
    pub fn new(store: &PgEventStore) -> Self {
        PgModel {
            pool: store.pool().clone(),
            schema: store.schema().to_owned(),
            store: store.clone(),
        }
    }

    /// Creates the runtime's tables if they are missing (idempotent).
    ///
    /// # Errors
    ///
    /// The server's failure.
    pub async fn init(&self) -> Result<()> {
        let client = self.client().await?;
        let s = &self.schema;
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS \"{s}\";
                 CREATE TABLE IF NOT EXISTS \"{s}\".projection_checkpoints (
                     projection text NOT NULL,
                     partition integer NOT NULL,
                     commit_part bigint NOT NULL,
                     prepare_part bigint NOT NULL,
                     format integer NOT NULL,
                     PRIMARY KEY (projection, partition));
                 CREATE TABLE IF NOT EXISTS \"{s}\".projection_dead_letters (
                     projection text NOT NULL,
                     seq bigserial NOT NULL,
                     partition integer NOT NULL,
                     event_id uuid NOT NULL,
                     kind text NOT NULL,
                     reason text NOT NULL,
                     at_micros bigint NOT NULL,
                     event jsonb NOT NULL,
                     format integer NOT NULL,
                     PRIMARY KEY (projection, event_id));
                 CREATE TABLE IF NOT EXISTS \"{s}\".projection_generations (
                     projection text PRIMARY KEY,
                     active integer NOT NULL,
                     building integer,
                     last_generation integer NOT NULL,
                     swapped_commit bigint,
                     swapped_prepare bigint,
                     swapped_micros bigint,
                     kept integer[] NOT NULL,
                     partitions integer,
                     building_partitions integer);
                 CREATE TABLE IF NOT EXISTS \"{s}\".projection_effects (
                     projection text NOT NULL,
                     partition integer NOT NULL,
                     commit_part bigint NOT NULL,
                     prepare_part bigint NOT NULL,
                     PRIMARY KEY (projection, partition));"
            ))
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// The pool the model's connections come from (for readers of the projection's tables).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub(super) async fn client(&self) -> std::result::Result<Object, annals::Error> {
        self.pool
            .get()
            .await
            .map_err(|e| annals::Error::Unavailable {
                backend: "postgres",
                source: Box::new(e),
            })
    }

    async fn write_runtime_rows(
        &self,
        client: &Object,
        batch: &Batch<'_>,
    ) -> std::result::Result<(), annals::Error> {
        let s = &self.schema;
        let stored = batch.key.stored_name();
        let name: &str = &stored;
        let partition = i32::try_from(batch.key.partition)
            .map_err(|_| annals::Error::backend("postgres", "partition beyond integer"))?;
        if !batch.release.is_empty() {
            let ids: Vec<uuid::Uuid> = batch.release.iter().map(|id| *id.as_uuid()).collect();
            client
                .execute(
                    &format!("DELETE FROM \"{s}\".projection_dead_letters WHERE projection = $1 AND event_id = ANY($2)"),
                    &[&name, &ids],
                )
                .await
                .map_err(backend)?;
        }
        for letter in batch.dead_letters {
            let event = serde_json::to_value(&letter.event)
                .map_err(|e| annals::Error::backend("postgres", e))?;
            let kind = match letter.kind {
                DeadLetterKind::Parked => "parked",
                DeadLetterKind::Skipped => "skipped",
            };
            client
                .execute(
                    &format!(
                        "INSERT INTO \"{s}\".projection_dead_letters
                             (projection, partition, event_id, kind, reason, at_micros, event, format)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                         ON CONFLICT (projection, event_id) DO UPDATE
                         SET kind = EXCLUDED.kind, reason = EXCLUDED.reason"
                    ),
                    &[
                        &name,
                        &partition,
                        letter.event.id.as_uuid(),
                        &kind,
                        &letter.reason,
                        &letter.at.unix_micros(),
                        &event,
                        &FORMAT,
                    ],
                )
                .await
                .map_err(backend)?;
        }
        let commit = to_i64(batch.checkpoint.commit(), "a checkpoint")?;
        let prepare = to_i64(batch.checkpoint.prepare(), "a checkpoint")?;
        client
            .execute(
                &format!(
                    "INSERT INTO \"{s}\".projection_checkpoints
                         (projection, partition, commit_part, prepare_part, format)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (projection, partition) DO UPDATE
                     SET commit_part = EXCLUDED.commit_part, prepare_part = EXCLUDED.prepare_part,
                         format = EXCLUDED.format"
                ),
                &[&name, &partition, &commit, &prepare, &FORMAT],
            )
            .await
            .map_err(backend)?;
        Ok(())
    }
}

impl ReadModel for PgModel {
    type Tx = PgTx;

    async fn checkpoint(&self, key: &PartitionKey) -> Result<Option<Position>> {
        let client = self.client().await?;
        let partition = i32::try_from(key.partition)
            .map_err(|_| annals::Error::backend("postgres", "partition beyond integer"))?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT commit_part, prepare_part, format FROM \"{}\".projection_checkpoints
                     WHERE projection = $1 AND partition = $2",
                    self.schema
                ),
                &[&key.stored_name().as_ref(), &partition],
            )
            .await
            .map_err(backend)?;
        let Some(row) = row else { return Ok(None) };
        let format: i32 = row.try_get(2).map_err(backend)?;
        if format > FORMAT {
            return Err(ProjectionError::NewerFormat {
                projection: key.projection.clone(),
                what: "a checkpoint",
                found: u32::try_from(format).unwrap_or(u32::MAX),
                supported: u32::try_from(FORMAT).unwrap_or(0),
            });
        }
        let commit: i64 = row.try_get(0).map_err(backend)?;
        let prepare: i64 = row.try_get(1).map_err(backend)?;
        Ok(Some(Position::new(
            to_u64(commit, "checkpoint")?,
            to_u64(prepare, "checkpoint")?,
        )))
    }

    async fn commit<P: Projection<Self>>(
        &self,
        projection: &P,
        batch: Batch<'_>,
    ) -> std::result::Result<(), CommitError> {
        let client = self.client().await.map_err(CommitError::Backend)?;
        // Owned under a lease: a worker paused inside the transaction (holding the lease's row
        // after its fence check) is ended by the server after the lease's time to live, so
        // the takeover is never held up for longer.
        let mut begin = match batch.fence {
            Some(_) => format!(
                "BEGIN; SET LOCAL idle_in_transaction_session_timeout = '{}ms'",
                self.store.lease_ttl().as_millis().max(1)
            ),
            None => "BEGIN".to_owned(),
        };
        begin.push_str(&self.search_path(&batch.key.projection, batch.key.generation));
        client
            .batch_execute(&begin)
            .await
            .map_err(|e| CommitError::Backend(backend(e)))?;
        let mut tx = PgTx {
            client,
            fence: batch.fence.cloned(),
        };
        // A projection with effects: its partition's effect mark, locked until the commit, so
        // two generations never do one event's effects twice.
        let due = if projection.has_effects() {
            let marked = match self.effect_mark(&tx.client, batch.key).await {
                // A swap that held the row meanwhile has committed: checked again.
                Ok(mark) => match self
                    .generation_allows(&tx.client, batch.key, batch.rebuilding)
                    .await
                {
                    Ok(None) => Ok(super::effects_due(&batch, mark)),
                    Ok(Some(active)) => Err(CommitError::Retired { active }),
                    Err(e) => Err(CommitError::Backend(e)),
                },
                Err(e) => Err(CommitError::Backend(e)),
            };
            match marked {
                Ok(due) => due,
                Err(error) => {
                    let _ = tx.client.batch_execute("ROLLBACK").await;
                    return Err(error);
                }
            }
        } else {
            Vec::new()
        };
        if !batch.handle.is_empty() {
            let handled = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async {
                projection.handle(&mut tx, batch.handle).await?;
                if !due.is_empty() {
                    projection.effects(&mut tx, &due).await?;
                }
                Ok::<(), annals::BoxError>(())
            }))
            .await;
            let failed = match handled {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(panic) => Some(crate::panic_message(&*panic).into()),
            };
            if let Some(error) = failed {
                // A failed statement aborted the transaction; either way nothing is kept.
                let _ = tx.client.batch_execute("ROLLBACK").await;
                // A retired generation's tables may be gone (dropped after its swap): that is
                // no fault of the handler's.
                let client: &tokio_postgres::Client = &tx.client;
                if let Ok(Some(active)) = self
                    .generation_allows(client, batch.key, batch.rebuilding)
                    .await
                {
                    return Err(CommitError::Retired { active });
                }
                return Err(CommitError::Handler(error));
            }
        }
        if let Some(fence) = batch.fence {
            // Last, so the lease's row is locked only while the batch commits: no takeover
            // can commit between this check and the COMMIT.
            let client: &tokio_postgres::Client = &tx.client;
            match self
                .store
                .check_fence(client, &fence.lease, fence.epoch)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    let _ = tx.client.batch_execute("ROLLBACK").await;
                    return Err(CommitError::Fenced);
                }
                Err(e) => {
                    let _ = tx.client.batch_execute("ROLLBACK").await;
                    return Err(CommitError::Backend(e));
                }
            }
        }
        if let Err(e) = self.write_runtime_rows(&tx.client, &batch).await {
            let _ = tx.client.batch_execute("ROLLBACK").await;
            return Err(CommitError::Backend(e));
        }
        if let Some(last) = due.last() {
            if let Err(e) = self
                .set_effect_mark(&tx.client, batch.key, last.position)
                .await
            {
                let _ = tx.client.batch_execute("ROLLBACK").await;
                return Err(CommitError::Backend(e));
            }
        }
        // After the checkpoint's row is locked: a swap that locked it first has committed, and
        // a retired generation commits nothing.
        match self
            .generation_allows(&tx.client, batch.key, batch.rebuilding)
            .await
        {
            Ok(None) => {}
            Ok(Some(active)) => {
                let _ = tx.client.batch_execute("ROLLBACK").await;
                return Err(CommitError::Retired { active });
            }
            Err(e) => {
                let _ = tx.client.batch_execute("ROLLBACK").await;
                return Err(CommitError::Backend(e));
            }
        }
        if let Err(e) = tx.client.batch_execute("COMMIT").await {
            let _ = tx.client.batch_execute("ROLLBACK").await;
            return Err(CommitError::Backend(backend(e)));
        }
        Ok(())
    }

    async fn dead_letters(
        &self,
        projection: &ProjectionName,
        generation: u32,
    ) -> Result<Vec<DeadLetter>> {
        let client = self.client().await?;
        let stored = super::stored_name(projection, generation);
        let rows = client
            .query(
                &format!(
                    "SELECT partition, kind, reason, at_micros, event, format
                     FROM \"{}\".projection_dead_letters WHERE projection = $1 ORDER BY seq",
                    self.schema
                ),
                &[&stored.as_ref()],
            )
            .await
            .map_err(backend)?;
        let mut letters = Vec::with_capacity(rows.len());
        for row in rows {
            let format: i32 = row.try_get(5).map_err(backend)?;
            if format > FORMAT {
                return Err(ProjectionError::NewerFormat {
                    projection: projection.clone(),
                    what: "a dead letter",
                    found: u32::try_from(format).unwrap_or(u32::MAX),
                    supported: u32::try_from(FORMAT).unwrap_or(0),
                });
            }
            let partition: i32 = row.try_get(0).map_err(backend)?;
            let kind: String = row.try_get(1).map_err(backend)?;
            let event: serde_json::Value = row.try_get(4).map_err(backend)?;
            let event: RecordedEvent = serde_json::from_value(event).map_err(|e| {
                annals::Error::corrupt(
                    annals::RecordPlace::new(),
                    format!("a dead letter's event: {e}"),
                )
            })?;
            letters.push(DeadLetter {
                partition: u32::try_from(partition).unwrap_or(0),
                kind: if kind == "skipped" {
                    DeadLetterKind::Skipped
                } else {
                    DeadLetterKind::Parked
                },
                reason: row.try_get(2).map_err(backend)?,
                at: Timestamp::from_unix_micros(row.try_get(3).map_err(backend)?),
                event,
            });
        }
        Ok(letters)
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    async fn generations(&self, projection: &ProjectionName) -> Result<Generations> {
        self.generations_of(projection).await
    }

    async fn prepare<P: Projection<Self>>(
        &self,
        projection: &P,
        generation: u32,
        indexes: bool,
    ) -> Result<()> {
        let client = self.client().await?;
        let schema =
            super::pg_generations::schema_name(&self.schema, projection.name(), generation);
        let mut begin = format!("BEGIN; CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
        begin.push_str(&self.search_path(projection.name(), generation));
        client.batch_execute(&begin).await.map_err(backend)?;
        let mut tx = PgTx {
            client,
            fence: None,
        };
        let set_up = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async {
            projection.setup(&mut tx).await?;
            if indexes {
                projection.indexes(&mut tx).await?;
            }
            Ok::<(), annals::BoxError>(())
        }))
        .await;
        let failed = match set_up {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(panic) => Some(crate::panic_message(&*panic)),
        };
        if let Some(reason) = failed {
            let _ = tx.client.batch_execute("ROLLBACK").await;
            return Err(ProjectionError::Configuration {
                projection: projection.name().clone(),
                setting: "setup",
                reason,
            });
        }
        tx.client.batch_execute("COMMIT").await.map_err(backend)?;
        Ok(())
    }

    async fn record_partitions(
        &self,
        projection: &ProjectionName,
        generation: u32,
        partitions: u32,
    ) -> Result<()> {
        self.record(projection, generation, partitions).await
    }

    async fn begin_generation(&self, projection: &ProjectionName, resume: bool) -> Result<u32> {
        self.begin(projection, resume).await
    }

    async fn swap(
        &self,
        projection: &ProjectionName,
        generation: u32,
        partitions: u32,
        at: Position,
        keep_old: bool,
    ) -> Result<Generations, SwapError> {
        self.swap_in(projection, generation, partitions, at, keep_old)
            .await
    }

    async fn drop_generation(&self, projection: &ProjectionName, generation: u32) -> Result<()> {
        self.drop_old(projection, generation).await
    }
}

impl PgModel {
    /// `; SET LOCAL search_path …` putting generation `generation`'s schema first, then the
    /// store's, then `public`.
    fn search_path(&self, projection: &ProjectionName, generation: u32) -> String {
        let schema = super::pg_generations::schema_name(&self.schema, projection, generation);
        if generation <= 1 {
            format!("; SET LOCAL search_path TO \"{schema}\", public")
        } else {
            format!(
                "; SET LOCAL search_path TO \"{schema}\", \"{}\", public",
                self.schema
            )
        }
    }
}
