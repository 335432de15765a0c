//! What a running projection reports about itself.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use annals::{Position, Timestamp};

use crate::ProjectionName;

/// The state of a partition (or, the worst of them, of a projection).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Reading what the log already held when it started (or fell behind).
    CatchingUp,
    /// Caught up; handling new events as they are committed.
    Live,
    /// Work is waiting but nothing was committed for longer than the stall limit: a handler
    /// hangs, or the read model's backend keeps failing (see `last_error`).
    Stalled,
    /// Stopped by an error (the stop policy), which it names.
    Stopped(String),
    /// Shut down on request.
    ShutDown,
}

/// One partition's status.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PartitionStatus {
    /// The partition.
    pub partition: u32,
    /// The generation of the read model it writes (see [`Generations`](crate::Generations)).
    pub generation: u32,
    /// Its checkpoint: everything of the partition up to it is committed.
    pub checkpoint: Option<Position>,
    /// Its state.
    pub state: State,
    /// Events received and not yet committed.
    pub pending: u64,
    /// Events on its dead-letter list as parked.
    pub parked: u64,
    /// Events skipped by the skip policy since the start.
    pub skipped: u64,
    /// When it last committed (or started).
    pub last_progress: Timestamp,
    /// How long it has been since then.
    pub since_progress: Duration,
    /// When the oldest event it has not committed was recorded, if it has one.
    pub behind_since: Option<Timestamp>,
    /// The last error met (a failed commit being retried, a stop), if any.
    pub last_error: Option<String>,
}

/// A projection's status.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProjectionStatus {
    /// The projection.
    pub name: ProjectionName,
    /// The generation of the read model its partitions write (the newest, while they move to
    /// a new one after a swap).
    pub generation: u32,
    /// The head of the log as last seen by the reader.
    pub head: Option<Position>,
    /// The lowest checkpoint of its partitions.
    pub checkpoint: Option<Position>,
    /// Events between the head and what every partition is done with (its checkpoint, or how
    /// far the log was scanned when none of its events wait), where the store numbers its
    /// events in one sequence (the embedded stores); `None` elsewhere.
    pub lag_events: Option<u64>,
    /// How long the oldest uncommitted event has waited (zero when nothing waits).
    pub lag: Duration,
    /// The worst state of its partitions (stopped, stalled, catching up, live).
    pub state: State,
    /// Parked events, all partitions.
    pub parked: u64,
    /// Skipped events, all partitions.
    pub skipped: u64,
    /// Each partition.
    pub partitions: Vec<PartitionStatus>,
}

/// The shared board partitions and the reader write their status to.
#[derive(Debug)]
pub(crate) struct Board {
    pub(crate) name: ProjectionName,
    inner: Mutex<BoardInner>,
}

#[derive(Debug)]
struct BoardInner {
    head: Option<Position>,
    /// The partition of each slot (all of the projection's, or those this process owns).
    ids: Vec<u32>,
    partitions: Vec<Slot>,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    checkpoint: Option<Position>,
    /// How far the reader has handed this partition the log.
    scanned: Option<Position>,
    state: State,
    pending: u64,
    parked: u64,
    skipped: u64,
    last_progress: (Instant, Timestamp),
    behind_since: Option<Timestamp>,
    last_error: Option<String>,
}

