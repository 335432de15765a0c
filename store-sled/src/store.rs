use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use annals::{
    AppendResult, CheckpointStore, CommitNotifier, CommitWatch, Error, EventData, EventStore,
    ExpectedVersion, Limits, Position, ReadAll, ReadStream, RecordedEvent, Result, Snapshot,
    SnapshotStore, StreamId, StreamInfo, Version,
};
use futures::stream::BoxStream;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::flusher::Flusher;
use crate::format::{self, FORMAT_VERSION, TREE};
use crate::overlay::Overlay;
use crate::read;
use crate::recover;
use crate::verify::{self, VerifyReport};
use crate::writer::{Encoded, LogEnd, Pending, Writer};
use crate::{sled_error, Durability, SledStoreBuilder};

/// The embedded Annals event store, on [sled](https://docs.rs/sled/0.34.7).
///
/// It implements [`EventStore`], [`SnapshotStore`] and [`CheckpointStore`]; clones share one
/// store. Open it with [`SledEventStore::builder`]; see the crate docs for the guarantees and
/// `FORMAT.md` for the layout on disk.
#[derive(Clone, Debug)]
pub struct SledEventStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tree: sled::Tree,
    /// Commits written but not indexed yet; reads and the writer consult it.
    overlay: Arc<Overlay>,
    writer: Arc<Writer>,
    flusher: Arc<Flusher>,
    flusher_thread: Mutex<Option<JoinHandle<()>>>,
    indexer_thread: Mutex<Option<JoinHandle<()>>>,
    /// The last position readers may see: flushed ([`Durability::Flush`]) or applied
    /// ([`Durability::Buffered`]). Every position up to it is committed.
    visible: Arc<AtomicU64>,
    notifier: CommitNotifier,
    limits: Limits,
    durability: Durability,
    path: Option<PathBuf>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: flush what is left and release sled's files, so the same
        // path can be opened again at once. `close()` does the same without blocking.
        self.writer.close();
        self.flusher.close();
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
    }
}

impl SledEventStore {
    /// A builder; see [`SledStoreBuilder::new`] for the defaults.
    pub fn builder() -> SledStoreBuilder {
        SledStoreBuilder::new()
    }

    pub(crate) fn open_blocking(b: SledStoreBuilder) -> Result<Self> {
        let mut config = sled::Config::new()
            .cache_capacity(b.cache_bytes)
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput);
        config = match &b.path {
            Some(path) => config.path(path),
            None => config.temporary(true),
        };
        let db = open_db(&config)?;
        let tree = check_format(&db)?;
        let last = recover::recover(&db, &tree)?;
        let frontier = recover::frontier(&tree)?;
        let overlay = Arc::new(Overlay::new(last, frontier));
        let visible = Arc::new(AtomicU64::new(last));
        let notifier = CommitNotifier::new();
        notifier.notify(Position::sequence(last));
        let flusher = Flusher::new(
            last,
            overlay.written(),
            b.durability,
            b.flush_interval,
            visible.clone(),
            notifier.clone(),
        );
        let end = LogEnd {
            position: last,
            max_id: recover::max_indexed_id(&tree, frontier)?,
        };
        let writer = Arc::new(Writer::new(
            tree.clone(),
            end,
            flusher.clone(),
            b.durability,
            visible.clone(),
            notifier.clone(),
            overlay.clone(),
        ));
        let indexer_thread = overlay.spawn_indexer(tree.clone(), visible.clone())?;
        let flusher_thread = flusher.spawn(db, tree.clone(), overlay.clone(), writer.clone())?;
        tracing::debug!(path = ?b.path, position = last, "opened sled store");
        Ok(SledEventStore {
            inner: Arc::new(Inner {
                tree,
                overlay,
                writer,
                flusher,
                flusher_thread: Mutex::new(Some(flusher_thread)),
                indexer_thread: Mutex::new(Some(indexer_thread)),
                visible,
                notifier,
                limits: b.limits,
                durability: b.durability,
                path: b.path,
            }),
        })
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
    /// derived indexes included, so that the next open has nothing to redo.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when the flush fails, [`Error::Closed`] after [`close`](Self::close).
    pub async fn flush(&self) -> Result<()> {
        self.inner.flusher.flush_now().await
    }

