//! The writer: the one place appends are checked, given positions and applied to sled.
//!
//! Appends queue up and commit as groups: everything queued is taken at once and each append is
//! checked (expected versions and idempotency against the store, the group's earlier appends
//! included) and written as ONE sled insert: its commit record, which holds all its events and
//! is therefore atomic. No sled batch is on this path: with sled 0.34 every `apply_batch` rolls
//! the I/O buffer (`pin_log`), a write of its own costing ≈ 20 plain inserts. The derived indexes
//! follow in bulk (`overlay.rs`). Exactly one committer runs at a time, so exactly one writer
//! assigns positions. Who runs it depends on the durability:
//!
//! - [`Durability::Flush`]: the flusher thread (`flusher.rs`), which calls [`Writer::commit`]
//!   through the function the store gave it. Each turn it takes everything that queued while
//!   the previous flush ran, writes it (n inserts) and flushes once. A lone appender skips the
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use annals::store::kit::resolve_retry;
use annals::{AppendResult, Error, EventId, Position, Result, StreamId, Timestamp, Version};

use crate::commit_state::{CommitState, Pending, Submitted};
use crate::format::{self, Head};
use crate::lookup::{lookup_id, read_head};
use crate::num::{micros, u64_from};
use crate::overlay::{CommitInfo, Overlay, INDEX_AT, INDEX_HARD};
use crate::Durability;

/// Groups one leader commits before handing leadership over.
const MAX_ROUNDS: usize = 16;
/// Stream heads the writer keeps in memory; past it the cache starts over (heads are then read
/// from the overlay and sled again, a lookup each).
const MAX_HEADS: usize = 50_000;

#[derive(Debug)]
pub(crate) struct Writer {
    tree: sled::Tree,
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
        end: LogEnd,
        state: Arc<CommitState>,
        overlay: Arc<Overlay>,
    ) -> Self {
        Writer {
            tree,
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
                    .flush_and_publish(&self.tree, &self.overlay, last, None);
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
        let (answers, next, bytes) = self.write_group(group, first_position);
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
        for (reply, outcome) in answers {
            // A caller that went away no longer wants its answer; its append stands.
            let _ = reply.send(outcome);
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
            let outcome = plan.add(&pending);
            answers.push((pending.reply, outcome));
        }
        (answers, plan.next, plan.bytes)
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
type Answer = (
    tokio::sync::oneshot::Sender<Result<AppendResult>>,
    Result<AppendResult>,
);

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
    /// commit record — one sled insert, atomic — if it passes. A refused append writes nothing.
    fn add(&mut self, p: &Pending) -> Result<AppendResult> {
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
        self.writer.overlay.push(info);
        if self.heads.len() >= MAX_HEADS && !self.heads.contains_key(&p.stream) {
            self.heads.clear();
        }
        self.heads.insert(p.stream.clone(), new_head);
        Ok(AppendResult {
            first_version: Version::new(version + 1),
            last_version: Version::new(new_head.version),
            first_position: Position::sequence(first),
            last_position: Position::sequence(last),
        })
    }

    /// Whether the append is a retry of one already stored (its first result), a new one
    /// (`None`) or neither (an idempotency conflict).
    fn find_retry(&self, stream: &StreamId, ids: &[EventId]) -> Result<Option<AppendResult>> {
        let w = self.writer;
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            if id.as_uuid().as_bytes() > &*self.max_id {
                found.push(None);
                continue;
            }
            // The overlay first: an entry leaves it only after it reached sled's index.
            found.push(match w.overlay.lookup_id(*id) {
                Some(r) => Some(r),
                None => lookup_id(&w.tree, *id)?,
            });
        }
        resolve_retry(stream, ids, &found)
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
        p: &Pending,
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
        self.bytes += key.len() + value.len();
        self.writer.tree.insert(key, value).map_err(|error| {
            Error::backend(
                "sled",
                format!("writing the commit record failed, nothing written: {error}"),
            )
        })?;
        Ok(())
    }
}
