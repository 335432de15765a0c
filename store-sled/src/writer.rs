//! The writer: the one place appends are checked, given positions and applied to sled.
//!
//! Appends queue up and commit as groups: everything queued is taken at once and each append is
//! checked (expected versions and idempotency against the store, the group's earlier appends
//! included) and framed as ONE commit record in the log (`log.rs`), which holds all its events
//! and is therefore atomic; the group's frames are written at once before anyone is answered.
//! Nothing is written to sled on this path: the locators and the derived indexes follow in
//! bulk (`overlay.rs`). Exactly one committer runs at a time, so exactly one writer
//! assigns positions. A restore (`EventStore::restore`) queues like an append and is committed in
//! the same groups: checked with the kit's `plan_restore` against the same heads and ids, and
//! written as mixed commit records (see [`Plan::restore`]). Who runs it depends on the durability:
//!
//! - [`Durability::Flush`]: the flusher thread (`flusher.rs`), which calls [`Writer::commit`]
//!   through the function the store gave it. Each turn it takes everything that queued while
//!   the previous flush ran, frames and writes it and syncs the log once. A lone appender skips the
//!   two thread hand-offs: when it finds the writer idle (nothing queued, no turn running, and
//!   the last group was not a crowd) on a multi-thread tokio runtime, it commits and flushes its
//!   own append inline, inside `block_in_place`, holding the same `leading` flag the flusher
//!   holds for a turn, and flushes with the flusher's own flush-and-publish step. Appends
//!   arriving meanwhile queue, and the flusher commits them as one group once the inline commit
//!   is done.
//! - [`Durability::Buffered`]: the appending task itself. Whoever finds no commit running
//!   becomes the *leader* (the `leading` flag of the commit state, `commit_state.rs`), commits
//!   what is queued, looks again until the queue is empty, and hands leadership to a fresh task
//!   after [`MAX_ROUNDS`] groups so its own caller is not held up. Without an `fsync` to amortise, a hand-off to a writer
//!   thread and back (two wake-ups) would cost more than the batch itself.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use annals::store::kit::{plan_restore, resolve_retry, StoredEventRef, StreamHead};
use annals::{
    AppendResult, Error, EventId, Position, RestoreResult, RestoredEvent, Result, StreamId,
    Timestamp, Version,
};
use tokio::sync::oneshot;

use crate::commit_state::{CommitState, Pending, PendingAppend, Submitted};
use crate::error::panic_message;
use crate::format::{self, Head, MixedEvent};
use crate::log::{Loc, Log, LogMark};
use crate::lookup::{lookup_id, lookup_sorted_ids, read_head};
use crate::num::{micros, u64_from};
use crate::overlay::{CommitInfo, Overlay, INDEX_AT, INDEX_HARD};
use crate::Durability;

/// Most events of one mixed commit record (a restore's): a read of one of them reads the whole
/// record, so records stay small.
pub(crate) const MIXED_EVENTS: usize = 16;
/// Body bytes past which a mixed commit record takes no further event.
const MIXED_BYTES: usize = 16 * 1024;

/// Groups one leader commits before handing leadership over.
const MAX_ROUNDS: usize = 16;
/// Stream heads the writer keeps in memory; past it the cache starts over (heads are then read
/// from the overlay and sled again, a lookup each).
const MAX_HEADS: usize = 50_000;

#[derive(Debug)]
pub(crate) struct Writer {
    tree: sled::Tree,
    /// The log's segment files: the commit records go there, their locators to sled.
    log: Arc<Log>,
    /// The queue, the `leading` flag and what the flusher owes, shared with the flusher.
    state: Arc<CommitState>,
    /// The next position to give; only the leader touches it.
    next_position: AtomicU64,
    overlay: Arc<Overlay>,
    /// Heads of the streams appended to lately. The writer is the only writer, so what it
    /// cached is authoritative.
    heads: Mutex<HashMap<StreamId, Head>>,
    /// The largest event id stored (as big-endian bytes, the index's order; zeros when none).
    /// An id above it cannot be stored, so it needs no lookup: nearly every fresh UUID v7.
    max_id: Mutex<[u8; 16]>,
}

