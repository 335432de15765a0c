//! The repository: loads aggregates, executes commands on them, and keeps their snapshots and
//! a cache of recent states.
//!
//! See [`Repository`].

mod builder;
mod cache;
mod decode;
mod error;
mod execute;
mod history;
mod load;
mod snapshot;
mod types;

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

pub use builder::{
    RepositoryBuilder, DEFAULT_CACHE_CAPACITY, DEFAULT_IDEMPOTENCY_WINDOW,
    DEFAULT_MAX_CONFLICT_RETRIES,
};
pub use error::ExecuteError;
pub use types::{Changes, Loaded, Outcome, SnapshotPolicy};

use crate::codec::{Codec, Codecs, Json};
use crate::upcast::Upcasters;
use crate::{Aggregate, Error, EventStore, SnapshotStore, StreamId};
use cache::StateCache;

/// Loads aggregates of type `A` from a store `S` and executes commands on them; writes with
/// the codec `C` ([`Json`] by default).
///
/// - [`load`](Self::load): the cached state caught up with the stream, else the newest usable
///   snapshot plus the events after it, else the whole stream;
/// - [`execute`](Self::execute): load, [`handle`](Aggregate::handle), append at the exact
///   version loaded; after a version conflict, catch up and handle again, up to
///   [`max_conflict_retries`](RepositoryBuilder::max_conflict_retries) times;
/// - [`load_at`](Self::load_at), [`load_as_of`](Self::load_as_of),
///   [`changes`](Self::changes): the state as it was, from the log alone (audit and replay).
///
/// Clones share the store, the cache and the settings; a repository is cheap to clone into
/// tasks.
///
/// ```
/// use annals::{Aggregate, CommandContext, DomainEvent, InMemoryStore, Repository};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, Default, Serialize, Deserialize)]
/// struct Counter {
///     value: u64,
/// }
///
/// #[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
/// enum CounterEvent {
///     Added { n: u64 },
/// }
///
/// impl Aggregate for Counter {
///     const TYPE: &'static str = "counter";
///     type Command = u64;
///     type Event = CounterEvent;
///     type Error = std::convert::Infallible;
///
///     fn handle(&self, n: &u64) -> Result<Vec<CounterEvent>, Self::Error> {
///         Ok(vec![CounterEvent::Added { n: *n }])
///     }
///
///     fn apply(&mut self, CounterEvent::Added { n }: &CounterEvent) {
///         self.value += n;
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let counters: Repository<Counter, _> = Repository::new(InMemoryStore::new());
/// counters.execute("a", 2, CommandContext::new()).await?;
/// let outcome = counters.execute("a", 3, CommandContext::new()).await?;
/// assert_eq!((outcome.state.value, outcome.version.get()), (5, 2));
/// assert_eq!(counters.load_at("a", annals::Version::new(1)).await?.state.value, 2);
/// # Ok(())
/// # }
/// ```
pub struct Repository<A: Aggregate, S, C = Json> {
    inner: Arc<Inner<A, S, C>>,
}

struct Inner<A, S, C> {
    store: S,
    codecs: Codecs<C>,
    snapshots: SnapshotPolicy,
    max_conflict_retries: u32,
    cache: StateCache<A>,
    idempotency_window: usize,
    upcasters: Upcasters,
}

impl<A: Aggregate, S, C> Clone for Repository<A, S, C> {
    fn clone(&self) -> Self {
        Repository {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<A: Aggregate, S, C: fmt::Debug> fmt::Debug for Repository<A, S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &A::TYPE)
            .field("store", &std::any::type_name::<S>())
            .field("codec", &self.inner.codecs.writer)
            .field("snapshots", &self.inner.snapshots)
            .field("max_conflict_retries", &self.inner.max_conflict_retries)
            .field("cached", &self.inner.cache.len())
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate, S: EventStore + SnapshotStore> Repository<A, S, Json> {
    /// A repository over `store` with the defaults of [`RepositoryBuilder::new`].
    pub fn new(store: S) -> Self {
        RepositoryBuilder::new(store).assemble()
    }

    /// A builder over `store`; see [`RepositoryBuilder::new`] for the defaults.
    pub fn builder(store: S) -> RepositoryBuilder<A, S, Json> {
        RepositoryBuilder::new(store)
    }
}

/// Checks [`Aggregate::TYPE`] at compile time: using a repository of an aggregate whose type
/// cannot prefix stream ids fails the build.
struct TypeCheck<A>(std::marker::PhantomData<A>);

impl<A: Aggregate> TypeCheck<A> {
    const VALID: () = assert!(
        valid_type(A::TYPE),
        "Aggregate::TYPE must be 1 to 200 bytes without `-` or control characters"
    );
}

const fn valid_type(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 200 {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'-' || bytes[i] < 0x20 || bytes[i] == 0x7f {
            return false;
        }
        i += 1;
    }
    true
}

fn micros(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

impl<A, S, C> Repository<A, S, C>
where
    A: Aggregate,
    S: EventStore + SnapshotStore,
    C: Codec,
{
    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The codec new events and snapshots are written with.
    pub fn codec(&self) -> &C {
        &self.inner.codecs.writer
    }

    /// The snapshot policy.
    pub fn snapshot_policy(&self) -> SnapshotPolicy {
        self.inner.snapshots
    }

    /// The stream of the aggregate `id`: `<A::TYPE>-<id>`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidStreamId`] when the result is not a valid stream id (too long, control
    /// characters).
    pub fn stream_id(&self, id: impl fmt::Display) -> Result<StreamId, Error> {
        StreamId::new(format!("{}-{id}", A::TYPE))
    }

    /// Forgets every cached state (the next load of each aggregate reads the store).
    pub fn clear_cache(&self) {
        self.inner.cache.clear();
    }
}
