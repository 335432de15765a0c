//! A partition moving to the generation a swap made active (see `crate::Rebuild`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use annals::{EventId, StreamId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::partition::{Msg, PartitionTask};
use crate::status::Board;
use crate::{DeadLetterKind, PartitionKey, Projection, ProjectionError, ReadModel};

/// How often a live runner asks its read model for the active generation.
const GENERATION_CHECK: Duration = Duration::from_secs(1);

/// Tells the partitions of a live runner about a swap: every second, the read model's active
/// generation; a partition still on an older one is sent [`Msg::Retired`] (a busy partition,
/// whose queue is full, finds out at its next batch anyway).
pub(super) async fn follow_generations<M: ReadModel>(
    model: M,
    board: Arc<Board>,
    ids: Vec<u32>,
    senders: Vec<mpsc::Sender<Msg>>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(GENERATION_CHECK) => {}
        }
        let Ok(generations) = model.generations(&board.name).await else {
            continue;
        };
        let status = board.snapshot();
        for (partition, sender) in ids.iter().zip(&senders) {
            let behind = status
                .partitions
                .iter()
                .any(|p| p.partition == *partition && p.generation < generations.active);
            if behind {
                let _ = sender.try_send(Msg::Retired(generations.active));
            }
        }
    }
}

impl<M: ReadModel, P: Projection<M>> PartitionTask<M, P> {
    /// Moves the partition to generation `active` after a swap: its checkpoint and parked
    /// events there. A rebuild's partition stops instead.
    pub(super) async fn switch(
        &mut self,
        active: u32,
        parked: &mut HashMap<StreamId, EventId>,
    ) -> std::result::Result<(), Option<ProjectionError>> {
        let retired = || ProjectionError::Retired {
            projection: self.key.projection.clone(),
            generation: self.key.generation,
            active,
        };
        if self.settings.rebuilding || active == self.key.generation {
            return Err(Some(retired()));
        }
        let key =
            PartitionKey::in_generation(self.key.projection.clone(), active, self.key.partition);
        let mut failures = 0;
        let (generations, checkpoint, letters) = loop {
            let loaded = async {
                let generations = self.model.generations(&key.projection).await?;
                let checkpoint = self.model.checkpoint(&key).await?;
                let letters = self.model.dead_letters(&key.projection, active).await?;
                Ok::<_, ProjectionError>((generations, checkpoint, letters))
            }
            .await;
            match loaded {
                Ok(loaded) => break loaded,
                Err(error) => {
                    failures += 1;
                    self.board.error(
                        key.partition,
                        format!("moving to generation {active}: {error}"),
                    );
                    tokio::select! {
                        () = self.cancel.cancelled() => return Err(None),
                        () = tokio::time::sleep(self.settings.retry.backoff(failures)) => {}
                    }
                }
            }
        };
        // A generation rebuilt with another partition count cannot be followed by this runner.
        if let Some(count) = generations.partitions_of(active) {
            if count != self.settings.partitions {
                return Err(Some(ProjectionError::Configuration {
                    projection: self.key.projection.clone(),
                    setting: "partitions",
                    reason: format!(
                        "generation {active}, swapped in, was built with {count} partitions; this \
                         runner has {}: restart it with {count}",
                        self.settings.partitions
                    ),
                }));
            }
        }
        // A swap waits until the new generation is at or past the old one everywhere, and
        // the old one commits nothing after it: never behind what this partition committed.
        if checkpoint < self.checkpoint {
            return Err(Some(retired()));
        }
        parked.clear();
        let mut count = 0;
        for letter in letters.iter().filter(|l| l.partition == key.partition) {
            if letter.kind == DeadLetterKind::Parked {
                parked
                    .entry(letter.event.stream_id.clone())
                    .or_insert(letter.event.id);
                count += 1;
            }
        }
        tracing::info!(
            projection = %key.projection,
            partition = key.partition,
            from = self.key.generation,
            to = active,
            checkpoint = ?checkpoint,
            "projection partition moved to the swapped-in generation"
        );
        self.board.moved(key.partition, active, checkpoint, count);
        self.key = key;
        self.checkpoint = checkpoint;
        self.progress.send_modify(|n| *n += 1);
        Ok(())
    }
}
