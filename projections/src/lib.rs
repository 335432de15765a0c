//! # annals-projections
//!
//! The read side of Annals: projections that build read models from a store's global log,
//! **exactly once, in order, never silently stuck**.
//!
//! - A [`Projection`] has a stable [`ProjectionName`], the events it wants (a core
//!   [`Filter`](annals::Filter)) and a handler that writes a batch of events to its
//!   [`ReadModel`] through the batch's transaction.
//! - The read model commits the handler's writes **with the checkpoint that covers them**, in
//!   one transaction: a crash never applies an event twice and never skips one.
//!   [`MemoryModel`] keeps it in memory (dashmap); the `sled` and `postgres` features add the
//!   models that share those stores' databases.
//! - A [`ProjectionRunner`] catches up from the checkpoints in batches, then follows the log live
//!   on the store's commit signal (no polling where the store signals commits). Work is split
//!   into partitions by a stable hash of the stream id ([`partition_of`]): each stream's events
//!   are applied in version order, partitions in parallel, each with its own checkpoint.
//! - A handler that keeps failing on an event meets the projection's [`ErrorPolicy`]: stop (the
//!   default, naming the event), skip (recorded and counted), or park the event and the rest of
//!   its stream on the dead-letter list while other streams go on. A panicking handler is a
//!   failing handler; the process lives on.
//! - [`RunningProjection::status`] gives checkpoints, lag, state, parked and skipped counts; a
//!   partition with work waiting and no progress reports itself [stalled](State::Stalled).
//!
//! See [`ProjectionRunner`] for a complete example.
//!
//! # Feature flags
//!
//! - `postgres`: [`PgModel`], the read model in a PostgreSQL store's database (adds a dependency
//!   on `annals-postgres`).
//! - `sled`: [`SledModel`], the read model in trees of the embedded sled store's database — one
//!   directory, one process — each batch committed with its checkpoint as one write-ahead
//!   record, no sled transaction (adds dependencies on `annals-sled` and `sled`).
//!
//! # Supported Rust versions
//!
//! The minimum supported Rust version is 1.89.

mod error;
mod model;
mod name;
mod partition;
mod policy;
mod projection;
mod rebuild;
mod runner;
mod status;
mod workers;

pub use error::{HandlerFailure, ProjectionError, Result};
pub use model::{
    Batch, CommitError, DeadLetter, DeadLetterKind, Fence, Generations, MemoryModel, MemoryTx,
    PartitionKey, ReadModel, SwapError,
};
#[cfg(feature = "postgres")]
pub use model::{PgModel, PgTx};
#[cfg(feature = "sled")]
pub use model::{SledModel, SledModelBuilder, SledTx};
pub use name::ProjectionName;
pub use partition::partition_of;
pub use policy::{ErrorPolicy, Retry};
pub use projection::Projection;
pub use rebuild::{
    reset_checkpoints, Rebuild, RebuildProgress, RebuildReport, DEFAULT_CONCURRENT_REBUILDS,
};
pub use runner::{ProjectionRunner, RunningProjection};
pub use status::{PartitionStatus, ProjectionStatus, State};
pub use workers::{
    OwnedPartition, ProjectionWorkers, RunningWorkers, WorkersBuilder, WorkersStatus,
};

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    format!("the handler panicked: {text}")
}