    /// Stops accepting appends, commits and flushes the ones already queued, and stops the
    /// flusher thread. Reads keep working until the last clone is dropped; sled's files are
    /// released then. Dropping every clone without calling `close` does the same, blocking.
    ///
    /// # Errors
    ///
    /// [`Error::Backend`] when the final flush fails.
    pub async fn close(&self) -> Result<()> {
        self.inner.writer.close();
        // A leader may be finishing a group: let it, so its appends reach the final flush.
        while !self.inner.writer.is_idle() {
            tokio::task::yield_now().await;
        }
        let flushed = self.inner.flusher.flush_now().await;
        self.inner.flusher.close();
        join(&self.inner.flusher_thread, "the flusher thread panicked").await?;
        self.inner.overlay.stop_indexer();
        join(&self.inner.indexer_thread, "the indexer thread panicked").await?;
        match flushed {
            Err(Error::Closed) => Ok(()),
            other => other,
        }
    }

    /// Walks the whole store and checks every record: checksums, contiguous versions per
    /// stream, the global log and the id index pointing at the right records, heads matching
    /// their streams, snapshots not ahead of their streams. Problems are reported, not fixed.
    ///
    /// It reads everything once plus a few point lookups per event, in a blocking task, with
    /// memory bounded whatever the size of the store.
    ///
    /// # Errors
    ///
    /// Only when sled itself fails to read; damaged records are [problems](VerifyReport::problems).
    pub async fn verify(&self) -> Result<VerifyReport> {
        let tree = self.inner.tree.clone();
        let overlay = self.inner.overlay.clone();
        let visible = self.inner.visible.load(Ordering::Acquire);
        tokio::task::spawn_blocking(move || verify::run(&tree, &overlay, visible))
            .await
            .map_err(|e| Error::backend("sled", e))?
    }

    fn visible(&self) -> u64 {
        self.inner.visible.load(Ordering::Acquire)
    }
}

/// Checks (or, on a fresh database, writes) the format marker, and returns the store's tree.
fn check_format(db: &sled::Db) -> Result<sled::Tree> {
    let foreign = || {
        Error::Format(format!(
            "this sled database is not an Annals store (it has no `{}` tree with a format marker); \
             refusing to write into it",
            String::from_utf8_lossy(TREE)
        ))
    };
    let has_tree = db.tree_names().iter().any(|name| name.as_ref() == TREE);
    if !has_tree && (!db.is_empty() || db.tree_names().len() > 1) {
        return Err(foreign());
    }
    let tree = db.open_tree(TREE).map_err(sled_error)?;
    match tree.get(format::META_FORMAT).map_err(sled_error)? {
        Some(value) => {
            let version = format::decode_format(&value)
                .map_err(|reason| Error::Format(format!("unreadable format marker: {reason}")))?;
            if version > FORMAT_VERSION {
                return Err(Error::Format(format!(
                    "the store was written in format {version} by a newer annals-sled; this build \
                     reads format {FORMAT_VERSION} only: upgrade annals-sled to open it"
                )));
            }
            if version == 2 {
                // Format 3 only adds id segments: a format 2 store is a format 3 store without
                // any. Once marked 3, older builds refuse it (they would not see the segments).
                tree.insert(format::META_FORMAT, format::format_value(FORMAT_VERSION))
                    .map_err(sled_error)?;
                db.flush().map_err(sled_error)?;
            } else if version != FORMAT_VERSION {
                return Err(Error::Format(format!(
                    "the store was written in format {version} by an older, unreleased \
                     annals-sled; this build reads format {FORMAT_VERSION} only and does not \
                     convert it"
                )));
            }
        }
        None if !tree.is_empty() => return Err(foreign()),
        None => {
            tree.insert(format::META_FORMAT, format::format_value(FORMAT_VERSION))
                .map_err(sled_error)?;
            db.flush().map_err(sled_error)?;
        }
    }
    Ok(tree)
}

/// How long an open waits for sled's file lock to be released before reporting the store
/// unavailable.
const LOCK_WAIT: Duration = Duration::from_millis(500);

