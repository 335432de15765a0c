//! Loading the current state: the cached state or the newest usable snapshot, caught up with
//! the events after it.

use std::fmt;
use std::future::Future;
use std::time::Instant;

use futures::stream::BoxStream;
use futures::TryStreamExt;
use tracing::field::Empty;
use tracing::Instrument;

use super::{micros, Loaded, Repository};
use crate::codec::Codec;
use crate::{
    Aggregate, Error, EventStore, ReadStream, RecordedEvent, SnapshotStore, StreamId, Version,
};

/// What a fold starts from.
pub(super) enum Start<A> {
    /// The initial state, before the stream's first event.
    Initial,
    /// A snapshot's state at its version.
    Snapshot(Version, A),
    /// The cached state at its version.
    Cached(Version, A),
}

impl<A: Aggregate> Loaded<A> {
    /// `start`, with nothing folded into it yet.
    pub(super) fn starting(start: Start<A>) -> Self {
        let (state, version, snapshot, cached) = match start {
            Start::Initial => (A::default(), Version::EMPTY, None, false),
            Start::Snapshot(version, state) => (state, version, Some(version), false),
            Start::Cached(version, state) => (state, version, None, true),
        };
        Loaded {
            state,
            version,
            replayed: 0,
            snapshot,
            cached,
        }
    }
}

impl<A, S, C> Repository<A, S, C>
where
    A: Aggregate,
    S: EventStore + SnapshotStore,
    C: Codec,
{
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

    /// The current state: cached and caught up, else from a snapshot, else replayed.
    pub(super) async fn load_current(&self, stream: &StreamId) -> Result<Loaded<A>, Error> {
        if let Some((version, state)) = self.inner.cache.get(stream) {
            let loaded = Loaded::starting(Start::Cached(version, state));
            return self.catch_up(stream, loaded).await;
        }
        let start = match self.usable_snapshot(stream).await {
            Some((version, state)) => Start::Snapshot(version, state),
            None => Start::Initial,
        };
        let loaded = self.catch_up(stream, Loaded::starting(start)).await?;
        if let Some(n) = self.inner.snapshots.interval() {
            if loaded.replayed >= n {
                self.save_snapshot(stream, loaded.version, &loaded.state)
                    .await;
            }
        }
        Ok(loaded)
    }

    /// Folds the events after `loaded.version` into it and caches the result.
    pub(super) async fn catch_up(
        &self,
        stream: &StreamId,
        loaded: Loaded<A>,
    ) -> Result<Loaded<A>, Error> {
        let reader = self
            .inner
            .store
            .read_stream(stream, ReadStream::forward().from(loaded.version.next()));
        let loaded = self.fold(reader, loaded, |_, _, _| {}).await?;
        if !loaded.version.is_empty() {
            self.inner
                .cache
                .put(stream, loaded.version, loaded.state.clone());
        }
        Ok(loaded)
    }

    /// Folds every event `reader` yields into `loaded`, counting them in
    /// [`Loaded::replayed`]; `seen` gets each one right after it was applied.
    pub(super) async fn fold(
        &self,
        mut reader: BoxStream<'static, Result<RecordedEvent, Error>>,
        mut loaded: Loaded<A>,
        mut seen: impl FnMut(&Loaded<A>, A::Event, RecordedEvent),
    ) -> Result<Loaded<A>, Error> {
        while let Some(recorded) = reader.try_next().await? {
            let event = self.decode_event(&recorded)?;
            loaded.state.apply(&event);
            loaded.version = recorded.version;
            loaded.replayed += 1;
            seen(&loaded, event, recorded);
        }
        Ok(loaded)
    }
}
