//! The sled read model: read-model trees in the same sled database as the store (one
//! directory, one process), each batch's writes, dead-letter changes and checkpoint committed
//! all or nothing.
//!
//! # Design: a write-ahead batch record, not a sled transaction
//!
//! Sled 0.34 has two ways to change several keys atomically, batches and transactions, and both
//! take a process-wide lock (`concurrency_control::write`); the first one switches *every* sled
//! operation of the process from then on — the store's appends and reads included — to taking
//! that lock's read side, and a transaction holds the write side for its whole length, stopping
//! every other sled operation of the process meanwhile. The store never uses either on its
//! paths for that reason (measured 10–35% slower reads and inserts once switched). For a read
//! model committing a batch every few milliseconds beside the store that feeds it, the cost is
//! worse: measured with 2,000 batches of 100 writes and a checkpoint on one thread while the
//! store's `read_all` runs on another (a stand-alone program on an `annals-sled` store of
//! 100,000 events, release build, 2 CPUs, 4 runs each), the batches took 260–430 ms as sled
//! transactions and 100–175 ms as this design's record + inserts, and the reads meanwhile fell
//! from 900–1,350 events/ms to 90–310 events/ms.
//!
//! So the model uses the same write-ahead idea as the store's commit records, with sled's
//! single-key writes only:
//!
//! 1. The handler writes into a [`SledTx`]: a buffer of sets and removes per tree (reads see
//!    the buffer first, then the trees).
//! 2. The commit turns the buffer, the dead-letter changes and the new checkpoint into one
//!    list of final values (set this key to these bytes, remove that key — absolute values, no
//!    increments) and writes it as **one sled insert**, the batch record, into the journal
//!    tree. That insert is the commit point: sled writes one key atomically, also across a
//!    crash.
//! 3. The record's writes are then applied to their trees with plain inserts and removes, and
//!    the record is removed.
//! 4. Opening the model ([`SledModel::open`]) applies again every record left in the journal —
//!    what a crash between 2 and 3 leaves — before any checkpoint is read. Applying is
//!    idempotent (final values), so applying a record twice, or a crash during the redo, is
//!    harmless.
//!
//! Sled has one log for all trees and recovers a prefix of it after a crash (the store relies
//! on it too), and every write above is issued after the one before it returned. So a crash
//! leaves either no record and none of its writes (the batch is redone from the log), or the
//! record (its writes, complete or not, are completed at the next open): never a batch applied
//! twice, never one skipped. A store has one open model (it holds a store lease) and its
//! commits are serialised by one lock (handlers still run in parallel; only writing the record
//! and applying it is serialised), so at most one record is in the journal while the model
//! runs, and a record is applied before the next one is written.
//! Should applying fail in-process (a sled error), the record stays and is applied again before
//! the next batch, the next checkpoint read and the next reader's read.
//!
//! The cost of the design is writing each batch's changes twice (record, then trees), which is
//! what the measurement above includes. `tests/proj_sled_crash.rs` kills a process running a
//! projection with SIGKILL at random moments, 44 times a run, and checks after each restart
//! that every partition holds exactly what its checkpoint covers; removing the record, or its
//! redo at open, fails it within a few kills.
//!
//! # Durability
//!
//! A commit is durable at the next flush of the sled database: the model's own (a task flushing
//! through the store every second when something was committed,
//! [`SledModelBuilder::flush_every`]), the one at the runner's shutdown ([`ReadModel::flush`]),
//! and the store's when it flushes sled (asked to, at close, for snapshots and checkpoints, about
//! once per indexing round). A crash loses at most the commits since the last flush, each with
//! its checkpoint, and they are redone from the log.
//!
//! The store keeps its events in its own log files (format 5) and syncs them before every flush
//! of sled, and a projection only ever reads events already written to those files, so a read
//! model is not made durable ahead of the events it was built from. Should it be anyway — a
//! power loss under `Durability::Buffered`, which may lose acknowledged events by design — the
//! runner refuses to start a projection whose checkpoint is beyond the log's end
//! ([`ProjectionError::AheadOfLog`](crate::ProjectionError::AheadOfLog)): rebuild it.
//!
//! # Layout (sled trees of the store's database)
//!
//! - `projections/journal`: batch records, under projection name, 0, partition (u32 BE);
//! - `projections/checkpoints`: checkpoints, under the same key;
//! - `projections/dead-letters`: dead letters, under projection name, 0, event id;
//! - `projections/data/<name>`: the projection's tree `<name>`, holding its handler's keys and
//!   values as given.
//!
//! The model's own values carry a format version and a CRC-32 (see `codec.rs`).

