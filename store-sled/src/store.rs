//! The store: what a [`SledEventStore`] holds, and the Annals traits over it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use annals::store::kit::{instrument_append, instrument_read};
use annals::{
    AppendResult, CheckpointStore, CommitWatch, Error, EventData, EventStore, ExpectedVersion,
    Lease, Leases, Limits, LocalLeases, Position, Problem, ReadAll, ReadStream, RecordPlace,
    RecordedEvent, RestoreResult, RestoredEvent, Result, Snapshot, SnapshotStore, StreamId,
    StreamInfo, VerifyReport, Version,
};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::oneshot;

use crate::commit_state::{CommitState, Encoded, Pending, PendingAppend, PendingRestore};
use crate::error::{corrupt_somewhere, guarded, locate, sled_error};
use crate::format;
use crate::manifest::Keeper;
use crate::marks::Marks;
use crate::overlay::Overlay;
use crate::read;
use crate::verify;
use crate::writer::Writer;
use crate::Durability;

/// The embedded Annals event store, on [sled](https://docs.rs/sled/0.34.7).
///
/// It implements [`EventStore`] (with [`close`](EventStore::close) and
/// [`verify`](EventStore::verify)), [`SnapshotStore`], [`CheckpointStore`] and [`Leases`];
/// clones share one store. Open it with [`SledEventStore::builder`]; see the crate docs for the
/// guarantees and `FORMAT.md` for the layout on disk.
#[derive(Clone, Debug)]
pub struct SledEventStore {
    inner: Arc<Inner>,
}

/// What an open store is made of (see `open.rs`).
#[derive(Debug)]
pub(crate) struct Parts {
    pub(crate) db: sled::Db,
    pub(crate) tree: sled::Tree,
    pub(crate) overlay: Arc<Overlay>,
    pub(crate) writer: Arc<Writer>,
    pub(crate) state: Arc<CommitState>,
    pub(crate) flusher_thread: JoinHandle<()>,
    pub(crate) indexer_thread: JoinHandle<()>,
    pub(crate) limits: Limits,
    pub(crate) durability: Durability,
    pub(crate) path: Option<PathBuf>,
    pub(crate) marks: Arc<Marks>,
    pub(crate) keeper: Option<Arc<Keeper>>,
    pub(crate) lost: Vec<Problem>,
}

#[derive(Debug)]
struct Inner {
    /// The database, for [`SledEventStore::open_tree`].
    db: sled::Db,
    tree: sled::Tree,
    /// Commits written but not indexed yet; reads and the writer consult it.
    overlay: Arc<Overlay>,
    writer: Arc<Writer>,
    /// The group commit's state: the queue, what is durable, what readers may see.
    state: Arc<CommitState>,
    flusher_thread: Mutex<Option<JoinHandle<()>>>,
    indexer_thread: Mutex<Option<JoinHandle<()>>>,
    /// The store's leases. A sled database is opened by one process at a time (sled locks its
    /// files), so an in-process table arbitrates between every user of the data.
    leases: LocalLeases,
    limits: Limits,
    durability: Durability,
    /// Shared with the reads, whose errors about damaged files name it.
    path: Option<Arc<Path>>,
    /// The write and save counters (snapshots and checkpoints raise the save counter).
    marks: Arc<Marks>,
    /// The thread writing the manifest (none for a temporary store).
    keeper: Option<Arc<Keeper>>,
    /// What the open found missing and accepted (`accept_loss`), for `verify`.
    lost: Vec<Problem>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: flush what is left and release sled's files, so the same
        // path can be opened again at once. `close()` does the same without blocking.
        self.state.refuse_appends();
        self.state.close_flusher();
        let thread = self
            .flusher_thread
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        self.overlay.stop_indexer();
        let thread = self
            .indexer_thread
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        if let Some(keeper) = &self.keeper {
            if let Err(error) = keeper.stop() {
                tracing::error!(%error, "writing the manifest at close failed");
            }
        }
    }
}

impl SledEventStore {
    pub(crate) fn from_parts(parts: Parts) -> Self {
        SledEventStore {
            inner: Arc::new(Inner {
                db: parts.db,
                tree: parts.tree,
                overlay: parts.overlay,
                writer: parts.writer,
                state: parts.state,
                flusher_thread: Mutex::new(Some(parts.flusher_thread)),
                indexer_thread: Mutex::new(Some(parts.indexer_thread)),
                leases: LocalLeases::new(),
                limits: parts.limits,
                durability: parts.durability,
                path: parts.path.map(Arc::from),
                marks: parts.marks,
                keeper: parts.keeper,
                lost: parts.lost,
            }),
        }
    }

