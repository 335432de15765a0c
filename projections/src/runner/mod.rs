//! Running a projection: one reader of the global log, one task per partition.

mod partition;
mod reader;
mod switch;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use annals::{EventStore, Position, StreamId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::status::Board;
use crate::{
    DeadLetter, ErrorPolicy, Fence, PartitionKey, Projection, ProjectionError, ProjectionName,
    ProjectionStatus, ReadModel, Result, Retry,
};

/// The settings of a [`ProjectionRunner`], each with its default.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) partitions: u32,
    pub(crate) batch_size: usize,
    pub(crate) max_wait: Duration,
    pub(crate) policy: ErrorPolicy,
    pub(crate) retry: Retry,
    pub(crate) stall_after: Duration,
    pub(crate) idle_checkpoint: Duration,
    /// Run only this partition (of `partitions`), owned under this fence (workers).
    pub(crate) only: Option<(u32, Option<Fence>)>,
    /// Write this generation (a rebuild's) instead of the active one.
    pub(crate) generation: Option<u32>,
    /// The runner is a rebuild's: its batches are fenced by the generation being built.
    pub(crate) rebuilding: bool,
}

/// Runs a projection: catches up from its checkpoints, then follows the log live.
///
/// ```
/// use annals::{BoxError, EventData, EventStore, ExpectedVersion, InMemoryStore, RecordedEvent, StreamId};
/// use annals_projections::{MemoryModel, MemoryTx, Projection, ProjectionName, ProjectionRunner};
///
/// struct Counts(ProjectionName);
///
/// impl Projection<MemoryModel<String, u64>> for Counts {
///     fn name(&self) -> &ProjectionName {
///         &self.0
///     }
///     async fn handle(&self, tx: &mut MemoryTx<String, u64>, events: &[RecordedEvent]) -> Result<(), BoxError> {
///         for e in events {
///             let n = tx.get(&e.stream_id.to_string()).unwrap_or(0);
///             tx.insert(e.stream_id.to_string(), n + 1);
///         }
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = InMemoryStore::new();
/// let counts = MemoryModel::new();
/// let running = ProjectionRunner::new(store.clone(), counts.clone(), Counts(ProjectionName::new("counts")?))
///     .partitions(4)
///     .start()
///     .await?;
/// let done = store
///     .append(&StreamId::new("account-1")?, ExpectedVersion::Any, vec![EventData::json("Opened", &())?])
///     .await?;
/// running.caught_up_to(done.last_position).await?;
/// assert_eq!(counts.get(&"account-1".to_owned()), Some(1));
/// running.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ProjectionRunner<S, M, P> {
    store: S,
    model: M,
    projection: P,
    settings: Settings,
}