mod codec;
mod errors;
mod generations;
mod inner;
mod tx;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use annals::{Error, Leases, Position};
use annals_sled::SledEventStore;
use futures::FutureExt;

use self::codec::Opened;
use self::errors::{damaged, guarded, newer, sled_error};
use self::inner::{Inner, Work};
pub use self::tx::SledTx;
use super::{
    effects_due, Batch, CommitError, DeadLetter, Generations, PartitionKey, ReadModel, SwapError,
};
use crate::{Projection, ProjectionError, ProjectionName, Result};

/// The journal of batch records.
const JOURNAL: &str = "projections/journal";
/// The checkpoints.
const CHECKPOINTS: &str = "projections/checkpoints";
/// The dead letters.
const DEAD_LETTERS: &str = "projections/dead-letters";
/// The prefix of the projection's trees.
const DATA: &str = "projections/data/";
/// Generations records, by projection.
const GENERATIONS: &str = "projections/generations";
/// Which sled tree readers of a tree see.
const ROUTES: &str = "projections/routes";
/// The store lease the one open model of a store holds.
const LEASE: &str = "annals-projections/sled-model";
/// By default, how often the model flushes what was committed since its last flush.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// A read model in sled trees of a [`SledEventStore`]'s database — the same files as the
/// events, one directory, one process. A batch's writes, its dead-letter changes and its
/// checkpoint are committed all or nothing, also across a crash: a projection never applies an
/// event twice and never skips one.
///
/// Handlers write through a [`SledTx`] into named trees (`tx.insert("balances", key, value)`),
/// keys and values being the handler's bytes; readers use [`get`](Self::get),
/// [`to_map`](Self::to_map) or the tree itself ([`tree`](Self::tree)). Clones share one
/// model; a store has at most one open model at a time (opening a second is an error: share
/// the first), so that commits are applied in one order.
///
/// How it works: each commit is written as one batch record (a single sled insert, the commit
/// point) holding the final values of every key it changes and the new checkpoint, then
/// applied to the trees with plain inserts; [`open`](Self::open) applies again what a crash
/// left unapplied. It uses no sled batch or transaction: their first use switches every sled
/// operation of the process, the store's included, to a process-wide lock, and a transaction
/// holds it for its whole length (measured: the store's reads 3 to 10 times slower while a
/// projection commits in transactions). What is committed is durable at the next flush of sled:
/// the model's (every second when something was committed, see
/// [`SledModelBuilder::flush_every`]), the one at the runner's shutdown and the store's; a crash
/// before it loses commits together with their checkpoints, and they are redone.
///
/// A reader looking at several keys while a batch is applied may see some of its writes before
/// the others (as with [`MemoryModel`](crate::MemoryModel)); the checkpoint moves last.
///
/// ```
/// use annals::{BoxError, EventData, EventStore, ExpectedVersion, RecordedEvent, StreamId};
/// use annals_projections::{Projection, ProjectionName, ProjectionRunner, SledModel, SledTx};
/// use annals_sled::SledEventStore;
///
/// /// Events per stream, as a u64 in the tree `counts`.
/// struct Counts(ProjectionName);
///
/// impl Projection<SledModel> for Counts {
///     fn name(&self) -> &ProjectionName {
///         &self.0
///     }
///     async fn handle(&self, tx: &mut SledTx, events: &[RecordedEvent]) -> Result<(), BoxError> {
///         for e in events {
///             let key = e.stream_id.as_str();
///             let n = tx.get("counts", key)?.map_or(Ok(0), |v| v.as_slice().try_into().map(u64::from_be_bytes))?;
///             tx.insert("counts", key, (n + 1).to_be_bytes())?;
///         }
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let store = SledEventStore::builder().path(dir.path().join("data")).open().await?;
/// let counts = SledModel::open(&store).await?;
/// let running = ProjectionRunner::new(store.clone(), counts.clone(), Counts(ProjectionName::new("counts")?))
///     .start()
///     .await?;
/// let done = store
///     .append(&StreamId::new("account-1")?, ExpectedVersion::Any, vec![EventData::json("Opened", &())?])
///     .await?;
/// running.caught_up_to(done.last_position).await?;
/// assert_eq!(counts.get("counts", "account-1")?, Some(1u64.to_be_bytes().to_vec()));
/// running.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SledModel {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SledModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledModel")
            .field("path", &self.inner.store.path())
            .field("trees", &self.inner.trees.len())
            .finish_non_exhaustive()
    }
}

