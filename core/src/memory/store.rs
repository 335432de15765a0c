use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::stream::{self, BoxStream};
use futures::StreamExt;

use crate::lease::{Lease, Leases, LocalLeases};
use crate::store::kit::{
    instrument_append, instrument_read, plan_restore, resolve_retry, CommitNotifier,
    StoredEventRef, StreamHead,
};
use crate::store::{
    CheckpointStore, CommitWatch, Direction, EventStore, Problem, ProblemKind, ReadAll, ReadStream,
    RestoreResult, RestoredEvent, Snapshot, SnapshotStore, StreamInfo, VerifyReport,
};
use crate::{
    AppendResult, EventData, EventId, ExpectedVersion, Limits, Position, RecordPlace,
    RecordedEvent, Result, StreamId, Timestamp, Version,
};

/// An event store in memory: for tests, examples and quick starts. Everything is lost when the
/// last clone is dropped.
///
/// It implements [`EventStore`], [`SnapshotStore`] and [`CheckpointStore`] and passes the same
/// conformance suite as the durable stores. Clones share the same data.
///
/// ```
/// use annals::{EventData, EventStore, ExpectedVersion, InMemoryStore, StreamId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> annals::Result<()> {
/// let store = InMemoryStore::new();
/// let stream = StreamId::new("account-1")?;
/// let result = store
///     .append(&stream, ExpectedVersion::NoStream, vec![EventData::json("Opened", &())?])
///     .await?;
/// assert_eq!(result.last_version.get(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct InMemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: RwLock<State>,
    notifier: CommitNotifier,
    limits: Limits,
    leases: LocalLeases,
}

#[derive(Debug, Default)]
struct State {
    /// The global log; the event at index `i` has position `i + 1`.
    log: Vec<RecordedEvent>,
    /// Each stream's events, as indexes into `log`, in version order.
    streams: BTreeMap<StreamId, Vec<usize>>,
    ids: HashMap<EventId, usize>,
    snapshots: HashMap<StreamId, Snapshot>,
    checkpoints: HashMap<String, Position>,
}

impl InMemoryStore {
    /// An empty store with the default [`Limits`].
    pub fn new() -> Self {
        InMemoryStore::default()
    }

    /// An empty store with the given limits.
    pub fn with_limits(limits: Limits) -> Self {
        InMemoryStore {
            inner: Arc::new(Inner {
                limits,
                ..Inner::default()
            }),
        }
    }

    /// The store's lease table, e.g. to [`revoke`](LocalLeases::revoke) a lease in a test.
    pub fn leases(&self) -> &LocalLeases {
        &self.inner.leases
    }

    /// The number of events stored.
    pub fn len(&self) -> usize {
        self.read().log.len()
    }

    /// Whether no event is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-changed (appends validate
        // everything before mutating), so a poisoned lock is still consistent.
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn append_now(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        self.inner.limits.check(&events)?;
        let mut state = self.write();
        let ids: Vec<EventId> = events.iter().map(|e| e.id).collect();
        let found: Vec<Option<StoredEventRef>> = ids
            .iter()
            .map(|id| {
                state.ids.get(id).map(|&i| {
                    let e = &state.log[i];
                    StoredEventRef {
                        stream_id: e.stream_id.clone(),
                        version: e.version,
                        position: e.position,
                    }
                })
            })
            .collect();
        if let Some(first) = resolve_retry(stream, &ids, &found)? {
            return Ok(first);
        }
        let current = Version::new(state.streams.get(stream).map_or(0, |v| v.len() as u64));
        expected.check(stream, current)?;
        let recorded_at = Timestamp::now();
        let first_index = state.log.len();
        let count = events.len();
        for (i, event) in events.into_iter().enumerate() {
            let index = first_index + i;
            state.ids.insert(event.id, index);
            state.log.push(RecordedEvent::new(
                event,
                stream.clone(),
                current.advance(i as u64 + 1),
                Position::sequence(index as u64 + 1),
                recorded_at,
            ));
        }
        state
            .streams
            .entry(stream.clone())
            .or_default()
            .extend(first_index..first_index + count);
        let result = AppendResult {
            first_version: current.next(),
            last_version: current.advance(count as u64),
            first_position: Position::sequence(first_index as u64 + 1),
            last_position: Position::sequence((first_index + count) as u64),
        };
        drop(state);
        self.inner.notifier.notify(result.last_position);
        Ok(result)
    }
}

