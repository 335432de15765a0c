//! Appending events read elsewhere (an export file, another store) with their ids, versions and
//! order kept. Shared by `import` and `migrate`.

use std::collections::HashMap;

use annals::{AnyStore, Error, EventData, EventStore, ExpectedVersion, StreamId, Version};

use crate::failure::{CliResult, Failure};

/// Collects consecutive events of one stream into batches and appends each with the version
/// its first event had at the source, so versions are kept exactly. Re-appending events that
/// are already there is a no-op (appends are idempotent by event id).
pub(crate) struct Copier {
    target: AnyStore,
    max_batch: usize,
    stream: Option<StreamId>,
    first_version: Version,
    batch: Vec<EventData>,
    /// Each stream's version in the target as this copier knows it: read once per stream,
    /// then moved along by its own appends (it is the target's only writer for them).
    heads: HashMap<StreamId, Version>,
    /// Events appended now (not already present).
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
        let max_batch = target.limits().max_batch_events().clamp(1, 500);
        Copier {
            target,
            max_batch,
            stream: None,
            first_version: Version::EMPTY,
            batch: Vec::new(),
            heads: HashMap::new(),
            written: 0,
            present: 0,
        }
    }

    /// Adds the event `data` at `version` of `stream`.
    pub(crate) async fn push(
        &mut self,
        stream: StreamId,
        version: Version,
        data: EventData,
    ) -> CliResult {
        let continues = self.stream.as_ref() == Some(&stream)
            && self.first_version.get() + self.batch.len() as u64 == version.get()
            && self.batch.len() < self.max_batch;
        if !continues {
            self.flush().await?;
            self.stream = Some(stream);
            self.first_version = version;
        }
        self.batch.push(data);
        Ok(())
    }

    /// Appends what is batched.
    pub(crate) async fn flush(&mut self) -> CliResult {
        let Some(stream) = self.stream.clone() else {
            return Ok(());
        };
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let expected = ExpectedVersion::Exact(Version::new(self.first_version.get() - 1));
        match self.append(&stream, expected, batch.clone()).await {
            Err(Error::IdempotencyConflict { .. }) => {
                // Part of this batch was copied by an earlier run in other batches: go one by one.
                for (i, event) in batch.into_iter().enumerate() {
                    let expected = ExpectedVersion::Exact(Version::new(
                        self.first_version.get() - 1 + i as u64,
                    ));
                    self.append(&stream, expected, vec![event])
                        .await
                        .map_err(|e| self.failure(&stream, e))?;
                }
                Ok(())
            }
            other => other.map(|_| ()).map_err(|e| self.failure(&stream, e)),
        }
    }

    async fn append(
        &mut self,
        stream: &StreamId,
        expected: ExpectedVersion,
        batch: Vec<EventData>,
    ) -> Result<(), Error> {
        let count = batch.len() as u64;
        let head = match self.heads.get(stream) {
            Some(head) => *head,
            None => self.target.stream_version(stream).await?,
        };
        let result = self.target.append(stream, expected, batch).await?;
        // The store answers a retry with the first append's result: tell the two apart.
        if result.last_version <= head {
            self.present += count;
        } else {
            self.written += count;
        }
        self.heads
            .insert(stream.clone(), head.max(result.last_version));
        Ok(())
    }

    fn failure(&self, stream: &StreamId, error: Error) -> Failure {
        match error {
            Error::VersionConflict { actual, expected, .. } => Failure::problems(format!(
                "stream `{stream}` in the target is at version {actual}, but these events need {expected}: \
                 the target holds other events for it (or the source starts mid-stream)"
            )),
            other => Failure::from(other).context(format!("appending to `{stream}`")),
        }
    }
}