impl<S, M, P> ProjectionRunner<S, M, P>
where
    S: EventStore + Clone + 'static,
    M: ReadModel + Clone,
    P: Projection<M>,
{
    /// A runner of `projection` over `store`'s log into `model`, with the defaults:
    ///
    /// - 1 partition (see [`partitions`](Self::partitions));
    /// - batches of up to 500 events: a batch takes what is queued for its partition and is
    ///   committed at once (while catching up, events queue during each commit, so batches
    ///   fill; live, an event is committed as soon as nothing is queued behind it);
    /// - the [`ErrorPolicy::Stop`] policy with [`Retry::default`];
    /// - a partition with work waiting and no commit for 30 s reports itself stalled;
    /// - an idle partition saves how far the log was scanned at most once a second.
    pub fn new(store: S, model: M, projection: P) -> Self {
        ProjectionRunner {
            store,
            model,
            projection,
            settings: Settings {
                partitions: 1,
                batch_size: 500,
                max_wait: Duration::ZERO,
                policy: ErrorPolicy::Stop,
                retry: Retry::default(),
                stall_after: Duration::from_secs(30),
                idle_checkpoint: Duration::from_secs(1),
                only: None,
                generation: None,
                rebuilding: false,
            },
        }
    }

    /// Splits the work into `count` partitions by stream ([`partition_of`](crate::partition_of)):
    /// each partition applies its streams' events in order, partitions run in parallel, each
    /// with its own checkpoint. The count is recorded with the read model's generation at the
    /// first start; a runner with another count is refused ([`ProjectionError::Configuration`]:
    /// a stream's events would be split between partitions with different checkpoints). To
    /// change it, rebuild the projection with the new count ([`Rebuild::partitions`](crate::Rebuild::partitions)).
    #[must_use]
    pub fn partitions(mut self, count: u32) -> Self {
        self.settings.partitions = count;
        self
    }

    /// The most events handed to the handler in one batch (one transaction).
    #[must_use]
    pub fn batch_size(mut self, events: usize) -> Self {
        self.settings.batch_size = events;
        self
    }

    /// How long a batch with events in it waits for more before it is committed (default zero:
    /// it takes what is queued and commits). A wait trades live latency for fewer, larger
    /// commits when events trickle in.
    #[must_use]
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.settings.max_wait = wait;
        self
    }

    /// What to do with an event whose handler keeps failing.
    #[must_use]
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.settings.policy = policy;
        self
    }

    /// How a failing handler is retried before the policy applies.
    #[must_use]
    pub fn retry(mut self, retry: Retry) -> Self {
        self.settings.retry = retry;
        self
    }

    /// How long a partition with work waiting may go without a commit before it reports
    /// itself stalled (a `tracing` error event and [`State::Stalled`](crate::State::Stalled)).
    #[must_use]
    pub fn stall_after(mut self, limit: Duration) -> Self {
        self.settings.stall_after = limit;
        self
    }

    /// Makes the runner a rebuild's: it writes `generation` (the one being built), its batches
    /// fenced by it, and commits idle partitions' checkpoints quickly (the swap waits for them).
    #[must_use]
    pub(crate) fn rebuilding(mut self, generation: u32) -> Self {
        self.settings.generation = Some(generation);
        self.settings.rebuilding = true;
        self.settings.idle_checkpoint = Duration::from_millis(20);
        self
    }

    /// Runs only `partition` of the projection's partitions, its commits fenced by `fence`
    /// (the workers across processes run one runner per partition they own).
    #[must_use]
    pub(crate) fn only_partition(mut self, partition: u32, fence: Option<Fence>) -> Self {
        self.settings.only = Some((partition, fence));
        self
    }

    /// Loads the checkpoints and dead letters, then starts the reader and the partitions.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Configuration`] for zero partitions or batch size;
    /// [`ProjectionError::Store`] when the checkpoints cannot be loaded.
    pub async fn start(self) -> Result<RunningProjection<M>> {
        let name = self.projection.name().clone();
        let settings = self.settings;
        let invalid = |setting, reason: &str| ProjectionError::Configuration {
            projection: name.clone(),
            setting,
            reason: reason.to_owned(),
        };
        if settings.partitions == 0 {
            return Err(invalid("partitions", "at least 1"));
        }
        if settings.batch_size == 0 {
            return Err(invalid("batch_size", "at least 1"));
        }
        let ids: Vec<u32> = match &settings.only {
            Some((partition, _)) if *partition >= settings.partitions => {
                return Err(invalid("partition", "beyond the partition count"));
            }
            Some((partition, _)) => vec![*partition],
            None => (0..settings.partitions).collect(),
        };
        let fence = settings.only.as_ref().and_then(|(_, fence)| fence.clone());
        let generations = self.model.generations(&name).await?;
        let generation = settings.generation.unwrap_or(generations.active);
        // A stream's partition depends on the count: another count would split a stream's
        // events between partitions with different checkpoints (skipped or applied twice).
        match generations.partitions_of(generation) {
            Some(recorded) if recorded != settings.partitions => {
                return Err(invalid(
                    "partitions",
                    &format!(
                        "generation {generation} was built with {recorded} partitions, this runner \
                         has {}: run it with {recorded}, or rebuild the projection with {}",
                        settings.partitions, settings.partitions
                    ),
                ));
            }
            Some(_) => {}
            None => {
                self.model
                    .record_partitions(&name, generation, settings.partitions)
                    .await?;
            }
        }
        // A rebuild's indexes wait for the end of its bulk load.
        self.model
            .prepare(&self.projection, generation, !settings.rebuilding)
            .await?;
        let mut checkpoints = Vec::new();
        for &partition in &ids {
            let key = PartitionKey::in_generation(name.clone(), generation, partition);
            checkpoints.push(self.model.checkpoint(&key).await?);
        }
        // A read model ahead of the log (a backup of it newer than the events', a power loss
        // that took buffered events) would skip the next appends at those positions: refused.
        let head = self.store.last_position().await?;
        for (&partition, checkpoint) in ids.iter().zip(&checkpoints) {
            if let Some(checkpoint) = *checkpoint {
                if Some(checkpoint) > head {
                    return Err(ProjectionError::AheadOfLog {
                        projection: name.clone(),
                        partition,
                        checkpoint,
                        head: head.map_or_else(|| "none".to_owned(), |p| p.to_string()),
                    });
                }
            }
        }
        let dead = self.model.dead_letters(&name, generation).await?;
        let board = Board::new(name.clone(), generation, &ids, &checkpoints);
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let failure = Arc::new(Mutex::new(None));
        let (progress_tx, progress) = watch::channel(0u64);
        let progress_tx = Arc::new(progress_tx);
        let projection = Arc::new(self.projection);
        let mut senders = Vec::new();
        for (&partition, checkpoint) in ids.iter().zip(&checkpoints) {
            // A few pages' shares queue per partition: a slow partition slows the reader
            // instead of filling memory.
            let (tx, rx) = mpsc::channel(4);
            senders.push(tx);
            let task = partition::PartitionTask {
                key: PartitionKey::in_generation(name.clone(), generation, partition),
                model: self.model.clone(),
                projection: projection.clone(),
                settings: settings.clone(),
                board: board.clone(),
                checkpoint: *checkpoint,
                dead: dead
                    .iter()
                    .filter(|d| d.partition == partition)
                    .cloned()
                    .collect(),
                progress: progress_tx.clone(),
                cancel: cancel.clone(),
                failure: failure.clone(),
                fence: fence.clone(),
                retire_to: None,
            };
            tracker.spawn(task.run(rx));
        }
        let reader = reader::Reader {
            store: self.store,
            filter: projection.filter(),
            total: settings.partitions,
            ids: ids.clone(),
            checkpoints,
            senders: senders.clone(),
            board: board.clone(),
            cancel: cancel.clone(),
            retry: settings.retry,
        };
        tracker.spawn(reader.run());
        tracker.spawn(watchdog(
            board.clone(),
            settings.stall_after,
            cancel.clone(),
        ));
        if !settings.rebuilding {
            tracker.spawn(switch::follow_generations(
                self.model.clone(),
                board.clone(),
                ids.clone(),
                senders.clone(),
                cancel.clone(),
            ));
        }
        tracker.close();
        tracing::info!(projection = %name, partitions = settings.partitions, "projection started");
        Ok(RunningProjection {
            name,
            total: settings.partitions,
            ids,
            model: self.model,
            board,
            cancel,
            tracker,
            failure,
            senders,
            progress,
        })
    }
}

