//! Rebuild jobs: a new generation of a projection's read model built beside the live one,
//! then swapped in atomically.

use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::{EventStore, Lease, Leases, Position};
use tokio_util::sync::CancellationToken;

use crate::{
    ErrorPolicy, PartitionKey, Projection, ProjectionError, ProjectionName, ProjectionRunner,
    ReadModel, Result,
};

mod job;
mod reset;

use job::{ordinal, Job};
pub use reset::reset_checkpoints;

/// How long after a swap the old generation is dropped: a reader that resolved it just before
/// the swap finishes its read meanwhile.
const DROP_GRACE: Duration = Duration::from_secs(1);

/// By default, how many rebuilds run at once on one store (across processes, through the
/// store's leases); the others wait for a slot.
pub const DEFAULT_CONCURRENT_REBUILDS: u32 = 2;

/// How far a rebuild is, as given to [`Rebuild::on_progress`] about four times a second.
#[derive(Clone, Debug)]
pub struct RebuildProgress {
    /// The projection.
    pub projection: ProjectionName,
    /// The generation being built.
    pub generation: u32,
    /// Events of the log the new generation has (its lowest partition's position; on
    /// PostgreSQL, by the events' sequence numbers, which a rolled-back append skips).
    pub done: u64,
    /// Events of the log when the rebuild started, counted the same way: the goal (the log
    /// goes on growing; the rebuild follows it to the swap).
    pub total: u64,
    /// Events per second since this run started.
    pub per_second: f64,
    /// Time left to `total` at that rate (none before the rate is known).
    pub eta: Option<Duration>,
}

/// What a finished rebuild did.
#[derive(Clone, Debug)]
pub struct RebuildReport {
    /// The projection.
    pub projection: ProjectionName,
    /// The generation built, now active.
    pub generation: u32,
    /// The generation it replaced.
    pub previous: u32,
    /// Events of the log gone through in this run (a resumed rebuild counts from where it
    /// resumed).
    pub events: u64,
    /// Where the swap happened: the new generation had every event up to here.
    pub swapped_at: Position,
    /// How long this run took, to the swap (the old generation's drop a second later is not
    /// counted: readers are on the new generation from the swap on).
    pub elapsed: Duration,
    /// Whether the previous generation was kept ([`Rebuild::keep_old`]).
    pub kept_old: bool,
}

type Progress = Arc<dyn Fn(&RebuildProgress) + Send + Sync>;
type Configure<S, M, P> =
    Box<dyn FnOnce(ProjectionRunner<S, M, Arc<P>>) -> ProjectionRunner<S, M, Arc<P>> + Send + Sync>;

/// Rebuilds a projection's read model: builds generation `g + 1` beside the active generation
/// `g` — which keeps serving reads and following the log — from the start of the log, then,
/// once it has caught up with the head, makes it the active one in one atomic step
/// ([`ReadModel::swap`]) recorded with the position it happened at. Readers that resolve the
/// active generation (`SledModel::get`, `PgModel::schema_of`, `MemoryModel::get`) see `g`
/// before and `g + 1` after, never an empty or half-built model; runners of `g` move to
/// `g + 1` at their next batch (an idle one within a second).
///
/// - **Resumable**: the new generation keeps its own checkpoints, so a killed or cancelled
///   rebuild run again with [`resume`](Self::resume) continues where it stopped; without it,
///   an interrupted generation is dropped and the rebuild starts over. A cancelled rebuild
///   leaves `g` serving, untouched.
/// - **Side effects** ([`Projection::effects`]) are never repeated: they run only for events
///   no generation has done them for.
/// - **One at a time per projection, a few per store**: a rebuild holds the store lease
///   `annals-rebuild/<projection>` and one of [`concurrent`](Self::concurrent) slot leases
///   (default [`DEFAULT_CONCURRENT_REBUILDS`]), waiting for a free slot.
/// - **Fast**: batches of 10,000 events by default, the log read ahead while a batch is
///   written, the new generation's secondary indexes ([`Projection::indexes`]) made after the
///   bulk load; a handler that writes each batch with one multi-row statement makes the most
///   of it.
///
/// ```
/// use annals::{BoxError, EventData, EventStore, ExpectedVersion, InMemoryStore, RecordedEvent, StreamId};
/// use annals_projections::{MemoryModel, MemoryTx, Projection, ProjectionName, Rebuild};
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
/// store
///     .append(&StreamId::new("account-1")?, ExpectedVersion::Any, vec![EventData::json("Opened", &())?])
///     .await?;
/// let counts = MemoryModel::new();
/// let report = Rebuild::new(store, counts.clone(), Counts(ProjectionName::new("counts")?))
///     .on_progress(|p| println!("{}/{} events", p.done, p.total))
///     .run()
///     .await?;
/// assert_eq!(report.generation, 2);
/// assert_eq!(counts.get(&"account-1".to_owned()), Some(1));
/// # Ok(())
/// # }
/// ```
pub struct Rebuild<S, M, P> {
    store: S,
    model: M,
    projection: P,
    partitions: u32,
    batch_size: usize,
    keep_old: bool,
    resume: bool,
    concurrent: u32,
    progress: Option<Progress>,
    cancel: CancellationToken,
    configure: Option<Configure<S, M, P>>,
}

