//! A running rebuild, from its start to its swap: progress reports, catching up, swapping.

use std::time::{Duration, Instant};

use annals::{EventStore, Position};
use tokio_util::sync::CancellationToken;

use super::{Progress, RebuildProgress};
use crate::{
    Generations, Projection, ProjectionError, ProjectionName, ReadModel, Result, RunningProjection,
    SwapError,
};

/// How many events of the log come up to `position`, about: the embedded stores number their
/// events in the commit part; PostgreSQL's positions carry the event's sequence number in the
/// prepare part (with the transaction id in the commit part).
pub(super) fn ordinal(position: Position) -> u64 {
    if position.prepare() == 0 {
        position.commit()
    } else {
        position.prepare()
    }
}

/// A running rebuild, from its start to its swap.
pub(super) struct Job<'a, M> {
    pub(super) name: &'a ProjectionName,
    pub(super) generation: u32,
    pub(super) running: &'a RunningProjection<M>,
    pub(super) progress: Option<Progress>,
    pub(super) cancel: &'a CancellationToken,
    pub(super) total: u64,
    pub(super) from: u64,
    pub(super) started: Instant,
}

impl<M: ReadModel + Clone> Job<'_, M> {
    /// Reports progress until the new generation has caught up, then swaps it in, keeping the
    /// old generation (the rebuild drops it after a grace period unless asked to keep it).
    pub(super) async fn follow<S: EventStore, P: Projection<M>>(
        &self,
        store: &S,
        model: &M,
        projection: &P,
        partitions: u32,
    ) -> Result<(Position, Generations)> {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut backend_failures = 0u32;
        let mut indexed = false;
        loop {
            let head = store.last_position().await?;
            // Catch up with the head as it is now, reporting meanwhile.
            if let Some(head) = head {
                let reached = self.running.caught_up_to(head);
                tokio::pin!(reached);
                loop {
                    tokio::select! {
                        done = &mut reached => { done?; break; }
                        _ = tick.tick() => self.report(),
                        () = self.cancel.cancelled() => {
                            return Err(ProjectionError::Cancelled { projection: self.name.clone() });
                        }
                    }
                }
            }
            self.report();
            if !indexed {
                // The bulk load is done: the secondary indexes now, then catch up again.
                model.prepare(projection, self.generation, true).await?;
                indexed = true;
                continue;
            }
            let at = head.unwrap_or(Position::START);
            match model
                .swap(self.name, self.generation, partitions, at, true)
                .await
            {
                Ok(generations) => return Ok((at, generations)),
                Err(SwapError::Behind { active, .. }) => {
                    // The live generation committed past the head read above: catch up to it.
                    if let Some(active) = active {
                        tokio::select! {
                            done = self.running.caught_up_to(active) => done?,
                            () = self.cancel.cancelled() => {
                                return Err(ProjectionError::Cancelled { projection: self.name.clone() });
                            }
                        }
                    }
                    // Its checkpoint is committed after an idle moment.
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(SwapError::NotBuilding { generations }) => {
                    return Err(ProjectionError::Retired {
                        projection: self.name.clone(),
                        generation: self.generation,
                        active: generations.active,
                    });
                }
                Err(SwapError::Backend(error)) => {
                    backend_failures += 1;
                    if backend_failures > 10 {
                        return Err(error.into());
                    }
                    tracing::warn!(projection = %self.name, %error, "swapping failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100) * backend_failures).await;
                }
            }
        }
    }

    fn report(&self) {
        let Some(progress) = &self.progress else {
            return;
        };
        let status = self.running.status();
        let done = match (status.head, status.lag_events) {
            (Some(head), Some(lag)) => head.commit().saturating_sub(lag),
            _ => status.checkpoint.map_or(self.from, ordinal),
        };
        let elapsed = self.started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let per_second = if elapsed > 0.0 {
            done.saturating_sub(self.from) as f64 / elapsed
        } else {
            0.0
        };
        #[allow(clippy::cast_precision_loss)]
        let eta = (per_second > 0.0)
            .then(|| Duration::from_secs_f64(self.total.saturating_sub(done) as f64 / per_second));
        progress(&RebuildProgress {
            projection: self.name.clone(),
            generation: self.generation,
            done,
            total: self.total,
            per_second,
            eta,
        });
    }
}
