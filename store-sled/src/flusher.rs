//! The flusher thread: the only place the store calls `fsync`.
//!
//! Appends are applied to sled by the writer (see `writer.rs`) and then wait here until a flush
//! covers their last position. One flush covers everything applied before it started, so every
//! append that lands while a flush runs shares the next one: that is the group commit on the
//! disk side, and it needs no coordination beyond two numbers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use annals::{CommitNotifier, Error, Position, Result, StreamId};
use tokio::sync::watch;

use crate::format;
use crate::overlay::{Overlay, INDEX_AT};
use crate::writer::Writer;
use crate::Durability;

/// What the flusher has made durable, published to waiters.
#[derive(Clone, Debug, Default)]
struct Durable {
    /// Every event up to this position is on disk.
    position: u64,
    /// Every flush request up to this generation is served.
    generation: u64,
    /// The last failed flush: the position and generation it was for, and why.
    failure: Option<(u64, u64, Arc<str>)>,
}

#[derive(Debug)]
struct Wanted {
    /// The last position applied to sled.
    written: u64,
    /// The last position a flush was attempted for (by this thread or an inline commit).
    flushed: u64,
    /// Bumped by anyone who needs a flush that is not about positions (snapshots, checkpoints).
    generation: u64,
    /// Appends wait in the writer's queue for this thread to commit them.
    queued: bool,

    closing: bool,
}

/// The longest a durable group waits for the callers of the previous one to come back.
const MAX_GATHER: Duration = Duration::from_micros(500);

#[derive(Debug)]
pub(crate) struct Flusher {
    wanted: Mutex<Wanted>,
    wake: Condvar,
    durable: watch::Sender<Durable>,
    durability: Durability,
    interval: Duration,
    visible: Arc<AtomicU64>,
    notifier: CommitNotifier,
    /// The index position last recorded in the `Mindexed` marker.
    marked: AtomicU64,
}

impl Flusher {
    pub(crate) fn new(
        last_position: u64,
        indexed: u64,
        durability: Durability,
        interval: Duration,
        visible: Arc<AtomicU64>,
        notifier: CommitNotifier,
    ) -> Arc<Flusher> {
        let (durable, _) = watch::channel(Durable {
            position: last_position,
            ..Durable::default()
        });
        Arc::new(Flusher {
            wanted: Mutex::new(Wanted {
                written: last_position,
                flushed: last_position,
                generation: 0,
                queued: false,
                closing: false,
            }),
            wake: Condvar::new(),
            durable,
            durability,
            interval,
            visible,
            notifier,
            marked: AtomicU64::new(indexed),
        })
    }

