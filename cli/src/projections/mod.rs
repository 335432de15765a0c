//! The projections a CLI knows: registered with their read model type and settings, then run,
//! inspected, rebuilt and reset through [`Registered`], which erases those types.

mod erased;
mod model;
mod running;
mod stored;

use std::sync::Arc;

use annals::{Position, StreamId};
use annals_projections::{
    ErrorPolicy, Projection, ProjectionName, RebuildProgress, RebuildReport, Retry,
};
use futures::future::BoxFuture;

use crate::failure::{CliResult, Failure};
use crate::OpenedStore;

pub(crate) use model::wrong_kind;
pub use model::CliModel;
pub(crate) use stored::{lags, Lag, Stored};

/// How the CLI runs a registered projection: the settings the application runs it with.
///
/// The partition count **must be the one the application uses**: checkpoints are kept per
/// partition, and a runner started with another count is refused (rebuild to change it).
///
/// ```
/// use annals_cli::ProjectionOptions;
/// use annals_projections::ErrorPolicy;
///
/// let options = ProjectionOptions::new().partitions(4).error_policy(ErrorPolicy::Park);
/// assert_eq!(options.partition_count(), 4);
/// ```
#[derive(Clone, Debug)]
pub struct ProjectionOptions {
    partitions: u32,
    batch_size: usize,
    error_policy: ErrorPolicy,
    retry: Retry,
}

impl Default for ProjectionOptions {
    fn default() -> Self {
        ProjectionOptions::new()
    }
}

impl ProjectionOptions {
    /// The runner's defaults:
    ///
    /// - 1 partition, the default of `ProjectionRunner` (note that `ProjectionWorkers`
    ///   defaults to 8: give the count your application uses);
    /// - batches of up to 500 events;
    /// - the [`ErrorPolicy::Stop`] policy with [`Retry::default`].
    pub fn new() -> Self {
        ProjectionOptions {
            partitions: 1,
            batch_size: 500,
            error_policy: ErrorPolicy::Stop,
            retry: Retry::default(),
        }
    }

    /// The projection's partition count (the application's: see the type's docs).
    #[must_use]
    pub fn partitions(mut self, count: u32) -> Self {
        self.partitions = count;
        self
    }

    /// The most events handed to the handler in one batch.
    #[must_use]
    pub fn batch_size(mut self, events: usize) -> Self {
        self.batch_size = events;
        self
    }

    /// What `projections run` (and `dlq retry`) do with an event whose handler keeps failing.
    #[must_use]
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.error_policy = policy;
        self
    }

    /// How a failing handler is retried before the policy applies.
    #[must_use]
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// The partition count.
    pub fn partition_count(&self) -> u32 {
        self.partitions
    }
}

/// How `projections rebuild` runs a rebuild.
pub(crate) struct RebuildSettings {
    /// Go on with an interrupted rebuild.
    pub(crate) resume: bool,
    /// Keep the old generation after the swap.
    pub(crate) keep_old: bool,
    /// Called with the progress, about four times a second.
    pub(crate) progress: Arc<dyn Fn(&RebuildProgress) + Send + Sync>,
    /// Cancels the rebuild (the active generation keeps serving).
    pub(crate) cancel: tokio_util::sync::CancellationToken,
}

/// What to do with a stream's parked events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ParkedAction {
    /// Apply them again, in order.
    Retry,
    /// Drop them.
    Drop,
}

/// What a projection's status line shows while `projections run` runs it.
#[derive(Clone, Debug, Default)]
pub(crate) struct RunStatus {
    /// Live, catching up, stalled, stopped… (or `standby` for a worker that owns nothing).
    pub(crate) state: String,
    /// The lowest checkpoint (of every partition).
    pub(crate) checkpoint: Option<Position>,
    /// Events between the head and the lowest checkpoint, when known.
    pub(crate) lag: Option<Lag>,
    /// Parked events (of the partitions run here).
    pub(crate) parked: u64,
    /// Events skipped since the start (of the partitions run here).
    pub(crate) skipped: u64,
    /// With workers: the partitions this worker owns.
    pub(crate) owned: Option<Vec<u32>>,
    /// Errors the projection (or a partition of it) stopped with.
    pub(crate) errors: Vec<String>,
}

/// A projection running in this process.
pub(crate) trait Running: Send + Sync {
    /// Where it is.
    fn status(&self) -> BoxFuture<'_, CliResult<RunStatus>>;
    /// Stops it: each partition commits the batch in hand; workers release their leases.
    fn shutdown(self: Box<Self>) -> BoxFuture<'static, CliResult>;
}

