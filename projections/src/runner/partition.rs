//! One partition: batches the events the reader hands it, commits each batch with its
//! checkpoint, retries, and applies the error policy to a poison event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use annals::{EventId, Position, RecordedEvent, StreamId, Timestamp};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Settings;
use crate::status::Board;
use crate::{
    Batch, CommitError, DeadLetter, DeadLetterKind, ErrorPolicy, Fence, PartitionKey, Projection,
    ProjectionError, ReadModel, Result,
};

/// What the reader (and the handle) send a partition.
#[derive(Debug)]
pub(crate) enum Msg {
    /// Events of this partition wanted by the projection, in log order (a page's share).
    Events(Vec<RecordedEvent>),
    /// Every event up to here was handed over.
    Scanned(Position),
    /// A swap made this generation active: an idle partition moves to it now (a busy one
    /// finds out at its next batch).
    Retired(u32),
    /// Retry or drop the parked events of a stream.
    Control {
        stream: StreamId,
        what: Control,
        reply: oneshot::Sender<Result<usize>>,
    },
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Control {
    Retry,
    Drop,
}

pub(super) struct PartitionTask<M, P> {
    pub(super) key: PartitionKey,
    pub(super) model: M,
    pub(super) projection: Arc<P>,
    pub(super) settings: Settings,
    pub(super) board: Arc<Board>,
    pub(super) checkpoint: Option<Position>,
    pub(super) dead: Vec<DeadLetter>,
    pub(super) progress: Arc<watch::Sender<u64>>,
    pub(super) cancel: CancellationToken,
    pub(super) failure: Arc<Mutex<Option<Arc<ProjectionError>>>>,
    /// The lease the partition is owned under (workers across processes).
    pub(super) fence: Option<Fence>,
    /// A newer active generation announced by `Msg::Retired`, to move to when idle.
    pub(super) retire_to: Option<u32>,
}

/// Sleeps for `wait`, or for ever without one.
async fn sleep_or_never(wait: Option<std::time::Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

/// How a batch that kept failing ended.
enum Failed {
    /// The handler failed on these events (after retries).
    Handler(annals::BoxError),
    /// The projection is shutting down: nothing of the batch was committed.
    Cancelled,
    /// Another owner has the partition: nothing was committed.
    Fenced,
    /// The batch's generation was swapped out (or its rebuild cancelled): nothing was
    /// committed; this generation is active now.
    Retired(u32),
}

impl<M: ReadModel, P: Projection<M>> PartitionTask<M, P> {
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        // Streams with parked events: their later events are parked behind the first.
        let mut parked: HashMap<StreamId, EventId> = HashMap::new();
        for letter in &self.dead {
            if letter.kind == DeadLetterKind::Parked {
                parked
                    .entry(letter.event.stream_id.clone())
                    .or_insert(letter.event.id);
                self.board.parked(self.key.partition, 1);
            }
        }
        let mut pending: Vec<RecordedEvent> = Vec::new();
        let mut scanned: Option<Position> = None;
        let mut last_commit = Instant::now();
        loop {
            // The first message of a batch, or the end; or, when the log was scanned past the
            // checkpoint and nothing came for `idle_checkpoint`, a commit of the checkpoint
            // alone (so an idle partition's saved checkpoint follows the log too).
            let idle_wait = (pending.is_empty() && scanned > self.checkpoint).then(|| {
                self.settings
                    .idle_checkpoint
                    .saturating_sub(last_commit.elapsed())
            });
            let first = tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => Some(msg),
                    None => break,
                },
                () = self.cancel.cancelled() => break,
                () = sleep_or_never(idle_wait) => None,
            };
            let mut controls = Vec::new();
            if let Some(first) = first {
                self.take(first, &mut pending, &mut scanned, &mut controls);
            }
            if !self.settings.max_wait.is_zero() {
                // Wait up to `max_wait` for a batch to fill (zero by default: a live event is
                // committed as soon as nothing else is queued behind it).
                let deadline = tokio::time::Instant::now() + self.settings.max_wait;
                while pending.len() < self.settings.batch_size && controls.is_empty() {
                    let next = tokio::select! {
                        msg = rx.recv() => msg,
                        () = tokio::time::sleep_until(deadline) => None,
                        () = self.cancel.cancelled() => None,
                    };
                    match next {
                        Some(msg) => self.take(msg, &mut pending, &mut scanned, &mut controls),
                        None => break,
                    }
                }
            }
            let mut idle_due = pending.is_empty()
                && scanned > self.checkpoint
                && last_commit.elapsed() >= self.settings.idle_checkpoint;
            loop {
                // Take what is already queued (while catching up, what arrived during the
                // last commit), up to a full batch.
                while pending.len() < self.settings.batch_size && controls.is_empty() {
                    match rx.try_recv() {
                        Ok(msg) => self.take(msg, &mut pending, &mut scanned, &mut controls),
                        Err(_) => break,
                    }
                }
                if pending.is_empty() && !idle_due {
                    break;
                }
                idle_due = false;
                // A full batch, and what is left waits to be topped up by the next pages;
                // or everything in hand, and the checkpoint moves on to `scanned`, past
                // everything handed over.
                let rest = pending.split_off(pending.len().min(self.settings.batch_size));
                let events = std::mem::replace(&mut pending, rest);
                let through = if pending.is_empty() { scanned } else { None };
                if let Err(stop) = self.commit_events(events, through, &mut parked).await {
                    if let Some(error) = stop {
                        self.stop(error);
                    }
                    return;
                }
                last_commit = Instant::now();
                if pending.is_empty() || self.cancel.is_cancelled() {
                    break;
                }
            }
            for (stream, what, reply) in controls {
                let answer = self.control(&stream, what, &mut parked).await;
                let _ = reply.send(answer);
            }
            if let Some(active) = self.retire_to.take() {
                // Idle after a swap: move now, so status shows the generation readers see.
                if pending.is_empty() && active > self.key.generation {
                    match self.switch(active, &mut parked).await {
                        Ok(()) => {}
                        Err(Some(error)) => {
                            self.stop(error);
                            return;
                        }
                        Err(None) => break,
                    }
                }
            }
        }
        // Shutting down: commit the batch in hand.
        if !pending.is_empty() || scanned > self.checkpoint {
            if let Err(Some(error)) = self.commit_events(pending, scanned, &mut parked).await {
                self.stop(error);
            }
        }
    }

    fn take(
        &mut self,
        msg: Msg,
        pending: &mut Vec<RecordedEvent>,
        scanned: &mut Option<Position>,
        controls: &mut Vec<(StreamId, Control, oneshot::Sender<Result<usize>>)>,
    ) {
        match msg {
            Msg::Events(events) => pending.extend(events),
            Msg::Scanned(position) => {
                *scanned = (*scanned).max(Some(position));
                self.board.scanned(self.key.partition, position);
                self.progress.send_modify(|n| *n += 1);
            }
            Msg::Retired(active) => self.retire_to = Some(active),
            Msg::Control {
                stream,
                what,
                reply,
            } => controls.push((stream, what, reply)),
        }
    }

    fn lost_ownership(&self) -> ProjectionError {
        ProjectionError::LostOwnership {
            projection: self.key.projection.clone(),
            partition: self.key.partition,
            epoch: self.fence.as_ref().map_or(0, |f| f.epoch),
        }
    }

    fn stop(&self, error: ProjectionError) {
        tracing::error!(projection = %self.key.projection, partition = self.key.partition, %error, "projection stopped");
        self.board.stopped(self.key.partition, error.to_string());
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        failure.get_or_insert_with(|| Arc::new(error));
        drop(failure);
        self.cancel.cancel();
        self.progress.send_modify(|n| *n += 1);
    }

    /// Commits `events` (and moves the checkpoint to `scanned` when that is further). `Err`
    /// ends the partition: `Some` error for the stop policy, `None` on shutdown.
    async fn commit_events(
        &mut self,
        mut events: Vec<RecordedEvent>,
        mut scanned: Option<Position>,
        parked: &mut HashMap<StreamId, EventId>,
    ) -> std::result::Result<(), Option<ProjectionError>> {
        loop {
            let through = events.last().map(|e| e.position).max(scanned);
            let Some(through) = through else {
                return Ok(());
            };
            // Without parked streams every event is handled: no copy of the batch.
            let split_events;
            let (handle, dead): (&[RecordedEvent], &[DeadLetter]) = if parked.is_empty() {
                (&events, &[])
            } else {
                split_events = split(&events, parked, self.key.partition);
                (&split_events.0, &split_events.1)
            };
            match self.commit(handle, dead, &[], through).await {
                Ok(()) => {
                    self.mark_parked(dead, parked);
                    self.committed(through, events.len());
                    return Ok(());
                }
                Err(Failed::Cancelled) => return Err(None),
                Err(Failed::Fenced) => return Err(Some(self.lost_ownership())),
                Err(Failed::Retired(active)) => {
                    // Swapped: go on in the new generation with what it does not have yet.
                    self.switch(active, parked).await?;
                    events.retain(|e| Some(e.position) > self.checkpoint);
                    scanned = scanned.filter(|s| Some(*s) > self.checkpoint);
                }
                Err(Failed::Handler(_)) => {
                    // Find the poison event: one event at a time, each with its own checkpoint.
                    for event in &events {
                        if Some(event.position) > self.checkpoint {
                            self.one(event, parked).await?;
                        }
                    }
                    if Some(through) > self.checkpoint {
                        events.clear();
                        scanned = Some(through);
                        match self.commit(&[], &[], &[], through).await {
                            Ok(()) => self.committed(through, 0),
                            Err(Failed::Cancelled) => return Err(None),
                            Err(Failed::Fenced) => return Err(Some(self.lost_ownership())),
                            Err(Failed::Retired(active)) => {
                                self.switch(active, parked).await?;
                                continue;
                            }
                            Err(Failed::Handler(_)) => {}
                        }
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Commits one event alone; when its handler keeps failing, applies the policy.
    async fn one(
        &mut self,
        event: &RecordedEvent,
        parked: &mut HashMap<StreamId, EventId>,
    ) -> std::result::Result<(), Option<ProjectionError>> {
        let single = std::slice::from_ref(event);
        let error = loop {
            if Some(event.position) <= self.checkpoint {
                return Ok(());
            }
            let (handle, dead) = split(single, parked, self.key.partition);
            match self.commit(&handle, &dead, &[], event.position).await {
                Ok(()) => {
                    self.mark_parked(&dead, parked);
                    self.committed(event.position, 1);
                    return Ok(());
                }
                Err(Failed::Cancelled) => return Err(None),
                Err(Failed::Fenced) => return Err(Some(self.lost_ownership())),
                Err(Failed::Retired(active)) => self.switch(active, parked).await?,
                Err(Failed::Handler(error)) => break error,
            }
        };
        let kind = match self.settings.policy {
            ErrorPolicy::Stop => {
                return Err(Some(ProjectionError::handler(
                    &self.key.projection,
                    event,
                    error,
                )))
            }
            ErrorPolicy::Skip => DeadLetterKind::Skipped,
            ErrorPolicy::Park => DeadLetterKind::Parked,
        };
        tracing::warn!(
            projection = %self.key.projection,
            partition = self.key.partition,
            stream = %event.stream_id,
            version = event.version.get(),
            position = %event.position,
            event_type = %event.event_type,
            %error,
            policy = ?kind,
            "handler failed on an event; set aside by the projection's policy"
        );
        let letter = DeadLetter {
            partition: self.key.partition,
            event: event.clone(),
            kind,
            reason: error.to_string(),
            at: Timestamp::now(),
        };
        let letters = std::slice::from_ref(&letter);
        match self.commit(&[], letters, &[], event.position).await {
            Ok(()) => {
                self.mark_parked(letters, parked);
                if kind == DeadLetterKind::Skipped {
                    self.board.skipped(self.key.partition);
                }
                self.committed(event.position, 1);
                Ok(())
            }
            Err(Failed::Cancelled) => Err(None),
            Err(Failed::Fenced) => Err(Some(self.lost_ownership())),
            // Swapped meanwhile: the new generation handles the event itself.
            Err(Failed::Retired(active)) => {
                self.switch(active, parked).await?;
                Box::pin(self.one(event, parked)).await
            }
            // Only the handler can fail a batch, and this one has nothing to handle.
            Err(Failed::Handler(error)) => Err(Some(ProjectionError::Store(
                annals::Error::backend("projections", error),
            ))),
        }
    }

    fn mark_parked(&self, letters: &[DeadLetter], parked: &mut HashMap<StreamId, EventId>) {
        for letter in letters {
            if letter.kind == DeadLetterKind::Parked {
                parked
                    .entry(letter.event.stream_id.clone())
                    .or_insert(letter.event.id);
                self.board.parked(self.key.partition, 1);
            }
        }
    }

    fn committed(&mut self, through: Position, count: usize) {
        self.checkpoint = self.checkpoint.max(Some(through));
        let count = u64::try_from(count).unwrap_or(u64::MAX);
        self.board
            .committed(self.key.partition, through, count, None);
        self.progress.send_modify(|n| *n += 1);
    }

    /// One atomic commit, retried: the read model's failures until they pass (or shutdown),
    /// the handler's as many times as the retry settings say.
    async fn commit(
        &self,
        handle: &[RecordedEvent],
        dead: &[DeadLetter],
        release: &[EventId],
        checkpoint: Position,
    ) -> std::result::Result<(), Failed> {
        let mut handler_failures = 0u32;
        let mut backend_failures = 0u32;
        loop {
            let batch = Batch {
                key: &self.key,
                handle,
                dead_letters: dead,
                release,
                checkpoint,
                fence: self.fence.as_ref(),
                rebuilding: self.settings.rebuilding,
            };
            // One span per batch: what the handler and the read model do is nested in it.
            let span = tracing::debug_span!(
                "projection_batch",
                projection = %self.key.projection,
                partition = self.key.partition,
                first = handle.first().map(|e| e.position.to_string()).as_deref(),
                last = %checkpoint,
                count = handle.len(),
                duration_us = tracing::field::Empty,
                ok = tracing::field::Empty,
            );
            let started = Instant::now();
            let result = self
                .model
                .commit(&*self.projection, batch)
                .instrument(span.clone())
                .await;
            span.record(
                "duration_us",
                u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            );
            span.record("ok", result.is_ok());
            let wait = match result {
                Ok(()) => return Ok(()),
                Err(CommitError::Handler(error)) => {
                    handler_failures += 1;
                    if handler_failures > self.settings.retry.attempts {
                        return Err(Failed::Handler(error));
                    }
                    self.board
                        .error(self.key.partition, format!("handler failed: {error}"));
                    self.settings.retry.backoff(handler_failures)
                }
                Err(CommitError::Fenced) => return Err(Failed::Fenced),
                Err(CommitError::Retired { active }) => return Err(Failed::Retired(active)),
                Err(CommitError::Backend(error)) => {
                    backend_failures += 1;
                    tracing::warn!(projection = %self.key.projection, partition = self.key.partition, %error, "committing a batch failed; retrying");
                    self.board
                        .error(self.key.partition, format!("read model: {error}"));
                    self.settings.retry.backoff(backend_failures)
                }
            };
            tokio::select! {
                () = self.cancel.cancelled() => return Err(Failed::Cancelled),
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Retries or drops the parked events of `stream`.
    async fn control(
        &mut self,
        stream: &StreamId,
        what: Control,
        parked: &mut HashMap<StreamId, EventId>,
    ) -> Result<usize> {
        let letters: Vec<DeadLetter> = self
            .model
            .dead_letters(&self.key.projection, self.key.generation)
            .await?
            .into_iter()
            .filter(|l| {
                l.partition == self.key.partition
                    && l.kind == DeadLetterKind::Parked
                    && &l.event.stream_id == stream
            })
            .collect();
        if letters.is_empty() {
            return Err(ProjectionError::NotParked {
                projection: self.key.projection.clone(),
                what: format!("of stream `{stream}`"),
            });
        }
        let ids: Vec<EventId> = letters.iter().map(|l| l.event.id).collect();
        let events: Vec<RecordedEvent> = letters.into_iter().map(|l| l.event).collect();
        let handle: &[RecordedEvent] = match what {
            Control::Retry => &events,
            Control::Drop => &[],
        };
        let checkpoint = self.checkpoint.unwrap_or(Position::START);
        match self.commit(handle, &[], &ids, checkpoint).await {
            Ok(()) => {
                parked.remove(stream);
                let n = i64::try_from(ids.len()).unwrap_or(i64::MAX);
                self.board.parked(self.key.partition, -n);
                self.progress.send_modify(|n| *n += 1);
                Ok(ids.len())
            }
            Err(Failed::Cancelled) => Err(ProjectionError::Store(annals::Error::Closed)),
            Err(Failed::Fenced) => Err(self.lost_ownership()),
            Err(Failed::Retired(active)) => {
                // The parked events are the old generation's: ask again in the new one.
                match self.switch(active, parked).await {
                    Ok(()) => Err(ProjectionError::Retired {
                        projection: self.key.projection.clone(),
                        generation: self.key.generation,
                        active,
                    }),
                    Err(Some(error)) => Err(error),
                    Err(None) => Err(ProjectionError::Store(annals::Error::Closed)),
                }
            }
            Err(Failed::Handler(source)) => Err(ProjectionError::handler(
                &self.key.projection,
                &events[0],
                source,
            )),
        }
    }
}

/// Splits events into those to handle and those parked behind an earlier event of their
/// stream.
fn split(
    events: &[RecordedEvent],
    parked: &HashMap<StreamId, EventId>,
    partition: u32,
) -> (Vec<RecordedEvent>, Vec<DeadLetter>) {
    let mut handle = Vec::with_capacity(events.len());
    let mut dead = Vec::new();
    for event in events {
        match parked.get(&event.stream_id) {
            Some(first) => dead.push(DeadLetter {
                partition,
                event: event.clone(),
                kind: DeadLetterKind::Parked,
                reason: format!("waits behind parked event {first} of its stream"),
                at: Timestamp::now(),
            }),
            None => handle.push(event.clone()),
        }
    }
    (handle, dead)
}
