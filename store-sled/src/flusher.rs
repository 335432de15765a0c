//! The flusher thread: the only place the store syncs the log (and flushes sled), besides an inline durable commit
//! (see `writer.rs`), which uses the same flush-and-publish step (`commit_state.rs`).
//!
//! Appends are applied to sled by the writer and then wait until a flush covers their last
//! position. One flush covers everything applied before it started, so every append that lands
//! while a flush runs shares the next one: that is the group commit on the disk side, and it
//! needs no coordination beyond two numbers (written, flushed).
//!
//! With [`Durability::Flush`] the thread is also the writer's committer: each turn it takes
//! everything queued as one group, commits it (through the function the store hands it, so this
//! module does not know the writer), flushes once for it and answers it. With
//! [`Durability::Buffered`] it flushes on a timer, on request and at close.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use annals::{Error, Result};

use crate::commit_state::{CommitState, Pending, Shared};
use crate::error::sled_error;
use crate::format;
use crate::overlay::Overlay;
use crate::Durability;

/// The longest a durable group waits for the callers of the previous one to come back.
const MAX_GATHER: Duration = Duration::from_micros(500);

/// What the thread works with: the shared state, sled, and the writer's commit function.
pub(crate) struct FlusherParts<C> {
    pub(crate) state: Arc<CommitState>,
    /// How long a [`Durability::Buffered`] store may hold written events.
    pub(crate) interval: Duration,
    pub(crate) db: sled::Db,
    pub(crate) tree: sled::Tree,
    pub(crate) overlay: Arc<Overlay>,
    /// Checks and writes a group of appends, answers them, and returns the last position
    /// written (none if every append was refused or a retry).
    pub(crate) commit: C,
}

/// Starts the flusher thread.
pub(crate) fn spawn<C>(parts: FlusherParts<C>) -> Result<JoinHandle<()>>
where
    C: Fn(Vec<Pending>) -> Option<u64> + Send + 'static,
{
    let flusher = Flusher {
        parts,
        served: 0,
        last_group: 0,
        last_took: Duration::ZERO,
        last_flush: Instant::now(),
    };
    std::thread::Builder::new()
        .name("annals-sled-flusher".into())
        .spawn(move || flusher.run())
        .map_err(|e| Error::backend("sled", e))
}

/// The thread's own state between turns.
struct Flusher<C> {
    parts: FlusherParts<C>,
    /// Every flush request up to this generation is served.
    served: u64,
    /// Appends in the last group committed.
    last_group: usize,
    /// How long the last flush took.
    last_took: Duration,
    /// When the last flush ended.
    last_flush: Instant,
}

