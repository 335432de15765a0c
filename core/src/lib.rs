//! # Annals
//!
//! Event sourcing and CQRS for Rust. Aggregates emit versioned events to an append-only store
//! with optimistic concurrency; subscriptions and a bus carry them to projections that build
//! read models; snapshots and replay give audit and recovery.
//!
//! This crate is the core: the domain layer ([`Aggregate`], [`Repository`], codecs,
//! upcasting), the vocabulary ([`StreamId`], [`Version`], [`Position`],
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
//! # Domain modelling
//!
//! An [`Aggregate`] decides on commands and folds events; a [`Repository`] loads it, executes
//! commands with optimistic concurrency and retries, and keeps snapshots and a cache.
//!
//! ```
//! use annals::{Aggregate, CommandContext, DomainEvent, InMemoryStore, Repository};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Debug, Default, Serialize, Deserialize)]
//! struct Account { balance: u64 }
//!
//! #[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
//! enum Event { Deposited { amount: u64 }, Withdrawn { amount: u64 } }
//!
//! enum Command { Deposit(u64), Withdraw(u64) }
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("insufficient funds")]
//! struct InsufficientFunds;
//!
//! impl Aggregate for Account {
//!     const TYPE: &'static str = "account";
//!     type Command = Command;
//!     type Event = Event;
//!     type Error = InsufficientFunds;
//!
//!     fn handle(&self, command: &Command) -> Result<Vec<Event>, InsufficientFunds> {
//!         match *command {
//!             Command::Deposit(amount) => Ok(vec![Event::Deposited { amount }]),
//!             Command::Withdraw(amount) if amount > self.balance => Err(InsufficientFunds),
//!             Command::Withdraw(amount) => Ok(vec![Event::Withdrawn { amount }]),
//!         }
//!     }
//!
//!     fn apply(&mut self, event: &Event) {
//!         match event {
//!             Event::Deposited { amount } => self.balance += amount,
//!             Event::Withdrawn { amount } => self.balance -= amount,
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let accounts: Repository<Account, _> = Repository::new(InMemoryStore::new());
//! accounts.execute("42", Command::Deposit(100), CommandContext::new()).await?;
//! let refused = accounts.execute("42", Command::Withdraw(500), CommandContext::new()).await;
//! assert!(refused.unwrap_err().rejection().is_some());
//! assert_eq!(accounts.load("42").await?.state.balance, 100);
//! # Ok(())
//! # }
//! ```
//!
//! Stored in the stream `account-42`, the deposit has event type `Deposited`, schema version 1
//! and the JSON payload `{"amount":100}`. See [`repository`] for snapshots, the cache and
//! idempotent commands, [`codec`] for JSON and bincode, [`upcast`] for schema evolution; the
//! `annals-testkit` crate has a given/when/then harness for unit tests of aggregates.
//!
//! # Feature flags
//!
//! - `derive` (default): `#[derive(DomainEvent)]`.
//! - `bincode` (default): the [`Bincode`](codec::Bincode) codec.
//!
//! # Supported Rust versions
//!
//! The minimum supported Rust version is 1.89.

pub mod aggregate;
pub mod bus;
pub mod codec;
pub mod error;
pub mod lease;
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
pub use lease::{Lease, LeaseInfo, Leases, LocalLeases};
pub use memory::{InMemoryBus, InMemoryStore};
pub use model::*;
pub use repository::{
    Changes, ExecuteError, Loaded, Outcome, Repository, RepositoryBuilder, SnapshotPolicy,
};
pub use store::{
    subscribe_all, AnyStore, CheckpointStore, CommitWatch, Direction, DynStore, EventStore, Filter,
    IntoAnyStore, Problem, ProblemKind, ReadAll, ReadStream, RestoreResult, RestoredEvent,
    Snapshot, SnapshotStore, StreamInfo, VerifyReport,
};