impl EventStore for InMemoryStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        let count = events.len();
        instrument_append("memory", stream, count, async {
            self.append_now(stream, expected, events)
        })
        .await
    }

    fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> BoxStream<'static, Result<RecordedEvent>> {
        let state = self.read();
        let Some(indexes) = state.streams.get(stream) else {
            return stream::empty().boxed();
        };
        let head = Version::new(indexes.len() as u64);
        let events: Vec<Result<RecordedEvent>> = match options.range(head) {
            None => Vec::new(),
            Some((first, last)) => {
                // The range lies within `1..=head`, and `head` is a Vec's length: both fit.
                #[allow(clippy::cast_possible_truncation)]
                let (lo, hi) = (
                    first.min(last).get() as usize,
                    first.max(last).get() as usize,
                );
                let slice = &indexes[lo - 1..hi];
                let pick = |&i: &usize| Ok(state.log[i].clone());
                match options.direction {
                    Direction::Forward => slice.iter().map(pick).collect(),
                    Direction::Backward => slice.iter().rev().map(pick).collect(),
                }
            }
        };
        instrument_read(
            "memory",
            "read_stream",
            Some(stream),
            options.from,
            stream::iter(events).boxed(),
        )
    }

    fn read_all(&self, options: ReadAll) -> BoxStream<'static, Result<RecordedEvent>> {
        let state = self.read();
        // Positions are (index + 1, 0): the first index at or after `from`.
        let start = if options.from.prepare() == 0 {
            options.from.commit().saturating_sub(1)
        } else {
            options.from.commit()
        };
        // A start beyond any index reads nothing.
        let start = usize::try_from(start).unwrap_or(usize::MAX);
        let events: Vec<Result<RecordedEvent>> = state
            .log
            .iter()
            .skip(start)
            .filter(|e| options.filter.matches(e))
            .take(options.limit)
            .cloned()
            .map(Ok)
            .collect();
        instrument_read(
            "memory",
            "read_all",
            None,
            options.from,
            stream::iter(events).boxed(),
        )
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version> {
        Ok(Version::new(
            self.read()
                .streams
                .get(stream)
                .map_or(0, |v| v.len() as u64),
        ))
    }

    async fn last_position(&self) -> Result<Option<Position>> {
        Ok(self.read().log.last().map(|e| e.position))
    }

    fn streams(&self) -> BoxStream<'static, Result<StreamInfo>> {
        let state = self.read();
        let infos: Vec<Result<StreamInfo>> = state
            .streams
            .iter()
            .filter_map(|(id, indexes)| {
                let last = &state.log[*indexes.last()?];
                Some(Ok(StreamInfo::new(
                    id.clone(),
                    last.version,
                    last.position,
                    last.recorded_at,
                )))
            })
            .collect();
        stream::iter(infos).boxed()
    }

    fn watch_commits(&self) -> CommitWatch {
        self.inner.notifier.watch()
    }

    fn limits(&self) -> Limits {
        self.inner.limits
    }

    async fn restore(&self, events: Vec<RestoredEvent>) -> Result<RestoreResult> {
        let data: Vec<EventData> = events.iter().map(|e| e.event.clone()).collect();
        self.inner.limits.check(&data)?;
        let mut state = self.write();
        let mut heads = HashMap::new();
        let mut stored = HashMap::new();
        for event in &events {
            if let Some(indexes) = state.streams.get(&event.stream_id) {
                let last = indexes.last().map(|&i| &state.log[i]);
                heads.insert(
                    event.stream_id.clone(),
                    StreamHead {
                        version: Version::new(indexes.len() as u64),
                        last_recorded_at: last.map(|e| e.recorded_at),
                    },
                );
            }
            if let Some(&i) = state.ids.get(&event.event.id) {
                let e = &state.log[i];
                stored.insert(
                    e.id,
                    StoredEventRef {
                        stream_id: e.stream_id.clone(),
                        version: e.version,
                        position: e.position,
                    },
                );
            }
        }
        let plan = plan_restore(events, &heads, &stored)?;
        let written = plan.write.len() as u64;
        let mut last_position = None;
        for restored in plan.write {
            let index = state.log.len();
            let position = Position::sequence(index as u64 + 1);
            state.ids.insert(restored.event.id, index);
            state
                .streams
                .entry(restored.stream_id.clone())
                .or_default()
                .push(index);
            state.log.push(RecordedEvent::new(
                restored.event,
                restored.stream_id,
                restored.version,
                position,
                restored.recorded_at,
            ));
            last_position = Some(position);
        }
        drop(state);
        if let Some(position) = last_position {
            self.inner.notifier.notify(position);
        }
        Ok(RestoreResult::new(written, plan.present, last_position))
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }

    /// Counts what is stored and checks the log's order and every stream's versions; memory has
    /// no checksums to check.
    async fn verify(&self) -> Result<VerifyReport> {
        let state = self.read();
        let mut report = VerifyReport::new();
        report.events = state.log.len() as u64;
        report.streams = state.streams.len() as u64;
        report.snapshots = state.snapshots.len() as u64;
        report.checkpoints = state.checkpoints.len() as u64;
        report.last_position = state.log.last().map(|e| e.position);
        for (stream, indexes) in &state.streams {
            for (n, &i) in indexes.iter().enumerate() {
                let event = &state.log[i];
                if event.version.get() != n as u64 + 1 {
                    report.push(Problem::new(
                        ProblemKind::VersionGap,
                        RecordPlace::of(event),
                        format!("expected version {}", n + 1),
                    ));
                }
            }
            if let Some(snapshot) = state.snapshots.get(stream) {
                if snapshot.version.get() > indexes.len() as u64 {
                    report.push(Problem::new(
                        ProblemKind::SnapshotAhead,
                        RecordPlace::new()
                            .stream(stream.clone())
                            .version(snapshot.version),
                        format!("the stream is at version {}", indexes.len()),
                    ));
                }
            }
        }
        Ok(report)
    }
}

impl Leases for InMemoryStore {
    /// In-process leases (see [`LocalLeases`]); clones of the store share them.
    async fn try_lease(&self, name: &str) -> Result<Option<Lease>> {
        Ok(self.inner.leases.try_lease(name))
    }

    async fn leases(&self, prefix: &str) -> Result<Vec<crate::LeaseInfo>> {
        Ok(self
            .inner
            .leases
            .list(prefix, &crate::lease::local_holder()))
    }
}

impl SnapshotStore for InMemoryStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        self.write()
            .snapshots
            .insert(snapshot.stream_id.clone(), snapshot);
        Ok(())
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        Ok(self.read().snapshots.get(stream).cloned())
    }
}

impl CheckpointStore for InMemoryStore {
    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        self.write().checkpoints.insert(name.to_owned(), position);
        Ok(())
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>> {
        Ok(self.read().checkpoints.get(name).copied())
    }
}
