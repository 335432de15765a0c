//! Moving a projection's checkpoints by hand.

use annals::Position;

use crate::{PartitionKey, Projection, ProjectionError, ReadModel, Result};

/// Moves every partition checkpoint of `projection`'s active generation to `to` — an explicit,
/// logged operator's act: moving back applies the events after `to` again (to a read model that
/// already holds them: only for handlers that tolerate it), moving forward skips the events up
/// to `to`. Stop the projection's runners first; a runner that is running keeps its own
/// position in memory.
///
/// # Errors
///
/// The read model's failure.
pub async fn reset_checkpoints<M: ReadModel, P: Projection<M>>(
    model: &M,
    projection: &P,
    partitions: u32,
    to: Position,
) -> Result<()> {
    let name = projection.name();
    let generation = model.generations(name).await?.active;
    for partition in 0..partitions {
        let key = PartitionKey::in_generation(name.clone(), generation, partition);
        let before = model.checkpoint(&key).await?;
        let batch = crate::Batch {
            key: &key,
            handle: &[],
            dead_letters: &[],
            release: &[],
            checkpoint: to,
            fence: None,
            rebuilding: false,
        };
        match model.commit(projection, batch).await {
            Ok(()) => {}
            Err(crate::CommitError::Backend(e)) => return Err(e.into()),
            Err(crate::CommitError::Retired { active }) => {
                return Err(ProjectionError::Retired {
                    projection: name.clone(),
                    generation,
                    active,
                })
            }
            Err(crate::CommitError::Fenced | crate::CommitError::Handler(_)) => {
                return Err(annals::Error::backend("projections", "a reset was refused").into())
            }
        }
        tracing::warn!(projection = %name, generation, partition, before = ?before, to = %to, "projection checkpoint reset");
    }
    Ok(())
}
