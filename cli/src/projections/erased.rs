//! [`Registered`] for a projection `P` into a read model `M`: the one place that knows both
//! types.

use std::marker::PhantomData;
use std::sync::Arc;

use annals::{Lease, Leases, StreamId};
use annals_projections::{
    reset_checkpoints, Projection, ProjectionName, ProjectionRunner, ProjectionWorkers, Rebuild,
    RebuildReport,
};
use futures::future::BoxFuture;
use futures::FutureExt;

use super::running::Worker;
use super::{
    CliModel, ParkedAction, ProjectionOptions, RebuildSettings, Registered, Running, Stored,
};
use crate::failure::{CliResult, Failure};
use crate::OpenedStore;

/// Builds the projection once the store is open.
pub(super) type Make<M, P> = Arc<dyn Fn(&<M as CliModel>::Store) -> Arc<P> + Send + Sync>;

/// A projection `P` registered with its read model type `M`.
pub(super) struct Erased<M: CliModel, P> {
    name: ProjectionName,
    make: Make<M, P>,
    options: ProjectionOptions,
    model: PhantomData<fn() -> M>,
}

impl<M: CliModel, P: Projection<M>> Erased<M, P> {
    pub(super) fn new(name: ProjectionName, make: Make<M, P>, options: ProjectionOptions) -> Self {
        Erased {
            name,
            make,
            options,
            model: PhantomData,
        }
    }

    /// The model, its store and the projection built on it.
    async fn open(&self, store: &OpenedStore) -> CliResult<(M::Store, M, Arc<P>)> {
        let (concrete, model) = M::open(store).await?;
        let projection = (self.make)(&concrete);
        if projection.name() != &self.name {
            return Err(Failure::usage(format!(
                "the projection registered as `{}` is named `{}` once built: register it under \
                 its own name",
                self.name,
                projection.name()
            )));
        }
        Ok((concrete, model, projection))
    }

    /// A runner of every partition, with the registered settings.
    fn runner(
        &self,
        store: M::Store,
        model: M,
        projection: Arc<P>,
    ) -> ProjectionRunner<M::Store, M, Arc<P>> {
        ProjectionRunner::new(store, model, projection)
            .partitions(self.options.partitions)
            .batch_size(self.options.batch_size)
            .error_policy(self.options.error_policy)
            .retry(self.options.retry)
    }
}

impl<M: CliModel, P: Projection<M>> Registered for Erased<M, P> {
    fn name(&self) -> &ProjectionName {
        &self.name
    }

    fn options(&self) -> &ProjectionOptions {
        &self.options
    }

    fn backend(&self) -> &'static str {
        M::BACKEND
    }

    fn stored<'a>(&'a self, store: &'a OpenedStore) -> BoxFuture<'a, CliResult<Stored>> {
        async move {
            let (_, model, _) = self.open(store).await?;
            Stored::read(&model, self.name(), self.options.partitions).await
        }
        .boxed()
    }

    fn start<'a>(
        &'a self,
        store: &'a OpenedStore,
        worker_id: Option<&'a str>,
    ) -> BoxFuture<'a, CliResult<Box<dyn Running>>> {
        async move {
            let (concrete, model, projection) = self.open(store).await?;
            if !M::SHARED {
                let running = self.runner(concrete, model, projection).start().await?;
                return Ok(Box::new(running) as Box<dyn Running>);
            }
            let options = self.options.clone();
            let mut workers = ProjectionWorkers::builder(concrete, model, projection)
                .partitions(options.partitions)
                .configure(move |runner| {
                    runner
                        .batch_size(options.batch_size)
                        .error_policy(options.error_policy)
                        .retry(options.retry)
                });
            if let Some(id) = worker_id {
                workers = workers.worker_id(id);
            }
            let running = workers.start().await?;
            Ok(Box::new(Worker {
                running,
                store: store.any.clone(),
            }) as Box<dyn Running>)
        }
        .boxed()
    }

    fn parked<'a>(
        &'a self,
        store: &'a OpenedStore,
        stream: &'a StreamId,
        action: ParkedAction,
    ) -> BoxFuture<'a, CliResult<usize>> {
        async move {
            let (concrete, model, projection) = self.open(store).await?;
            let leases = hold_partitions(&concrete, self.name(), self.options.partitions).await?;
            let running = match self.runner(concrete, model, projection).start().await {
                Ok(running) => running,
                Err(error) => {
                    release(leases).await;
                    return Err(error.into());
                }
            };
            let done = match action {
                ParkedAction::Retry => running.retry_parked(stream).await,
                ParkedAction::Drop => running.drop_parked(stream).await,
            };
            let stopped = running.shutdown().await;
            release(leases).await;
            let done = done?;
            stopped?;
            Ok(done)
        }
        .boxed()
    }

    fn rebuild<'a>(
        &'a self,
        store: &'a OpenedStore,
        settings: RebuildSettings,
    ) -> BoxFuture<'a, CliResult<RebuildReport>> {
        async move {
            let (concrete, model, projection) = self.open(store).await?;
            let options = self.options.clone();
            let progress = settings.progress;
            let report = Rebuild::new(concrete, model, projection)
                .partitions(options.partitions)
                .keep_old(settings.keep_old)
                .resume(settings.resume)
                .on_progress(move |p| progress(p))
                .cancel_on(settings.cancel)
                .configure(move |runner| {
                    runner
                        .error_policy(options.error_policy)
                        .retry(options.retry)
                })
                .run()
                .await?;
            Ok(report)
        }
        .boxed()
    }

    fn reset<'a>(
        &'a self,
        store: &'a OpenedStore,
        to: annals::Position,
    ) -> BoxFuture<'a, CliResult> {
        async move {
            let (concrete, model, projection) = self.open(store).await?;
            let partitions = self.options.partitions;
            let leases = hold_partitions(&concrete, self.name(), partitions).await?;
            let reset = reset_checkpoints(&model, &projection, partitions, to).await;
            release(leases).await;
            Ok(reset?)
        }
        .boxed()
    }
}

/// Takes the lease of every partition of `name`, as the workers name them, so no worker runs
/// the projection while this process changes its partitions.
///
/// # Errors
///
/// A usage failure naming the holder when a worker holds a partition.
pub(super) async fn hold_partitions<S: Leases>(
    store: &S,
    name: &ProjectionName,
    partitions: u32,
) -> CliResult<Vec<Lease>> {
    let mut held = Vec::new();
    for partition in 0..partitions {
        let lease_name = format!("{name}/partitions/{partition}");
        match store.try_lease(&lease_name).await? {
            Some(lease) => held.push(lease),
            None => {
                let holder = store
                    .leases(&lease_name)
                    .await?
                    .into_iter()
                    .find(|l| l.name == lease_name)
                    .map_or_else(|| "another worker".to_owned(), |l| l.holder);
                release(held).await;
                return Err(Failure::usage(format!(
                    "partition {partition} of projection `{name}` is owned by {holder}: stop its \
                     workers (`projections status {name}` shows them) and run this again"
                )));
            }
        }
    }
    Ok(held)
}

/// Gives the leases up (a lease that cannot be released expires).
pub(super) async fn release(leases: Vec<Lease>) {
    for lease in leases {
        let _ = lease.release().await;
    }
}
