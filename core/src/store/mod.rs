//! The store traits, their `dyn` twin, subscriptions and helpers for store implementors.

mod dynamic;
mod idempotency;
mod notify;
mod options;
mod subscription;
mod traits;

pub use dynamic::{AnyStore, DynStore, IntoAnyStore};
pub use idempotency::{resolve_retry, StoredEventRef};
pub use notify::{CommitNotifier, CommitWatch};
pub use options::{Direction, Filter, ReadAll, ReadStream};
pub use subscription::subscribe_all;
pub use traits::{CheckpointStore, EventStore, Snapshot, SnapshotStore, StreamInfo};
