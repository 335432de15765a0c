//! # Annals
//!
//! Event sourcing and CQRS for Rust. Aggregates emit versioned events to an append-only store
//! with optimistic concurrency; subscriptions and a bus carry them to projections that build
//! read models; snapshots and replay give audit and recovery.
//!
//! This crate is the core: the vocabulary ([`StreamId`], [`Version`], [`Position`],
//! [`EventData`], [`RecordedEvent`]), the store traits ([`EventStore`], [`SnapshotStore`],
//! [`CheckpointStore`]) with their `dyn` twin ([`DynStore`]), the generic catch-up-then-live
//! [`subscribe_all`], the [`Bus`] trait, an in-memory store and an in-process bus. It names no
//! backend: the embedded sled store lives in `annals-sled`, PostgreSQL in `annals-postgres`,
//! NATS JetStream in `annals-nats`.
//!
//! # Usage
//!
//! ```
//! use annals::{EventData, EventStore, ExpectedVersion, InMemoryStore, ReadStream, StreamId};
//! use futures::TryStreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> annals::Result<()> {
//! let store = InMemoryStore::new();
//! let account = StreamId::new("account-42")?;
//!
//! store
//!     .append(&account, ExpectedVersion::NoStream, vec![
//!         EventData::json("Opened", &serde_json::json!({ "owner": "ada" }))?,
//!         EventData::json("Deposited", &serde_json::json!({ "amount": 100 }))?,
//!     ])
//!     .await?;
//!
//! // A writer that read version 1 loses the race: the conflict carries both versions.
//! let late = store
//!     .append(&account, ExpectedVersion::exact(1), vec![EventData::json("Closed", &())?])
//!     .await;
//! assert!(late.unwrap_err().is_conflict());
//!
//! let events: Vec<_> = store.read_stream(&account, ReadStream::forward()).try_collect().await?;
//! assert_eq!(events.len(), 2);
//! # Ok(())
//! # }
//! ```
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

pub mod aggregate;
pub mod bus;
pub mod codec;
pub mod error;
pub mod memory;
pub mod model;
pub mod repository;
pub mod store;
pub mod upcast;

pub use aggregate::{Aggregate, CommandContext, DomainEvent, Envelope};
#[cfg(feature = "derive")]
pub use annals_derive::DomainEvent;

pub use bus::Bus;
pub use error::{BoxError, Error, Result};
pub use memory::{InMemoryBus, InMemoryStore};
pub use model::*;
pub use repository::{
    Changes, ExecuteError, Loaded, Outcome, Repository, RepositoryBuilder, SnapshotPolicy,
};
pub use store::{
    subscribe_all, AnyStore, CheckpointStore, CommitNotifier, CommitWatch, Direction, DynStore,
    EventStore, Filter, IntoAnyStore, ReadAll, ReadStream, Snapshot, SnapshotStore, StreamInfo,
};