    /// Starts the thread. With [`Durability::Flush`] it is also the writer's committer: each
    /// turn it commits everything queued as one group, then flushes once for it.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        db: sled::Db,
        tree: sled::Tree,
        overlay: Arc<Overlay>,
        writer: Arc<Writer>,
    ) -> Result<JoinHandle<()>> {
        let flusher = self.clone();
        std::thread::Builder::new()
            .name("annals-sled-flusher".into())
            .spawn(move || flusher.run(&db, &tree, &overlay, &writer))
            .map_err(|e| Error::backend("sled", e))
    }

    /// Appends were queued for the thread to commit ([`Durability::Flush`]).
    pub(crate) fn queued(&self) {
        self.lock().queued = true;
        self.wake.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, Wanted> {
        // The guarded numbers are always consistent (plain stores), so a poisoned lock is fine.
        self.wanted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer applied events up to `position`.
    pub(crate) fn written(&self, position: u64) {
        let mut wanted = self.lock();
        wanted.written = wanted.written.max(position);
        drop(wanted);
        if self.durability == Durability::Flush {
            self.wake.notify_one();
        }
    }

    /// An inline commit (see `writer.rs`) wrote everything up to `last`: flushes it, then
    /// publishes it as this thread does after its own flushes (durable, visible, notified).
    pub(crate) fn flush_inline(&self, tree: &sled::Tree, overlay: &Overlay, last: u64) {
        let span = tracing::debug_span!(
            "sled.flush",
            position = last,
            inline = true,
            bytes = tracing::field::Empty,
            flush_us = tracing::field::Empty
        );
        let _enter = span.enter();
        let started = Instant::now();
        // Index entries written before this flush are durable after it.
        let indexed = overlay.written();
        let outcome = tree.flush();
        span.record("flush_us", started.elapsed().as_micros() as u64);
        {
            let mut wanted = self.lock();
            wanted.written = wanted.written.max(last);
            wanted.flushed = wanted.flushed.max(last);
        }
        match outcome {
            Ok(bytes) => {
                span.record("bytes", bytes as u64);
                overlay.durable_through(last);
                self.mark_indexed(tree, indexed);
                self.visible.fetch_max(last, Ordering::AcqRel);
                self.durable
                    .send_modify(|d| d.position = d.position.max(last));
                self.notifier.notify(Position::sequence(last));
            }
            Err(error) => {
                tracing::error!(%error, position = last, "sled flush failed");
                // As for a failed flush of this thread: the caller learns its outcome is
                // unknown; the next flush covers the record.
                let reason: Arc<str> = Arc::from(error.to_string());
                self.durable.send_modify(|d| {
                    d.failure = Some((last, d.generation, reason));
                });
            }
        }
        if overlay.events() >= INDEX_AT {
            // Only visible — here, durable — commits are indexed.
            overlay.wake_indexer();
        }
    }

    /// An inline commit is over; `more` appends queued meanwhile for this thread.
    pub(crate) fn inline_done(&self, more: bool) {
        let mut wanted = self.lock();
        if more {
            wanted.queued = true;
        }
        let wake = more || wanted.closing;
        drop(wanted);
        if wake {
            self.wake.notify_one();
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

    /// Waits until every event up to `position` is on disk.
    pub(crate) async fn durable_position(&self, stream: &StreamId, position: u64) -> Result<()> {
        let mut rx = self.durable.subscribe();
        let state = rx
            .wait_for(|d| {
                d.position >= position || d.failure.as_ref().is_some_and(|f| f.0 >= position)
            })
            .await
            .map_err(|_| Error::Closed)?;
        if state.position >= position {
            return Ok(());
        }
        let reason = state.failure.as_ref().map_or("", |f| &*f.2).to_owned();
        Err(Error::AppendOutcomeUnknown {
            backend: "sled",
            stream: stream.clone(),
            source: reason.into(),
        })
    }

    /// Asks for a flush of everything written so far (positions or not) and waits for it.
    pub(crate) async fn flush_now(&self) -> Result<()> {
        let generation = {
            let mut wanted = self.lock();
            if wanted.closing {
                return Err(Error::Closed);
            }
            wanted.generation += 1;
            wanted.generation
        };
        self.wake.notify_one();
        let mut rx = self.durable.subscribe();
        let state = rx
            .wait_for(|d| {
                d.generation >= generation || d.failure.as_ref().is_some_and(|f| f.1 >= generation)
            })
            .await
            .map_err(|_| Error::Closed)?;
        if state.generation >= generation {
            Ok(())
        } else {
            let reason = state.failure.as_ref().map_or("", |f| &*f.2).to_owned();
            Err(Error::backend("sled", format!("flush failed: {reason}")))
        }
    }

    fn note_flushed(&self, target: u64) {
        let mut wanted = self.lock();
        wanted.flushed = wanted.flushed.max(target);
    }

    /// Tells the thread to flush what is left and stop.
    pub(crate) fn close(&self) {
        self.lock().closing = true;
        self.wake.notify_one();
    }

    fn run(&self, db: &sled::Db, tree: &sled::Tree, overlay: &Overlay, writer: &Writer) {
        let mut served = 0u64;
        let mut last_group = 0usize;
        let mut last_took = Duration::ZERO;
        let mut last_flush = Instant::now();
        loop {
            let (generation, closing) = {
                let mut wanted = self.lock();
                loop {
                    let behind = wanted.written > wanted.flushed;
                    let asked = wanted.generation > served;
                    if asked {
                        break;
                    }
                    match self.durability {
                        Durability::Flush if behind => break,
                        // An inline commit runs: its end wakes this thread (`inline_done`).
                        Durability::Flush
                            if (wanted.closing || wanted.queued) && writer.is_leading() =>
                        {
                            wanted = self.wake.wait(wanted).unwrap_or_else(|e| e.into_inner());
                        }
                        _ if wanted.closing || wanted.queued => break,
                        Durability::Flush => {
                            wanted = self.wake.wait(wanted).unwrap_or_else(|e| e.into_inner());
                        }
                        _ => {
                            let due = last_flush + self.interval;
                            let now = Instant::now();
                            if behind && now >= due {
                                break;
                            }
                            let wait = if behind { due - now } else { self.interval };
                            wanted = self
                                .wake
                                .wait_timeout(wanted, wait)
                                .unwrap_or_else(|e| e.into_inner())
                                .0;
                        }
                    }
                }
                // The callers answered after the last flush are submitting their next appends
                // right now: give them a moment (half a flush, at most 500 µs) to join
                // this group rather than pay a flush of their own. With one caller, no wait.
                if self.durability == Durability::Flush && !wanted.closing && last_group > 1 {
                    let deadline = Instant::now() + (last_took / 2).min(MAX_GATHER);
                    while writer.queued_len() < last_group {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        wanted = self
                            .wake
                            .wait_timeout(wanted, deadline - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                }
                wanted.queued = false;
                (wanted.generation, wanted.closing)
            };
            // Everything that queued while the last flush ran: one group, n inserts. (With
            // `Buffered` the appending tasks commit; nothing is taken here.)
            let group = if self.durability == Durability::Flush {
                writer.take_group()
            } else {
                Vec::new()
            };
            let took_group = !group.is_empty();
            last_group = group.len();
            if took_group {
                if let Some(last) = writer.commit(group) {
                    let mut wanted = self.lock();
                    wanted.written = wanted.written.max(last);
                }
            }
            let (target, flushed) = {
                let wanted = self.lock();
                (wanted.written, wanted.flushed)
            };
            let behind = target > flushed
                && (self.durability == Durability::Flush
                    || Instant::now() >= last_flush + self.interval);
            let flush = behind || generation > served || closing;
            if generation > served {
                // An explicit flush (`flush()`, snapshots, checkpoints) leaves nothing to redo:
                // index what is visible first, so this flush carries it.
                let visible = self.visible.load(Ordering::Acquire);
                if let Err(error) = overlay.index(tree, visible) {
                    tracing::error!(%error, "writing index entries failed; will retry");
                }
            }
            if flush {
                let span = tracing::debug_span!(
                    "sled.flush",
                    position = target,
                    bytes = tracing::field::Empty,
                    flush_us = tracing::field::Empty
                );
                let _enter = span.enter();
                let started = Instant::now();
                // Index entries written before this flush are durable after it.
                let indexed = overlay.written();
                let outcome = db.flush();
                let took = started.elapsed();
                last_took = took;
                span.record("flush_us", took.as_micros() as u64);
                last_flush = Instant::now();
                match outcome {
                    Ok(bytes) => {
                        span.record("bytes", bytes as u64);
                        overlay.durable_through(target);
                        self.mark_indexed(tree, indexed);
                        self.note_flushed(target);
                        served = generation;
                        // Visible before anyone is answered: an answered caller reads its write.
                        if self.durability == Durability::Flush {
                            self.visible.fetch_max(target, Ordering::AcqRel);
                        }
                        self.durable.send_modify(|d| {
                            d.position = d.position.max(target);
                            d.generation = d.generation.max(generation);
                        });
                        if self.durability == Durability::Flush {
                            self.notifier.notify(Position::sequence(target));
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, position = target, "sled flush failed");
                        // Waiters for these positions learn that their outcome is unknown; the
                        // next write triggers the next attempt.
                        self.note_flushed(target);
                        served = generation;
                        let reason: Arc<str> = Arc::from(error.to_string());
                        self.durable.send_modify(|d| {
                            d.failure = Some((target, generation, reason));
                        });
                    }
                }
            }
            if took_group {
                // Answered and published: the next append may find the writer idle.
                writer.end_group();
            }
            if self.durability == Durability::Flush && overlay.events() >= INDEX_AT {
                // Only visible — here, durable — commits are indexed.
                overlay.wake_indexer();
            }
            if closing {
                let wanted = self.lock();
                if wanted.written <= wanted.flushed
                    && wanted.generation <= served
                    && writer.is_idle()
                {
                    drop(wanted);
                    // Leave nothing to redo at the next open: index, flush, mark, flush.
                    let visible = self.visible.load(Ordering::Acquire);
                    let done = overlay
                        .index(tree, visible)
                        .and_then(|()| db.flush().map_err(crate::sled_error))
                        .and_then(|_| {
                            let marker = format::indexed_value(overlay.written());
                            tree.insert(format::META_INDEXED, marker)
                                .map_err(crate::sled_error)?;
                            db.flush().map_err(crate::sled_error)
                        });
                    if let Err(error) = done {
                        tracing::error!(%error, "indexing at close failed; the next open redoes it");
                    }
                    return;
                }
            }
        }
    }
}
