//! Read models: where projections write, with their checkpoints and dead letters, committed
//! together.

mod memory;
#[cfg(feature = "postgres")]
mod pg_effects;
#[cfg(feature = "postgres")]
mod pg_generations;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sled")]
mod sled_model;

use std::future::Future;

use annals::{EventId, Position, RecordedEvent, Timestamp};

use crate::{Projection, ProjectionName, Result};

pub use memory::{MemoryModel, MemoryTx};
#[cfg(feature = "postgres")]
pub use postgres::{PgModel, PgTx};
#[cfg(feature = "sled")]
pub use sled_model::{SledModel, SledModelBuilder, SledTx};

/// Which partition of which generation of which projection a checkpoint, a batch or a dead
/// letter belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey {
    /// The projection.
    pub projection: ProjectionName,
    /// The generation of its read model (1 until it is first rebuilt; see [`Generations`]).
    pub generation: u32,
    /// The partition (see [`partition_of`](crate::partition_of)).
    pub partition: u32,
}

impl PartitionKey {
    /// The partition `partition` of `projection`'s first generation.
    pub fn new(projection: ProjectionName, partition: u32) -> Self {
        PartitionKey::in_generation(projection, 1, partition)
    }

    /// The partition `partition` of generation `generation` of `projection`.
    pub fn in_generation(projection: ProjectionName, generation: u32, partition: u32) -> Self {
        PartitionKey {
            projection,
            generation,
            partition,
        }
    }

    /// The name a model stores the generation's checkpoints and dead letters under: the
    /// projection's name for generation 1 (as before generations existed), the name, a unit
    /// separator (a control character, which no projection name holds) and the generation for
    /// the others.
    pub fn stored_name(&self) -> std::borrow::Cow<'_, str> {
        stored_name(&self.projection, self.generation)
    }
}

/// See [`PartitionKey::stored_name`].
pub(crate) fn stored_name(
    projection: &ProjectionName,
    generation: u32,
) -> std::borrow::Cow<'_, str> {
    if generation <= 1 {
        std::borrow::Cow::Borrowed(projection.as_str())
    } else {
        std::borrow::Cow::Owned(format!("{projection}\u{1f}{generation}"))
    }
}

/// The generations of a projection's read model: the one readers see, and the one a rebuild
/// is building beside it.
///
/// A rebuild ([`Rebuild`](crate::Rebuild)) builds generation `active + 1` in its own space
/// (sled trees, a PostgreSQL schema, a map) while the active one keeps serving reads and
/// following the log; once it has caught up, one atomic step makes it the active one
/// ([`ReadModel::swap`]), and runners of the old one move to it at their next batch (an idle
/// runner within a second).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generations {
    /// The generation readers see and live runners write (1 for a projection never rebuilt).
    pub active: u32,
    /// The generation a rebuild is building (an interrupted rebuild leaves it, to resume).
    pub building: Option<u32>,
    /// Where in the log the last swap happened: the new generation had everything up to here.
    pub swapped_at: Option<Position>,
    /// When the last swap happened.
    pub swapped_time: Option<Timestamp>,
    /// Old generations kept after a swap (see [`Rebuild::keep_old`](crate::Rebuild::keep_old)).
    pub kept: Vec<u32>,
    /// The partition count the active generation was built with (none before a runner first
    /// recorded it): runners with another count are refused, since a stream's events would be
    /// split between partitions with different checkpoints.
    pub partitions: Option<u32>,
    /// The partition count of the generation being built.
    pub building_partitions: Option<u32>,
}

impl Generations {
    /// The partition count recorded for `generation` (active or being built).
    pub fn partitions_of(&self, generation: u32) -> Option<u32> {
        if self.building == Some(generation) {
            self.building_partitions
        } else if self.active == generation {
            self.partitions
        } else {
            None
        }
    }

    /// Records `partitions` for `generation` (active or being built) where none is recorded.
    pub(crate) fn record_partitions(&mut self, generation: u32, partitions: u32) {
        if self.building == Some(generation) {
            self.building_partitions.get_or_insert(partitions);
        } else if self.active == generation {
            self.partitions.get_or_insert(partitions);
        }
    }

    /// Whether a batch of `generation` may commit: a live batch into the active generation, a
    /// rebuild's into the one being built; [`CommitError::Retired`] otherwise.
    pub(crate) fn admit(&self, generation: u32, rebuilding: bool) -> Result<(), CommitError> {
        let admitted = if rebuilding {
            self.building == Some(generation)
        } else {
            self.active == generation
        };
        if admitted {
            Ok(())
        } else {
            Err(CommitError::Retired {
                active: self.active,
            })
        }
    }

    /// Refuses to drop the active generation or the one being built.
    pub(crate) fn check_droppable(
        &self,
        projection: &ProjectionName,
        generation: u32,
    ) -> crate::Result<()> {
        if generation == self.active || Some(generation) == self.building {
            return Err(crate::ProjectionError::Configuration {
                projection: projection.clone(),
                setting: "drop_generation",
                reason: format!("generation {generation} is active or being built"),
            });
        }
        Ok(())
    }