/// A registered projection with its read model and projection types erased.
pub(crate) trait Registered: Send + Sync {
    /// Its name.
    fn name(&self) -> &ProjectionName;
    /// Its settings.
    fn options(&self) -> &ProjectionOptions;
    /// The kind of store its read model lives in (`sled`, `postgres`).
    fn backend(&self) -> &'static str;
    /// What its read model keeps: generations, checkpoints and dead letters.
    fn stored<'a>(&'a self, store: &'a OpenedStore) -> BoxFuture<'a, CliResult<Stored>>;
    /// Starts it: as a worker among others on a store shared by processes, else as the one
    /// runner of its partitions.
    fn start<'a>(
        &'a self,
        store: &'a OpenedStore,
        worker_id: Option<&'a str>,
    ) -> BoxFuture<'a, CliResult<Box<dyn Running>>>;
    /// Retries or drops `stream`'s parked events, with the projection's partitions held by
    /// this process meanwhile. Returns how many events.
    fn parked<'a>(
        &'a self,
        store: &'a OpenedStore,
        stream: &'a StreamId,
        action: ParkedAction,
    ) -> BoxFuture<'a, CliResult<usize>>;
    /// Rebuilds it into a new generation and swaps readers to it.
    fn rebuild<'a>(
        &'a self,
        store: &'a OpenedStore,
        settings: RebuildSettings,
    ) -> BoxFuture<'a, CliResult<RebuildReport>>;
    /// Moves every partition's checkpoint of the active generation to `to`, with the
    /// projection's partitions held by this process meanwhile.
    fn reset<'a>(&'a self, store: &'a OpenedStore, to: Position) -> BoxFuture<'a, CliResult>;
}

/// The registered projections, in registration order.
#[derive(Clone, Default)]
pub(crate) struct Projections {
    all: Vec<Arc<dyn Registered>>,
}

impl std::fmt::Debug for Projections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.all.iter().map(|p| p.name().as_str()))
            .finish()
    }
}

impl Projections {
    /// Adds the projection `name` into a `M`, built by `make` once the store is open.
    pub(crate) fn insert<M: CliModel, P: Projection<M>>(
        &mut self,
        name: ProjectionName,
        options: ProjectionOptions,
        make: impl Fn(&M::Store) -> Arc<P> + Send + Sync + 'static,
    ) {
        self.all.push(Arc::new(erased::Erased::<M, P>::new(
            name,
            Arc::new(make),
            options,
        )));
    }

    /// Every registered projection, checked: two with one name would share checkpoints.
    pub(crate) fn all(&self) -> CliResult<&[Arc<dyn Registered>]> {
        for (i, p) in self.all.iter().enumerate() {
            if self.all[..i].iter().any(|q| q.name() == p.name()) {
                return Err(Failure::usage(format!(
                    "two registered projections are named `{}`: their checkpoints would collide",
                    p.name()
                )));
            }
        }
        Ok(&self.all)
    }

    /// The projection named `name`.
    ///
    /// # Errors
    ///
    /// Exit 1 with the registered names when there is none.
    pub(crate) fn get(&self, name: &str) -> CliResult<&Arc<dyn Registered>> {
        self.all()?
            .iter()
            .find(|p| p.name().as_str() == name)
            .ok_or_else(|| self.unknown(name))
    }

    /// Every registered projection whose read model lives in `store`'s kind of store (an
    /// application may register projections of both kinds).
    pub(crate) fn on(&self, store: &OpenedStore) -> CliResult<Vec<Arc<dyn Registered>>> {
        Ok(self
            .all()?
            .iter()
            .filter(|p| p.backend() == store.backend.kind())
            .cloned()
            .collect())
    }

    /// Those named, or when `names` is empty all of those on `store`.
    pub(crate) fn select(
        &self,
        store: &OpenedStore,
        names: &[String],
    ) -> CliResult<Vec<Arc<dyn Registered>>> {
        if names.is_empty() {
            return self.on(store);
        }
        names.iter().map(|n| self.get(n).cloned()).collect()
    }

    fn unknown(&self, name: &str) -> Failure {
        if self.all.is_empty() {
            return Failure::not_found(format!(
                "no projection `{name}`: this CLI has no projection registered (build your own \
                 with annals_cli::App::new().projection(…), see the annals-cli docs)"
            ));
        }
        let names: Vec<&str> = self.all.iter().map(|p| p.name().as_str()).collect();
        Failure::not_found(format!(
            "no projection `{name}`; the registered ones are: {}",
            names.join(", ")
        ))
    }
}
