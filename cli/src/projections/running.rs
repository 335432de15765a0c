//! The projections running in this process, as `projections run` sees them: a runner (sled)
//! or a worker among others (PostgreSQL).

use annals::EventStore;
use annals_projections::{PartitionStatus, RunningProjection, RunningWorkers, State};
use futures::future::BoxFuture;
use futures::FutureExt;

use super::{lags, CliModel, Lag, RunStatus, Running};
use crate::failure::CliResult;

/// A state as the CLI prints it.
fn state_text(state: &State) -> String {
    match state {
        State::CatchingUp => "catching up".to_owned(),
        State::Live => "live".to_owned(),
        State::Stalled => "stalled".to_owned(),
        State::Stopped(_) => "stopped".to_owned(),
        State::ShutDown => "shut down".to_owned(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The worst of some partitions' states (stopped, stalled, catching up, live, shut down).
fn worst<'a>(partitions: impl Iterator<Item = &'a PartitionStatus>) -> Option<&'a State> {
    let rank = |s: &State| match s {
        State::Stopped(_) => 5,
        State::Stalled => 4,
        State::CatchingUp => 3,
        State::Live => 2,
        _ => 1,
    };
    partitions.map(|p| &p.state).max_by_key(|s| rank(s))
}

fn stopped_errors<'a>(partitions: impl Iterator<Item = &'a PartitionStatus>) -> Vec<String> {
    partitions
        .filter_map(|p| match &p.state {
            State::Stopped(error) => Some(format!("partition {}: {error}", p.partition)),
            _ => None,
        })
        .collect()
}

impl<M: CliModel> Running for RunningProjection<M> {
    fn status(&self) -> BoxFuture<'_, CliResult<RunStatus>> {
        let status = RunningProjection::status(self);
        async move {
            Ok(RunStatus {
                state: state_text(&status.state),
                checkpoint: status.checkpoint,
                lag: status.lag_events.map(|events| Lag {
                    events,
                    exact: true,
                }),
                parked: status.parked,
                skipped: status.skipped,
                owned: None,
                errors: stopped_errors(status.partitions.iter()),
            })
        }
        .boxed()
    }

    fn shutdown(self: Box<Self>) -> BoxFuture<'static, CliResult> {
        async move { Ok(RunningProjection::shutdown(*self).await?) }.boxed()
    }
}

/// One worker of a projection whose partitions processes share.
pub(super) struct Worker<M> {
    pub(super) running: RunningWorkers<M>,
    /// For the lag of the checkpoints.
    pub(super) store: annals::AnyStore,
}

impl<M: CliModel> Running for Worker<M> {
    fn status(&self) -> BoxFuture<'_, CliResult<RunStatus>> {
        async move {
            let status = self.running.status().await?;
            let local: Vec<PartitionStatus> = status
                .partitions
                .iter()
                .filter_map(|p| p.local.clone())
                .collect();
            let checkpoints: Vec<_> = status.partitions.iter().map(|p| p.checkpoint).collect();
            let head = self.store.last_position().await?;
            let lag = lags(&self.store, head, &checkpoints)
                .await?
                .into_iter()
                .max_by_key(|l| l.events);
            let mut errors = stopped_errors(local.iter());
            errors.extend(
                self.running
                    .failures()
                    .into_iter()
                    .map(|(partition, error)| format!("partition {partition}: {error}")),
            );
            Ok(RunStatus {
                state: worst(local.iter()).map_or_else(|| "standby".to_owned(), state_text),
                checkpoint: checkpoints.iter().copied().min().flatten(),
                lag,
                parked: local.iter().map(|p| p.parked).sum(),
                skipped: local.iter().map(|p| p.skipped).sum(),
                owned: Some(self.running.owned()),
                errors,
            })
        }
        .boxed()
    }

    fn shutdown(self: Box<Self>) -> BoxFuture<'static, CliResult> {
        async move {
            self.running.shutdown().await;
            Ok(())
        }
        .boxed()
    }
}
