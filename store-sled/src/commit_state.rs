//! The group commit's one state, shared by the writer (`writer.rs`) and the flusher thread
//! (`flusher.rs`), which know it and not each other.
//!
//! Under ONE lock: the appends queued for the writer and who is committing them (the
//! `leading` flag: a Buffered leader, an inline durable commit, or a flusher turn), and what the
//! flusher owes (positions written and flushed, flush requests, whether to stop). Beside it,
//! published without the lock: what is durable (a watch channel appenders and `flush()` callers
//! wait on), the visibility mark and the commit signal.
//!
//! [`CommitState::flush_and_publish`] is the one flush-and-publish step: the flusher thread runs
//! it for its turns, an inline durable commit for its own append. It flushes, makes the index
//! entries written before the flush count as durable, and then publishes — visible before anyone
//! is answered, so an answered caller reads its own write — or records a [`FlushFailure`] that
//! the waiters for those positions and flush requests learn of.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use annals::store::kit::CommitNotifier;
use annals::{
    AppendResult, CommitWatch, Error, EventId, ExpectedVersion, Position, RestoreResult,
    RestoredEvent, Result, StreamId,
};
use tokio::sync::{oneshot, watch};

use crate::format;
use crate::log::Log;
use crate::marks::Marks;
use crate::num::{micros, u64_from};
use crate::overlay::{Overlay, INDEX_AT};
use crate::Durability;

/// Work waiting for the writer: an append or a restore, committed in arrival order.
#[derive(Debug)]
pub(crate) enum Pending {
    Append(PendingAppend),
    Restore(PendingRestore),
}

/// An append waiting for the writer.
#[derive(Debug)]
pub(crate) struct PendingAppend {
    pub(crate) stream: StreamId,
    pub(crate) expected: ExpectedVersion,
    pub(crate) events: Vec<Encoded>,
    pub(crate) reply: oneshot::Sender<Result<AppendResult>>,
}

/// A restore waiting for the writer: the batch, each event's body encoded by the caller (in
/// batch order), and where to send the outcome: the result and the last position it needs
/// durable (its own last one, or the last of the events it found already stored).
#[derive(Debug)]
pub(crate) struct PendingRestore {
    pub(crate) events: Vec<RestoredEvent>,
    pub(crate) bodies: Vec<Vec<u8>>,
    pub(crate) reply: oneshot::Sender<Result<(RestoreResult, u64)>>,
}

/// An event encoded by its appending task, waiting for its place.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) id: EventId,
    pub(crate) body: Vec<u8>,
}

/// A flush that failed: what it was to make durable, and why.
#[derive(Clone, Debug)]
pub(crate) struct FlushFailure {
    /// The last position the flush was for: appends up to it learn that their outcome is
    /// unknown (the next flush covers their records).
    pub(crate) position: u64,
    /// The flush requests it was to serve: `flush()` calls up to this generation fail.
    pub(crate) generation: u64,
    /// What sled said.
    pub(crate) reason: Arc<str>,
}

/// What is durable, published to waiters.
#[derive(Clone, Debug, Default)]
struct Durable {
    /// Every event up to this position is on disk.
    position: u64,
    /// Every flush request up to this generation is served.
    generation: u64,
    /// The last failed flush.
    failure: Option<FlushFailure>,
}

/// What the lock guards.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Appends waiting for the writer, in arrival order.
    pub(crate) pending: Vec<Pending>,
    /// A commit is running: the Buffered leader's, an inline one, or a flusher turn (from
    /// taking its group to answering it).
    pub(crate) leading: bool,
    /// [`Durability::Flush`]: appends are coming from several callers at once (the last group
    /// had more than one, or some queued behind an inline commit). They then all go through the
    /// flusher, which groups them; a lone appender commits inline.
    pub(crate) contended: bool,
    /// New appends are refused.
    pub(crate) closed: bool,
    /// The last position applied to sled.
    pub(crate) written: u64,
    /// The last position a flush was attempted for (by the flusher or an inline commit).
    pub(crate) flushed: u64,
    /// Bumped by anyone who needs a flush that is not about positions (`flush()`, snapshots,
    /// checkpoints).
    pub(crate) generation: u64,
    /// Appends wait in the queue for the flusher to commit them.
    pub(crate) queued: bool,
    /// The flusher is to flush what is left and stop.
    pub(crate) closing: bool,
}

