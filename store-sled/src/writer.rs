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
//! - [`Durability::Flush`]: the flusher thread (`flusher.rs`). Each turn it takes everything
//!   that queued while the previous flush ran, writes it (n inserts) and flushes once. A lone
//!   appender skips the two thread hand-offs: when it finds the writer idle (nothing queued, no
//!   turn running, and the last group was not a crowd) on a multi-thread tokio runtime, it
//!   commits and flushes its own append inline, inside `block_in_place`, holding the same
//!   `leading` flag the flusher holds for a turn. Appends arriving meanwhile queue, and the
//!   flusher commits them as one group once the inline commit is done.
//! - [`Durability::Buffered`]: the appending task itself. Whoever finds no commit running
//!   becomes the *leader* (a flag under the queue's lock), commits what is queued, looks again
//!   until the queue is empty, and hands leadership to a fresh task after [`MAX_ROUNDS`] groups
//!   so its own caller is not held up. Without an `fsync` to amortise, a hand-off to a writer
//!   thread and back (two wake-ups) would cost more than the batch itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use annals::store::{resolve_retry, StoredEventRef};
use annals::{
    AppendResult, CommitNotifier, Error, EventId, ExpectedVersion, Position, Result, StreamId,
    Timestamp, Version,
};
use tokio::sync::oneshot;

use crate::flusher::Flusher;
use crate::format::{self, Head};
use crate::overlay::{CommitInfo, Overlay, INDEX_AT, INDEX_HARD};
use crate::{sled_error, Durability};

/// Groups one leader commits before handing leadership over.
const MAX_ROUNDS: usize = 16;
/// Stream heads the writer keeps in memory; past it the cache starts over (heads are then read
/// from the overlay and sled again, a lookup each).
const MAX_HEADS: usize = 50_000;

/// An append waiting for the writer.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) stream: StreamId,
    pub(crate) expected: ExpectedVersion,
    pub(crate) events: Vec<Encoded>,
    pub(crate) reply: oneshot::Sender<Result<AppendResult>>,
}

/// An event encoded by its appending task, waiting for its place.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) id: EventId,
    pub(crate) body: Vec<u8>,
}

#[derive(Debug, Default)]
struct Queue {
    pending: Vec<Pending>,
    /// A commit is running: the Buffered leader's, an inline one, or a flusher turn (from
    /// taking its group to answering it).
    leading: bool,
    /// [`Durability::Flush`]: appends are coming from several callers at once (the last group
    /// had more than one, or some queued behind an inline commit). They then all go through the
    /// flusher, which groups them; a lone appender commits inline.
    contended: bool,
    closed: bool,
}

