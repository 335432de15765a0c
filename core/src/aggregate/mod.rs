//! Aggregates: the consistency boundaries of a domain, which decide on commands and fold
//! events.
//!
//! An [`Aggregate`] is a plain value. [`Aggregate::handle`] decides, without side effects,
//! which events a command causes (or rejects it); [`Aggregate::apply`] folds one event into
//! the state. The [`Repository`](crate::Repository) loads, executes, stores and caches them.

mod context;
mod event;

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use context::CommandContext;
pub use event::{DomainEvent, Envelope};

/// A consistency boundary of the domain: its state, the commands it takes, the events it
/// emits and the errors it rejects commands with.
///
/// The state before any event is [`Default::default`]. Each instance lives in the stream
/// `<TYPE>-<id>`, e.g. `account-42`.
///
/// The state is serde so that it can be snapshotted: bump [`SNAPSHOT_VERSION`](Self::SNAPSHOT_VERSION)
/// whenever its serialised shape or meaning changes, and old snapshots are ignored (the stream
/// is replayed instead).
///
/// ```
/// use annals::{Aggregate, DomainEvent};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, Default, Serialize, Deserialize)]
/// struct Counter {
///     value: u64,
/// }
///
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
/// enum CounterEvent {
///     Incremented { by: u64 },
/// }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("cannot add zero")]
/// struct AddZero;
///
/// impl Aggregate for Counter {
///     const TYPE: &'static str = "counter";
///     type Command = u64;
///     type Event = CounterEvent;
///     type Error = AddZero;
///
///     fn handle(&self, by: &u64) -> Result<Vec<CounterEvent>, AddZero> {
///         if *by == 0 {
///             return Err(AddZero);
///         }
///         Ok(vec![CounterEvent::Incremented { by: *by }])
///     }
///
///     fn apply(&mut self, event: &CounterEvent) {
///         match event {
///             CounterEvent::Incremented { by } => self.value += by,
///         }
///     }
/// }
/// ```
pub trait Aggregate:
    Default + Clone + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The aggregate's type, the category of its streams: instance `42` of `account` lives in
    /// the stream `account-42`. It must be a valid stream id prefix without `-`.
    const TYPE: &'static str;

    /// The schema version of the serialised state, recorded in snapshots. A snapshot of
    /// another version is ignored and the stream replayed, so bump it whenever the state's
    /// shape or meaning changes.
    const SNAPSHOT_VERSION: u16 = 1;

    /// What the aggregate is asked to do. Commands are handled by reference, so a command
    /// retried after a version conflict is handled again without being cloned.
    type Command: Send + Sync + 'static;

    /// What happened, as the aggregate records it.
    type Event: DomainEvent;

    /// Why a command was rejected.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides what `command` causes in this state: the events to record, or a rejection.
    ///
    /// It must have no side effects: it may run again after a version conflict, on a newer
    /// state.
    ///
    /// # Errors
    ///
    /// The domain's reason to reject `command`; nothing is recorded then.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Folds one event into the state. It must not fail: the event already happened.
    fn apply(&mut self, event: &Self::Event);

    /// The state after applying `events` in order to the initial state.
    fn fold<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self {
        let mut state = Self::default();
        for event in events {
            state.apply(event);
        }
        state
    }
}