/// Opens sled. A database just dropped in this process releases its file lock a moment later
/// (sled finishes its last writes on its I/O threads), so a lock held at the first attempt is
/// retried for up to [`LOCK_WAIT`]; a lock another process holds is reported then.
fn open_db(config: &sled::Config) -> Result<sled::Db> {
    let started = Instant::now();
    loop {
        match config.open() {
            Err(sled::Error::Io(io))
                if io.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other.map_err(open_error),
        }
    }
}

fn open_error(error: sled::Error) -> Error {
    match error {
        sled::Error::Io(io) => Error::Unavailable {
            backend: "sled",
            source: Box::new(io),
        },
        other => sled_error(other),
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
        let span = tracing::debug_span!(
            "append",
            store = "sled",
            stream = %stream,
            count = events.len(),
            version = tracing::field::Empty,
            position = tracing::field::Empty,
        );
        async move {
            self.inner.limits.check(&events)?;
            let events = events
                .iter()
                .map(|e| Encoded {
                    id: e.id,
                    body: format::encode_body(e),
                })
                .collect();
            let (reply, answer) = oneshot::channel();
            self.inner.writer.submit(Pending {
                stream: stream.clone(),
                expected,
                events,
                reply,
            })?;
            let result = answer.await.map_err(|_| Error::Closed)??;
            if self.inner.durability == Durability::Flush {
                self.inner
                    .flusher
                    .durable_position(stream, result.last_position.commit())
                    .await?;
            }
            let span = tracing::Span::current();
            span.record("version", result.last_version.get());
            span.record("position", result.last_position.commit());
            Ok(result)
        }
        .instrument(span)
        .await
    }

    fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> BoxStream<'static, Result<RecordedEvent>> {
        read::stream(
            self.inner.tree.clone(),
            self.inner.overlay.clone(),
            stream.clone(),
            options,
            self.visible(),
        )
    }

    fn read_all(&self, options: ReadAll) -> BoxStream<'static, Result<RecordedEvent>> {
        read::all(self.inner.tree.clone(), options, self.visible())
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version> {
        let head = read::head_at(
            &self.inner.tree,
            &self.inner.overlay,
            stream,
            self.visible(),
        )?;
        Ok(Version::new(head.map_or(0, |h| h.version)))
    }

    async fn last_position(&self) -> Result<Option<Position>> {
        let visible = self.visible();
        Ok((visible > 0).then(|| Position::sequence(visible)))
    }

    fn streams(&self) -> BoxStream<'static, Result<StreamInfo>> {
        read::streams(
            self.inner.tree.clone(),
            self.inner.overlay.clone(),
            self.visible(),
        )
    }

    fn watch_commits(&self) -> CommitWatch {
        self.inner.notifier.watch()
    }

    fn limits(&self) -> Limits {
        self.inner.limits
    }
}

impl SnapshotStore for SledEventStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        let key = format::snapshot_key(snapshot.stream_id.as_str());
        let value = format::snapshot_value(&key, &snapshot);
        self.inner.tree.insert(key, value).map_err(sled_error)?;
        if self.inner.durability == Durability::Flush {
            self.inner.flusher.flush_now().await?;
        }
        Ok(())
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        let key = format::snapshot_key(stream.as_str());
        let Some(value) = self.inner.tree.get(&key).map_err(sled_error)? else {
            return Ok(None);
        };
        format::decode_snapshot(stream, &key, &value)
            .map(Some)
            .map_err(|reason| {
                Error::corrupt(
                    Some(stream.clone()),
                    None,
                    None,
                    format!("snapshot: {reason}"),
                )
            })
    }
}

impl CheckpointStore for SledEventStore {
    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        let key = format::checkpoint_key(name);
        let value = format::checkpoint_value(&key, position);
        self.inner.tree.insert(key, value).map_err(sled_error)?;
        if self.inner.durability == Durability::Flush {
            self.inner.flusher.flush_now().await?;
        }
        Ok(())
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>> {
        let key = format::checkpoint_key(name);
        let Some(value) = self.inner.tree.get(&key).map_err(sled_error)? else {
            return Ok(None);
        };
        format::decode_checkpoint(&key, &value)
            .map(Some)
            .map_err(|reason| {
                Error::corrupt(None, None, None, format!("checkpoint `{name}`: {reason}"))
            })
    }
}