/// What [`CommitState::submit`] decided for an append.
#[derive(Debug)]
pub(crate) enum Submitted {
    /// The writer is idle and the `leading` flag is now the caller's: commit the append inline.
    Inline(Pending),
    /// Queued for the flusher thread (which was woken) or for the Buffered leader.
    Queued,
    /// Queued, and the caller is the Buffered leader now: commit what is queued.
    Lead,
}

/// How one [`flush_and_publish`](CommitState::flush_and_publish) went.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Flushed {
    /// How long the flush took.
    pub(crate) took: Duration,
}

/// The one commit state (see the module docs).
#[derive(Debug)]
pub(crate) struct CommitState {
    shared: Mutex<Shared>,
    /// The flusher thread's wake-up, paired with `shared`.
    wake: Condvar,
    durable: watch::Sender<Durable>,
    durability: Durability,
    /// The last position readers may see: flushed ([`Durability::Flush`]) or applied
    /// ([`Durability::Buffered`]). Every position up to it is committed.
    visible: Arc<AtomicU64>,
    notifier: CommitNotifier,
    /// The index position last recorded in the `Mindexed` marker.
    marked: AtomicU64,
    /// The write and save counters: each flush of sled raises the write counter first.
    marks: Arc<Marks>,
    /// The log's segment files, made durable by each flush.
    log: Arc<Log>,
}

impl CommitState {
    /// The state of a store whose log ends at `last_position` and whose indexes are written
    /// through `indexed`.
    pub(crate) fn new(
        last_position: u64,
        indexed: u64,
        durability: Durability,
        marks: Arc<Marks>,
        log: Arc<Log>,
    ) -> Self {
        let (durable, _) = watch::channel(Durable {
            position: last_position,
            ..Durable::default()
        });
        let notifier = CommitNotifier::new();
        notifier.notify(Position::sequence(last_position));
        CommitState {
            shared: Mutex::new(Shared {
                pending: Vec::new(),
                leading: false,
                contended: false,
                closed: false,
                written: last_position,
                flushed: last_position,
                generation: 0,
                queued: false,
                closing: false,
            }),
            wake: Condvar::new(),
            durable,
            durability,
            visible: Arc::new(AtomicU64::new(last_position)),
            notifier,
            marked: AtomicU64::new(indexed),
            marks,
            log,
        }
    }

    /// The write and save counters.
    pub(crate) fn marks(&self) -> &Arc<Marks> {
        &self.marks
    }

    pub(crate) fn durability(&self) -> Durability {
        self.durability
    }

    /// The visibility mark, shared with the indexer thread.
    pub(crate) fn visible_mark(&self) -> Arc<AtomicU64> {
        self.visible.clone()
    }

    /// The last position readers may see.
    pub(crate) fn visible(&self) -> u64 {
        self.visible.load(Ordering::Acquire)
    }

    /// A watch on the commit signal.
    pub(crate) fn watch(&self) -> CommitWatch {
        self.notifier.watch()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Shared> {
        // Every field is a plain value, consistent after every statement: a poisoned lock still
        // guards consistent data.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a wake-up of the flusher thread.
    pub(crate) fn wait<'a>(&self, guard: MutexGuard<'a, Shared>) -> MutexGuard<'a, Shared> {
        self.wake.wait(guard).unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a wake-up of the flusher thread, `timeout` at most.
    pub(crate) fn wait_timeout<'a>(
        &self,
        guard: MutexGuard<'a, Shared>,
        timeout: Duration,
    ) -> MutexGuard<'a, Shared> {
        self.wake
            .wait_timeout(guard, timeout)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    fn wake_flusher(&self) {
        self.wake.notify_one();
    }

    // -----------------------------------------------------------------------------------------
    // The writer's side

    /// Queues `pending`, or, when `may_inline` and the writer is idle (nothing queued, no commit
    /// running, and the last group was not a crowd), hands it back to be committed inline.
    pub(crate) fn submit(&self, pending: Pending, may_inline: bool) -> Result<Submitted> {
        let durable = self.durability == Durability::Flush;
        let submitted = {
            let mut shared = self.lock();
            if shared.closed {
                return Err(Error::Closed);
            }
            if may_inline && !shared.leading && !shared.contended && shared.pending.is_empty() {
                shared.leading = true;
                return Ok(Submitted::Inline(pending));
            }
            shared.pending.push(pending);
            if durable {
                shared.queued = true;
                Submitted::Queued
            } else if std::mem::replace(&mut shared.leading, true) {
                Submitted::Queued
            } else {
                Submitted::Lead
            }
        };
        if durable {
            self.wake_flusher();
        }
        Ok(submitted)
    }

