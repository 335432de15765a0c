use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use annals::Position;
use dashmap::DashMap;
use futures::FutureExt;

use super::{Batch, CommitError, DeadLetter, PartitionKey, ReadModel};
use crate::{Projection, ProjectionName, Result};

/// A read model in memory, on [`DashMap`]: for tests, small applications and caches rebuilt at
/// start. Clones share the same data. Everything is lost with the process, checkpoints too, so
/// a projection into a fresh `MemoryModel` starts from the beginning of the log.
///
/// Handlers write through a [`MemoryTx`]; readers use [`get`](Self::get) and friends. Commits
/// are applied one at a time, each with its checkpoint; a reader looking at several keys while
/// a batch is applied may see some of its writes before the others.
pub struct MemoryModel<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K: Eq + Hash, V> std::fmt::Debug for MemoryModel<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryModel")
            .field("keys", &self.inner.data.len())
            .finish_non_exhaustive()
    }
}

struct Inner<K, V> {
    data: DashMap<K, V>,
    checkpoints: DashMap<PartitionKey, Position>,
    dead_letters: Mutex<Vec<(ProjectionName, DeadLetter)>>,
    /// One commit at a time, so a batch's writes land together.
    commit: Mutex<()>,
}

impl<K, V> Clone for MemoryModel<K, V> {
    fn clone(&self) -> Self {
        MemoryModel {
            inner: self.inner.clone(),
        }
    }
}

impl<K: Eq + Hash, V> Default for MemoryModel<K, V> {
    fn default() -> Self {
        MemoryModel {
            inner: Arc::new(Inner {
                data: DashMap::new(),
                checkpoints: DashMap::new(),
                dead_letters: Mutex::new(Vec::new()),
                commit: Mutex::new(()),
            }),
        }
    }
}

impl<K, V> MemoryModel<K, V>
where
    K: Eq + Hash + Clone,
    V: Clone,
{
    /// An empty model.
    pub fn new() -> Self {
        MemoryModel::default()
    }

    /// The value of `key`, as of the last committed batch.
    pub fn get(&self, key: &K) -> Option<V> {
        self.inner.data.get(key).map(|v| v.value().clone())
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.inner.data.len()
    }

    /// Whether the model holds nothing.
    pub fn is_empty(&self) -> bool {
        self.inner.data.is_empty()
    }

    /// A copy of every key and value.
    pub fn to_map(&self) -> HashMap<K, V> {
        self.inner
            .data
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }
}

/// The writes of one batch into a [`MemoryModel`]: reads see the batch's own writes first.
pub struct MemoryTx<K, V> {
    inner: Arc<Inner<K, V>>,
    writes: HashMap<K, Option<V>>,
}

impl<K, V> std::fmt::Debug for MemoryTx<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTx")
            .field("writes", &self.writes.len())
            .finish_non_exhaustive()
    }
}

impl<K, V> MemoryTx<K, V>
where
    K: Eq + Hash + Clone,
    V: Clone,
{
    /// The value of `key`, with this batch's writes applied.
    pub fn get(&self, key: &K) -> Option<V> {
        match self.writes.get(key) {
            Some(written) => written.clone(),
            None => self.inner.data.get(key).map(|v| v.value().clone()),
        }
    }

    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: K, value: V) {
        self.writes.insert(key, Some(value));
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &K) {
        self.writes.insert(key.clone(), None);
    }
}

impl<K, V> ReadModel for MemoryModel<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    type Tx = MemoryTx<K, V>;

    async fn checkpoint(&self, key: &PartitionKey) -> Result<Option<Position>> {
        Ok(self.inner.checkpoints.get(key).map(|p| *p))
    }

    async fn commit<P: Projection<Self>>(
        &self,
        projection: &P,
        batch: Batch<'_>,
    ) -> Result<(), CommitError> {
        let mut tx = MemoryTx {
            inner: self.inner.clone(),
            writes: HashMap::new(),
        };
        if !batch.handle.is_empty() {
            // A panicking handler is a failed handler; its writes were only buffered.
            let handled = std::panic::AssertUnwindSafe(projection.handle(&mut tx, batch.handle))
                .catch_unwind()
                .await;
            match handled {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(CommitError::Handler(e)),
                Err(panic) => {
                    return Err(CommitError::Handler(crate::panic_message(&*panic).into()))
                }
            }
        }
        let _one_at_a_time = self
            .inner
            .commit
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (key, value) in tx.writes {
            match value {
                Some(value) => {
                    self.inner.data.insert(key, value);
                }
                None => {
                    self.inner.data.remove(&key);
                }
            }
        }
        {
            let mut letters = self
                .inner
                .dead_letters
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            letters.retain(|(name, letter)| {
                !(name == &batch.key.projection && batch.release.contains(&letter.event.id))
            });
            letters.extend(
                batch
                    .dead_letters
                    .iter()
                    .map(|l| (batch.key.projection.clone(), l.clone())),
            );
        }
        self.inner
            .checkpoints
            .insert(batch.key.clone(), batch.checkpoint);
        Ok(())
    }

    async fn dead_letters(&self, projection: &ProjectionName) -> Result<Vec<DeadLetter>> {
        Ok(self
            .inner
            .dead_letters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(name, _)| name == projection)
            .map(|(_, l)| l.clone())
            .collect())
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}
