//! The derived indexes and their in-memory overlay.
//!
//! An append is ONE commit record, framed in the log's segment files (`log.rs`). The entries
//! derived from it — its locator (`W`), the stream index (`S`), the event-id index (`I`, `J`),
//! the stream heads (`H`) — are
//! written later, in bulk, by an indexer thread with plain inserts (every [`INDEX_AT`] events,
//! or when a reader or `verify` needs it); the flusher then raises the `Mindexed` marker after a
//! flush made them durable. Until then the commit sits in
//! this overlay, which the writer's checks and every read consult, so nobody can tell an indexed
//! commit from one still waiting.
//!
//! Only commits already on disk are indexed (with `Durability::Buffered` an indexing round starts
//! with a sync of the log), so an index entry never reaches sled's log before the commit it points to is
//! durable. At open, the commits after the marker are indexed again (redo, idempotent), and index
//! entries past the end of the log, if any ever survived, are dropped (see `recover.rs`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use annals::store::kit::StoredEventRef;
use annals::{Error, EventId, Position, Result, StreamId, Timestamp, Version};

use crate::error::sled_error;
use crate::format::{self, Head, StreamRun};
use crate::log::{Loc, Log, Record};
use crate::num::{micros, u64_from};

/// Unindexed events at which the background indexer is asked to run.
pub(crate) const INDEX_AT: usize = 4096;
/// Unindexed events at which the writer indexes by itself rather than let the overlay grow.
pub(crate) const INDEX_HARD: usize = 64 * 1024;

/// One commit (one append) as the indexes need it, or one *piece* of a mixed commit record (a
/// restore): events of one stream whose versions and positions both run on.
#[derive(Debug)]
pub(crate) struct CommitInfo {
    pub(crate) stream: StreamId,
    pub(crate) first_version: u64,
    /// Its first global position (the key of its commit record, for an append).
    pub(crate) first: u64,
    /// When its last event was recorded (every event of an append is recorded at once).
    pub(crate) recorded_at: Timestamp,
    pub(crate) ids: Vec<EventId>,
}