impl<C> Flusher<C>
where
    C: Fn(Vec<Pending>) -> Option<u64>,
{
    fn durability(&self) -> Durability {
        self.parts.state.durability()
    }

    fn run(mut self) {
        loop {
            let (generation, closing) = self.wait_for_work();
            let took_group = self.commit_queued();
            self.flush_if_due(generation, closing);
            if took_group {
                // Answered and published: the next append may find the writer idle.
                self.parts.state.end_group();
            }
            self.parts.state.wake_indexer_if_due(&self.parts.overlay);
            if closing && self.is_done() {
                self.index_for_close();
                return;
            }
        }
    }

    /// Sleeps until there is something to do: appends to commit, positions to flush, a flush
    /// request, the timer (Buffered) or the close. Returns the flush-request generation to serve
    /// and whether the store is closing.
    fn wait_for_work(&self) -> (u64, bool) {
        let state = &self.parts.state;
        let mut shared = state.lock();
        loop {
            let behind = shared.written > shared.flushed;
            let asked = shared.generation > self.served;
            if asked {
                break;
            }
            match self.durability() {
                Durability::Flush if behind => break,
                // An inline commit runs: its end wakes this thread (`end_inline`).
                Durability::Flush if (shared.closing || shared.queued) && shared.leading => {
                    shared = state.wait(shared);
                }
                _ if shared.closing || shared.queued => break,
                Durability::Flush => shared = state.wait(shared),
                _ => {
                    let due = self.last_flush + self.parts.interval;
                    let now = Instant::now();
                    if behind && now >= due {
                        break;
                    }
                    let wait = if behind {
                        due - now
                    } else {
                        self.parts.interval
                    };
                    shared = state.wait_timeout(shared, wait);
                }
            }
        }
        let mut shared = self.gather(shared);
        shared.queued = false;
        (shared.generation, shared.closing)
    }

    /// The callers answered after the last flush are submitting their next appends right now:
    /// gives them a moment (half a flush, at most [`MAX_GATHER`]) to join this group rather than
    /// pay a flush of their own. With one caller, no wait.
    fn gather<'a>(
        &self,
        mut shared: std::sync::MutexGuard<'a, Shared>,
    ) -> std::sync::MutexGuard<'a, Shared> {
        if self.durability() == Durability::Flush && !shared.closing && self.last_group > 1 {
            let deadline = Instant::now() + (self.last_took / 2).min(MAX_GATHER);
            while shared.pending.len() < self.last_group {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                shared = self.parts.state.wait_timeout(shared, deadline - now);
            }
        }
        shared
    }

    /// [`Durability::Flush`]: commits everything that queued while the last flush ran, as one
    /// group (n inserts). With `Buffered` the appending tasks commit; nothing is taken here.
    /// Returns whether a group was taken (the `leading` flag is then this thread's).
    fn commit_queued(&mut self) -> bool {
        let group = if self.durability() == Durability::Flush {
            self.parts.state.take_group()
        } else {
            Vec::new()
        };
        let took_group = !group.is_empty();
        self.last_group = group.len();
        if took_group {
            if let Some(last) = (self.parts.commit)(group) {
                self.parts.state.written(last);
            }
        }
        took_group
    }

    /// Flushes when positions wait for it (at once with `Flush`, after the interval with
    /// `Buffered`), when a flush was requested, or when closing.
    fn flush_if_due(&mut self, generation: u64, closing: bool) {
        let (target, flushed) = {
            let shared = self.parts.state.lock();
            (shared.written, shared.flushed)
        };
        let behind = target > flushed
            && (self.durability() == Durability::Flush
                || Instant::now() >= self.last_flush + self.parts.interval);
        let asked = generation > self.served;
        if asked {
            // An explicit flush (`flush()`, snapshots, checkpoints) leaves nothing to redo:
            // index what is visible first, so this flush carries it.
            let visible = self.parts.state.visible();
            if let Err(error) = self.parts.overlay.index(&self.parts.tree, visible) {
                tracing::error!(%error, "writing index entries failed; will retry");
            }
        }
        if behind || asked || closing {
            let flushed = self.parts.state.flush_and_publish(
                &self.parts.tree,
                &self.parts.overlay,
                target,
                Some(generation),
                asked || closing,
            );
            self.last_took = flushed.took;
            self.last_flush = Instant::now();
            // Served even when the flush failed: its waiters learnt of the failure, and the
            // next write triggers the next attempt.
            self.served = generation;
        }
    }

    /// Closing: whether everything is committed, flushed and served.
    fn is_done(&self) -> bool {
        let shared = self.parts.state.lock();
        shared.written <= shared.flushed
            && shared.generation <= self.served
            && !shared.leading
            && shared.pending.is_empty()
    }

    /// Leaves nothing to redo at the next open: index, flush, mark, flush.
    fn index_for_close(&self) {
        let FlusherParts {
            state,
            db,
            tree,
            overlay,
            ..
        } = &self.parts;
        let written = state.lock().written;
        let done = overlay
            .index(tree, state.visible())
            .and_then(|()| db.flush().map_err(sled_error))
            .and_then(|_| {
                let marker = format::indexed_value(overlay.written());
                tree.insert(format::META_INDEXED, marker)
                    .map_err(sled_error)?;
                let stamp = state.marks().stamp(tree);
                db.flush().map_err(sled_error)?;
                state.marks().flushed(stamp, written);
                Ok(())
            });
        if let Err(error) = done {
            tracing::error!(%error, "indexing at close failed; the next open redoes it");
        }
    }
}