/// Reports partitions that have work and make no progress: nothing stops silently.
async fn watchdog(board: Arc<Board>, limit: Duration, cancel: CancellationToken) {
    let every = (limit / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        for (partition, waited, error) in board.find_stalls(limit) {
            tracing::error!(
                projection = %board.name,
                partition,
                waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                last_error = error.as_deref().unwrap_or("none"),
                "projection partition stalled: work is waiting and nothing was committed"
            );
        }
    }
}

/// A running projection: its status, its dead letters, and its shutdown.
#[derive(Debug)]
pub struct RunningProjection<M> {
    name: ProjectionName,
    /// The projection's partition count.
    total: u32,
    /// The partitions this runner runs (their senders in this order).
    ids: Vec<u32>,
    model: M,
    board: Arc<Board>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    failure: Arc<Mutex<Option<Arc<ProjectionError>>>>,
    senders: Vec<mpsc::Sender<partition::Msg>>,
    progress: watch::Receiver<u64>,
}

impl<M: ReadModel> RunningProjection<M> {
    /// The projection's name.
    pub fn name(&self) -> &ProjectionName {
        &self.name
    }

    /// Where it is: checkpoints, head, lag, state, parked and skipped counts, per partition.
    pub fn status(&self) -> ProjectionStatus {
        self.board.snapshot()
    }