/// Opens a [`SledModel`] with settings other than the defaults.
#[derive(Debug)]
pub struct SledModelBuilder {
    store: SledEventStore,
    flush_every: Duration,
}

impl SledModelBuilder {
    /// How often the model flushes what was committed since its last flush, through the
    /// store's flush (1 second by default): the longest a committed batch stays in memory
    /// only. Shorter loses less work to a crash (it is redone from the log, never
    /// double-counted) at the cost of more `fsync`s; the store's own flushes of sled make
    /// commits durable meanwhile too. At least a millisecond.
    #[must_use]
    pub fn flush_every(mut self, every: Duration) -> Self {
        self.flush_every = every;
        self
    }

    /// Opens the model: its trees, and what a crash left unapplied (see [`SledModel::open`]).
    ///
    /// # Errors
    ///
    /// As [`SledModel::open`].
    pub async fn open(self) -> Result<SledModel> {
        let store = self.store;
        let lease = store.try_lease(LEASE).await?.ok_or_else(|| {
            Error::configuration(
                "SledModel",
                "this store already has an open SledModel: share that one (its clones share \
                 everything)",
            )
        })?;
        let inner = tokio::task::spawn_blocking(move || Inner::open(store, lease))
            .await
            .map_err(|e| Error::backend("sled", e))??;
        let inner = Arc::new(inner);
        let every = self.flush_every.max(Duration::from_millis(1));
        tokio::spawn(flusher(Arc::downgrade(&inner), every));
        Ok(SledModel { inner })
    }
}

impl SledModel {
    /// The read model in `store`'s database, with the default settings: opens its trees and
    /// applies again what a crash left unapplied (see the type's docs). Keep the model as long
    /// as the store: it holds a clone of it, and sled's files are released when both are
    /// dropped.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Store`] with [`Error::Configuration`] when the store already has an
    /// open model (share that one: clones share everything);
    /// [`ProjectionError::NewerFormat`] when a batch record was written by a newer build;
    /// [`ProjectionError::Store`] with sled's failure or a damaged record.
    pub async fn open(store: &SledEventStore) -> Result<SledModel> {
        SledModel::builder(store).open().await
    }

    /// A builder, to open the model with other settings ([`SledModelBuilder::flush_every`]).
    pub fn builder(store: &SledEventStore) -> SledModelBuilder {
        SledModelBuilder {
            store: store.clone(),
            flush_every: FLUSH_EVERY,
        }
    }

    /// The committed value of `key` in the projection's tree `tree`.
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] for an invalid tree name; sled's failure.
    pub fn get(&self, tree: &str, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        self.inner.settle()?;
        Ok(self.inner.read(tree, key.as_ref())?)
    }

    /// A copy of every key and value of the projection's tree `tree` (for tests and small
    /// trees; scan a large one through [`tree`](Self::tree)).
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] for an invalid tree name; sled's failure.
    pub fn to_map(&self, tree: &str) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        self.inner.settle()?;
        let map = self.inner.on_route(tree, |tree| {
            tree.iter()
                .map(|entry| entry.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect()
        })?;
        Ok(map)
    }

    /// The projection's tree `tree` itself, in the active generation (the sled tree
    /// `projections/data/<tree>` until the projection is rebuilt), to read it with sled's API
    /// (ranges, prefixes). The handle stays on its generation: take it again after a swap. Write to it only through a [`SledTx`]: other
    /// writes are outside every batch and checkpoint.
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] for an invalid tree name; sled's failure.
    pub fn tree(&self, tree: &str) -> Result<sled::Tree> {
        self.inner.settle()?;
        Ok(self.inner.tree(&self.inner.route(tree)?)?)
    }

    /// Flushes to disk (through the store's flush, or sled's after the store was closed).
    async fn flush_now(&self) -> annals::Result<()> {
        self.inner.dirty.store(false, Ordering::Release);
        let flushed = match self.inner.store.flush().await {
            Err(Error::Closed) => self
                .inner
                .journal
                .flush_async()
                .await
                .map(drop)
                .map_err(sled_error),
            other => other,
        };
        if flushed.is_err() {
            self.inner.dirty.store(true, Ordering::Release);
        }
        flushed
    }
}

