use crate::{Aggregate, AppendResult, Envelope, Version};

/// When the repository saves snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SnapshotPolicy {
    /// Never (the default): loading replays the whole stream.
    #[default]
    Never,
    /// Whenever a stream's version crosses a multiple of `n` (and when a load had to replay
    /// `n` events or more), so a load replays fewer than `n` events after the snapshot.
    /// `Every(0)` is `Never`.
    Every(u64),
}

impl SnapshotPolicy {
    pub(crate) fn interval(self) -> Option<u64> {
        match self {
            SnapshotPolicy::Every(n) if n > 0 => Some(n),
            _ => None,
        }
    }
}

/// An aggregate as loaded: its state, its version and how it was obtained.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The version of the last event folded into it ([`Version::EMPTY`] for a new aggregate).
    pub version: Version,
    /// How many events were read from the store and applied to produce it.
    pub replayed: u64,
    /// The version of the snapshot it started from, if one was used.
    pub snapshot: Option<Version>,
    /// Whether it started from the in-memory cache.
    pub cached: bool,
}

impl<A> Loaded<A> {
    /// The state, dropping the rest.
    pub fn into_state(self) -> A {
        self.state
    }
}

/// What an executed command did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Outcome<A: Aggregate> {
    /// The events the command recorded (on a repeat, those of its first execution); empty when
    /// the command changed nothing.
    pub events: Vec<A::Event>,
    /// Where the events are, or `None` when the command recorded nothing.
    pub appended: Option<AppendResult>,
    /// The state after the command (for a repeat, a state that includes its events).
    pub state: A,
    /// The version of `state`.
    pub version: Version,
    /// Whether the command id had been executed before, so nothing new was recorded.
    pub repeated: bool,
    /// How many version conflicts were retried.
    pub retries: u32,
}

/// What changed in an aggregate between two versions: the states at both ends and the events
/// in between.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Changes<A: Aggregate> {
    /// The state at `from`.
    pub before: A,
    /// The state at `to`.
    pub after: A,
    /// The earlier version (capped at the stream's version).
    pub from: Version,
    /// The later version (capped at the stream's version).
    pub to: Version,
    /// The events after `from` up to `to`, in order.
    pub events: Vec<Envelope<A::Event>>,
}