    /// The swap's change: `building` becomes the active generation.
    pub(crate) fn swapped(&mut self, at: Position, keep_old: bool) {
        let old = self.active;
        if let Some(building) = self.building.take() {
            self.active = building;
        }
        self.partitions = self.building_partitions.take();
        self.swapped_at = Some(at);
        self.swapped_time = Some(Timestamp::now());
        if keep_old {
            self.kept.push(old);
        }
    }
}

impl Default for Generations {
    fn default() -> Self {
        Generations {
            active: 1,
            building: None,
            swapped_at: None,
            swapped_time: None,
            kept: Vec::new(),
            partitions: None,
            building_partitions: None,
        }
    }
}

/// Why [`ReadModel::swap`] did not swap.
#[derive(Debug)]
pub enum SwapError {
    /// The generation is not the one being built (the rebuild was cancelled or replaced).
    NotBuilding {
        /// What the model holds now.
        generations: Generations,
    },
    /// A partition of the new generation is behind the active one's: it must catch up first.
    Behind {
        /// The partition.
        partition: u32,
        /// The new generation's checkpoint there.
        new: Option<Position>,
        /// The active generation's checkpoint there.
        active: Option<Position>,
    },
    /// The backend failed.
    Backend(annals::Error),
}

/// Why an event is on the dead-letter list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeadLetterKind {
    /// Parked: the event (or an earlier one of its stream) failed; it and every later event of
    /// its stream wait here until retried or dropped.
    Parked,
    /// Skipped by the skip policy: the checkpoint moved past it; kept here as the record.
    Skipped,
}

/// An event set aside by the error policy, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The partition it belongs to.
    pub partition: u32,
    /// The event.
    pub event: RecordedEvent,
    /// Parked or skipped.
    pub kind: DeadLetterKind,
    /// The handler's error, or the event of the same stream it waits behind.
    pub reason: String,
    /// When it was set aside.
    pub at: Timestamp,
}

/// One batch for a read model to commit atomically: the handler's writes for `handle`, the
/// dead-letter changes and the new checkpoint — all of it or none.
#[derive(Debug)]
pub struct Batch<'a> {
    /// Whose batch.
    pub key: &'a PartitionKey,
    /// Events for the projection's handler, in order (may be empty).
    pub handle: &'a [RecordedEvent],
    /// Events to add to the dead-letter list.
    pub dead_letters: &'a [DeadLetter],
    /// Dead letters to remove (retried or dropped), by event id.
    pub release: &'a [EventId],
    /// The partition's checkpoint after this batch: every event of the partition at or before
    /// it is committed (handled or set aside).
    pub checkpoint: Position,
    /// The lease the partition is owned under, when workers share it across processes: a
    /// model that many processes write checks inside its transaction that the lease is still
    /// in this epoch, and commits nothing otherwise ([`CommitError::Fenced`]).
    pub fence: Option<&'a Fence>,
    /// The batch belongs to a rebuild: its generation must be the one being built (not the
    /// active one), and it commits nothing otherwise ([`CommitError::Retired`]).
    pub rebuilding: bool,
}

/// A partition's ownership: the lease it is held under and the lease's epoch (see
/// [`annals::Lease::epoch`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The lease's name.
    pub lease: String,
    /// The epoch this owner holds it in.
    pub epoch: u64,
}

/// Why a [`ReadModel::commit`] wrote nothing.
#[derive(Debug)]
pub enum CommitError {
    /// The projection's handler failed (or panicked): the batch's events are to blame.
    Handler(annals::BoxError),
    /// The read model's backend failed: retrying later may succeed.
    Backend(annals::Error),
    /// The batch's [`Fence`] no longer holds: another owner has the partition. Nothing was
    /// written, and this owner must stop.
    Fenced,
    /// The batch's generation is no longer the one it was written for: a swap made another
    /// generation active (or a rebuild was cancelled). Nothing was written; the runner moves
    /// to `active`.
    Retired {
        /// The active generation now.
        active: u32,
    },
}

