//! The store author's kit: what implementations of [`EventStore`](crate::EventStore) share, apart
//! from the API users call.
//!
//! - [`resolve_retry`] and [`StoredEventRef`]: what an append whose event ids were found means
//!   (new, an exact retry, or an [`IdempotencyConflict`](crate::Error::IdempotencyConflict));
//! - [`CommitNotifier`]: the writer's side of the commit signal subscribers wait on;
//! - [`paged`] and [`Page`]: a read of many pages as one stream of events;
//! - [`instrument_append`] and [`instrument_read`]: the `tracing` spans every store gives its
//!   appends and reads, with the same names and fields everywhere (`store`, `stream`, `from`,
//!   `count`, `version`, `position`, `duration_us`).
//!
//! Nothing here is needed to *use* a store.

mod idempotency;
mod paged;
mod span;

pub use super::notify::CommitNotifier;
pub use idempotency::{resolve_retry, StoredEventRef};
pub use paged::{paged, Page};
pub use span::{instrument_append, instrument_read};
