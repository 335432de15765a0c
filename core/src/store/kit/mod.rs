//! The store author's kit: what implementations of [`EventStore`](crate::EventStore) share, apart
//! from the API users call.
//!
//! - [`resolve_retry`] and [`StoredEventRef`]: what an append whose event ids were found means
//!   (new, an exact retry, or an [`IdempotencyConflict`](crate::Error::IdempotencyConflict));
//! - [`CommitNotifier`]: the writer's side of the commit signal subscribers wait on;
//! - [`paged`] and [`Page`]: a read of many pages as one stream of events ([`paged_ahead`]:
//!   the same, fetching the next page while the reader consumes the current one);
//! - [`plan_restore`]: the checks of [`EventStore::restore`](crate::EventStore::restore), and
//!   what it must write;
//! - [`instrument_append`] and [`instrument_read`]: the `tracing` spans every store gives its
//!   appends and reads, with the same names and fields everywhere (`store`, `stream`, `from`,
//!   `count`, `version`, `position`, `duration_us`);
//! - [`off_worker`]: blocking calls of a synchronous engine run without holding an async
//!   worker.
//!
//! Nothing here is needed to *use* a store.

mod blocking;
mod idempotency;
mod paged;
mod restore;
mod span;

pub use super::notify::CommitNotifier;
pub use blocking::off_worker;
pub use idempotency::{resolve_retry, StoredEventRef};
pub use paged::{paged, paged_ahead, Page};
pub use restore::{plan_restore, RestorePlan, StreamHead};
pub use span::{instrument_append, instrument_read};