    /// The directory of the store (`None` for a temporary one).
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// When appends are answered.
    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// Flushes everything written so far to disk (useful with [`Durability::Buffered`]), the
    /// derived indexes included, so that the next open has nothing to redo — and with them
    /// whatever was written to the trees of [`open_tree`](Self::open_tree), which share the
    /// database's log.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when the flush fails, [`Error::Closed`] after
    /// [`close`](EventStore::close).
    pub async fn flush(&self) -> Result<()> {
        self.inner.state.flush_now().await
    }

    /// Opens (creating it if need be) the sled tree `name` of the store's database: for data
    /// kept beside the events, in the same files — one directory, one process — such as the
    /// read models of `annals-projections` (its `SledModel`). The store never reads, writes or
    /// verifies these trees; what is in them is the caller's.
    ///
    /// Sled has one log for all the trees of a database, so what is written to such a tree is
    /// made durable by the store's flushes (after every append with [`Durability::Flush`], on
    /// the flush timer with [`Durability::Buffered`], by [`flush`](Self::flush) and at
    /// [`close`](EventStore::close)); they raise the store's write counter as always (crate
    /// docs, "No silent loss on damaged files"). Use sled's single-key writes (`insert`, `remove`,
    /// `compare_and_swap`): a sled batch or transaction switches every sled operation of the
    /// process, the store's included, to a process-wide lock from then on (measured 10–35%
    /// slower reads and inserts).
    ///
    /// The tree stays usable until it is dropped, also after `close`; sled's files are released
    /// when the store's last clone and every such tree are dropped.
    ///
    /// The tree is of sled 0.34.7, the version this crate is built on (`sled = "=0.34.7"`).
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] (setting `tree`) for a name the store keeps for itself: empty,
    /// `annals` or starting with `annals/` (the store's trees, now and in later formats), or
    /// starting with `__sled__` (sled's own); [`Error::Backend`] or
    /// [`Error::Corrupt`] when sled fails.
    pub fn open_tree(&self, name: &str) -> Result<sled::Tree> {
        let reserved = name.is_empty()
            || name.as_bytes() == format::TREE
            || name.starts_with("annals/")
            || name.starts_with("__sled__");
        if reserved {
            return Err(Error::configuration(
                "tree",
                format!(
                    "`{name}` is not a tree name the store lends: empty names, `annals`, and \
                     names starting with `annals/` or `__sled__` are the store's and sled's"
                ),
            ));
        }
        guarded(|| self.inner.db.open_tree(name).map_err(sled_error)).map_err(|e| self.locate(e))
    }

    /// The names of the trees the store lends ([`open_tree`](Self::open_tree)) that start
    /// with `prefix`.
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] for a prefix of the store's own trees.
    pub fn tree_names(&self, prefix: &str) -> Result<Vec<String>> {
        if prefix.starts_with("annals") || prefix.starts_with("__sled__") || prefix.is_empty() {
            return Err(Error::configuration(
                "tree",
                format!("`{prefix}` is not a prefix of the trees the store lends"),
            ));
        }
        Ok(self
            .inner
            .db
            .tree_names()
            .into_iter()
            .filter_map(|name| String::from_utf8(name.to_vec()).ok())
            .filter(|name| name.starts_with(prefix))
            .collect())
    }

    /// Drops a tree the store lent ([`open_tree`](Self::open_tree)) with everything in it;
    /// `false` when there was none of that name.
    ///
    /// # Errors
    ///
    /// As [`open_tree`](Self::open_tree) for the store's own names; sled's failure.
    pub fn drop_tree(&self, name: &str) -> Result<bool> {
        self.open_tree(name)?;
        guarded(|| self.inner.db.drop_tree(name).map_err(sled_error)).map_err(|e| self.locate(e))
    }

    fn visible(&self) -> u64 {
        self.inner.state.visible()
    }

    /// Adds where the files are to an error about damaged sled files.
    fn locate(&self, error: Error) -> Error {
        locate(error, self.inner.path.as_deref())
    }

    /// `read`, its errors about damaged sled files saying where the files are.
    fn located<T: Send + 'static>(
        &self,
        read: BoxStream<'static, Result<T>>,
    ) -> BoxStream<'static, Result<T>> {
        let path = self.inner.path.clone();
        read.map_err(move |e| locate(e, path.as_deref())).boxed()
    }

    /// Encodes and submits an append, and waits for its answer (and, with
    /// [`Durability::Flush`], for its flush).
    async fn append_now(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        self.inner.limits.check(&events)?;
        let events = events
            .iter()
            .map(|e| Encoded {
                id: e.id,
                body: format::encode_body(e),
            })
            .collect();
        let (reply, answer) = oneshot::channel();
        self.inner.writer.submit(Pending::Append(PendingAppend {
            stream: stream.clone(),
            expected,
            events,
            reply,
        }))?;
        let result = answer.await.map_err(|_| Error::Closed)??;
        if self.inner.durability == Durability::Flush {
            self.inner
                .state
                .durable_position(stream, result.last_position.commit())
                .await?;
        }
        Ok(result)
    }

    /// After a snapshot or checkpoint was written: with [`Durability::Flush`], waits until it
    /// is on disk.
    async fn settle(&self) -> Result<()> {
        if self.inner.durability == Durability::Flush {
            self.inner.state.flush_now().await?;
        }
        Ok(())
    }
}

