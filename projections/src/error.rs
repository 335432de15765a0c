use annals::{BoxError, EventId, Position, RecordPlace};

use crate::ProjectionName;

/// Everything that can go wrong in the projection runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// A projection name broke the rules of [`ProjectionName`].
    #[error("invalid projection name {name:?}: {reason}")]
    InvalidName {
        /// The name (cut to 300 characters).
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A setting of the runner is wrong.
    #[error("invalid setting `{setting}` of projection `{projection}`: {reason}")]
    Configuration {
        /// The projection.
        projection: ProjectionName,
        /// The setting.
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },

    /// Two projections of one runner share a name (their checkpoints would collide).
    #[error("two projections are named `{0}`")]
    DuplicateName(ProjectionName),

    /// A handler failed on an event (after its retries) and the projection's policy is to
    /// stop; nothing of the failing batch was committed.
    #[error(transparent)]
    Handler(Box<HandlerFailure>),

    /// The read model's stored state was written by a newer build of this crate.
    #[error("projection `{projection}`: {what} was written by a newer annals-projections (format {found}; this build reads up to {supported})")]
    NewerFormat {
        /// The projection.
        projection: ProjectionName,
        /// What was found (a checkpoint, a parked event).
        what: &'static str,
        /// Its format version.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },

    /// No parked event of that stream (or with that id) exists.
    #[error("projection `{projection}` has no parked event {what}")]
    NotParked {
        /// The projection.
        projection: ProjectionName,
        /// What was looked for.
        what: String,
    },

    /// A partition's checkpoint is beyond the end of the log: the read model outlived events it
    /// was built from (restored from a newer backup than the events, or a power loss that lost
    /// buffered events). Nothing is applied; rebuild the projection.
    #[error("projection `{projection}` partition {partition}: its checkpoint {checkpoint} is beyond the end of the log ({head}): the read model is ahead of the events; rebuild it")]
    AheadOfLog {
        /// The projection.
        projection: ProjectionName,
        /// The partition.
        partition: u32,
        /// Its checkpoint.
        checkpoint: Position,
        /// The log's last position (`none` for an empty log).
        head: String,
    },

    /// Another worker took the partition over: this owner's lease is in an older epoch, so it
    /// committed nothing and stopped the partition.
    #[error("projection `{projection}` partition {partition}: another worker owns it now (lease epoch {epoch} is no longer current); nothing of the batch was written")]
    LostOwnership {
        /// The projection.
        projection: ProjectionName,
        /// The partition.
        partition: u32,
        /// The epoch this owner held.
        epoch: u64,
    },

    /// A generation of the projection's read model was swapped out (or its rebuild
    /// cancelled) while this runner wrote it: nothing of the batch was written.
    #[error("projection `{projection}`: generation {generation} is no longer current (generation {active} is active): nothing of the batch was written")]
    Retired {
        /// The projection.
        projection: ProjectionName,
        /// The generation this runner wrote.
        generation: u32,
        /// The active generation now.
        active: u32,
    },

    /// Another rebuild of the projection is running (it holds the store lease
    /// `annals-rebuild/<projection>`).
    #[error("projection `{projection}` is being rebuilt by another job (it holds the lease annals-rebuild/{projection})")]
    RebuildRunning {
        /// The projection.
        projection: ProjectionName,
    },

    /// The rebuild was cancelled: the generation it built keeps what it committed (resume it),
    /// the active one is untouched.
    #[error("the rebuild of projection `{projection}` was cancelled; run it again with resume to continue")]
    Cancelled {
        /// The projection.
        projection: ProjectionName,
    },

    /// The projection stopped with this error earlier (as reported to every waiter).
    #[error("{0}")]
    Stopped(#[source] std::sync::Arc<ProjectionError>),

    /// The store (or the read model's backend) failed.
    #[error(transparent)]
    Store(#[from] annals::Error),
}

/// `Result` with [`ProjectionError`].
pub type Result<T, E = ProjectionError> = std::result::Result<T, E>;

/// Which event a handler failed on, and how: the facts of [`ProjectionError::Handler`].
#[derive(Debug, thiserror::Error)]
#[error("projection `{projection}` stopped at {place} (event {event_id}, type `{event_type}`): {source}")]
#[non_exhaustive]
pub struct HandlerFailure {
    /// The projection.
    pub projection: ProjectionName,
    /// The failing event's stream, version and position.
    pub place: RecordPlace,
    /// The failing event's id.
    pub event_id: EventId,
    /// The failing event's type.
    pub event_type: String,
    /// The handler's error (a panic is reported as one, with its message).
    #[source]
    pub source: BoxError,
}

impl ProjectionError {
    /// The error of `projection`'s handler on `event`.
    pub(crate) fn handler(
        projection: &ProjectionName,
        event: &annals::RecordedEvent,
        source: BoxError,
    ) -> Self {
        ProjectionError::Handler(Box::new(HandlerFailure {
            projection: projection.clone(),
            place: RecordPlace::of(event),
            event_id: event.id,
            event_type: event.event_type.clone(),
            source,
        }))
    }

    /// The handler failure behind this error, if it is one (also through
    /// [`Stopped`](Self::Stopped)).
    pub fn handler_failure(&self) -> Option<&HandlerFailure> {
        match self {
            ProjectionError::Handler(failure) => Some(failure),
            ProjectionError::Stopped(inner) => inner.handler_failure(),
            _ => None,
        }
    }
}
