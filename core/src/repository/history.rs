//! The state as it was: folds from the first event, without cache or snapshot, for audit and
//! replay.

use std::fmt;
use std::future::{self, Future};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use tracing::field::Empty;
use tracing::Instrument;

use super::load::Start;
use super::{micros, Changes, Loaded, Repository};
use crate::codec::Codec;
use crate::{
    Aggregate, Envelope, Error, EventStore, ReadStream, RecordedEvent, SnapshotStore, StreamId,
    Timestamp, Version,
};

/// Where a replay stops.
#[derive(Clone, Copy, Debug)]
enum Until {
    Version(Version),
    Time(Timestamp),
}

impl<A, S, C> Repository<A, S, C>
where
    A: Aggregate,
    S: EventStore + SnapshotStore,
    C: Codec,
{
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
            let reader = self.inner.store.read_stream(&stream, up_to(to));
            let start = Loaded::<A>::starting(Start::Initial);
            let mut before = from.is_empty().then(|| start.state.clone());
            let mut events = Vec::new();
            let after = self
                .fold(reader, start, |loaded, event, recorded| {
                    if loaded.version == from {
                        before = Some(loaded.state.clone());
                    } else if loaded.version > from {
                        events.push(envelope(event, recorded));
                    }
                })
                .await?;
            // A `from` past the stream's end is capped at it.
            let (before, from) = match before {
                Some(before) => (before, from),
                None => (after.state.clone(), after.version),
            };
            Ok(Changes {
                before,
                after: after.state,
                from,
                to: after.version,
                events,
            })
        }
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
            let reader = match until {
                Until::Version(v) => self.inner.store.read_stream(stream, up_to(v)),
                // The first event recorded after `t` ends the replay, even if a later one
                // carries an earlier timestamp: a state is a prefix of the stream.
                Until::Time(t) => self
                    .inner
                    .store
                    .read_stream(stream, ReadStream::forward())
                    .try_take_while(move |recorded| future::ready(Ok(recorded.recorded_at <= t)))
                    .boxed(),
            };
            let loaded = self
                .fold(reader, Loaded::starting(Start::Initial), |_, _, _| {})
                .await?;
            let span = tracing::Span::current();
            span.record("version", loaded.version.get());
            span.record("events", loaded.replayed);
            span.record("duration_us", micros(started));
            Ok(loaded)
        }
        .instrument(span)
        .await
    }
}

/// Reads a stream from its first event up to `version`.
fn up_to(version: Version) -> ReadStream {
    ReadStream::forward().limit(usize::try_from(version.get()).unwrap_or(usize::MAX))
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
