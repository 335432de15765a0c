//! Command execution: handle, append at the version loaded, retry after conflicts, and
//! recognise an idempotent command executed before.

use std::fmt;
use std::future::Future;
use std::time::Instant;

use futures::TryStreamExt;
use tracing::field::Empty;
use tracing::Instrument;
use uuid::Uuid;

use super::load::Start;
use super::{micros, ExecuteError, Loaded, Outcome, Repository};
use crate::codec::Codec;
use crate::{
    Aggregate, AppendResult, CommandContext, DomainEvent, Error, EventData, EventId, EventStore,
    ExpectedVersion, ReadStream, RecordedEvent, SnapshotStore, StreamId, Timestamp,
};

impl<A, S, C> Repository<A, S, C>
where
    A: Aggregate,
    S: EventStore + SnapshotStore,
    C: Codec,
{
    /// Executes `command` on the aggregate `id`: loads it, lets it
    /// [`handle`](Aggregate::handle) the command, and appends the events at exactly the
    /// version loaded. When another writer moved the stream meanwhile, it catches up and
    /// handles the command again, up to
    /// [`max_conflict_retries`](super::RepositoryBuilder::max_conflict_retries) times.
    ///
    /// With a command id in `context`, the command is idempotent: its events get ids derived
    /// from the command id, so executing it again (say, a retry after a timeout) records
    /// nothing new and returns the first execution's events with [`Outcome::repeated`] set.
    /// The store recognises the ids when handling the command again reproduces the events;
    /// when it does not (the state moved on and the command is now rejected, or decides
    /// otherwise), the last [`idempotency_window`](super::RepositoryBuilder::idempotency_window)
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
            Some((version, state)) => (Loaded::starting(Start::Cached(version, state)), false),
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
            .all(|(i, r)| u32::try_from(i).is_ok_and(|i| r.id == EventId::derived(command_id, i)));
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
                let index = u32::try_from(i).map_err(|_| Error::InvalidEvent {
                    event_id: None,
                    reason: format!(
                        "a command emitted {} events; at most 2^32 fit one command's ids",
                        events.len()
                    ),
                })?;
                Ok(EventData {
                    id: context.event_id(index),
                    event_type: event.event_type().to_owned(),
                    schema_version: event.schema_version(),
                    content_type: codec.content_type().to_owned(),
                    payload: event.encode(codec)?.into(),
                    metadata: metadata.clone(),
                })
            })
            .collect()
    }
}
