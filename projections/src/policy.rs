//! What the runtime does when a handler keeps failing on an event.

use std::time::Duration;

/// What to do with an event whose handler still fails after its retries.
///
/// Whatever the policy, nothing is ever silent: each outcome is a `tracing` event, counted in
/// the [status](crate::ProjectionStatus), and skipped and parked events are kept on the read
/// model's dead-letter list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ErrorPolicy {
    /// Stop the projection with an error naming the projection, the event (stream, version,
    /// position, id, type) and the handler's error. The default: a read model never silently
    /// diverges from the log.
    #[default]
    Stop,
    /// Move the checkpoint past the event, record it on the dead-letter list as skipped, count
    /// it, and go on.
    Skip,
    /// Put the event, and every later event of its stream, on the dead-letter list; other
    /// streams go on. Parked events are retried (in order) or dropped through
    /// [`RunningProjection::retry_parked`](crate::RunningProjection::retry_parked) and
    /// [`drop_parked`](crate::RunningProjection::drop_parked).
    Park,
}

/// How often and how patiently a failing batch is retried before its policy applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Retries of a failing handler before the policy applies (the read model's own failures
    /// are retried without limit: they never make the runtime skip anything).
    pub attempts: u32,
    /// The first wait; each next one doubles.
    pub first_backoff: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
}

impl Default for Retry {
    /// Three retries, waiting 100 ms, 200 ms, 400 ms (and at most 5 s between attempts on the
    /// read model's failures).
    fn default() -> Self {
        Retry {
            attempts: 3,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl Retry {
    /// The wait before retry number `attempt` (1 for the first).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.first_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}