/// Where the log ends when the store opens.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LogEnd {
    /// The last position written (0 when empty).
    pub(crate) position: u64,
    /// The largest event id stored (zeros when none).
    pub(crate) max_id: [u8; 16],
}

impl Writer {
    pub(crate) fn new(
        tree: sled::Tree,
        log: Arc<Log>,
        end: LogEnd,
        state: Arc<CommitState>,
        overlay: Arc<Overlay>,
    ) -> Self {
        Writer {
            tree,
            log,
            state,
            next_position: AtomicU64::new(end.position + 1),
            overlay,
            heads: Mutex::new(HashMap::new()),
            max_id: Mutex::new(end.max_id),
        }
    }

    /// Queues `pending` (or, for a lone durable appender, commits it inline); the caller then
    /// awaits its reply.
    pub(crate) fn submit(self: &Arc<Self>, pending: Pending) -> Result<()> {
        let may_inline = self.state.durability() == Durability::Flush && on_multi_thread_runtime();
        match self.state.submit(pending, may_inline)? {
            Submitted::Inline(pending) => self.commit_inline(pending),
            Submitted::Queued => {}
            Submitted::Lead => self.lead(),
        }
        Ok(())
    }

    /// Commits and flushes `pending` on the calling thread (the writer was idle and the
    /// `leading` flag is ours), then gives the flag back and hands whatever queued meanwhile to
    /// the flusher. The caller's reply is sent before the flush, but the caller reads it only
    /// after this returns and then waits for the durable position as every appender does, so it
    /// is answered after the flush; nothing becomes visible before it either.
    fn commit_inline(&self, pending: Pending) {
        struct Resign<'a>(&'a CommitState, bool);
        impl Drop for Resign<'_> {
            fn drop(&mut self) {
                // Reached armed only if the commit panicked: let the flusher go on.
                if self.1 {
                    self.0.end_inline(true);
                }
            }
        }
        let mut guard = Resign(&self.state, true);
        // The runtime's other workers keep running tasks while this one waits for the disk.
        tokio::task::block_in_place(|| {
            if let Some(last) = self.commit(vec![pending]) {
                self.state
                    .flush_and_publish(&self.tree, &self.overlay, last, None, false);
                self.state.wake_indexer_if_due(&self.overlay);
            }
        });
        guard.1 = false;
        self.state.end_inline(false);
    }

    /// Commits groups until the queue is empty (or hands over after [`MAX_ROUNDS`]).
    fn lead(self: &Arc<Self>) {
        struct Resign<'a>(&'a CommitState, bool);
        impl Drop for Resign<'_> {
            fn drop(&mut self) {
                // Only reached armed if a commit panicked: let the next caller lead.
                if self.1 {
                    self.0.resign();
                }
            }
        }
        let mut guard = Resign(&self.state, true);
        for _ in 0..MAX_ROUNDS {
            let Some(group) = self.state.next_led_group() else {
                guard.1 = false;
                return;
            };
            if let Some(last) = self.commit(group) {
                self.state.written(last);
            }
        }
        // Others kept arriving: let a fresh task lead, so our own caller gets its answer.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            guard.1 = false;
            let writer = self.clone();
            runtime.spawn(async move { writer.lead() });
        } else {
            drop(guard);
            self.lead();
        }
    }

    /// Checks and writes `group`, answers every caller, and returns the last position written
    /// (none if every append was refused or a retry); the caller tells the flusher.
    pub(crate) fn commit(&self, group: Vec<Pending>) -> Option<u64> {
        let span = tracing::debug_span!(
            "sled.commit",
            appends = group.len(),
            events = tracing::field::Empty,
            bytes = tracing::field::Empty,
            position = tracing::field::Empty,
            apply_us = tracing::field::Empty,
        );
        let _enter = span.enter();
        let started = Instant::now();
        let first_position = self.next_position.load(Ordering::Relaxed);
        let written =
            std::panic::catch_unwind(AssertUnwindSafe(|| self.write_group(group, first_position)));
        let (answers, next, bytes) = match written {
            Ok(written) => written,
            Err(panic) => {
                // Sled panics on some damaged files. Part of the group may be written, at
                // positions the writer no longer knows: take no further appends (their callers
                // learn the store is closed).
                let reason = panic_message(&*panic);
                tracing::error!(%reason, "the writer stopped: sled's files may be damaged");
                self.state.refuse_appends();
                return None;
            }
        };
        let written = (next > first_position).then(|| next - 1);
        if let Some(last) = written {
            span.record("events", next - first_position);
            span.record("bytes", u64_from(bytes));
            span.record("position", last);
            span.record("apply_us", micros(started.elapsed()));
            self.next_position.store(next, Ordering::Relaxed);
            if self.state.durability() != Durability::Flush {
                self.state.publish_applied(last);
            }
            self.keep_index_up();
        }
        for answer in answers {
            answer.send();
        }
        written
    }

    /// Checks and writes each append of `group` from position `first_position` on. Returns
    /// the answers to send, the next free position and the bytes written.
    fn write_group(&self, group: Vec<Pending>, first_position: u64) -> (Vec<Answer>, u64, usize) {
        let mut heads = self.heads.lock().unwrap_or_else(|e| e.into_inner());
        let mut max_id = self.max_id.lock().unwrap_or_else(|e| e.into_inner());
        let mut plan = Plan {
            writer: self,
            heads: &mut heads,
            max_id: &mut max_id,
            next: first_position,
            recorded_at: Timestamp::now(),
            bytes: 0,
        };
        let mut answers = Vec::with_capacity(group.len());
        for pending in group {
            answers.push(match pending {
                Pending::Append(append) => {
                    let outcome = plan.add(&append);
                    Answer::Append(append.reply, outcome)
                }
                Pending::Restore(restore) => {
                    let outcome = plan.restore(restore.events, restore.bodies);
                    Answer::Restore(restore.reply, outcome)
                }
            });
        }
        let (next, bytes) = (plan.next, plan.bytes);
        // With `Durability::Flush` the group's frames reach the files before any of it is
        // answered (a sync follows); with `Buffered`, every 64 KiB, and whenever a reader or a
        // sync needs them.
        let written = if self.state.durability() == Durability::Flush {
            self.log.write_out()
        } else {
            self.log.write_out_some()
        };
        if let Err(error) = written {
            tracing::error!(%error, "writing the log failed: the writer stopped");
            self.state.refuse_appends();
            let answers = answers.into_iter().map(|a| a.failed(&error)).collect();
            return (answers, first_position, 0);
        }
        (answers, next, bytes)
    }

    /// Keeps the overlay from growing: asks the indexer to run, or, when it fell far behind,
    /// indexes here.
    fn keep_index_up(&self) {
        let unindexed = self.overlay.events();
        if unindexed >= INDEX_HARD {
            // The indexer fell behind: do its work here rather than let memory grow.
            let visible = self.state.visible();
            if let Err(error) = self.overlay.try_index(&self.tree, visible) {
                tracing::error!(%error, "writing index entries failed; will retry");
            }
        } else if unindexed >= INDEX_AT && self.state.durability() != Durability::Flush {
            self.overlay.wake_indexer();
        }
    }
}