/// Flushes what was committed, `every` so often, until the model is dropped.
async fn flusher(model: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = model.upgrade() else {
            return;
        };
        if inner.dirty.load(Ordering::Acquire) {
            if let Err(error) = (SledModel { inner }).flush_now().await {
                tracing::warn!(%error, "read model (sled): flushing failed; the next flush retries");
            }
        }
    }
}

impl ReadModel for SledModel {
    type Tx = SledTx;

    async fn checkpoint(&self, key: &PartitionKey) -> Result<Option<Position>> {
        self.inner.settle()?;
        self.inner.checkpoint_of(key)
    }

    async fn commit<P: Projection<Self>>(
        &self,
        projection: &P,
        batch: Batch<'_>,
    ) -> Result<(), CommitError> {
        // The handler reads what is committed: a batch left unapplied is applied first.
        self.inner.settle().map_err(|e| match e {
            ProjectionError::Store(e) => CommitError::Backend(e),
            other => CommitError::Backend(Error::backend("projections", other)),
        })?;
        let effects = projection.has_effects();
        let _effect_lock = match effects {
            true => Some(self.inner.effect_locks.lock(batch.key).await),
            false => None,
        };
        // A retired generation's trees may be gone: its handler is not run (checked again
        // under the commit lock).
        let generations = self
            .inner
            .generations_of(&batch.key.projection)
            .map_err(|e| CommitError::Backend(inner::store_error(e)))?;
        super::check_generation(&batch, &generations)?;
        let due = match effects {
            true => {
                let key = codec::effect_key(batch.key.projection.as_str(), batch.key.partition);
                let mark = self
                    .inner
                    .position_at(&key, "an effect mark")
                    .map_err(|e| CommitError::Backend(inner::store_error(e)))?;
                effects_due(&batch, mark)
            }
            false => Vec::new(),
        };
        let mut tx = SledTx::new(
            self.clone(),
            batch.key.projection.as_str(),
            batch.key.generation,
        );
        if !batch.handle.is_empty() {
            // A panicking handler is a failed handler; its writes were only buffered.
            let handled = AssertUnwindSafe(async {
                projection.handle(&mut tx, batch.handle).await?;
                if !due.is_empty() {
                    projection.effects(&mut tx, &due).await?;
                }
                Ok::<(), annals::BoxError>(())
            })
            .catch_unwind()
            .await;
            match handled {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(CommitError::Handler(e)),
                Err(panic) => {
                    return Err(CommitError::Handler(crate::panic_message(&*panic).into()))
                }
            }
        }
        let work = Work {
            key: batch.key.clone(),
            trees: tx.trees,
            add: batch.dead_letters.to_vec(),
            release: batch.release.to_vec(),
            checkpoint: batch.checkpoint,
            rebuilding: batch.rebuilding,
            effect_mark: due.last().map(|e| e.position),
        };
        let inner = self.inner.clone();
        annals::store::kit::off_worker("sled", move || inner.write(work))
            .await
            .map_err(CommitError::Backend)??;
        if batch.rebuilding {
            // A rebuild's batches are large and few: each made durable, so a killed rebuild
            // resumes from its last batch.
            self.flush_now().await.map_err(CommitError::Backend)?;
        }
        Ok(())
    }