    /// Waits until every partition has committed (or had nothing to commit) everything up to
    /// `position` of the log.
    ///
    /// # Errors
    ///
    /// The projection's error if it stops first.
    pub async fn caught_up_to(&self, position: Position) -> Result<()> {
        let mut progress = self.progress.clone();
        loop {
            progress.borrow_and_update();
            if self.board.reached(position) {
                return Ok(());
            }
            if let Some(error) = self.take_failure() {
                return Err(error);
            }
            if progress.changed().await.is_err() || self.tracker.is_empty() {
                return match self.take_failure() {
                    Some(error) => Err(error),
                    None => Err(ProjectionError::Store(annals::Error::Closed)),
                };
            }
        }
    }

    /// Whether the projection has stopped (by itself, on an error of the stop policy or a lost
    /// ownership, or asked to).
    pub fn is_stopped(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Waits until the projection stops by itself and returns why (the stop policy's error).
    pub async fn stopped(&self) -> Option<ProjectionError> {
        self.cancel.cancelled().await;
        self.tracker.wait().await;
        self.take_failure()
    }

    fn take_failure(&self) -> Option<ProjectionError> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .map(ProjectionError::Stopped)
    }

    /// The projection's dead letters (of the generation it writes): parked and skipped
    /// events, in the order set aside.
    ///
    /// # Errors
    ///
    /// The read model's failure.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        let generation = self.board.snapshot().generation;
        self.model.dead_letters(&self.name, generation).await
    }

    /// Applies the parked events of `stream` again, in order, in one transaction; on success
    /// the stream is no longer parked. Returns how many were applied.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::NotParked`] when the stream has no parked event; the handler's error
    /// (they stay parked) when it fails again.
    pub async fn retry_parked(&self, stream: &StreamId) -> Result<usize> {
        self.control(stream, partition::Control::Retry).await
    }

    /// Drops the parked events of `stream` (the checkpoint already passed them); the stream is
    /// no longer parked. Returns how many were dropped.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::NotParked`] when the stream has no parked event.
    pub async fn drop_parked(&self, stream: &StreamId) -> Result<usize> {
        self.control(stream, partition::Control::Drop).await
    }

    async fn control(&self, stream: &StreamId, what: partition::Control) -> Result<usize> {
        let partition = crate::partition_of(stream, self.total);
        let sender = self
            .ids
            .iter()
            .position(|&id| id == partition)
            .and_then(|i| self.senders.get(i))
            .ok_or(ProjectionError::Store(annals::Error::Closed))?;
        let (reply, answer) = oneshot::channel();
        sender
            .send(partition::Msg::Control {
                stream: stream.clone(),
                what,
                reply,
            })
            .await
            .map_err(|_| ProjectionError::Store(annals::Error::Closed))?;
        answer
            .await
            .map_err(|_| ProjectionError::Store(annals::Error::Closed))?
    }

    /// Stops: the reader stops, each partition commits the batch in hand, the read model is
    /// flushed. Returns the error the projection stopped with, if it stopped by itself.
    ///
    /// # Errors
    ///
    /// The stop policy's error, or the read model's failure to flush.
    pub async fn shutdown(self) -> Result<()> {
        self.cancel.cancel();
        self.tracker.wait().await;
        self.board.shut_down();
        self.model.flush().await?;
        tracing::info!(projection = %self.name, "projection shut down");
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match failure {
            Some(error) => Err(Arc::try_unwrap(error).unwrap_or_else(ProjectionError::Stopped)),
            None => Ok(()),
        }
    }
}