    /// An inline commit is over: gives the `leading` flag back and hands whatever queued
    /// meanwhile to the flusher (next appends then go through its groups). `panicked`: the
    /// commit did not finish; the flusher goes on.
    pub(crate) fn end_inline(&self, panicked: bool) {
        let mut shared = self.lock();
        shared.leading = false;
        let more = !shared.pending.is_empty();
        if more && !panicked {
            // Others appended meanwhile: leave the next appends to the flusher's groups.
            shared.contended = true;
        }
        if more || panicked {
            shared.queued = true;
        }
        let wake = more || panicked || shared.closing;
        drop(shared);
        if wake {
            self.wake_flusher();
        }
    }

    /// [`Durability::Buffered`] leader: the next group to commit, or `None` (and the `leading`
    /// flag given back) when nothing is queued.
    pub(crate) fn next_led_group(&self) -> Option<Vec<Pending>> {
        let mut shared = self.lock();
        if shared.pending.is_empty() {
            shared.leading = false;
            return None;
        }
        Some(std::mem::take(&mut shared.pending))
    }

    /// Gives the `leading` flag back (a Buffered leader whose commit panicked).
    pub(crate) fn resign(&self) {
        self.lock().leading = false;
    }

    /// The writer applied events up to `position`.
    pub(crate) fn written(&self, position: u64) {
        let mut shared = self.lock();
        shared.written = shared.written.max(position);
        drop(shared);
        if self.durability == Durability::Flush {
            self.wake_flusher();
        }
    }

    /// [`Durability::Buffered`]: events up to `last` are applied, so readers may see them.
    pub(crate) fn publish_applied(&self, last: u64) {
        self.visible.fetch_max(last, Ordering::AcqRel);
        self.notifier.notify(Position::sequence(last));
    }

    /// Refuses new appends; queued ones are still committed.
    pub(crate) fn refuse_appends(&self) {
        self.lock().closed = true;
    }

    /// Whether no append is queued or being committed.
    pub(crate) fn is_idle(&self) -> bool {
        let shared = self.lock();
        !shared.leading && shared.pending.is_empty()
    }

    // -----------------------------------------------------------------------------------------
    // The flusher's side

    /// [`Durability::Flush`]: takes everything queued for the flusher thread to commit, and the
    /// `leading` flag with it when there is something; nothing while an inline commit runs.
    /// The flusher gives the flag back with [`end_group`](Self::end_group) once it answered.
    pub(crate) fn take_group(&self) -> Vec<Pending> {
        let mut shared = self.lock();
        if shared.leading || shared.pending.is_empty() {
            return Vec::new();
        }
        shared.leading = true;
        shared.contended = shared.pending.len() > 1;
        std::mem::take(&mut shared.pending)
    }

    /// The flusher's turn for a group taken with [`take_group`](Self::take_group) is over.
    pub(crate) fn end_group(&self) {
        self.lock().leading = false;
    }

    /// Tells the flusher thread to flush what is left and stop.
    pub(crate) fn close_flusher(&self) {
        self.lock().closing = true;
        self.wake_flusher();
    }

    /// Flushes everything written so far with `tree` and publishes it; see the module docs.
    ///
    /// `target` is the last position written before the flush. `serves` is the flush-request
    /// generation the flush answers (the flusher's turns), `None` for an inline commit's flush,
    /// which answers no request. After a failure the waiters for positions up to `target` (and
    /// for the requests up to `serves`) learn of it; the next flush covers what this one did not.
    pub(crate) fn flush_and_publish(
        &self,
        tree: &sled::Tree,
        overlay: &Overlay,
        target: u64,
        serves: Option<u64>,
        asked: bool,
    ) -> Flushed {
        let span = tracing::debug_span!(
            "sled.flush",
            position = target,
            inline = serves.is_none(),
            bytes = tracing::field::Empty,
            flush_us = tracing::field::Empty
        );
        let _enter = span.enter();
        let started = Instant::now();
        // Index entries written before this flush are durable after it (when sled is
        // flushed), and so is the write count raised now.
        let indexed = overlay.written();
        // The commits are durable once the log's files are: one `fdatasync`. Sled holds only
        // derived entries; it is flushed when asked (snapshots, checkpoints, read models,
        // close) or when index entries wait for a flush before the index marker may cover
        // them — about once per indexing round, not once per group.
        let with_sled = asked || indexed > self.marked.load(Ordering::Acquire);
        let stamp = with_sled.then(|| self.marks.stamp(tree));
        let outcome = self.log.sync().map_err(|e| e.to_string()).and_then(|()| {
            if with_sled {
                tree.flush().map_err(|e| e.to_string())
            } else {
                Ok(0)
            }
        });
        let took = started.elapsed();
        span.record("flush_us", micros(took));
        {
            let mut shared = self.lock();
            shared.written = shared.written.max(target);
            shared.flushed = shared.flushed.max(target);
        }
        match outcome {
            Ok(bytes) => {
                span.record("bytes", u64_from(bytes));
                overlay.durable_through(target);
                match stamp {
                    Some(stamp) => {
                        self.marks.flushed(stamp, target);
                        self.mark_indexed(tree, indexed);
                    }
                    None => self.marks.log_flushed(target),
                }
                self.publish_durable(target, serves);
            }
            Err(error) => {
                tracing::error!(%error, position = target, "flushing the log or sled failed");
                let reason: Arc<str> = Arc::from(error.to_string());
                self.durable.send_modify(|d| {
                    d.failure = Some(FlushFailure {
                        position: target,
                        generation: serves.unwrap_or(d.generation),
                        reason,
                    });
                });
            }
        }
        Flushed { took }
    }