#[derive(Debug)]
pub(crate) struct Writer {
    tree: sled::Tree,
    queue: Mutex<Queue>,
    /// The next position to give; only the leader touches it.
    next_position: AtomicU64,
    flusher: Arc<Flusher>,
    durability: Durability,
    visible: Arc<AtomicU64>,
    notifier: CommitNotifier,
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
        flusher: Arc<Flusher>,
        durability: Durability,
        visible: Arc<AtomicU64>,
        notifier: CommitNotifier,
        overlay: Arc<Overlay>,
    ) -> Self {
        Writer {
            tree,
            queue: Mutex::new(Queue::default()),
            next_position: AtomicU64::new(end.position + 1),
            flusher,
            durability,
            visible,
            notifier,
            overlay,
            heads: Mutex::new(HashMap::new()),
            max_id: Mutex::new(end.max_id),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue is a list and two flags, consistent after every statement.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `pending` (or, for a lone durable appender, commits it inline); the caller then
    /// awaits its reply.
    pub(crate) fn submit(self: &Arc<Self>, pending: Pending) -> Result<()> {
        let may_inline = self.durability == Durability::Flush && on_multi_thread_runtime();
        let lead = {
            let mut queue = self.lock();
            if queue.closed {
                return Err(Error::Closed);
            }
            if may_inline && !queue.leading && !queue.contended && queue.pending.is_empty() {
                queue.leading = true;
                drop(queue);
                self.commit_inline(pending);
                return Ok(());
            }
            queue.pending.push(pending);
            self.durability != Durability::Flush && !std::mem::replace(&mut queue.leading, true)
        };
        if self.durability == Durability::Flush {
            self.flusher.queued();
        } else if lead {
            self.lead();
        }
        Ok(())
    }

    /// Appends queued now.
    pub(crate) fn queued_len(&self) -> usize {
        self.lock().pending.len()
    }

    /// [`Durability::Flush`]: takes everything queued for the flusher thread to commit, and the
    /// `leading` flag with it when there is something; nothing while an inline commit runs.
    /// The flusher gives the flag back with [`end_group`](Self::end_group) once it answered.
    pub(crate) fn take_group(&self) -> Vec<Pending> {
        let mut queue = self.lock();
        if queue.leading || queue.pending.is_empty() {
            return Vec::new();
        }
        queue.leading = true;
        queue.contended = queue.pending.len() > 1;
        std::mem::take(&mut queue.pending)
    }

    /// The flusher's turn for a group taken with [`take_group`](Self::take_group) is over.
    pub(crate) fn end_group(&self) {
        self.lock().leading = false;
    }

    /// Whether a commit runs now (in [`Durability::Flush`], outside the flusher: inline).
    pub(crate) fn is_leading(&self) -> bool {
        self.lock().leading
    }

    /// Commits and flushes `pending` on the calling thread (the writer was idle and the
    /// `leading` flag is ours), then gives the flag back and hands whatever queued meanwhile to
    /// the flusher. The caller's reply is sent before the flush, but the caller reads it only
    /// after this returns and then waits for the durable position as every appender does, so it
    /// is answered after the flush; nothing becomes visible before it either.
    fn commit_inline(&self, pending: Pending) {
        struct Resign<'a>(&'a Writer, bool);
        impl Drop for Resign<'_> {
            fn drop(&mut self) {
                // Reached armed only if the commit panicked: let the flusher go on.
                if self.1 {
                    self.0.lock().leading = false;
                    self.0.flusher.inline_done(true);
                }
            }
        }
        let mut guard = Resign(self, true);
        // The runtime's other workers keep running tasks while this one waits for the disk.
        tokio::task::block_in_place(|| {
            if let Some(last) = self.commit(vec![pending]) {
                self.flusher.flush_inline(&self.tree, &self.overlay, last);
            }
        });
        let more = {
            let mut queue = self.lock();
            queue.leading = false;
            let more = !queue.pending.is_empty();
            if more {
                // Others appended meanwhile: leave the next appends to the flusher's groups.
                queue.contended = true;
            }
            more
        };
        guard.1 = false;
        self.flusher.inline_done(more);
    }

    /// Refuses new appends; queued ones are still committed.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
    }

    /// Whether no append is queued or being committed.
    pub(crate) fn is_idle(&self) -> bool {
        let queue = self.lock();
        !queue.leading && queue.pending.is_empty()
    }

    /// Commits groups until the queue is empty (or hands over after [`MAX_ROUNDS`]).
    fn lead(self: &Arc<Self>) {
        struct Resign<'a>(&'a Writer, bool);
        impl Drop for Resign<'_> {
            fn drop(&mut self) {
                // Only reached armed if a commit panicked: let the next caller lead.
                if self.1 {
                    self.0.lock().leading = false;
                }
            }
        }
        let mut guard = Resign(self, true);
        for _ in 0..MAX_ROUNDS {
            let group = {
                let mut queue = self.lock();
                if queue.pending.is_empty() {
                    queue.leading = false;
                    guard.1 = false;
                    return;
                }
                std::mem::take(&mut queue.pending)
            };
            if let Some(last) = self.commit(group) {
                self.flusher.written(last);
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
        let (next, bytes) = (plan.next, plan.bytes);
        drop(max_id);
        drop(heads);
        let written = (next > first_position).then(|| next - 1);
        if let Some(last) = written {
            span.record("events", next - first_position);
            span.record("bytes", bytes as u64);
            span.record("position", last);
            span.record("apply_us", started.elapsed().as_micros() as u64);
            self.next_position.store(next, Ordering::Relaxed);
            if self.durability != Durability::Flush {
                self.visible.fetch_max(last, Ordering::AcqRel);
                self.notifier.notify(Position::sequence(last));
            }
            let unindexed = self.overlay.events();
            if unindexed >= INDEX_HARD {
                // The indexer fell behind: do its work here rather than let memory grow.
                let visible = self.visible.load(Ordering::Acquire);
                if let Err(error) = self.overlay.try_index(&self.tree, visible) {
                    tracing::error!(%error, "writing index entries failed; will retry");
                }
            } else if unindexed >= INDEX_AT && self.durability != Durability::Flush {
                self.overlay.wake_indexer();
            }
        }
        for (reply, outcome) in answers {
            // A caller that went away no longer wants its answer; its append stands.
            let _ = reply.send(outcome);
        }
        written
    }
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
    /// commit record — one sled insert, atomic — if it passes. A refused append writes nothing.
    fn add(&mut self, p: &Pending) -> Result<AppendResult> {
        let w = self.writer;
        let ids: Vec<EventId> = p.events.iter().map(|e| e.id).collect();
        let mut found = Vec::with_capacity(ids.len());
        for id in &ids {
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
        if let Some(first) = resolve_retry(&p.stream, &ids, &found)? {
            return Ok(first);
        }
        let head = match self.heads.get(&p.stream) {
            Some(head) => Some(*head),
            None => match w.overlay.head(&p.stream, u64::MAX) {
                Some(head) => Some(head),
                None => read_head(&w.tree, &p.stream)?,
            },
        };
        let version = head.map_or(0, |h| h.version);
        p.expected.check(&p.stream, Version::new(version))?;
        let count = p.events.len() as u64;
        let first = self.next;
        let last = first + count - 1;
        let key = format::commit_key(first, last);
        let value = format::commit_value(
            &key,
            self.recorded_at,
            p.stream.as_str(),
            version + 1,
            p.events.iter().map(|e| e.body.as_slice()),
        );
        self.bytes += key.len() + value.len();
        w.tree.insert(key, value).map_err(|error| {
            Error::backend(
                "sled",
                format!("writing the commit record failed, nothing written: {error}"),
            )
        })?;
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
        w.overlay.push(info);
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
}

/// Where `id` is stored, if anywhere: its `I` entry, else the id segment whose range holds it.
pub(crate) fn lookup_id(tree: &sled::Tree, id: EventId) -> Result<Option<StoredEventRef>> {
    let key = format::id_key(id);
    if let Some(value) = tree.get(key).map_err(sled_error)? {
        let (stream, version, position) = format::decode_id(&key, &value).map_err(|reason| {
            Error::corrupt(
                None,
                None,
                None,
                format!("id index entry of {id}: {reason}"),
            )
        })?;
        let stream_id = StreamId::new(stream).map_err(|e| {
            Error::corrupt(
                None,
                Some(Version::new(version)),
                Some(Position::sequence(position)),
                format!("id index entry of {id}: {e}"),
            )
        })?;
        return Ok(Some(StoredEventRef {
            stream_id,
            version: Version::new(version),
            position: Position::sequence(position),
        }));
    }
    let bytes = id.as_uuid().as_bytes();
    let Some((segment_key, segment)) = format::segment_for(tree, bytes).map_err(sled_error)? else {
        return Ok(None);
    };
    let found = format::segment_find(&segment_key, &segment, bytes).map_err(|reason| {
        Error::corrupt(
            None,
            None,
            None,
            format!("id segment holding {id}: {reason}"),
        )
    })?;
    let Some(position) = found else {
        return Ok(None);
    };
    // The segment names the position; its commit record names the stream and version.
    let at = Some(Position::sequence(position));
    let dangling = |reason: String| {
        Error::corrupt(
            None,
            None,
            at,
            format!("id segment entry of {id}: {reason}"),
        )
    };
    let event = format::event_at(tree, position)
        .map_err(sled_error)?
        .ok_or_else(|| dangling("no commit record holds its position".into()))?
        .map_err(dangling)?;
    if event.id != id {
        return Err(dangling("the event at its position has another id".into()));
    }
    Ok(Some(StoredEventRef {
        stream_id: StreamId::new(event.stream).map_err(|e| dangling(e.to_string()))?,
        version: Version::new(event.version),
        position: Position::sequence(position),
    }))
}

/// The stream's stored head (applied, possibly not yet flushed).
pub(crate) fn read_head(tree: &sled::Tree, stream: &StreamId) -> Result<Option<Head>> {
    let key = format::head_key(stream.as_str());
    let Some(value) = tree.get(&key).map_err(sled_error)? else {
        return Ok(None);
    };
    format::decode_head(&key, &value)
        .map(Some)
        .map_err(|reason| {
            Error::corrupt(
                Some(stream.clone()),
                None,
                None,
                format!("stream head: {reason}"),
            )
        })
}