/// Where projections write: their data, and for each partition its checkpoint and dead
/// letters, changed together in one transaction.
///
/// Implementations: [`MemoryModel`] (dashmap), and with features `sled` and `postgres` the
/// transactional models that share those stores' databases.
pub trait ReadModel: Send + Sync + Sized + 'static {
    /// What a handler writes through during one batch (it owns what it needs: a buffer of
    /// writes, a connection inside an open transaction).
    type Tx: Send;

    /// The checkpoint of a partition, if it committed anything.
    fn checkpoint(
        &self,
        key: &PartitionKey,
    ) -> impl Future<Output = Result<Option<Position>>> + Send;

    /// Commits `batch`: begins a transaction, calls `projection`'s handler with the events to
    /// handle (when there are any), changes the dead letters, saves the checkpoint, commits.
    /// On any error nothing of the batch is written.
    fn commit<P: Projection<Self>>(
        &self,
        projection: &P,
        batch: Batch<'_>,
    ) -> impl Future<Output = Result<(), CommitError>> + Send;

    /// The dead letters of `generation` of `projection`, in the order they were set aside.
    fn dead_letters(
        &self,
        projection: &ProjectionName,
        generation: u32,
    ) -> impl Future<Output = Result<Vec<DeadLetter>>> + Send;

    /// Makes what was committed durable (a buffered backend flushes); called at shutdown.
    fn flush(&self) -> impl Future<Output = Result<()>> + Send;

    /// The generations of `projection` (generation 1 active and nothing building for one never
    /// rebuilt).
    fn generations(
        &self,
        projection: &ProjectionName,
    ) -> impl Future<Output = Result<Generations>> + Send;

    /// Runs `projection`'s [`setup`](Projection::setup) in `generation`'s space (creating its
    /// tables), and with `indexes` its [`indexes`](Projection::indexes), in one transaction.
    fn prepare<P: Projection<Self>>(
        &self,
        projection: &P,
        generation: u32,
        indexes: bool,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Records `partitions` as the partition count of `generation` (active or being built)
    /// when none is recorded yet ([`Generations::partitions`]).
    fn record_partitions(
        &self,
        projection: &ProjectionName,
        generation: u32,
        partitions: u32,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Starts building a new generation of `projection` beside the active one, and returns it:
    /// with `resume`, the one an interrupted rebuild left is kept (with its checkpoints) and
    /// returned; otherwise it is dropped and a new one begun (numbered after every generation
    /// used so far). The new generation's space is empty.
    fn begin_generation(
        &self,
        projection: &ProjectionName,
        resume: bool,
    ) -> impl Future<Output = Result<u32>> + Send;

    /// Makes `generation` (the one being built) the active one, in one atomic step recorded
    /// with `at`, once each of its `partitions` checkpoints is at or past the active
    /// generation's; the old generation is dropped, or kept with `keep_old`.
    fn swap(
        &self,
        projection: &ProjectionName,
        generation: u32,
        partitions: u32,
        at: Position,
        keep_old: bool,
    ) -> impl Future<Output = Result<Generations, SwapError>> + Send;

    /// Drops generation `generation` of `projection` (neither active nor building): its data,
    /// checkpoints and dead letters. A building one is dropped by cancelling its rebuild.
    fn drop_generation(
        &self,
        projection: &ProjectionName,
        generation: u32,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// The events of a batch whose effects are due: those past the partition's effect mark (no
/// generation did them yet), and those retried from the dead letters (never handled).
pub(crate) fn effects_due(batch: &Batch<'_>, mark: Option<Position>) -> Vec<RecordedEvent> {
    batch
        .handle
        .iter()
        .filter(|e| Some(e.position) > mark || batch.release.contains(&e.id))
        .cloned()
        .collect()
}

/// Whether `batch` may commit into its generation given `generations` (see
/// [`Generations::admit`]).
pub(crate) fn check_generation(
    batch: &Batch<'_>,
    generations: &Generations,
) -> Result<(), CommitError> {
    generations.admit(batch.key.generation, batch.rebuilding)
}

/// The swap's condition: each of the `partitions` of the new generation is at or past the
/// active generation's checkpoint; `checkpoints(partition)` gives both (new, active).
pub(crate) fn check_caught_up(
    partitions: u32,
    mut checkpoints: impl FnMut(u32) -> Result<(Option<Position>, Option<Position>), SwapError>,
) -> Result<(), SwapError> {
    for partition in 0..partitions {
        let (new, active) = checkpoints(partition)?;
        if new < active {
            return Err(SwapError::Behind {
                partition,
                new,
                active,
            });
        }
    }
    Ok(())
}

/// The in-process locks that keep two generations of a projection from doing one event's
/// effects twice: a batch of a projection with effects holds its partition's lock from reading
/// the effect mark to committing the new one.
#[derive(Debug, Default)]
pub(crate) struct EffectLocks(
    dashmap::DashMap<(ProjectionName, u32), std::sync::Arc<tokio::sync::Mutex<()>>>,
);

impl EffectLocks {
    /// Takes the lock of `key`'s projection and partition (any generation).
    pub(crate) async fn lock(&self, key: &PartitionKey) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .0
            .entry((key.projection.clone(), key.partition))
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// Takes the locks of every partition of `projection` below `partitions`: no batch with
    /// effects is between its generation check and its commit meanwhile (a swap takes them).
    pub(crate) async fn lock_all(
        &self,
        projection: &ProjectionName,
        partitions: u32,
    ) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
        let mut guards = Vec::with_capacity(usize::try_from(partitions).unwrap_or(0));
        for partition in 0..partitions {
            guards.push(
                self.lock(&PartitionKey::new(projection.clone(), partition))
                    .await,
            );
        }
        guards
    }
}
