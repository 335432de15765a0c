//! Copying events read elsewhere (an export file, another store) with their ids, versions,
//! recording times and order kept, in bulk. Shared by `import` and `migrate`.

use annals::{AnyStore, Error, EventStore, Position, RestoredEvent};

use crate::failure::{CliResult, Failure};

/// The most events one restore batch carries (within the store's limits): large enough that
/// a commit's fixed cost disappears, small enough that a batch stays a few megabytes.
const MAX_BATCH: usize = 10_000;

/// Collects events into batches and writes each with [`EventStore::restore`]: one commit per
/// batch, every event keeping its version and recording time. Events the target already holds
/// (a re-run) are counted, not written again.
pub(crate) struct Copier {
    target: AnyStore,
    max_events: usize,
    max_bytes: usize,
    batch: Vec<RestoredEvent>,
    bytes: usize,
    /// Events written now.
    pub(crate) written: u64,
    /// Events found already present (a re-run).
    pub(crate) present: u64,
}

impl std::fmt::Debug for Copier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Copier")
            .field("written", &self.written)
            .field("present", &self.present)
            .finish_non_exhaustive()
    }
}

impl Copier {
    pub(crate) fn new(target: AnyStore) -> Self {
        let limits = target.limits();
        Copier {
            max_events: limits.max_batch_events().clamp(1, MAX_BATCH),
            max_bytes: limits.max_batch_bytes().max(1),
            target,
            batch: Vec::new(),
            bytes: 0,
            written: 0,
            present: 0,
        }
    }

    /// Adds `event`; writes the batch when it is full. Returns whether a batch was written.
    pub(crate) async fn push(&mut self, event: RestoredEvent) -> CliResult<bool> {
        let size = event.event.payload.len();
        let full = self.batch.len() >= self.max_events || self.bytes + size > self.max_bytes;
        let flushed = if full && !self.batch.is_empty() {
            self.flush().await?;
            true
        } else {
            false
        };
        self.bytes += size;
        self.batch.push(event);
        Ok(flushed)
    }

    /// Writes what is batched, in one commit.
    pub(crate) async fn flush(&mut self) -> CliResult<Option<Position>> {
        if self.batch.is_empty() {
            return Ok(None);
        }
        let batch = std::mem::take(&mut self.batch);
        self.bytes = 0;
        let first = batch.first().map(|e| (e.stream_id.clone(), e.version));
        let result = self
            .target
            .restore(batch)
            .await
            .map_err(|e| failure(first, e))?;
        self.written += result.written;
        self.present += result.present;
        Ok(result.last_position)
    }
}

fn failure(first: Option<(annals::StreamId, annals::Version)>, error: Error) -> Failure {
    let place = first.map_or_else(String::new, |(s, v)| {
        format!(" (the batch starting at stream `{s}` version {v})")
    });
    match error {
        Error::VersionConflict {
            stream,
            expected,
            actual,
        } => Failure::problems(format!(
            "stream `{stream}` in the target is at version {actual}, but the copy needs {expected}: \
             the target holds other events for it (or the source starts mid-stream){place}"
        )),
        other => Failure::from(other).context(format!("writing to the target{place}")),
    }
}
