//! The store traits, their `dyn` twin, subscriptions, and the [`kit`] for store implementors.

mod dynamic;
pub mod kit;
mod notify;
mod options;
mod restore;
mod subscription;
mod traits;
mod verify;

pub use dynamic::{AnyStore, DynStore, IntoAnyStore};
pub use notify::CommitWatch;
pub use options::{Direction, Filter, ReadAll, ReadStream};
pub use restore::{RestoreResult, RestoredEvent};
pub use subscription::subscribe_all;
pub use traits::{CheckpointStore, EventStore, Snapshot, SnapshotStore, StreamInfo};
pub use verify::{Problem, ProblemKind, VerifyReport};
