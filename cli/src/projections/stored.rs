//! What a read model keeps for a projection, read without running it, and how far behind the
//! log its checkpoints are.

use annals::{AnyStore, EventStore, Position, ReadAll};
use annals_projections::{DeadLetter, PartitionKey, ProjectionName, ReadModel};
use futures::TryStreamExt;

use crate::failure::CliResult;

/// What a read model keeps for one projection.
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    /// The generation readers see.
    pub(crate) active: u32,
    /// The generation a rebuild is building (or left unfinished), if any.
    pub(crate) building: Option<u32>,
    /// The active generation's checkpoint of each partition, by partition.
    pub(crate) checkpoints: Vec<Option<Position>>,
    /// Its dead letters: parked and skipped events, in the order set aside.
    pub(crate) dead: Vec<DeadLetter>,
}

impl Stored {
    /// Reads what `model` keeps for the projection `name` of `partitions` partitions.
    pub(crate) async fn read<M: ReadModel>(
        model: &M,
        name: &ProjectionName,
        partitions: u32,
    ) -> CliResult<Stored> {
        let generations = model.generations(name).await?;
        let active = generations.active;
        let mut checkpoints = Vec::new();
        for partition in 0..partitions {
            let key = PartitionKey::in_generation(name.clone(), active, partition);
            checkpoints.push(model.checkpoint(&key).await?);
        }
        Ok(Stored {
            active,
            building: generations.building,
            checkpoints,
            dead: model.dead_letters(name, active).await?,
        })
    }

    /// The lowest checkpoint of its partitions (`None` while one has none).
    pub(crate) fn lowest(&self) -> Option<Position> {
        self.checkpoints.iter().copied().min().flatten()
    }

    /// Its dead letters in `partition` (all when `None`), parked and skipped.
    pub(crate) fn counts(&self, partition: Option<u32>) -> (u64, u64) {
        let mut counts = (0, 0);
        for letter in &self.dead {
            if partition.is_none_or(|p| p == letter.partition) {
                match letter.kind {
                    annals_projections::DeadLetterKind::Parked => counts.0 += 1,
                    annals_projections::DeadLetterKind::Skipped => counts.1 += 1,
                }
            }
        }
        counts
    }
}

/// How many events of the log come after a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lag {
    /// The events counted.
    pub(crate) events: u64,
    /// Whether that is all of them (the count stops at [`COUNT_AT_MOST`]).
    pub(crate) exact: bool,
}

impl std::fmt::Display for Lag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.exact {
            write!(f, "{}", self.events)
        } else {
            write!(f, "{}+", self.events)
        }
    }
}

/// Where positions are not a sequence (PostgreSQL), events are counted: at most this many.
const COUNT_AT_MOST: usize = 100_000;

/// The lag of each checkpoint behind `head`: the difference where the store numbers its events
/// in one sequence (sled), else the events counted from the lowest checkpoint (up to
/// [`COUNT_AT_MOST`]).
pub(crate) async fn lags(
    store: &AnyStore,
    head: Option<Position>,
    checkpoints: &[Option<Position>],
) -> CliResult<Vec<Lag>> {
    let Some(head) = head else {
        return Ok(checkpoints
            .iter()
            .map(|_| Lag {
                events: 0,
                exact: true,
            })
            .collect());
    };
    let sequence = |p: Option<Position>| p.is_none_or(|p| p.prepare() == 0);
    if sequence(Some(head)) && checkpoints.iter().all(|c| sequence(*c)) {
        return Ok(checkpoints
            .iter()
            .map(|c| Lag {
                events: head.commit().saturating_sub(c.map_or(0, Position::commit)),
                exact: true,
            })
            .collect());
    }
    let lowest = checkpoints.iter().copied().min().flatten();
    let from = lowest.map_or(Position::START, Position::next);
    let positions: Vec<Position> = store
        .read_all(ReadAll::from(from).limit(COUNT_AT_MOST))
        .map_ok(|e| e.position)
        .try_collect()
        .await?;
    let exact = positions.len() < COUNT_AT_MOST;
    Ok(checkpoints
        .iter()
        .map(|c| {
            let after = c.map_or(0, |c| positions.partition_point(|p| *p <= c));
            Lag {
                events: u64::try_from(positions.len() - after).unwrap_or(u64::MAX),
                exact,
            }
        })
        .collect())
}