impl CommitInfo {
    pub(crate) fn count(&self) -> u64 {
        u64_from(self.ids.len())
    }
    pub(crate) fn last(&self) -> u64 {
        self.first + self.count() - 1
    }
    pub(crate) fn last_version(&self) -> u64 {
        self.first_version + self.count() - 1
    }
    pub(crate) fn head(&self) -> Head {
        Head {
            version: self.last_version(),
            last_position: self.last(),
            last_recorded_at: self.recorded_at,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Unindexed commits, in position order.
    commits: VecDeque<Arc<CommitInfo>>,
    /// The same, per stream, in version order.
    streams: HashMap<StreamId, VecDeque<Arc<CommitInfo>>>,
    /// Their event ids: the commit and the index in it.
    ids: HashMap<EventId, (Arc<CommitInfo>, u64)>,
    events: usize,
    /// Where their commit records' frames are: last position → (first position, frame). The
    /// locators reach sled with the other index entries.
    records: BTreeMap<u64, (u64, Loc)>,
}

/// The unindexed tail of the log, in memory.
#[derive(Debug)]
pub(crate) struct Overlay {
    state: RwLock<State>,
    /// Held while index entries are written, so one indexer runs at a time (and `verify` sees
    /// the indexes still). It guards the id frontier: the last id segment's key (zeros when
    /// there is none).
    indexing: Mutex<[u8; 16]>,
    /// Every index entry of a position up to this one is written to sled (not yet flushed,
    /// maybe). The `Mindexed` marker follows it after a flush (see `flusher.rs`).
    written: AtomicU64,
    /// Every commit up to this position is on disk (flushed).
    durable: AtomicU64,
    /// The indexer thread's wake-up: (asked to index, closing).
    wanted: Mutex<(bool, bool)>,
    wake: Condvar,
    /// The log's segment files: with `Durability::Buffered` a round makes them durable first.
    log: Arc<Log>,
}

impl Overlay {
    /// An empty overlay over indexes complete through `indexed`, whose last id segment ends at
    /// `frontier`.
    pub(crate) fn new(indexed: u64, frontier: [u8; 16], log: Arc<Log>) -> Overlay {
        Overlay {
            state: RwLock::new(State::default()),
            indexing: Mutex::new(frontier),
            written: AtomicU64::new(indexed),
            durable: AtomicU64::new(indexed),
            wanted: Mutex::new((false, false)),
            wake: Condvar::new(),
            log,
        }
    }

    /// A flush made every commit up to `position` durable.
    /// The log's segment files.
    pub(crate) fn log(&self) -> &Arc<Log> {
        &self.log
    }

    pub(crate) fn durable_through(&self, position: u64) {
        self.durable.fetch_max(position, Ordering::AcqRel);
    }

    /// Every index entry up to this position is written to sled.
    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    fn wanted(&self) -> MutexGuard<'_, (bool, bool)> {
        self.wanted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the indexer thread to index what is visible.
    pub(crate) fn wake_indexer(&self) {
        let mut wanted = self.wanted();
        if !wanted.0 {
            wanted.0 = true;
            drop(wanted);
            self.wake.notify_one();
        }
    }

    /// Stops the indexer thread (after its current round).
    pub(crate) fn stop_indexer(&self) {
        self.wanted().1 = true;
        self.wake.notify_one();
    }

    /// Starts the indexer thread: it writes index entries with plain sled inserts, which run
    /// beside the writer's (an `apply_batch` would take sled's global write lock and stop every
    /// append while it runs).
    pub(crate) fn spawn_indexer(
        self: &Arc<Self>,
        tree: sled::Tree,
        visible: Arc<AtomicU64>,
    ) -> Result<JoinHandle<()>> {
        let overlay = self.clone();
        std::thread::Builder::new()
            .name("annals-sled-indexer".into())
            .spawn(move || loop {
                {
                    let mut wanted = overlay.wanted();
                    while !wanted.0 && !wanted.1 {
                        wanted = overlay.wake.wait(wanted).unwrap_or_else(|e| e.into_inner());
                    }
                    if wanted.1 {
                        return;
                    }
                    wanted.0 = false;
                }
                if let Err(error) = overlay.index(&tree, visible.load(Ordering::Acquire)) {
                    tracing::error!(%error, "writing index entries failed; will retry");
                }
            })
            .map_err(|e| Error::backend("sled", e))
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // Every mutation below completes before the lock is released: a poisoned lock still
        // guards consistent data.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a commit just written to sled (the writer, in position order).
    /// Adds a written commit record's frame, before any of its events is visible.
    pub(crate) fn push_record(&self, first: u64, last: u64, loc: Loc) {
        self.write().records.insert(last, (first, loc));
    }

    /// The commit record holding `position`: its frame as the overlay knows it (unindexed),
    /// else through its locator in sled.
    pub(crate) fn commit_at(&self, tree: &sled::Tree, position: u64) -> Result<Option<Record>> {
        match self.locate(tree, position)? {
            Some((first, last, loc)) => self
                .log
                .read(loc, first, last)
                .map(Some)
                .map_err(|bad| bad.error(self.log.dir())),
            None => Ok(None),
        }
    }

    /// Where the commit record holding `position` is (see [`commit_at`](Self::commit_at)).
    pub(crate) fn locate(
        &self,
        tree: &sled::Tree,
        position: u64,
    ) -> Result<Option<(u64, u64, Loc)>> {
        // The overlay first: a record leaves it only after its locator reached sled.
        let found = self
            .read()
            .records
            .range(position..)
            .next()
            .map(|(&last, &(first, loc))| (first, last, loc));
        match found {
            Some((first, last, loc)) if first <= position => Ok(Some((first, last, loc))),
            _ => format::locate(tree, position),
        }
    }

    pub(crate) fn push(&self, commit: CommitInfo) {
        let commit = Arc::new(commit);
        let mut state = self.write();
        for (i, id) in (0u64..).zip(&commit.ids) {
            state.ids.insert(*id, (commit.clone(), i));
        }
        state.events += commit.ids.len();
        state
            .streams
            .entry(commit.stream.clone())
            .or_default()
            .push_back(commit.clone());
        state.commits.push_back(commit);
    }

    /// Unindexed events.
    pub(crate) fn events(&self) -> usize {
        self.read().events
    }

    /// Where an unindexed event with this id is.
    pub(crate) fn lookup_id(&self, id: EventId) -> Option<StoredEventRef> {
        let state = self.read();
        let (commit, i) = state.ids.get(&id)?;
        Some(StoredEventRef {
            stream_id: commit.stream.clone(),
            version: Version::new(commit.first_version + *i),
            position: Position::sequence(commit.first + *i),
        })
    }

    /// The stream's head among the unindexed commits at or below `visible`, if any.
    pub(crate) fn head(&self, stream: &StreamId, visible: u64) -> Option<Head> {
        let state = self.read();
        state
            .streams
            .get(stream)?
            .iter()
            .rev()
            .find(|c| c.last() <= visible)
            .map(|c| c.head())
    }

    /// The stream's unindexed commits holding a version in `lo..=hi`.
    pub(crate) fn stream_commits(
        &self,
        stream: &StreamId,
        lo: u64,
        hi: u64,
    ) -> Vec<Arc<CommitInfo>> {
        let state = self.read();
        state.streams.get(stream).map_or_else(Vec::new, |commits| {
            commits
                .iter()
                .filter(|c| c.first_version <= hi && c.last_version() >= lo)
                .cloned()
                .collect()
        })
    }

    /// Locks out other indexers.
    pub(crate) fn lock_indexing(&self) -> MutexGuard<'_, [u8; 16]> {
        self.indexing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the index entries of every commit up to `upto` (plain inserts) and then drops
    /// them from the overlay.
    pub(crate) fn index(&self, tree: &sled::Tree, upto: u64) -> Result<()> {
        let mut guard = self.lock_indexing();
        self.index_locked(&mut guard, tree, upto)
    }

    /// [`index`](Self::index) unless another indexer runs (then it does the work).
    pub(crate) fn try_index(&self, tree: &sled::Tree, upto: u64) -> Result<()> {
        match self.indexing.try_lock() {
            Ok(mut guard) => self.index_locked(&mut guard, tree, upto),
            Err(_) => Ok(()),
        }
    }

    /// [`index`](Self::index) with the indexing lock already held.
    pub(crate) fn index_locked(
        &self,
        frontier: &mut MutexGuard<'_, [u8; 16]>,
        tree: &sled::Tree,
        upto: u64,
    ) -> Result<()> {
        let commits: Vec<Arc<CommitInfo>> = self
            .read()
            .commits
            .iter()
            .take_while(|c| c.last() <= upto)
            .cloned()
            .collect();
        let Some(last) = commits.last().map(|c| c.last()) else {
            return Ok(());
        };
        let span = tracing::debug_span!(
            "sled.index",
            commits = commits.len(),
            position = last,
            apply_us = tracing::field::Empty
        );
        let _enter = span.enter();
        let started = Instant::now();
        if last > self.durable.load(Ordering::Acquire) {
            // Index entries are written only for commits already on disk, so no crash can keep
            // an entry and lose its commit, whatever sled recovers. With `Durability::Flush`
            // they are durable already; with `Buffered` this is one flush per round.
            self.log
                .sync()
                .map_err(|e| Error::backend("sled", format!("syncing the log failed: {e}")))?;
            self.durable_through(last);
        }
        let records: Vec<(u64, u64, Loc)> = self
            .read()
            .records
            .range(..=last)
            .map(|(&l, &(f, loc))| (f, l, loc))
            .collect();
        let mut failed = None;
        for &(first, record_last, loc) in &records {
            let key = format::commit_key(first, record_last);
            if failed.is_none() {
                failed = tree.insert(key, format::locator_value(&key, loc)).err();
            }
        }
        // Moved even when an insert fails: some segments may be in, and a later round must not
        // put other ids in their ranges.
        index_entries(commits.iter().map(|c| &**c), frontier, |key, value| {
            if failed.is_none() {
                failed = tree.insert(key, value).err();
            }
        });
        if let Some(error) = failed {
            return Err(sled_error(error));
        }
        self.written.fetch_max(last, Ordering::AcqRel);
        span.record("apply_us", micros(started.elapsed()));
        // In sled now: readers find them there from here on.
        let mut state = self.write();
        for (_, record_last, _) in &records {
            state.records.remove(record_last);
        }
        for commit in &commits {
            state.commits.pop_front();
            for id in &commit.ids {
                state.ids.remove(id);
            }
            state.events -= commit.ids.len();
            if let Some(list) = state.streams.get_mut(&commit.stream) {
                list.pop_front();
                if list.is_empty() {
                    state.streams.remove(&commit.stream);
                }
            }
        }
        Ok(())
    }
}

/// Adds the index entries of `commits` (in position order) and the marker `indexed` to `batch`;
/// `frontier` as in [`index_entries`].
pub(crate) fn index_batch<'a>(
    batch: &mut sled::Batch,
    commits: impl Iterator<Item = &'a CommitInfo>,
    indexed: u64,
    frontier: &mut [u8; 16],
) {
    index_entries(commits, frontier, |key, value| batch.insert(key, value));
    batch.insert(format::META_INDEXED, format::indexed_value(indexed));
}

/// Hands the index entries of `commits` (in position order) to `put`.
///
/// Event ids go two ways. Those above `frontier` (the key of the last id segment, all ids up to
/// which are placed) — nearly every UUID v7, the default, which grow with time — go into new id
/// segments (`J`), up to [`format::SEGMENT_MAX`] sorted ids per sled insert, and `frontier`
/// moves to the last of them. The others (UUID v5 ids derived from command ids, ids made long
/// before their append) get an `I` entry each. A lookup reads the `I` entry, then the one
/// segment whose range holds the id.
fn index_entries<'a>(
    commits: impl Iterator<Item = &'a CommitInfo>,
    frontier: &mut [u8; 16],
    mut put: impl FnMut(Vec<u8>, Vec<u8>),
) {
    let mut heads: HashMap<&StreamId, Head> = HashMap::new();
    // Stream-index runs: a stream's versions of the round share one entry — at consecutive
    // positions (a lone writer's appends) or at listed ones (streams interleaved) — so the index
    // costs one entry per stream and round, not one per append.
    let mut runs: Vec<RunBuild<'_>> = Vec::new();
    let mut open: HashMap<&StreamId, usize> = HashMap::new();
    let mut segment: Vec<([u8; 16], u64)> = Vec::new();
    for commit in commits {
        let stream = commit.stream.as_str();
        for (i, id) in (0u64..).zip(&commit.ids) {
            let position = commit.first + i;
            let version = commit.first_version + i;
            let run = open.get(&commit.stream).and_then(|&r| runs.get_mut(r));
            match run {
                Some(run) if run.takes(version, position) => run.push(position),
                _ => {
                    open.insert(&commit.stream, runs.len());
                    runs.push(RunBuild {
                        stream: &commit.stream,
                        first_version: version,
                        positions: vec![position],
                        consecutive: true,
                    });
                }
            }
            let bytes = *id.as_uuid().as_bytes();
            if bytes > *frontier {
                segment.push((bytes, position));
                continue;
            }
            let key = format::id_key(*id);
            put(
                key.to_vec(),
                format::id_value(&key, stream, version, position),
            );
        }
        heads.insert(&commit.stream, commit.head());
    }
    // Ids are unique in the log, so sorted they are strictly increasing.
    segment.sort_unstable();
    for chunk in segment.chunks(format::SEGMENT_MAX) {
        let Some((last, _)) = chunk.last() else {
            continue;
        };
        let key = format::segment_key(last);
        put(key.to_vec(), format::segment_value(&key, chunk));
        *frontier = *last;
    }
    for run in runs {
        let key = format::stream_key(run.stream.as_str(), run.first_version);
        let value = format::stream_index_value(&key, &StreamRun::of(&run.positions));
        put(key, value);
    }
    for (stream, head) in heads {
        let key = format::head_key(stream.as_str());
        let value = format::head_value(&key, head);
        put(key, value);
    }
}

/// A stream-index entry being gathered by an indexing round.
struct RunBuild<'a> {
    stream: &'a StreamId,
    first_version: u64,
    /// The positions of its versions, in order.
    positions: Vec<u64>,
    /// Whether they are consecutive so far.
    consecutive: bool,
}

impl RunBuild<'_> {
    /// Whether `version` at `position` continues this run: the next version, and room for it
    /// (a run of consecutive positions is not limited; a listed one holds at most
    /// [`format::RUN_MAX`]).
    fn takes(&self, version: u64, position: u64) -> bool {
        let last = self.positions.last().copied().unwrap_or(0);
        let next = self.first_version + u64_from(self.positions.len());
        version == next
            && (self.positions.len() < format::RUN_MAX
                || (self.consecutive && position == last + 1))
    }

    fn push(&mut self, position: u64) {
        let last = self.positions.last().copied().unwrap_or(0);
        self.consecutive &= position == last + 1;
        self.positions.push(position);
    }
}
