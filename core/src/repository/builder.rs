use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use super::cache::StateCache;
use super::{Inner, Repository, SnapshotPolicy, TypeCheck};
use crate::codec::{Codec, Codecs, Json};
use crate::upcast::{Upcaster, Upcasters};
use crate::{Aggregate, Error, EventStore, SnapshotStore};

/// Configures a [`Repository`]; see [`new`](Self::new) for the defaults.
///
/// ```
/// use annals::{codec::Bincode, InMemoryStore, Repository, SnapshotPolicy};
/// # use annals::{Aggregate, DomainEvent};
/// # #[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
/// # struct Counter(u64);
/// # #[derive(Clone, Debug, serde::Serialize, serde::Deserialize, DomainEvent)]
/// # enum Event { Added(u64) }
/// # impl Aggregate for Counter {
/// #     const TYPE: &'static str = "counter";
/// #     type Command = u64;
/// #     type Event = Event;
/// #     type Error = std::convert::Infallible;
/// #     fn handle(&self, n: &u64) -> Result<Vec<Event>, Self::Error> { Ok(vec![Event::Added(*n)]) }
/// #     fn apply(&mut self, Event::Added(n): &Event) { self.0 += n }
/// # }
///
/// let repository: Repository<Counter, _, _> = Repository::builder(InMemoryStore::new())
///     .codec(Bincode)
///     .snapshot_policy(SnapshotPolicy::Every(100))
///     .max_conflict_retries(10)
///     .cache_capacity(10_000)
///     .build()?;
/// # Ok::<(), annals::Error>(())
/// ```
pub struct RepositoryBuilder<A, S, C = Json> {
    store: S,
    codec: C,
    snapshots: SnapshotPolicy,
    max_conflict_retries: u32,
    cache_capacity: usize,
    idempotency_window: usize,
    upcasters: Upcasters,
    registration_error: Option<Error>,
    aggregate: PhantomData<fn() -> A>,
}

impl<A, S, C: fmt::Debug> fmt::Debug for RepositoryBuilder<A, S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepositoryBuilder")
            .field("aggregate", &std::any::type_name::<A>())
            .field("codec", &self.codec)
            .field("snapshots", &self.snapshots)
            .field("max_conflict_retries", &self.max_conflict_retries)
            .field("cache_capacity", &self.cache_capacity)
            .field("idempotency_window", &self.idempotency_window)
            .field("upcasters", &self.upcasters)
            .finish_non_exhaustive()
    }
}

/// The default [`RepositoryBuilder::max_conflict_retries`].
pub const DEFAULT_MAX_CONFLICT_RETRIES: u32 = 5;
/// The default [`RepositoryBuilder::cache_capacity`].
pub const DEFAULT_CACHE_CAPACITY: usize = 1024;
/// The default [`RepositoryBuilder::idempotency_window`].
pub const DEFAULT_IDEMPOTENCY_WINDOW: usize = 1000;

impl<A: Aggregate, S: EventStore + SnapshotStore> RepositoryBuilder<A, S, Json> {
    /// A builder over `store` with the defaults:
    ///
    /// - **codec**: [`Json`] — readable by every tool; [`Bincode`](crate::codec::Bincode) is
    ///   more compact. Events written by either stay readable whatever the codec.
    /// - **snapshots**: [`SnapshotPolicy::Never`] — a snapshot freezes the state's serialised
    ///   shape, so turning them on is a promise to bump
    ///   [`Aggregate::SNAPSHOT_VERSION`] when it changes.
    /// - **max conflict retries**: [`DEFAULT_MAX_CONFLICT_RETRIES`] (5) — how often
    ///   `execute` reloads and handles a command again after another writer moved the stream.
    /// - **cache capacity**: [`DEFAULT_CACHE_CAPACITY`] (1024 aggregates) — recently used
    ///   states kept in memory; 0 turns the cache off.
    /// - **idempotency window**: [`DEFAULT_IDEMPOTENCY_WINDOW`] (1000 events) — how far back
    ///   `execute` looks for an earlier execution of a command id when handling it again
    ///   does not reproduce the same events (see [`Repository::execute`]); 0 turns the look
    ///   off.
    /// - **upcasters**: none.
    pub fn new(store: S) -> Self {
        RepositoryBuilder {
            store,
            codec: Json,
            snapshots: SnapshotPolicy::Never,
            max_conflict_retries: DEFAULT_MAX_CONFLICT_RETRIES,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
            upcasters: Upcasters::new(),
            registration_error: None,
            aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate, S: EventStore + SnapshotStore, C: Codec> RepositoryBuilder<A, S, C> {
    /// Writes new events and snapshots with `codec`.
    pub fn codec<C2: Codec>(self, codec: C2) -> RepositoryBuilder<A, S, C2> {
        RepositoryBuilder {
            store: self.store,
            codec,
            snapshots: self.snapshots,
            max_conflict_retries: self.max_conflict_retries,
            cache_capacity: self.cache_capacity,
            idempotency_window: self.idempotency_window,
            upcasters: self.upcasters,
            registration_error: self.registration_error,
            aggregate: PhantomData,
        }
    }

    /// Sets when snapshots are saved.
    #[must_use]
    pub fn snapshot_policy(mut self, policy: SnapshotPolicy) -> Self {
        self.snapshots = policy;
        self
    }

    /// Sets how many times a command is retried after a version conflict before the conflict
    /// is returned.
    #[must_use]
    pub fn max_conflict_retries(mut self, retries: u32) -> Self {
        self.max_conflict_retries = retries;
        self
    }

    /// Sets how many aggregates the cache keeps (0: no cache).
    #[must_use]
    pub fn cache_capacity(mut self, capacity: usize) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// Sets how many of a stream's latest events are searched for an earlier execution of a
    /// command id (0: never search).
    #[must_use]
    pub fn idempotency_window(mut self, events: usize) -> Self {
        self.idempotency_window = events;
        self
    }

    /// Adds an upcaster. A duplicate is reported by [`build`](Self::build).
    #[must_use]
    pub fn upcaster(mut self, upcaster: Upcaster) -> Self {
        if let Err(e) = self.upcasters.register(upcaster) {
            self.registration_error.get_or_insert(e);
        }
        self
    }

    /// Replaces the upcasters with `upcasters`.
    #[must_use]
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Builds the repository.
    ///
    /// # Errors
    ///
    /// - [`Error::Upcast`] when an upcaster was registered twice, names an unknown event type,
    ///   or a chain misses a link up to the type's current schema version;
    ///
    /// An [`Aggregate::TYPE`] that cannot prefix stream ids (empty, containing `-` or control
    /// characters) fails the compilation instead.
    pub fn build(mut self) -> Result<Repository<A, S, C>, Error> {
        if let Some(e) = self.registration_error.take() {
            return Err(e);
        }
        self.upcasters.check::<A::Event>()?;
        Ok(self.assemble())
    }

    pub(super) fn assemble(self) -> Repository<A, S, C> {
        #[allow(clippy::let_unit_value)]
        let () = TypeCheck::<A>::VALID;
        Repository {
            inner: Arc::new(Inner {
                store: self.store,
                codecs: Codecs::new(self.codec),
                snapshots: self.snapshots,
                max_conflict_retries: self.max_conflict_retries,
                cache: StateCache::new(self.cache_capacity),
                idempotency_window: self.idempotency_window,
                upcasters: self.upcasters,
            }),
        }
    }
}