/// Waits, off the async workers, for the thread in `slot` (if it is still there) to end.
async fn join(slot: &Mutex<Option<JoinHandle<()>>>, panicked: &'static str) -> Result<()> {
    let thread = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(thread) = thread {
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|e| Error::backend("sled", e))?
            .map_err(|_| Error::backend("sled", panicked))?;
    }
    Ok(())
}

impl EventStore for SledEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        let count = events.len();
        instrument_append(
            "sled",
            stream,
            count,
            self.append_now(stream, expected, events),
        )
        .await
        .map_err(|e| self.locate(e))
    }

    fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> BoxStream<'static, Result<RecordedEvent>> {
        let from = options.from;
        let read = read::stream(
            self.inner.tree.clone(),
            self.inner.overlay.clone(),
            stream.clone(),
            options,
            self.visible(),
        );
        let read = self.located(read);
        instrument_read("sled", "read_stream", Some(stream), from, read)
    }

    fn read_all(&self, options: ReadAll) -> BoxStream<'static, Result<RecordedEvent>> {
        let from = options.from;
        let read = self.located(read::all(
            self.inner.tree.clone(),
            self.inner.overlay.clone(),
            options,
            self.visible(),
        ));
        instrument_read("sled", "read_all", None, from, read)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version> {
        let head = guarded(|| {
            read::head_at(
                &self.inner.tree,
                &self.inner.overlay,
                stream,
                self.visible(),
            )
        })
        .map_err(|e| self.locate(e))?;
        Ok(Version::new(head.map_or(0, |h| h.version)))
    }

    async fn last_position(&self) -> Result<Option<Position>> {
        let visible = self.visible();
        Ok((visible > 0).then(|| Position::sequence(visible)))
    }

    fn streams(&self) -> BoxStream<'static, Result<StreamInfo>> {
        self.located(read::streams(
            self.inner.tree.clone(),
            self.inner.overlay.clone(),
            self.visible(),
        ))
    }

    fn watch_commits(&self) -> CommitWatch {
        self.inner.state.watch()
    }

    fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Stops accepting appends, commits and flushes the ones already queued, and stops the
    /// flusher and indexer threads, leaving nothing for the next open to redo; then records in
    /// the manifest what is durable. Reads keep
    /// working until the last clone is dropped; sled's files are released then. Dropping every
    /// clone without calling `close` does the same, blocking. Closing twice is harmless.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when the final flush fails, or writing the manifest does.
    async fn close(&self) -> Result<()> {
        let inner = &self.inner;
        inner.state.refuse_appends();
        // A leader may be finishing a group: let it, so its appends reach the final flush.
        while !inner.state.is_idle() {
            tokio::task::yield_now().await;
        }
        let flushed = inner.state.flush_now().await;
        inner.state.close_flusher();
        join(&inner.flusher_thread, "the flusher thread panicked").await?;
        inner.overlay.stop_indexer();
        join(&inner.indexer_thread, "the indexer thread panicked").await?;
        if let Some(keeper) = inner.keeper.clone() {
            // The manifest records what the last flushes made durable.
            tokio::task::spawn_blocking(move || keeper.stop())
                .await
                .map_err(|e| Error::backend("sled", e))?
                .map_err(|e| Error::backend("sled", format!("writing the manifest failed: {e}")))?;
        }
        match flushed {
            Err(Error::Closed) => Ok(()),
            other => other,
        }
    }

    /// Restores a batch of events of many streams, each with its version and recording time:
    /// checked by the writer like an append (the kit's `plan_restore`: each stream's head, the
    /// ids already stored), then written as mixed commit records (at most 16 events each, see
    /// `FORMAT.md`; what a crash leaves of an unfinished restore is removed at the next open, so
    /// a restore is all or nothing, also across a crash) and made durable and visible by the
    /// same group commit and flush as appends.
    ///
    /// # Errors
    ///
    /// As [`EventStore::restore`] documents; nothing is written on any error.
    async fn restore(&self, events: Vec<RestoredEvent>) -> Result<RestoreResult> {
        let Some(stream) = events.first().map(|e| e.stream_id.clone()) else {
            // The limits refuse an empty batch, as they refuse an empty append.
            self.inner.limits.check(&[])?;
            return Ok(RestoreResult::default());
        };
        let count = events.len();
        let restore = async {
            // Checked as an append is, without copying the events.
            let (places, data): (Vec<_>, Vec<EventData>) = events
                .into_iter()
                .map(|e| ((e.stream_id, e.version, e.recorded_at), e.event))
                .unzip();
            self.inner.limits.check(&data)?;
            let bodies = data.iter().map(format::encode_body).collect();
            let events = places
                .into_iter()
                .zip(data)
                .map(|((stream, version, at), event)| {
                    RestoredEvent::new(stream, version, at, event)
                })
                .collect();
            let (reply, answer) = oneshot::channel();
            self.inner.writer.submit(Pending::Restore(PendingRestore {
                events,
                bodies,
                reply,
            }))?;
            let (result, durable_through) = answer.await.map_err(|_| Error::Closed)??;
            if self.inner.durability == Durability::Flush && durable_through > 0 {
                self.inner
                    .state
                    .durable_position(&stream, durable_through)
                    .await?;
            }
            Ok(result)
        };
        let span = tracing::debug_span!("annals.restore", store = "sled", count);
        tracing::Instrument::instrument(restore, span)
            .await
            .map_err(|e| self.locate(e))
    }

    /// Walks the whole store and checks every record: checksums, contiguous versions per
    /// stream, the global log and the id index pointing at the right records, heads matching
    /// their streams, snapshots not ahead of their streams, the format marker; then the
    /// snapshots and checkpoints against the save counter, and sled's files against the
    /// manifest (what is missing is a [`ProblemKind::Missing`](annals::ProblemKind::Missing)
    /// problem, as is a loss the open accepted, see
    /// [`accept_loss`](crate::SledEventStoreBuilder::accept_loss)). Problems are reported (in
    /// key order), not fixed.
    ///
    /// It first writes the index entries of every visible commit, then reads everything once
    /// plus a few point lookups per event, on the blocking pool, with memory bounded whatever
    /// the size of the store.
    ///
    /// # Errors
    ///
    /// Only when sled itself fails to read; damaged records are
    /// [problems](VerifyReport::problems).
    async fn verify(&self) -> Result<VerifyReport> {
        let inner = self.inner.clone();
        let visible = self.visible();
        let report = tokio::task::spawn_blocking(move || {
            guarded(|| {
                verify::run(
                    &inner.tree,
                    &inner.overlay,
                    visible,
                    &inner.marks,
                    inner.path.as_deref(),
                    &inner.lost,
                )
            })
        })
        .await
        .map_err(|e| Error::backend("sled", e))?;
        report.map_err(|e| self.locate(e))
    }
}

