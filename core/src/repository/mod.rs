//! The repository: loads aggregates, executes commands on them, and keeps their snapshots and
//! a cache of recent states.
//!
//! See [`Repository`].

mod builder;
mod cache;
mod error;
mod types;

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use tracing::field::Empty;
use tracing::Instrument;
use uuid::Uuid;

pub use builder::{
    RepositoryBuilder, DEFAULT_CACHE_CAPACITY, DEFAULT_IDEMPOTENCY_WINDOW,
    DEFAULT_MAX_CONFLICT_RETRIES,
};
pub use error::ExecuteError;
pub use types::{Changes, Loaded, Outcome, SnapshotPolicy};

use crate::codec::{with_codec, Codec, Codecs, Json};
use crate::upcast::Upcasters;
use crate::{
    Aggregate, AppendResult, CommandContext, DomainEvent, Envelope, Error, EventData, EventId,
    EventStore, ExpectedVersion, ReadStream, RecordedEvent, Snapshot, SnapshotStore, StreamId,
    Timestamp, Version,
};
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

/// Where a replay stops.
#[derive(Clone, Copy, Debug)]
enum Until {
    Version(Version),
    Time(Timestamp),
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

    /// The current state of the aggregate `id` (the initial state at [`Version::EMPTY`] when
    /// it has no events yet).
    ///
    /// It starts from the cached state, else from the newest snapshot of the current
    /// [`SNAPSHOT_VERSION`](Aggregate::SNAPSHOT_VERSION) (another version, or a snapshot that
    /// cannot be decoded, is ignored with a log line), else from the initial state, and folds
    /// the events after it. [`Loaded::replayed`] tells how many events that took.
    ///
    /// # Errors
    ///
    /// The store's errors; [`Error::UnknownEventType`], [`Error::UnknownContentType`],
    /// [`Error::Upcast`] or [`Error::Codec`] for an event that cannot be read.
    pub fn load(
        &self,
        id: impl fmt::Display,
    ) -> impl Future<Output = Result<Loaded<A>, Error>> + Send + '_ {
        let stream = self.stream_id(id);
        async move {
            let stream = stream?;
            let span = tracing::debug_span!(
                "load",
                aggregate = A::TYPE,
                stream = %stream,
                version = Empty,
                events = Empty,
                snapshot = Empty,
                cached = Empty,
                duration_us = Empty,
            );
            let started = Instant::now();
            async {
                let loaded = self.load_current(&stream).await?;
                let span = tracing::Span::current();
                span.record("version", loaded.version.get());
                span.record("events", loaded.replayed);
                span.record("snapshot", loaded.snapshot.map(Version::get));
                span.record("cached", loaded.cached);
                span.record("duration_us", micros(started));
                Ok(loaded)
            }
            .instrument(span)
            .await
        }
    }

    /// The state of the aggregate `id` right after the event at `version` (or at the stream's
    /// last event when `version` is past it), folded from the first event: an audit read that
    /// uses no cache and no snapshot.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load).
    pub fn load_at(
        &self,
        id: impl fmt::Display,
        version: Version,
    ) -> impl Future<Output = Result<Loaded<A>, Error>> + Send + '_ {
        let stream = self.stream_id(id);
        async move { self.replay(&stream?, Until::Version(version)).await }
    }

    /// The state of the aggregate `id` as it was at `timestamp`: every event the store
    /// recorded at or before it (by `recorded_at`), folded from the first event without cache
    /// or snapshot.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load).
    pub fn load_as_of(
        &self,
        id: impl fmt::Display,
        timestamp: Timestamp,
    ) -> impl Future<Output = Result<Loaded<A>, Error>> + Send + '_ {
        let stream = self.stream_id(id);
        async move { self.replay(&stream?, Until::Time(timestamp)).await }
    }

    /// What changed in the aggregate `id` between the versions `from` and `to` (swapped when
    /// `from` is the later one, capped at the stream's version): the states at both and the
    /// events in between, from one read of the log.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load).
    pub fn changes(
        &self,
        id: impl fmt::Display,
        from: Version,
        to: Version,
    ) -> impl Future<Output = Result<Changes<A>, Error>> + Send + '_ {
        let stream = self.stream_id(id);
        async move {
            let stream = stream?;
            let (from, to) = if from <= to { (from, to) } else { (to, from) };
            let mut state = A::default();
            let mut before = None;
            let mut version = Version::EMPTY;
            let mut events = Vec::new();
            let mut reader = self.inner.store.read_stream(
                &stream,
                ReadStream::forward().limit(usize::try_from(to.get()).unwrap_or(usize::MAX)),
            );
            if from.is_empty() {
                before = Some((state.clone(), version));
            }
            while let Some(recorded) = reader.try_next().await? {
                let event = self.decode_event(&recorded)?;
                state.apply(&event);
                version = recorded.version;
                if version > from {
                    events.push(envelope(event, recorded));
                }
                if version == from {
                    before = Some((state.clone(), version));
                }
            }
            let (before, from) = before.unwrap_or_else(|| (state.clone(), version));
            Ok(Changes {
                before,
                after: state,
                from,
                to: version,
                events,
            })
        }
    }

    /// The aggregate's saved snapshot, decoded, with its version: `None` when there is none
    /// or it has another [`SNAPSHOT_VERSION`](Aggregate::SNAPSHOT_VERSION). For checking
    /// snapshots against a replay of the log ([`load_at`](Self::load_at) its version).
    ///
    /// # Errors
    ///
    /// The store's errors; [`Error::Codec`] or [`Error::UnknownContentType`] when the
    /// snapshot cannot be decoded.
    pub fn snapshot(
        &self,
        id: impl fmt::Display,
    ) -> impl Future<Output = Result<Option<(Version, A)>, Error>> + Send + '_ {
        let stream = self.stream_id(id);
        async move {
            let stream = stream?;
            match self.inner.store.load_snapshot(&stream).await? {
                Some(snapshot) if snapshot.schema_version == A::SNAPSHOT_VERSION => {
                    let state = self.inner.codecs.decode(
                        &snapshot.content_type,
                        A::TYPE,
                        &snapshot.payload,
                    )?;
                    Ok(Some((snapshot.version, state)))
                }
                _ => Ok(None),
            }
        }
    }

    /// Executes `command` on the aggregate `id`: loads it, lets it
    /// [`handle`](Aggregate::handle) the command, and appends the events at exactly the
    /// version loaded. When another writer moved the stream meanwhile, it catches up and
    /// handles the command again, up to
    /// [`max_conflict_retries`](RepositoryBuilder::max_conflict_retries) times.
    ///
    /// With a command id in `context`, the command is idempotent: its events get ids derived
    /// from the command id, so executing it again (say, a retry after a timeout) records
    /// nothing new and returns the first execution's events with [`Outcome::repeated`] set.
    /// The store recognises the ids when handling the command again reproduces the events;
    /// when it does not (the state moved on and the command is now rejected, or decides
    /// otherwise), the last [`idempotency_window`](RepositoryBuilder::idempotency_window)
    /// events of the stream are searched for the command's first execution.
    ///
    /// Every event carries the context's correlation id, the command id as causation id, and
    /// the context's headers. A snapshot is saved by policy after the append; a failed
    /// snapshot is logged, never returned.
    ///
    /// # Errors
    ///
    /// [`ExecuteError::Rejected`] with the aggregate's error, or [`ExecuteError::Store`]
    /// (a version conflict after the last retry included, see
    /// [`ExecuteError::is_conflict`]).
    pub fn execute(
        &self,
        id: impl fmt::Display,
        command: A::Command,
        context: CommandContext,
    ) -> impl Future<Output = Result<Outcome<A>, ExecuteError<A::Error>>> + Send + '_ {
        let stream = self.stream_id(id);
        async move {
            let stream = stream?;
            let span = tracing::info_span!(
                "execute",
                aggregate = A::TYPE,
                stream = %stream,
                command_id = context.command_id().map(tracing::field::display),
                version = Empty,
                events = Empty,
                retries = Empty,
                repeated = Empty,
                duration_us = Empty,
            );
            let started = Instant::now();
            async {
                let result = self.execute_in(&stream, &command, &context).await;
                let span = tracing::Span::current();
                if let Ok(outcome) = &result {
                    span.record("version", outcome.version.get());
                    span.record("events", outcome.events.len());
                    span.record("retries", outcome.retries);
                    span.record("repeated", outcome.repeated);
                }
                span.record("duration_us", micros(started));
                result
            }
            .instrument(span)
            .await
        }
    }

    async fn execute_in(
        &self,
        stream: &StreamId,
        command: &A::Command,
        context: &CommandContext,
    ) -> Result<Outcome<A>, ExecuteError<A::Error>> {
        // A cached state is used optimistically: an append checks its version; a decision
        // without an append (a rejection, no events) is confirmed against the store first.
        let (mut loaded, mut confirmed) = match self.inner.cache.get(stream) {
            Some((version, state)) => (
                Loaded {
                    state,
                    version,
                    replayed: 0,
                    snapshot: None,
                    cached: true,
                },
                false,
            ),
            None => (self.load_current(stream).await?, true),
        };
        let mut retries = 0u32;
        loop {
            let events = match loaded.state.handle(command) {
                Ok(events) if !events.is_empty() => events,
                decision => {
                    if !confirmed {
                        let before = loaded.version;
                        loaded = self.catch_up(stream, loaded).await?;
                        confirmed = true;
                        if loaded.version != before {
                            continue;
                        }
                    }
                    if let Some(command_id) = context.command_id() {
                        if let Some(outcome) = self
                            .find_earlier_execution(stream, command_id, &loaded, retries)
                            .await?
                        {
                            return Ok(outcome);
                        }
                    }
                    return match decision {
                        Ok(_) => Ok(Outcome {
                            events: Vec::new(),
                            appended: None,
                            state: loaded.state,
                            version: loaded.version,
                            repeated: false,
                            retries,
                        }),
                        Err(rejection) => Err(ExecuteError::Rejected(rejection)),
                    };
                }
            };
            let data = self.encode_events(&events, context)?;
            let expected = ExpectedVersion::Exact(loaded.version);
            match self.inner.store.append(stream, expected, data).await {
                Ok(appended) if appended.first_version == loaded.version.next() => {
                    let previous = loaded.version;
                    let mut state = loaded.state;
                    for event in &events {
                        state.apply(event);
                    }
                    let version = appended.last_version;
                    self.inner.cache.put(stream, version, state.clone());
                    if let Some(n) = self.inner.snapshots.interval() {
                        if previous.get() / n != version.get() / n {
                            self.save_snapshot(stream, version, &state).await;
                        }
                    }
                    return Ok(Outcome {
                        events,
                        appended: Some(appended),
                        state,
                        version,
                        repeated: false,
                        retries,
                    });
                }
                Ok(appended) => {
                    // Every id was already stored: the store answered with the first
                    // execution's append.
                    return Ok(self.repeat(stream, appended, loaded, retries).await?);
                }
                Err(e) if e.is_conflict() => {
                    if retries >= self.inner.max_conflict_retries {
                        self.inner.cache.evict(stream, loaded.version);
                        return Err(ExecuteError::Store(e));
                    }
                    retries += 1;
                    tracing::debug!(stream = %stream, retries, "version conflict; catching up");
                    loaded = self.catch_up(stream, loaded).await?;
                    confirmed = true;
                }
                Err(e @ Error::IdempotencyConflict { .. }) => {
                    if let Some(command_id) = context.command_id() {
                        let loaded = self.catch_up(stream, loaded).await?;
                        if let Some(outcome) = self
                            .find_earlier_execution(stream, command_id, &loaded, retries)
                            .await?
                        {
                            return Ok(outcome);
                        }
                    }
                    return Err(ExecuteError::Store(e));
                }
                Err(e) => {
                    if matches!(e, Error::AppendOutcomeUnknown { .. }) {
                        self.inner.cache.evict(stream, loaded.version);
                    }
                    return Err(ExecuteError::Store(e));
                }
            }
        }
    }

    /// The outcome of a command whose events the store already held (`appended` is where).
    async fn repeat(
        &self,
        stream: &StreamId,
        appended: AppendResult,
        loaded: Loaded<A>,
        retries: u32,
    ) -> Result<Outcome<A>, Error> {
        let count = usize::try_from(appended.count()).unwrap_or(usize::MAX);
        let recorded: Vec<RecordedEvent> = self
            .inner
            .store
            .read_stream(
                stream,
                ReadStream::forward()
                    .from(appended.first_version)
                    .limit(count),
            )
            .try_collect()
            .await?;
        let events = recorded
            .iter()
            .map(|r| self.decode_event(r))
            .collect::<Result<Vec<_>, _>>()?;
        let loaded = if loaded.version >= appended.last_version {
            loaded
        } else {
            self.catch_up(stream, loaded).await?
        };
        Ok(Outcome {
            events,
            appended: Some(appended),
            state: loaded.state,
            version: loaded.version,
            repeated: true,
            retries,
        })
    }

    /// Searches the stream's latest events for the events of `command_id`.
    async fn find_earlier_execution(
        &self,
        stream: &StreamId,
        command_id: Uuid,
        loaded: &Loaded<A>,
        retries: u32,
    ) -> Result<Option<Outcome<A>>, Error> {
        let window = self.inner.idempotency_window;
        if window == 0 {
            return Ok(None);
        }
        let first_id = EventId::derived(command_id, 0);
        let mut found = Vec::new();
        let mut reader = self
            .inner
            .store
            .read_stream(stream, ReadStream::backward().limit(window));
        while let Some(recorded) = reader.try_next().await? {
            if recorded.metadata.causation_id == Some(command_id) {
                let first = recorded.id == first_id;
                found.push(recorded);
                if first {
                    break;
                }
            }
        }
        if found.last().map(|r| r.id) != Some(first_id) {
            return Ok(None);
        }
        found.reverse();
        let ours = found
            .iter()
            .enumerate()
            .all(|(i, r)| r.id == EventId::derived(command_id, i as u32));
        let (Some(first), Some(last)) = (found.first(), found.last()) else {
            return Ok(None);
        };
        if !ours {
            return Ok(None);
        }
        let appended = AppendResult {
            first_version: first.version,
            last_version: last.version,
            first_position: first.position,
            last_position: last.position,
        };
        let events = found
            .iter()
            .map(|r| self.decode_event(r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Outcome {
            events,
            appended: Some(appended),
            state: loaded.state.clone(),
            version: loaded.version,
            repeated: true,
            retries,
        }))
    }

    fn encode_events(
        &self,
        events: &[A::Event],
        context: &CommandContext,
    ) -> Result<Vec<EventData>, Error> {
        let codec = &self.inner.codecs.writer;
        let metadata = context.metadata(Timestamp::now());
        events
            .iter()
            .enumerate()
            .map(|(i, event)| {
                Ok(EventData {
                    id: context.event_id(i as u32),
                    event_type: event.event_type().to_owned(),
                    schema_version: event.schema_version(),
                    content_type: codec.content_type().to_owned(),
                    payload: event.encode(codec)?.into(),
                    metadata: metadata.clone(),
                })
            })
            .collect()
    }

    /// Decodes a stored event: checks its type, upcasts it to the current schema version and
    /// decodes it with the codec named by its content type.
    fn decode_event(&self, recorded: &RecordedEvent) -> Result<A::Event, Error> {
        let Some(current) = A::Event::current_schema_version(&recorded.event_type) else {
            return Err(Error::UnknownEventType {
                event_type: recorded.event_type.clone(),
                schema_version: recorded.schema_version,
            });
        };
        let payload: Cow<'_, [u8]> = if recorded.schema_version < current {
            Cow::Owned(self.inner.upcasters.upcast(
                &recorded.event_type,
                recorded.schema_version,
                &recorded.content_type,
                &recorded.payload,
                current,
            )?)
        } else if recorded.schema_version > current {
            return Err(Error::Upcast {
                event_type: recorded.event_type.clone(),
                schema_version: recorded.schema_version,
                reason: format!(
                    "stored at a schema version newer than this reader's current version {current}"
                ),
            });
        } else {
            Cow::Borrowed(&recorded.payload)
        };
        with_codec!(self.inner.codecs, &recorded.content_type, |codec| {
            A::Event::decode(codec, &recorded.event_type, &payload)
        })
        .unwrap_or_else(|| {
            Err(Error::UnknownContentType {
                content_type: recorded.content_type.clone(),
                event_type: recorded.event_type.clone(),
            })
        })
    }

    /// The current state: cached and caught up, else from a snapshot, else replayed.
    async fn load_current(&self, stream: &StreamId) -> Result<Loaded<A>, Error> {
        if let Some((version, state)) = self.inner.cache.get(stream) {
            let loaded = Loaded {
                state,
                version,
                replayed: 0,
                snapshot: None,
                cached: true,
            };
            return self.catch_up(stream, loaded).await;
        }
        let mut loaded = Loaded {
            state: A::default(),
            version: Version::EMPTY,
            replayed: 0,
            snapshot: None,
            cached: false,
        };
        if let Some((version, state)) = self.usable_snapshot(stream).await {
            loaded.state = state;
            loaded.version = version;
            loaded.snapshot = Some(version);
        }
        let loaded = self.catch_up(stream, loaded).await?;
        if let Some(n) = self.inner.snapshots.interval() {
            if loaded.replayed >= n {
                self.save_snapshot(stream, loaded.version, &loaded.state)
                    .await;
            }
        }
        Ok(loaded)
    }

    /// Folds the events after `loaded.version` into it and caches the result.
    async fn catch_up(&self, stream: &StreamId, mut loaded: Loaded<A>) -> Result<Loaded<A>, Error> {
        let mut reader = self
            .inner
            .store
            .read_stream(stream, ReadStream::forward().from(loaded.version.next()));
        while let Some(recorded) = reader.next().await {
            let recorded = recorded?;
            let event = self.decode_event(&recorded)?;
            loaded.state.apply(&event);
            loaded.version = recorded.version;
            loaded.replayed += 1;
        }
        if !loaded.version.is_empty() {
            self.inner
                .cache
                .put(stream, loaded.version, loaded.state.clone());
        }
        Ok(loaded)
    }

    /// Folds the stream from its first event up to `until`, bypassing cache and snapshots.
    async fn replay(&self, stream: &StreamId, until: Until) -> Result<Loaded<A>, Error> {
        let span = tracing::debug_span!(
            "replay",
            aggregate = A::TYPE,
            stream = %stream,
            version = Empty,
            events = Empty,
            duration_us = Empty,
        );
        let started = Instant::now();
        async {
            let options = match until {
                Until::Version(v) => {
                    ReadStream::forward().limit(usize::try_from(v.get()).unwrap_or(usize::MAX))
                }
                Until::Time(_) => ReadStream::forward(),
            };
            let mut reader = self.inner.store.read_stream(stream, options);
            let mut loaded = Loaded {
                state: A::default(),
                version: Version::EMPTY,
                replayed: 0,
                snapshot: None,
                cached: false,
            };
            while let Some(recorded) = reader.try_next().await? {
                if let Until::Time(t) = until {
                    if recorded.recorded_at > t {
                        break;
                    }
                }
                let event = self.decode_event(&recorded)?;
                loaded.state.apply(&event);
                loaded.version = recorded.version;
                loaded.replayed += 1;
            }
            let span = tracing::Span::current();
            span.record("version", loaded.version.get());
            span.record("events", loaded.replayed);
            span.record("duration_us", micros(started));
            Ok(loaded)
        }
        .instrument(span)
        .await
    }

    /// The stream's snapshot if it has the current schema version and decodes; otherwise
    /// `None`, with a log line saying why.
    async fn usable_snapshot(&self, stream: &StreamId) -> Option<(Version, A)> {
        // Snapshots are read whatever the policy: one saved under another configuration is as
        // valid a fold of the stream.
        let snapshot: Snapshot = match self.inner.store.load_snapshot(stream).await {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(stream = %stream, error = %e, "cannot load the snapshot; replaying the stream");
                return None;
            }
        };
        if snapshot.schema_version != A::SNAPSHOT_VERSION {
            tracing::info!(
                stream = %stream,
                snapshot_schema = snapshot.schema_version,
                current_schema = A::SNAPSHOT_VERSION,
                "ignoring a snapshot of another state schema version; replaying the stream"
            );
            return None;
        }
        match self
            .inner
            .codecs
            .decode::<A>(&snapshot.content_type, A::TYPE, &snapshot.payload)
        {
            Ok(state) => Some((snapshot.version, state)),
            Err(e) => {
                tracing::warn!(stream = %stream, version = snapshot.version.get(), error = %e, "cannot decode the snapshot; replaying the stream");
                None
            }
        }
    }

    /// Loads the aggregate `id` and saves its current state as a snapshot now, whatever the
    /// [`SnapshotPolicy`]: the version snapshotted, or `None` for an aggregate without events.
    ///
    /// Unlike the snapshots the policy takes during commands, a failure here is returned.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load); [`Error::Codec`] when the state cannot be encoded; the store's
    /// error when the snapshot cannot be saved.
    pub fn take_snapshot(
        &self,
        id: impl fmt::Display,
    ) -> impl Future<Output = Result<Option<Version>, Error>> + Send + '_ {
        let stream = self.stream_id(id);
        async move {
            let stream = stream?;
            let loaded = self.load_current(&stream).await?;
            if loaded.version.is_empty() {
                return Ok(None);
            }
            let codec = &self.inner.codecs.writer;
            let payload = codec.encode(&loaded.state).map_err(|source| Error::Codec {
                content_type: codec.content_type().to_owned(),
                event_type: A::TYPE.to_owned(),
                source,
            })?;
            self.inner
                .store
                .save_snapshot(Snapshot {
                    stream_id: stream.clone(),
                    version: loaded.version,
                    schema_version: A::SNAPSHOT_VERSION,
                    content_type: codec.content_type().to_owned(),
                    payload: payload.into(),
                    taken_at: Timestamp::now(),
                })
                .await?;
            Ok(Some(loaded.version))
        }
    }

    /// Saves a snapshot of `state` at `version`; failures are logged, never returned.
    async fn save_snapshot(&self, stream: &StreamId, version: Version, state: &A) {
        let codec = &self.inner.codecs.writer;
        let payload = match codec.encode(state) {
            Ok(payload) => payload,
            Err(e) => {
                tracing::warn!(stream = %stream, version = version.get(), error = %e, "cannot encode a snapshot; the command is not affected");
                return;
            }
        };
        let snapshot = Snapshot {
            stream_id: stream.clone(),
            version,
            schema_version: A::SNAPSHOT_VERSION,
            content_type: codec.content_type().to_owned(),
            payload: payload.into(),
            taken_at: Timestamp::now(),
        };
        match self.inner.store.save_snapshot(snapshot).await {
            Ok(()) => {
                tracing::debug!(stream = %stream, version = version.get(), "snapshot saved");
            }
            Err(e) => {
                tracing::warn!(stream = %stream, version = version.get(), error = %e, "cannot save a snapshot; the command is not affected");
            }
        }
    }
}

fn envelope<E>(event: E, recorded: RecordedEvent) -> Envelope<E> {
    Envelope {
        event,
        version: recorded.version,
        position: recorded.position,
        recorded_at: recorded.recorded_at,
        id: recorded.id,
        metadata: recorded.metadata,
    }
}