/// A caller's reply channel and what to answer it.
enum Answer {
    Append(oneshot::Sender<Result<AppendResult>>, Result<AppendResult>),
    Restore(
        oneshot::Sender<Result<(RestoreResult, u64)>>,
        Result<(RestoreResult, u64)>,
    ),
}

impl Answer {
    /// The answer when the group's frames could not be written: whether they reached the
    /// files is unknown.
    fn failed(self, error: &Error) -> Answer {
        let reason = || {
            Error::backend(
                "sled",
                format!("writing the log failed, the outcome is unknown: {error}"),
            )
        };
        match self {
            Answer::Append(reply, Ok(_)) => Answer::Append(reply, Err(reason())),
            Answer::Restore(reply, Ok(_)) => Answer::Restore(reply, Err(reason())),
            refused => refused,
        }
    }

    fn send(self) {
        // A caller that went away no longer wants its answer; what it wrote stands.
        match self {
            Answer::Append(reply, outcome) => {
                let _ = reply.send(outcome);
            }
            Answer::Restore(reply, outcome) => {
                let _ = reply.send(outcome);
            }
        }
    }
}

/// The mixed commit records holding the events a restore writes from position `first` on:
/// at most [`MIXED_EVENTS`] events each, and no further event once the bodies passed
/// [`MIXED_BYTES`]; each names the restore's last position.
pub(crate) fn mixed_records(
    first: u64,
    written: &[(RestoredEvent, Vec<u8>)],
) -> Vec<([u8; 17], Vec<u8>)> {
    let restore_last = first + u64_from(written.len()) - 1;
    let mut records = Vec::with_capacity(written.len() / MIXED_EVENTS + 1);
    let mut position = first;
    let mut rest = written;
    while !rest.is_empty() {
        let mut bytes = 0;
        let mut take = 0;
        for (_, body) in rest.iter().take(MIXED_EVENTS) {
            if take > 0 && bytes + body.len() > MIXED_BYTES {
                break;
            }
            bytes += body.len();
            take += 1;
        }
        let (chunk, tail) = rest.split_at(take);
        let key = format::commit_key(position, position + u64_from(take) - 1);
        let events: Vec<MixedEvent<'_>> = chunk
            .iter()
            .map(|(event, body)| MixedEvent {
                stream: event.stream_id.as_str(),
                version: event.version.get(),
                recorded_at: event.recorded_at,
                body,
            })
            .collect();
        records.push((key, format::mixed_value(&key, restore_last, &events)));
        position += u64_from(take);
        rest = tail;
    }
    records
}