    async fn dead_letters(
        &self,
        projection: &ProjectionName,
        generation: u32,
    ) -> Result<Vec<DeadLetter>> {
        self.inner.settle()?;
        let mut letters = Vec::new();
        let prefix = codec::projection_prefix(&crate::model::stored_name(projection, generation));
        for entry in self.inner.dead.scan_prefix(prefix) {
            let (key, value) = guarded(|| entry.map_err(sled_error))?;
            let body = match codec::open(&key, &value) {
                Ok(Opened::Body(body)) => body,
                Ok(Opened::Newer(found)) => return Err(newer("a dead letter", &key, found)),
                Err(reason) => return Err(damaged("a dead letter", &key, &reason).into()),
            };
            letters.push(
                codec::decode_letter(body)
                    .map_err(|reason| damaged("a dead letter", &key, &reason))?,
            );
        }
        letters.sort_by_key(|(seq, _)| *seq);
        Ok(letters.into_iter().map(|(_, letter)| letter).collect())
    }

    async fn flush(&self) -> Result<()> {
        Ok(self.flush_now().await?)
    }

    async fn generations(&self, projection: &ProjectionName) -> Result<Generations> {
        self.inner.settle()?;
        self.inner.generations_of(projection)
    }

    async fn prepare<P: Projection<Self>>(
        &self,
        projection: &P,
        generation: u32,
        indexes: bool,
    ) -> Result<()> {
        // Trees need no creating; what a setup writes is committed as a batch of its own.
        let mut tx = SledTx::new(self.clone(), projection.name().as_str(), generation);
        projection
            .setup(&mut tx)
            .await
            .map_err(|e| Error::backend("projections", e))?;
        if indexes {
            projection
                .indexes(&mut tx)
                .await
                .map_err(|e| Error::backend("projections", e))?;
        }
        if tx.trees.iter().all(|t| t.writes.is_empty()) {
            return Ok(());
        }
        let groups: Vec<codec::Group> = tx
            .trees
            .into_iter()
            .map(|t| codec::Group {
                tree: t.physical,
                writes: t.writes.into_iter().collect(),
            })
            .collect();
        let mut key =
            codec::projection_prefix(&crate::model::stored_name(projection.name(), generation));
        key.extend_from_slice(b"setup");
        let inner = self.inner.clone();
        annals::store::kit::off_worker("sled", move || {
            let _one = inner.lock();
            inner.commit_groups(&key, &groups)
        })
        .await??;
        Ok(())
    }

    async fn record_partitions(
        &self,
        projection: &ProjectionName,
        generation: u32,
        partitions: u32,
    ) -> Result<()> {
        let inner = self.inner.clone();
        let projection = projection.clone();
        annals::store::kit::off_worker("sled", move || {
            inner.record_partitions(&projection, generation, partitions)
        })
        .await?
    }

    async fn begin_generation(&self, projection: &ProjectionName, resume: bool) -> Result<u32> {
        self.inner.settle()?;
        let inner = self.inner.clone();
        let projection = projection.clone();
        let generation =
            annals::store::kit::off_worker("sled", move || inner.begin(&projection, resume))
                .await??;
        self.flush_now().await?;
        Ok(generation)
    }

    async fn swap(
        &self,
        projection: &ProjectionName,
        generation: u32,
        partitions: u32,
        at: Position,
        keep_old: bool,
    ) -> Result<Generations, SwapError> {
        // No batch with effects straddles the swap: its effects would be done and its commit
        // refused.
        let _effects = self
            .inner
            .effect_locks
            .lock_all(projection, partitions)
            .await;
        let inner = self.inner.clone();
        let projection = projection.clone();
        let swapped = annals::store::kit::off_worker("sled", move || {
            inner.swap(&projection, generation, partitions, at, keep_old)
        })
        .await
        .map_err(SwapError::Backend)??;
        self.flush_now().await.map_err(SwapError::Backend)?;
        Ok(swapped)
    }

    async fn drop_generation(&self, projection: &ProjectionName, generation: u32) -> Result<()> {
        let inner = self.inner.clone();
        let projection = projection.clone();
        annals::store::kit::off_worker("sled", move || {
            inner.drop_generation(&projection, generation)
        })
        .await?
    }
}