impl Leases for SledEventStore {
    /// In-process leases ([`LocalLeases`]), shared by the clones of the store: a sled database
    /// is opened by one process at a time, so every holder is in this process.
    async fn try_lease(&self, name: &str) -> Result<Option<Lease>> {
        Ok(self.inner.leases.try_lease(name))
    }

    async fn leases(&self, prefix: &str) -> Result<Vec<annals::LeaseInfo>> {
        Ok(self
            .inner
            .leases
            .list(prefix, &annals::lease::local_holder()))
    }
}

impl SnapshotStore for SledEventStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        let key = format::snapshot_key(snapshot.stream_id.as_str());
        let value = format::snapshot_value(&key, &snapshot);
        guarded(|| self.inner.marks.save(&self.inner.tree, key, value))
            .map_err(|e| self.locate(e))?;
        self.settle().await
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        let key = format::snapshot_key(stream.as_str());
        let found = guarded(|| self.inner.tree.get(&key).map_err(sled_error));
        let Some(value) = found.map_err(|e| self.locate(e))? else {
            return Ok(None);
        };
        format::decode_snapshot(stream, &key, &value)
            .map(Some)
            .map_err(|reason| {
                Error::corrupt(
                    RecordPlace::new().stream(stream.clone()),
                    format!("snapshot: {reason}"),
                )
            })
    }
}

impl CheckpointStore for SledEventStore {
    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        let key = format::checkpoint_key(name);
        let value = format::checkpoint_value(&key, position);
        guarded(|| self.inner.marks.save(&self.inner.tree, key, value))
            .map_err(|e| self.locate(e))?;
        self.settle().await
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>> {
        let key = format::checkpoint_key(name);
        let found = guarded(|| self.inner.tree.get(&key).map_err(sled_error));
        let Some(value) = found.map_err(|e| self.locate(e))? else {
            return Ok(None);
        };
        format::decode_checkpoint(&key, &value)
            .map(Some)
            .map_err(|reason| corrupt_somewhere(format!("checkpoint `{name}`: {reason}")))
    }
}
