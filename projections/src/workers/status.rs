//! The status of a projection across its workers.

use std::collections::BTreeMap;
use std::time::Duration;

use annals::Position;

use super::{partitions_prefix, workers_prefix, RunningWorkers};
use crate::{PartitionKey, PartitionStatus, ProjectionName, ReadModel, Result};

/// A projection across its workers, as one worker sees it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkersStatus {
    /// The projection.
    pub projection: ProjectionName,
    /// The worker that answered.
    pub worker: String,
    /// The live workers, with how long ago each renewed its membership.
    pub workers: Vec<(String, Duration)>,
    /// Every partition: who owns it and how far it is.
    pub partitions: Vec<OwnedPartition>,
}

/// One partition of a projection run by workers.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OwnedPartition {
    /// The partition.
    pub partition: u32,
    /// Who owns it (`None`: nobody now: its owner died or released it and no worker took it
    /// yet).
    pub owner: Option<String>,
    /// The epoch of its lease (grows with every change of owner).
    pub epoch: Option<u64>,
    /// How long ago its owner last renewed the lease.
    pub heartbeat_age: Option<Duration>,
    /// Its committed checkpoint.
    pub checkpoint: Option<Position>,
    /// Its runner's status when this worker owns it (state, lag, pending, parked…).
    pub local: Option<PartitionStatus>,
    /// How long this worker has seen it without an owner (`None` while owned).
    pub unowned_for: Option<Duration>,
}

impl WorkersStatus {
    /// The partitions nobody owns now.
    pub fn unowned(&self) -> Vec<u32> {
        self.partitions
            .iter()
            .filter(|p| p.owner.is_none())
            .map(|p| p.partition)
            .collect()
    }
}

impl<M: ReadModel> RunningWorkers<M> {
    /// The projection across its workers: the live workers, each partition's owner, epoch,
    /// heartbeat age and checkpoint (from the store's leases and the read model), and this
    /// worker's own partitions' runner status.
    ///
    /// # Errors
    ///
    /// The store's or the read model's failure.
    pub async fn status(&self) -> Result<WorkersStatus> {
        let workers = self
            .leases
            .list(&workers_prefix(&self.name))
            .await?
            .into_iter()
            .filter_map(|l| {
                l.name
                    .rsplit('/')
                    .next()
                    .map(|id| (id.to_owned(), l.renewed))
            })
            .collect();
        let leases = self.leases.list(&partitions_prefix(&self.name)).await?;
        let local: Vec<PartitionStatus> = {
            let owned = self.shared.lock();
            owned
                .values()
                .flat_map(|o| o.running.status().partitions)
                .collect()
        };
        let unowned: BTreeMap<u32, Duration> = self
            .shared
            .unowned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(p, (since, _))| (*p, since.elapsed()))
            .collect();
        let mut partitions = Vec::new();
        let generation = self.model.generations(&self.name).await?.active;
        for partition in 0..self.partitions {
            let lease = leases.iter().find(|l| {
                l.name
                    .rsplit('/')
                    .next()
                    .and_then(|n| n.parse::<u32>().ok())
                    == Some(partition)
            });
            let checkpoint = self
                .model
                .checkpoint(&PartitionKey::in_generation(
                    self.name.clone(),
                    generation,
                    partition,
                ))
                .await?;
            partitions.push(OwnedPartition {
                partition,
                owner: lease.map(|l| l.holder.clone()),
                epoch: lease.map(|l| l.epoch),
                heartbeat_age: lease.map(|l| l.renewed),
                checkpoint,
                local: local.iter().find(|s| s.partition == partition).cloned(),
                unowned_for: lease
                    .is_none()
                    .then(|| unowned.get(&partition).copied())
                    .flatten(),
            });
        }
        Ok(WorkersStatus {
            projection: self.name.clone(),
            worker: self.id.clone(),
            workers,
            partitions,
        })
    }
}
