//! # annals-sled
//!
//! The embedded [Annals](annals) event store: durable, with no server to start, on
//! [sled](https://docs.rs/sled/0.34.7) 0.34.7. [`SledEventStore`] implements
//! [`EventStore`](annals::EventStore), [`SnapshotStore`](annals::SnapshotStore) and
//! [`CheckpointStore`](annals::CheckpointStore), and passes the conformance suite of
//! `annals-testkit`.
//!
//! # Usage
//!
//! ```
//! use annals::{EventData, EventStore, ExpectedVersion, ReadStream, StreamId};
//! use annals_sled::SledEventStore;
//! use futures::TryStreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> annals::Result<()> {
//! # let dir = tempfile::tempdir().map_err(|e| annals::Error::backend("test", e))?;
//! # let path = dir.path().join("annals-data");
//! let store = SledEventStore::builder().path(&path).open().await?;
//! let account = StreamId::new("account-42")?;
//! store
//!     .append(&account, ExpectedVersion::NoStream, vec![
//!         EventData::json("Opened", &serde_json::json!({ "owner": "ada" }))?,
//!     ])
//!     .await?;
//! store.close().await?;
//! drop(store);
//!
//! // Everything survives a reopen, and `verify` checks every record.
//! let store = SledEventStore::builder().path(&path).open().await?;
//! let events: Vec<_> = store.read_stream(&account, ReadStream::forward()).try_collect().await?;
//! assert_eq!(events.len(), 1);
//! assert!(store.verify().await?.is_clean());
//! # Ok(())
//! # }
//! ```
//!
//! # What it promises
//!
//! - **Atomic appends**: all record kinds (events, global log, stream heads, event-id index)
//!   live in one sled tree, and each group of appends is one sled batch, which sled applies
//!   atomically, also across a crash. A crash never leaves part of an append, nor an index
//!   pointing nowhere.
//! - **Durability** ([`Durability`]): by default an append is answered after `fsync`. Appends
//!   arriving together share one batch and one flush (group commit). With
//!   [`Durability::Buffered`] an append is answered after the in-memory write, and the store
//!   flushes on a timer and on close.
//! - **Readers never see what could vanish**: with [`Durability::Flush`], reads and
//!   subscriptions see only flushed events.
//! - **Integrity**: every stored value carries a CRC-32 over its key and bytes; reads check
//!   it and a mismatch is [`Error::Corrupt`](annals::Error::Corrupt) naming the stream, version
//!   and position. [`SledEventStore::verify`] walks the whole store.
//! - **Format**: the layout is versioned (`FORMAT.md`); a store written by a newer build is
//!   refused with [`Error::Format`](annals::Error::Format), never misread.
//! - **Bounded memory**: no in-memory index; sled's cache (64 MiB by default) bounds what is
//!   held whatever the size of the store.
//!
//! # Supported Rust versions
//!
//! The minimum supported Rust version is 1.85.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

mod builder;
mod flusher;
mod format;
mod overlay;
mod read;
mod recover;
mod store;
mod verify;
mod writer;

pub use builder::{Durability, SledStoreBuilder};
pub use store::SledEventStore;
pub use verify::{Problem, ProblemKind, VerifyReport, MAX_PROBLEMS};

/// The version of the on-disk format this build writes and reads (see `FORMAT.md`).
pub const FORMAT_VERSION: u32 = format::FORMAT_VERSION;

/// Maps a sled failure to the Annals error.
fn sled_error(error: sled::Error) -> annals::Error {
    match error {
        sled::Error::Corruption { at, .. } => annals::Error::corrupt(
            None,
            None,
            None,
            format!("sled found its files damaged (at {at:?})"),
        ),
        sled::Error::Unsupported(message) => annals::Error::Format(format!("sled: {message}")),
        other => annals::Error::backend("sled", other),
    }
}
