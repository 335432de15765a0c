//! Workers across processes: the partitions of a projection shared by leases, fenced,
//! rebalanced as workers come and go, taken over when one dies or stalls.

mod status;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use annals::{EventStore, Lease, Leases};
use tokio_util::sync::CancellationToken;

use crate::{
    Fence, Projection, ProjectionError, ProjectionName, ProjectionRunner, ReadModel, Result,
    RunningProjection,
};

pub use status::{OwnedPartition, WorkersStatus};

/// How a worker configures each partition's runner (batch size, error policy, retries…).
type Configure<S, M, P> =
    Arc<dyn Fn(ProjectionRunner<S, M, Arc<P>>) -> ProjectionRunner<S, M, Arc<P>> + Send + Sync>;

/// Runs a projection's partitions together with the other worker processes on the same store:
/// each partition has exactly one owner at a time, through the store's [`Leases`].
///
/// - **Ownership**: a worker owns a partition while it holds the lease
///   `<projection>/partitions/<n>`, and runs it ([`ProjectionRunner`] for that partition
///   alone); every batch is **fenced**: the read model checks inside the batch's transaction
///   that the lease is still in the epoch the worker took it in ([`Fence`]), so a paused or
///   cut-off former owner that wakes up commits nothing ([`ProjectionError::LostOwnership`]).
/// - **Liveness**: the store's leases are renewed by a heartbeat and taken over when their
///   holder stops renewing them (on PostgreSQL: every second, taken over after 5 s; see
///   `PgEventStoreBuilder::lease_heartbeat` and `lease_ttl`). A killed or paused worker's
///   partitions move to the others once its leases expire.
/// - **Balance**: each worker also holds `<projection>/workers/<id>`; every
///   [`rebalance_every`](WorkersBuilder::rebalance_every) (1 s) it counts the live workers `N`
///   and takes its share of the `P` partitions — ⌊P/N⌋ or ⌈P/N⌉, the larger shares going to
///   the workers first in id order — releasing the partitions above its share cleanly (the
///   batch in hand committed, then the lease released) and taking free ones up to it.
///
/// Read models shared by processes must check the fence: [`PgModel`](crate::PgModel) does. The
/// in-memory and sled models belong to one process, where the worker's own lease checks
/// suffice.
///
/// Run the same code in every worker process:
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use annals::{BoxError, RecordedEvent};
/// use annals_postgres::PgEventStore;
/// use annals_projections::{PgModel, PgTx, Projection, ProjectionName, ProjectionWorkers};
///
/// struct Balances(ProjectionName);
///
/// impl Projection<PgModel> for Balances {
///     fn name(&self) -> &ProjectionName {
///         &self.0
///     }
///     async fn handle(&self, tx: &mut PgTx, events: &[RecordedEvent]) -> Result<(), BoxError> {
///         for e in events {
///             tx.client()
///                 .execute(
///                     "INSERT INTO balances (account, n) VALUES ($1, 1)
///                      ON CONFLICT (account) DO UPDATE SET n = balances.n + 1",
///                     &[&e.stream_id.as_str()],
///                 )
///                 .await?;
///         }
///         Ok(())
///     }
/// }
///
/// let worker = std::env::var("WORKER_ID")?; // stable and unique per process
/// let store = PgEventStore::builder()
///     .connection_string("host=127.0.0.1 user=app dbname=app")
///     .lease_holder(worker.as_str())
///     .open()
///     .await?;
/// let model = PgModel::new(&store);
/// model.init().await?;
/// let running = ProjectionWorkers::builder(store, model, Balances(ProjectionName::new("balances")?))
///     .partitions(8)
///     .worker_id(worker)
///     .start()
///     .await?;
/// // … until the process is asked to stop:
/// let status = running.status().await?; // owners, epochs, heartbeats, checkpoints
/// println!("{} partitions unowned", status.unowned().len());
/// running.shutdown().await; // commits the batches in hand, releases the leases
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ProjectionWorkers;

impl ProjectionWorkers {
    /// A builder for a worker of `projection` over `store`'s log into `model`.
    pub fn builder<S, M, P>(store: S, model: M, projection: P) -> WorkersBuilder<S, M, P>
    where
        S: EventStore + Leases + Clone + 'static,
        M: ReadModel + Clone,
        P: Projection<M>,
    {
        WorkersBuilder {
            store,
            model,
            projection: Arc::new(projection),
            partitions: 8,
            worker_id: None,
            rebalance_every: Duration::from_secs(1),
            report_unowned_after: Duration::from_secs(10),
            configure: Arc::new(|runner| runner),
        }
    }
}