impl<S, M, P> std::fmt::Debug for Rebuild<S, M, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rebuild")
            .field("partitions", &self.partitions)
            .field("batch_size", &self.batch_size)
            .field("keep_old", &self.keep_old)
            .field("resume", &self.resume)
            .finish_non_exhaustive()
    }
}

impl<S, M, P> Rebuild<S, M, P>
where
    S: EventStore + Leases + Clone + 'static,
    M: ReadModel + Clone,
    P: Projection<M>,
{
    /// A rebuild of `projection` into a new generation of `model`, from `store`'s log, with
    /// the defaults: 1 partition, batches of 10,000 events, the old generation dropped after
    /// the swap, an interrupted rebuild started over, the stop error policy.
    pub fn new(store: S, model: M, projection: P) -> Self {
        Rebuild {
            store,
            model,
            projection,
            partitions: 1,
            batch_size: 10_000,
            keep_old: false,
            resume: false,
            concurrent: DEFAULT_CONCURRENT_REBUILDS,
            progress: None,
            cancel: CancellationToken::new(),
            configure: None,
        }
    }

    /// The partition count of the new generation (1 by default). Live runners follow the swap
    /// only with the same count: rebuilding with another count is how a projection's count is
    /// changed (restart its runners with the new count after the swap; a runner with the old
    /// count stops with [`ProjectionError::Configuration`] when it meets the new generation).
    #[must_use]
    pub fn partitions(mut self, count: u32) -> Self {
        self.partitions = count;
        self
    }

    /// Events per batch (10,000 by default): each is one transaction of the read model.
    #[must_use]
    pub fn batch_size(mut self, events: usize) -> Self {
        self.batch_size = events;
        self
    }

    /// Keeps the old generation after the swap (listed in [`Generations::kept`](crate::Generations::kept)) instead of
    /// dropping it a second after the swap (readers that resolved it just before finish their
    /// read meanwhile).
    #[must_use]
    pub fn keep_old(mut self, keep: bool) -> Self {
        self.keep_old = keep;
        self
    }

    /// Continues the generation an interrupted rebuild left (from its checkpoints) instead of
    /// dropping it and starting over.
    #[must_use]
    pub fn resume(mut self, resume: bool) -> Self {
        self.resume = resume;
        self
    }

    /// How many rebuilds may run at once on the store (default
    /// [`DEFAULT_CONCURRENT_REBUILDS`]): every rebuild of the store must use the same number.
    #[must_use]
    pub fn concurrent(mut self, rebuilds: u32) -> Self {
        self.concurrent = rebuilds.max(1);
        self
    }

    /// Calls `report` with the progress about four times a second.
    #[must_use]
    pub fn on_progress(
        mut self,
        report: impl Fn(&RebuildProgress) + Send + Sync + 'static,
    ) -> Self {
        self.progress = Some(Arc::new(report));
        self
    }

    /// Stops the rebuild when `token` is cancelled: [`run`](Self::run) returns
    /// [`ProjectionError::Cancelled`], the new generation keeps what it committed (resume it
    /// later), the active one is untouched.
    #[must_use]
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// Sets the runner's other settings (error policy, retries, stall time…).
    #[must_use]
    pub fn configure(
        mut self,
        configure: impl FnOnce(ProjectionRunner<S, M, Arc<P>>) -> ProjectionRunner<S, M, Arc<P>>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.configure = Some(Box::new(configure));
        self
    }

    /// Runs the rebuild to its swap.
    ///
    /// # Errors
    ///
    /// [`ProjectionError::RebuildRunning`] when another rebuild of the projection holds it;
    /// [`ProjectionError::Cancelled`] when cancelled; [`ProjectionError::Retired`] when the
    /// generation was dropped meanwhile; the runner's errors (a handler failing under the stop
    /// policy) and the store's.
    pub async fn run(self) -> Result<RebuildReport> {
        let started = Instant::now();
        let name = self.projection.name().clone();
        let lease_name = format!("annals-rebuild/{name}");
        let Some(lease) = self.store.try_lease(&lease_name).await? else {
            return Err(ProjectionError::RebuildRunning { projection: name });
        };
        let slot = match self.slot(&name).await {
            Ok(slot) => slot,
            Err(error) => {
                let _ = lease.release().await;
                return Err(error);
            }
        };
        let result = self.build(&name, started).await;
        let _ = slot.release().await;
        let _ = lease.release().await;
        result
    }

    /// Waits for one of the store's rebuild slots.
    async fn slot(&self, name: &ProjectionName) -> Result<Lease> {
        let mut told = false;
        loop {
            for slot in 0..self.concurrent {
                if let Some(lease) = self
                    .store
                    .try_lease(&format!("annals-rebuild/slots/{slot}"))
                    .await?
                {
                    return Ok(lease);
                }
            }
            if !told {
                tracing::info!(projection = %name, slots = self.concurrent, "rebuild waits for a free slot");
                told = true;
            }
            tokio::select! {
                () = self.cancel.cancelled() => return Err(ProjectionError::Cancelled { projection: name.clone() }),
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    async fn build(self, name: &ProjectionName, started: Instant) -> Result<RebuildReport> {
        let Rebuild {
            store,
            model,
            projection,
            partitions,
            batch_size,
            keep_old,
            resume,
            progress,
            cancel,
            configure,
            ..
        } = self;
        let generation = model.begin_generation(name, resume).await?;
        // A partition count other than an interrupted generation's is refused by the runner.
        let previous = model.generations(name).await?.active;
        let head = store.last_position().await?;
        let total = head.map_or(0, ordinal);
        // Where it resumes: the lowest checkpoint of the generation (0 when it is new).
        let mut first = u64::MAX;
        for partition in 0..partitions {
            let key = PartitionKey::in_generation(name.clone(), generation, partition);
            first = first.min(model.checkpoint(&key).await?.map_or(0, ordinal));
        }
        let first = if partitions == 0 { 0 } else { first };
        tracing::info!(projection = %name, generation, resumed_at = ?first, head = ?head, "rebuild started");
        let projection = Arc::new(projection);
        let mut runner = ProjectionRunner::new(store.clone(), model.clone(), projection.clone())
            .partitions(partitions)
            .batch_size(batch_size)
            .error_policy(ErrorPolicy::Stop);
        if let Some(configure) = configure {
            runner = configure(runner);
        }
        let runner = runner.rebuilding(generation);
        let running = runner.start().await?;
        let job = Job {
            name,
            generation,
            running: &running,
            progress,
            cancel: &cancel,
            total,
            from: first,
            started,
        };
        // Swapped keeping the old generation; unless asked to keep it, it is dropped after a
        // grace period, so a reader that resolved it just before the swap finishes its read.
        // Should this process stop meanwhile, it stays listed in `Generations::kept`.
        let outcome = job.follow(&store, &model, &projection, partitions).await;
        let shut = running.shutdown().await;
        let (swapped_at, _) = outcome?;
        let elapsed = started.elapsed();
        if let Err(error) = shut {
            tracing::warn!(projection = %name, %error, "the rebuild's runner stopped with an error after the swap");
        }
        if !keep_old {
            tokio::time::sleep(DROP_GRACE).await;
            if let Err(error) = model.drop_generation(name, previous).await {
                tracing::warn!(projection = %name, generation = previous, %error, "dropping the old generation failed; it stays listed as kept");
            }
        }
        let report = RebuildReport {
            projection: name.clone(),
            generation,
            previous,
            events: ordinal(swapped_at).saturating_sub(first),
            swapped_at,
            elapsed,
            kept_old: keep_old,
        };
        tracing::info!(
            projection = %name,
            generation,
            previous,
            swapped_at = %swapped_at,
            events = report.events,
            elapsed_ms = u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
            "rebuild swapped in"
        );
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send<T: Send>(_: &T) {}

    /// A rebuild can run on any task (`tokio::spawn`), the CLI's included.
    #[test]
    fn the_rebuild_future_is_send() {
        struct Nothing(ProjectionName);
        impl Projection<crate::MemoryModel<u8, u8>> for Nothing {
            fn name(&self) -> &ProjectionName {
                &self.0
            }
            async fn handle(
                &self,
                _: &mut crate::MemoryTx<u8, u8>,
                _: &[annals::RecordedEvent],
            ) -> std::result::Result<(), annals::BoxError> {
                Ok(())
            }
        }
        let name = ProjectionName::new("nothing").unwrap();
        let run = Rebuild::new(
            annals::InMemoryStore::new(),
            crate::MemoryModel::new(),
            Nothing(name),
        )
        .configure(|runner| runner.batch_size(10))
        .run();
        send(&run);
    }
}