impl Board {
    /// A board of the partitions `ids`, with their checkpoints.
    pub(crate) fn new(
        name: ProjectionName,
        generation: u32,
        ids: &[u32],
        checkpoints: &[Option<Position>],
    ) -> Arc<Self> {
        let now = (Instant::now(), Timestamp::now());
        Arc::new(Board {
            name,
            inner: Mutex::new(BoardInner {
                head: None,
                ids: ids.to_vec(),
                partitions: checkpoints
                    .iter()
                    .map(|&checkpoint| Slot {
                        generation,
                        checkpoint,
                        scanned: checkpoint,
                        state: State::CatchingUp,
                        pending: 0,
                        parked: 0,
                        skipped: 0,
                        last_progress: now,
                        behind_since: None,
                        last_error: None,
                    })
                    .collect(),
            }),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut BoardInner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn slot<R>(&self, partition: u32, f: impl FnOnce(&mut Slot) -> R) -> Option<R> {
        self.with(|b| {
            b.ids
                .iter()
                .position(|&id| id == partition)
                .and_then(|i| b.partitions.get_mut(i))
                .map(f)
        })
    }

    pub(crate) fn set_head(&self, head: Position) {
        self.with(|b| b.head = b.head.max(Some(head)));
    }

    /// The reader caught up (or fell behind again): partitions without work are live.
    pub(crate) fn set_caught_up(&self, caught_up: bool) {
        self.with(|b| {
            for slot in &mut b.partitions {
                match slot.state {
                    State::CatchingUp | State::Live => {
                        slot.state = if caught_up {
                            State::Live
                        } else {
                            State::CatchingUp
                        };
                    }
                    _ => {}
                }
            }
        });
    }

    /// `count` events handed to the partition, the first recorded at `recorded_at`.
    pub(crate) fn received(&self, partition: u32, count: u64, recorded_at: Timestamp) {
        self.slot(partition, |s| {
            s.pending += count;
            s.behind_since.get_or_insert(recorded_at);
        });
    }

    /// A commit: `count` events done, the checkpoint moved; `next_behind` is the recording time
    /// of the oldest event still pending.
    pub(crate) fn committed(
        &self,
        partition: u32,
        checkpoint: Position,
        count: u64,
        next_behind: Option<Timestamp>,
    ) {
        self.slot(partition, |s| {
            s.checkpoint = s.checkpoint.max(Some(checkpoint));
            s.pending = s.pending.saturating_sub(count);
            if s.pending == 0 || next_behind.is_some() {
                s.behind_since = next_behind;
            }
            s.last_progress = (Instant::now(), Timestamp::now());
            s.last_error = None;
            if s.state == State::Stalled {
                s.state = State::CatchingUp;
            }
        });
    }

    /// The reader has handed the partition everything up to `position`.
    pub(crate) fn scanned(&self, partition: u32, position: Position) {
        self.slot(partition, |s| s.scanned = s.scanned.max(Some(position)));
    }

    /// Whether every partition has committed everything up to `position` (or had nothing of
    /// it to commit).
    pub(crate) fn reached(&self, position: Position) -> bool {
        self.with(|b| {
            b.partitions.iter().all(|s| {
                s.checkpoint >= Some(position) || (s.pending == 0 && s.scanned >= Some(position))
            })
        })
    }

    /// The partition moved to `generation`, where its checkpoint is `checkpoint` and `parked`
    /// events are parked.
    pub(crate) fn moved(
        &self,
        partition: u32,
        generation: u32,
        checkpoint: Option<Position>,
        parked: u64,
    ) {
        self.slot(partition, |s| {
            s.generation = generation;
            s.checkpoint = checkpoint;
            s.scanned = s.scanned.max(checkpoint);
            s.parked = parked;
        });
    }

    pub(crate) fn parked(&self, partition: u32, delta: i64) {
        self.slot(partition, |s| {
            s.parked = s.parked.saturating_add_signed(delta);
        });
    }

    pub(crate) fn skipped(&self, partition: u32) {
        self.slot(partition, |s| s.skipped += 1);
    }

    pub(crate) fn error(&self, partition: u32, error: String) {
        self.slot(partition, |s| s.last_error = Some(error));
    }

    pub(crate) fn stopped(&self, partition: u32, error: String) {
        self.slot(partition, |s| {
            s.last_error = Some(error.clone());
            s.state = State::Stopped(error);
        });
    }

    pub(crate) fn shut_down(&self) {
        self.with(|b| {
            for slot in &mut b.partitions {
                if !matches!(slot.state, State::Stopped(_)) {
                    slot.state = State::ShutDown;
                }
            }
        });
    }

    /// Marks partitions with work waiting and no progress for `limit` as stalled; returns the
    /// ones that just became stalled, with how long they have waited.
    pub(crate) fn find_stalls(&self, limit: Duration) -> Vec<(u32, Duration, Option<String>)> {
        self.with(|b| {
            let mut stalled = Vec::new();
            for (i, slot) in b.ids.iter().copied().zip(b.partitions.iter_mut()) {
                let waited = slot.last_progress.0.elapsed();
                let working = matches!(slot.state, State::CatchingUp | State::Live);
                if working && slot.pending > 0 && waited > limit {
                    slot.state = State::Stalled;
                    stalled.push((i, waited, slot.last_error.clone()));
                }
            }
            stalled
        })
    }

    pub(crate) fn snapshot(&self) -> ProjectionStatus {
        self.with(|b| {
            let partitions: Vec<PartitionStatus> = b
                .ids
                .iter()
                .copied()
                .zip(&b.partitions)
                .map(|(partition, s)| PartitionStatus {
                    partition,
                    generation: s.generation,
                    checkpoint: s.checkpoint,
                    state: s.state.clone(),
                    pending: s.pending,
                    parked: s.parked,
                    skipped: s.skipped,
                    last_progress: s.last_progress.1,
                    since_progress: s.last_progress.0.elapsed(),
                    behind_since: s.behind_since,
                    last_error: s.last_error.clone(),
                })
                .collect();
            let checkpoint = partitions.iter().map(|p| p.checkpoint).min().flatten();
            // How far each partition is done: its checkpoint, or what the reader scanned when
            // nothing of it waits (a partition none of whose events came by does not commit).
            let done = b
                .partitions
                .iter()
                .map(|s| {
                    if s.pending == 0 {
                        s.checkpoint.max(s.scanned)
                    } else {
                        s.checkpoint
                    }
                })
                .min()
                .flatten();
            let lag_events = match (b.head, done) {
                (Some(head), done) if head.prepare() == 0 => Some(
                    head.commit()
                        .saturating_sub(done.map_or(0, Position::commit)),
                ),
                _ => None,
            };
            let now = Timestamp::now().unix_micros();
            let lag = partitions
                .iter()
                .filter_map(|p| p.behind_since)
                .map(|t| Duration::from_micros(u64::try_from(now - t.unix_micros()).unwrap_or(0)))
                .max()
                .unwrap_or_default();
            let state = worst(partitions.iter().map(|p| &p.state));
            ProjectionStatus {
                name: self.name.clone(),
                generation: partitions.iter().map(|p| p.generation).max().unwrap_or(1),
                head: b.head,
                checkpoint,
                lag_events,
                lag,
                state,
                parked: partitions.iter().map(|p| p.parked).sum(),
                skipped: partitions.iter().map(|p| p.skipped).sum(),
                partitions,
            }
        })
    }
}

fn worst<'a>(states: impl Iterator<Item = &'a State>) -> State {
    let rank = |s: &State| match s {
        State::Stopped(_) => 5,
        State::Stalled => 4,
        State::CatchingUp => 3,
        State::Live => 2,
        State::ShutDown => 1,
    };
    states
        .max_by_key(|s| rank(s))
        .cloned()
        .unwrap_or(State::ShutDown)
}