/// Settings of a worker (see [`ProjectionWorkers`]).
pub struct WorkersBuilder<S, M, P> {
    store: S,
    model: M,
    projection: Arc<P>,
    partitions: u32,
    worker_id: Option<String>,
    rebalance_every: Duration,
    report_unowned_after: Duration,
    configure: Configure<S, M, P>,
}

impl<S, M, P> std::fmt::Debug for WorkersBuilder<S, M, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkersBuilder")
            .field("partitions", &self.partitions)
            .field("worker_id", &self.worker_id)
            .field("rebalance_every", &self.rebalance_every)
            .finish_non_exhaustive()
    }
}

impl<S, M, P> WorkersBuilder<S, M, P>
where
    S: EventStore + Leases + Clone + 'static,
    M: ReadModel + Clone,
    P: Projection<M>,
{
    /// The projection's partition count, the same in every worker (default 8).
    #[must_use]
    pub fn partitions(mut self, count: u32) -> Self {
        self.partitions = count;
        self
    }

    /// This worker's id, unique among the workers of the projection (default: host name,
    /// process id and a random part).
    #[must_use]
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    /// How often the worker looks at the workers and partitions and takes or releases its
    /// share (default 1 s).
    #[must_use]
    pub fn rebalance_every(mut self, every: Duration) -> Self {
        self.rebalance_every = every;
        self
    }

    /// How long a partition may have no owner before the worker reports it (a `tracing` error
    /// and [`OwnedPartition::unowned_for`] in the status; default 10 s, two lease periods on
    /// PostgreSQL's defaults). With live workers a partition goes unowned only while its lease
    /// expires, or when no worker can start it (its read model refuses: ahead of the log, a
    /// newer format).
    #[must_use]
    pub fn report_unowned_after(mut self, after: Duration) -> Self {
        self.report_unowned_after = after;
        self
    }

    /// Settings for each partition's runner (batch size, error policy, retries, stall time).
    #[must_use]
    pub fn configure(
        mut self,
        configure: impl Fn(ProjectionRunner<S, M, Arc<P>>) -> ProjectionRunner<S, M, Arc<P>>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.configure = Arc::new(configure);
        self
    }

    /// Starts the worker: it joins, then takes and runs its share of the partitions until
    /// [`shutdown`](RunningWorkers::shutdown).
    ///
    /// # Errors
    ///
    /// [`ProjectionError::Configuration`] for zero partitions or an invalid worker id.
    pub async fn start(self) -> Result<RunningWorkers<M>> {
        let name = self.projection.name().clone();
        let invalid = |setting, reason: &str| ProjectionError::Configuration {
            projection: name.clone(),
            setting,
            reason: reason.to_owned(),
        };
        if self.partitions == 0 {
            return Err(invalid("partitions", "at least 1"));
        }
        let id = self.worker_id.clone().unwrap_or_else(default_worker_id);
        if id.is_empty() || id.contains('/') || id.chars().any(char::is_control) {
            return Err(invalid(
                "worker_id",
                "1 or more characters, no `/` and no control character",
            ));
        }
        let shared = Arc::new(Shared {
            owned: Mutex::new(BTreeMap::new()),
            failures: Mutex::new(Vec::new()),
            unowned: Mutex::new(BTreeMap::new()),
        });
        let cancel = CancellationToken::new();
        let worker = Worker {
            store: self.store.clone(),
            model: self.model.clone(),
            projection: self.projection,
            name: name.clone(),
            id: id.clone(),
            partitions: self.partitions,
            configure: self.configure,
            report_unowned_after: self.report_unowned_after,
            shared: shared.clone(),
            membership: None,
        };
        let task = tokio::spawn(worker.run(self.rebalance_every, cancel.clone()));
        tracing::info!(projection = %name, worker = %id, "projection worker started");
        Ok(RunningWorkers {
            name,
            id,
            partitions: self.partitions,
            model: self.model,
            leases: Box::new(self.store),
            shared,
            cancel,
            task: Mutex::new(Some(task)),
        })
    }
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    let random = std::hash::BuildHasher::hash_one(
        &std::collections::hash_map::RandomState::new(),
        std::time::SystemTime::now(),
    );
    format!("{host}-{}-{:06x}", std::process::id(), random & 0xff_ffff)
}

/// One partition this worker owns: its lease and its runner.
struct Owned<M> {
    lease: Lease,
    running: RunningProjection<M>,
}

/// What the worker task and the handle share.
struct Shared<M> {
    owned: Mutex<BTreeMap<u32, Owned<M>>>,
    /// Partitions that stopped by themselves, with why (the stop policy's errors, lost
    /// ownership), newest last.
    failures: Mutex<Vec<(u32, String)>>,
    /// Partitions seen with no owner: since when, and whether reported.
    unowned: Mutex<BTreeMap<u32, (std::time::Instant, bool)>>,
}