/// Whether the calling task runs on a multi-thread tokio runtime, where `block_in_place` may
/// hold its thread for a flush (on a current-thread runtime it would panic).
///
/// Known limit: code running on a current-thread runtime that has *entered* a multi-thread
/// runtime's handle (`Handle::enter`) is reported as multi-thread here, and `block_in_place`
/// would then panic; tokio offers no public way to tell the two apart. Append from a task of
/// the runtime you entered (`handle.spawn`) in that setup.
fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// One group being committed, an append at a time.
struct Plan<'a> {
    writer: &'a Writer,
    /// The writer's cache of stream heads, updated as appends are written.
    heads: &'a mut HashMap<StreamId, Head>,
    /// The writer's largest stored id, raised as appends are written.
    max_id: &'a mut [u8; 16],
    next: u64,
    recorded_at: Timestamp,
    bytes: usize,
}

impl Plan<'_> {
    /// Checks one append against the store (its earlier appends included) and writes its
    /// commit record — one frame in the log, atomic — if it passes. A refused append writes nothing.
    fn add(&mut self, p: &PendingAppend) -> Result<AppendResult> {
        let ids: Vec<EventId> = p.events.iter().map(|e| e.id).collect();
        if let Some(first) = self.find_retry(&p.stream, &ids)? {
            return Ok(first);
        }
        let version = self.head(&p.stream)?.map_or(0, |h| h.version);
        p.expected.check(&p.stream, Version::new(version))?;
        let first = self.next;
        let last = first + u64_from(p.events.len()) - 1;
        self.write_commit(p, first, last, version + 1)?;
        self.next = last + 1;
        for id in &ids {
            *self.max_id = (*self.max_id).max(*id.as_uuid().as_bytes());
        }
        let info = CommitInfo {
            stream: p.stream.clone(),
            first_version: version + 1,
            first,
            recorded_at: self.recorded_at,
            ids,
        };
        let new_head = info.head();
        self.push_piece(info);
        Ok(AppendResult {
            first_version: Version::new(version + 1),
            last_version: Version::new(new_head.version),
            first_position: Position::sequence(first),
            last_position: Position::sequence(last),
        })
    }

    /// Checks a restore batch against the store (the group's earlier work included) with the
    /// kit's [`plan_restore`], and writes what it must: mixed commit records of at most
    /// [`MIXED_EVENTS`] events (see [`write_records`](Self::write_records) for why it is all or
    /// nothing, also across a crash). A refused batch writes nothing. Answers the result and the
    /// last position that must be durable before the caller is answered.
    fn restore(
        &mut self,
        events: Vec<RestoredEvent>,
        bodies: Vec<Vec<u8>>,
    ) -> Result<(RestoreResult, u64)> {
        let mut heads: HashMap<StreamId, StreamHead> = HashMap::new();
        for event in &events {
            if !heads.contains_key(&event.stream_id) {
                let head = self.head(&event.stream_id)?.map(|h| StreamHead {
                    version: Version::new(h.version),
                    last_recorded_at: Some(h.last_recorded_at),
                });
                heads.insert(event.stream_id.clone(), head.unwrap_or_default());
            }
        }
        let stored = self.stored_many(events.iter().map(|e| e.event.id))?;
        let present_through = stored
            .values()
            .map(|r| r.position.commit())
            .max()
            .unwrap_or(0);
        let ids: Vec<EventId> = events.iter().map(|e| e.event.id).collect();
        let plan = plan_restore(events, &heads, &stored)?;
        let present = plan.present;
        if plan.write.is_empty() {
            return Ok((RestoreResult::new(0, present, None), present_through));
        }
        // The bodies of the events to write: they are a subsequence of the batch, in order.
        let mut next_body = ids.iter().zip(bodies);
        let mut written = Vec::with_capacity(plan.write.len());
        for event in plan.write {
            let body = next_body
                .by_ref()
                .find_map(|(id, body)| (*id == event.event.id).then_some(body))
                .ok_or_else(|| Error::backend("sled", "a restored event lost its body"))?;
            written.push((event, body));
        }
        let first = self.next;
        let last = first + u64_from(written.len()) - 1;
        let records = mixed_records(first, &written);
        self.write_records(&records)?;
        self.next = last + 1;
        // The overlay and the heads: one piece per run of one stream's consecutive events.
        let mut piece: Option<CommitInfo> = None;
        for ((event, _), position) in written.into_iter().zip(first..) {
            *self.max_id = (*self.max_id).max(*event.event.id.as_uuid().as_bytes());
            if let Some(open) = piece.as_mut() {
                if open.stream == event.stream_id && open.last() + 1 == position {
                    open.ids.push(event.event.id);
                    open.recorded_at = event.recorded_at;
                    continue;
                }
            }
            if let Some(done) = piece.take() {
                self.push_piece(done);
            }
            piece = Some(CommitInfo {
                stream: event.stream_id,
                first_version: event.version.get(),
                first: position,
                recorded_at: event.recorded_at,
                ids: vec![event.event.id],
            });
        }
        if let Some(done) = piece {
            self.push_piece(done);
        }
        let result = RestoreResult::new(last - first + 1, present, Some(Position::sequence(last)));
        Ok((result, last.max(present_through)))
    }

    /// Frames a restore's commit records in the log, in position order. A crash part-way leaves
    /// the first records of the restore at the end of the log, each naming the restore's last
    /// position: the next open cuts them off (`recover.rs`), so the restore is all or nothing
    /// also across a crash. A failure takes back what was framed; should that fail too, the
    /// store takes no further appends.
    fn write_records(&mut self, records: &[([u8; 17], Vec<u8>)]) -> Result<()> {
        let mark = self.writer.log.mark();
        let mut framed = Vec::with_capacity(records.len());
        for (key, value) in records {
            self.bytes += value.len();
            match self.frame(key, value) {
                Ok(record) => framed.push(record),
                Err(error) => {
                    self.undo(mark);
                    return Err(Error::backend(
                        "sled",
                        format!(
                            "writing the restore's commit records failed, nothing written: \
                             {error}"
                        ),
                    ));
                }
            }
        }
        for (first, last, loc) in framed {
            self.writer.overlay.push_record(first, last, loc);
        }
        Ok(())
    }

    /// Frames one commit record in the log (its locator reaches sled with the index entries).
    fn frame(&self, key: &[u8; 17], value: &[u8]) -> Result<(u64, u64, Loc)> {
        let (first, last) = format::parse_commit_key(key)
            .ok_or_else(|| Error::backend("sled", "malformed commit key"))?;
        let loc = self.writer.log.append(first, last, value)?;
        Ok((first, last, loc))
    }

    /// Takes back what was framed since `mark`; should that fail, the store takes no further
    /// appends.
    fn undo(&self, mark: LogMark) {
        if !self.writer.log.rollback(mark) {
            tracing::error!("a failed write's frames cannot be taken back: the writer stopped");
            self.writer.state.refuse_appends();
        }
    }

    /// Adds a written commit (or piece of one) to the overlay and its stream's head to the
    /// cache.
    fn push_piece(&mut self, info: CommitInfo) {
        let stream = info.stream.clone();
        let head = info.head();
        self.writer.overlay.push(info);
        if self.heads.len() >= MAX_HEADS && !self.heads.contains_key(&stream) {
            self.heads.clear();
        }
        self.heads.insert(stream, head);
    }

    /// Whether the append is a retry of one already stored (its first result), a new one
    /// (`None`) or neither (an idempotency conflict).
    fn find_retry(&self, stream: &StreamId, ids: &[EventId]) -> Result<Option<AppendResult>> {
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            found.push(self.stored(*id)?);
        }
        resolve_retry(stream, ids, &found)
    }

    /// Where `id` is stored, if anywhere (an id above the largest stored one is not looked up).
    fn stored(&self, id: EventId) -> Result<Option<StoredEventRef>> {
        if id.as_uuid().as_bytes() > &*self.max_id {
            return Ok(None);
        }
        // The overlay first: an entry leaves it only after it reached sled's index.
        match self.writer.overlay.lookup_id(id) {
            Some(r) => Ok(Some(r)),
            None => lookup_id(&self.writer.tree, &self.writer.log, id),
        }
    }

    /// Where each of `ids` is stored, for those stored: as [`stored`](Self::stored) for each,
    /// the ids in sled's index looked up in order, so that each id segment is read once.
    fn stored_many(
        &self,
        ids: impl Iterator<Item = EventId>,
    ) -> Result<HashMap<EventId, StoredEventRef>> {
        let mut found = HashMap::new();
        let mut in_sled = Vec::new();
        for id in ids {
            if id.as_uuid().as_bytes() > &*self.max_id {
                continue;
            }
            // The overlay first: an entry leaves it only after it reached sled's index.
            match self.writer.overlay.lookup_id(id) {
                Some(r) => {
                    found.insert(id, r);
                }
                None => in_sled.push(id),
            }
        }
        in_sled.sort_unstable_by_key(|id| *id.as_uuid().as_bytes());
        in_sled.dedup();
        found.extend(lookup_sorted_ids(
            &self.writer.tree,
            &self.writer.log,
            &in_sled,
        )?);
        Ok(found)
    }

    /// The stream's head: cached, else unindexed, else stored.
    fn head(&self, stream: &StreamId) -> Result<Option<Head>> {
        if let Some(head) = self.heads.get(stream) {
            return Ok(Some(*head));
        }
        match self.writer.overlay.head(stream, u64::MAX) {
            Some(head) => Ok(Some(head)),
            None => read_head(&self.writer.tree, stream),
        }
    }

    /// Inserts the commit record of `p` at positions `first..=last`, its first event at
    /// `first_version`.
    fn write_commit(
        &mut self,
        p: &PendingAppend,
        first: u64,
        last: u64,
        first_version: u64,
    ) -> Result<()> {
        let key = format::commit_key(first, last);
        let value = format::commit_value(
            &key,
            self.recorded_at,
            p.stream.as_str(),
            first_version,
            p.events.iter().map(|e| e.body.as_slice()),
        );
        self.bytes += value.len();
        let mark = self.writer.log.mark();
        let (_, _, loc) = self.frame(&key, &value).map_err(|error| {
            self.undo(mark);
            Error::backend(
                "sled",
                format!("writing the commit record failed, nothing written: {error}"),
            )
        })?;
        self.writer.overlay.push_record(first, last, loc);
        Ok(())
    }
}
