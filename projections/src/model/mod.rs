//! Read models: where projections write, with their checkpoints and dead letters, committed
//! together.

mod memory;
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

/// Which partition of which projection a checkpoint, a batch or a dead letter belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey {
    /// The projection.
    pub projection: ProjectionName,
    /// The partition (see [`partition_of`](crate::partition_of)).
    pub partition: u32,
}

impl PartitionKey {
    /// The partition `partition` of `projection`.
    pub fn new(projection: ProjectionName, partition: u32) -> Self {
        PartitionKey {
            projection,
            partition,
        }
    }
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

    /// The dead letters of `projection`, in the order they were set aside.
    fn dead_letters(
        &self,
        projection: &ProjectionName,
    ) -> impl Future<Output = Result<Vec<DeadLetter>>> + Send;

    /// Makes what was committed durable (a buffered backend flushes); called at shutdown.
    fn flush(&self) -> impl Future<Output = Result<()>> + Send;
}