    /// Events up to `target` (and the flush requests up to `serves`) are durable: visible
    /// first ([`Durability::Flush`]), so an answered caller reads its write, then answered, then
    /// announced.
    fn publish_durable(&self, target: u64, serves: Option<u64>) {
        let durable = self.durability == Durability::Flush;
        if durable {
            self.visible.fetch_max(target, Ordering::AcqRel);
        }
        self.durable.send_modify(|d| {
            d.position = d.position.max(target);
            if let Some(generation) = serves {
                d.generation = d.generation.max(generation);
            }
        });
        if durable {
            self.notifier.notify(Position::sequence(target));
        }
    }

    /// Records in the `Mindexed` marker that index entries up to `indexed` are durable (they
    /// were written before a flush that succeeded). The marker rides on the next flush; until
    /// then the older one makes an open redo a little more (idempotent) work.
    fn mark_indexed(&self, tree: &sled::Tree, indexed: u64) {
        if indexed <= self.marked.load(Ordering::Acquire) {
            return;
        }
        match tree.insert(format::META_INDEXED, format::indexed_value(indexed)) {
            Ok(_) => {
                self.marked.fetch_max(indexed, Ordering::AcqRel);
            }
            Err(error) => tracing::error!(%error, "writing the index marker failed"),
        }
    }

    /// [`Durability::Flush`]: wakes the indexer when enough visible — here, durable — commits
    /// wait to be indexed (only visible commits are indexed).
    pub(crate) fn wake_indexer_if_due(&self, overlay: &Overlay) {
        if self.durability == Durability::Flush && overlay.events() >= INDEX_AT {
            overlay.wake_indexer();
        }
    }

    // -----------------------------------------------------------------------------------------
    // Waiters

    /// Waits until every event up to `position` is on disk.
    pub(crate) async fn durable_position(&self, stream: &StreamId, position: u64) -> Result<()> {
        let mut rx = self.durable.subscribe();
        let state = rx
            .wait_for(|d| {
                d.position >= position || d.failure.as_ref().is_some_and(|f| f.position >= position)
            })
            .await
            .map_err(|_| Error::Closed)?;
        if state.position >= position {
            return Ok(());
        }
        let reason = state.failure.as_ref().map_or("", |f| &*f.reason).to_owned();
        Err(Error::AppendOutcomeUnknown {
            backend: "sled",
            stream: stream.clone(),
            source: reason.into(),
        })
    }

    /// Asks for a flush of everything written so far (positions or not) and waits for it.
    pub(crate) async fn flush_now(&self) -> Result<()> {
        let generation = {
            let mut shared = self.lock();
            if shared.closing {
                return Err(Error::Closed);
            }
            shared.generation += 1;
            shared.generation
        };
        self.wake_flusher();
        let mut rx = self.durable.subscribe();
        let state = rx
            .wait_for(|d| {
                d.generation >= generation
                    || d.failure
                        .as_ref()
                        .is_some_and(|f| f.generation >= generation)
            })
            .await
            .map_err(|_| Error::Closed)?;
        if state.generation >= generation {
            Ok(())
        } else {
            let reason = state.failure.as_ref().map_or("", |f| &*f.reason).to_owned();
            Err(Error::backend("sled", format!("flush failed: {reason}")))
        }
    }
}