impl<M> Shared<M> {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Owned<M>>> {
        self.owned.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The lease names of a projection.
fn worker_lease(name: &ProjectionName, id: &str) -> String {
    format!("{}/workers/{id}", name.as_str())
}

fn workers_prefix(name: &ProjectionName) -> String {
    format!("{}/workers/", name.as_str())
}

fn partition_lease(name: &ProjectionName, partition: u32) -> String {
    format!("{}/partitions/{partition}", name.as_str())
}

fn partitions_prefix(name: &ProjectionName) -> String {
    format!("{}/partitions/", name.as_str())
}

/// This worker's share of `partitions` among the live workers `ids` (sorted): ⌊P/N⌋, plus one
/// for the first `P mod N` workers. A worker not among them (it has not joined yet) counts as
/// one more at the end.
pub(crate) fn share(partitions: u32, ids: &[String], me: &str) -> u32 {
    let position = ids.iter().position(|id| id == me);
    let count = u32::try_from(ids.len()).unwrap_or(u32::MAX) + u32::from(position.is_none());
    let index = position.map_or(count - 1, |i| u32::try_from(i).unwrap_or(u32::MAX));
    partitions / count + u32::from(index < partitions % count)
}

struct Worker<S, M, P> {
    store: S,
    model: M,
    projection: Arc<P>,
    name: ProjectionName,
    id: String,
    partitions: u32,
    configure: Configure<S, M, P>,
    report_unowned_after: Duration,
    shared: Arc<Shared<M>>,
    membership: Option<Lease>,
}

impl<S, M, P> Worker<S, M, P>
where
    S: EventStore + Leases + Clone + 'static,
    M: ReadModel + Clone,
    P: Projection<M>,
{
    async fn run(mut self, every: Duration, cancel: CancellationToken) {
        loop {
            if let Err(error) = self.round().await {
                tracing::warn!(projection = %self.name, worker = %self.id, %error, "projection worker: a rebalancing round failed; retrying");
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
        }
        // Shutting down: every partition commits the batch in hand, then its lease is freed.
        let owned: Vec<(u32, Owned<M>)> = std::mem::take(&mut *self.shared.lock())
            .into_iter()
            .collect();
        for (partition, owned) in owned {
            self.give_up(partition, owned).await;
        }
        if let Some(membership) = self.membership.take() {
            let _ = membership.release().await;
        }
        tracing::info!(projection = %self.name, worker = %self.id, "projection worker stopped");
    }

    /// One look at the workers and partitions: drop what was lost, release what is above the
    /// share, take free partitions up to it.
    async fn round(&mut self) -> Result<()> {
        // Membership (again, after a pause that lost it).
        if self.membership.as_ref().is_none_or(Lease::is_lost) {
            self.membership = self
                .store
                .try_lease(&worker_lease(&self.name, &self.id))
                .await?;
        }
        // Partitions lost (taken over after a pause) or stopped by themselves.
        let gone: Vec<u32> = self
            .shared
            .lock()
            .iter()
            .filter(|(_, o)| o.lease.is_lost() || o.running.is_stopped())
            .map(|(p, _)| *p)
            .collect();
        for partition in gone {
            let owned = self.shared.lock().remove(&partition);
            if let Some(owned) = owned {
                self.give_up(partition, owned).await;
            }
        }
        let ids: Vec<String> = self
            .store
            .leases(&workers_prefix(&self.name))
            .await?
            .into_iter()
            .filter_map(|l| l.name.rsplit('/').next().map(str::to_owned))
            .collect();
        let share = if self.membership.is_some() {
            share(self.partitions, &ids, &self.id)
        } else {
            // Not a member yet (an earlier incarnation's lease has not expired): hold nothing.
            0
        };
        let owned: Vec<u32> = self.shared.lock().keys().copied().collect();
        let held: Vec<u32> = self
            .store
            .leases(&partitions_prefix(&self.name))
            .await?
            .into_iter()
            .filter_map(|l| l.name.rsplit('/').next().and_then(|n| n.parse().ok()))
            .collect();
        self.watch_unowned(&held, &owned);
        let count = u32::try_from(owned.len()).unwrap_or(u32::MAX);
        if count > share {
            // The highest-numbered above the share go, cleanly.
            for &partition in owned.iter().rev().take((count - share) as usize) {
                let released = self.shared.lock().remove(&partition);
                if let Some(owned) = released {
                    tracing::info!(projection = %self.name, worker = %self.id, partition, "releasing a partition above this worker's share");
                    self.give_up(partition, owned).await;
                }
            }
            return Ok(());
        }
        let mut wanted = share - count;
        if wanted == 0 {
            return Ok(());
        }
        // Free partitions, starting at a place of our own so workers rarely race for one.
        let start = ids.iter().position(|id| id == &self.id).map_or(0, |i| {
            u32::try_from(i).unwrap_or(0) * self.partitions
                / u32::try_from(ids.len().max(1)).unwrap_or(1)
        });
        for step in 0..self.partitions {
            if wanted == 0 {
                break;
            }
            let partition = (start + step) % self.partitions;
            if held.contains(&partition) || owned.contains(&partition) {
                continue;
            }
            match self.take(partition).await {
                Ok(true) => wanted -= 1,
                Ok(false) => {}
                Err(error) => {
                    // This partition cannot start here (its read model refuses it): the others
                    // still can; it is reported once it has had no owner for long.
                    tracing::warn!(projection = %self.name, worker = %self.id, partition, %error, "a partition could not be started");
                    self.shared
                        .failures
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((partition, error.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Notes the partitions nobody owns, and reports those unowned for longer than
    /// `report_unowned_after`.
    fn watch_unowned(&self, held: &[u32], owned: &[u32]) {
        let now = std::time::Instant::now();
        let mut unowned = self
            .shared
            .unowned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for partition in 0..self.partitions {
            if held.contains(&partition) || owned.contains(&partition) {
                unowned.remove(&partition);
                continue;
            }
            let (since, reported) = unowned.entry(partition).or_insert((now, false));
            let waited = now.duration_since(*since);
            if !*reported && waited >= self.report_unowned_after {
                *reported = true;
                tracing::error!(
                    projection = %self.name,
                    worker = %self.id,
                    partition,
                    unowned_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                    "projection partition has no owner: nothing applies its events"
                );
            }
        }
    }

    /// Takes `partition` if its lease is free, and starts its runner.
    async fn take(&self, partition: u32) -> Result<bool> {
        let lease_name = partition_lease(&self.name, partition);
        let Some(lease) = self.store.try_lease(&lease_name).await? else {
            return Ok(false);
        };
        let fence = Fence {
            lease: lease_name,
            epoch: lease.epoch(),
        };
        let runner = ProjectionRunner::new(
            self.store.clone(),
            self.model.clone(),
            self.projection.clone(),
        )
        .partitions(self.partitions);
        let runner = (self.configure)(runner).only_partition(partition, Some(fence));
        match runner.start().await {
            Ok(running) => {
                tracing::info!(projection = %self.name, worker = %self.id, partition, epoch = lease.epoch(), "took a partition");
                self.shared
                    .lock()
                    .insert(partition, Owned { lease, running });
                Ok(true)
            }
            Err(error) => {
                let _ = lease.release().await;
                Err(error)
            }
        }
    }

    /// Stops a partition's runner (the batch in hand committed, if the lease still holds) and
    /// frees its lease.
    async fn give_up(&self, partition: u32, owned: Owned<M>) {
        let Owned { lease, running } = owned;
        if let Err(error) = running.shutdown().await {
            tracing::warn!(projection = %self.name, worker = %self.id, partition, %error, "a partition stopped");
            self.shared
                .failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((partition, error.to_string()));
        }
        if !lease.is_lost() {
            let _ = lease.release().await;
        }
    }
}

/// A running worker: what it owns, the status of the projection across the workers, and its
/// shutdown.
pub struct RunningWorkers<M> {
    name: ProjectionName,
    id: String,
    partitions: u32,
    model: M,
    leases: Box<dyn LeaseList>,
    shared: Arc<Shared<M>>,
    cancel: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl<M> std::fmt::Debug for RunningWorkers<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningWorkers")
            .field("projection", &self.name)
            .field("worker", &self.id)
            .finish_non_exhaustive()
    }
}

/// [`Leases::leases`] behind a box (the handle does not carry the store's type).
trait LeaseList: Send + Sync {
    fn list<'a>(
        &'a self,
        prefix: &'a str,
    ) -> futures::future::BoxFuture<'a, annals::Result<Vec<annals::LeaseInfo>>>;
}

impl<S: Leases> LeaseList for S {
    fn list<'a>(
        &'a self,
        prefix: &'a str,
    ) -> futures::future::BoxFuture<'a, annals::Result<Vec<annals::LeaseInfo>>> {
        Box::pin(self.leases(prefix))
    }
}

impl<M: ReadModel> RunningWorkers<M> {
    /// This worker's id.
    pub fn worker_id(&self) -> &str {
        &self.id
    }

    /// The partitions this worker owns now.
    pub fn owned(&self) -> Vec<u32> {
        self.shared.lock().keys().copied().collect()
    }

    /// The partitions that stopped by themselves in this worker, with why (the stop policy's
    /// error, or [`ProjectionError::LostOwnership`] after a takeover), oldest first.
    pub fn failures(&self) -> Vec<(u32, String)> {
        self.shared
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Shuts the worker down: each partition commits the batch in hand and its lease is
    /// released, so the other workers take the partitions over at their next round.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}
