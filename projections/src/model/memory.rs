use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use annals::Position;
use dashmap::DashMap;
use futures::FutureExt;

use super::{
    check_caught_up, check_generation, effects_due, Batch, CommitError, DeadLetter, EffectLocks,
    Generations, PartitionKey, ReadModel, SwapError,
};
use crate::{Projection, ProjectionError, ProjectionName, Result};

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
            .field("keys", &self.inner.current().len())
            .finish_non_exhaustive()
    }
}

struct Inner<K, V> {
    /// The active generation's data, what readers see.
    current: RwLock<Arc<DashMap<K, V>>>,
    /// Commits, generations and effect marks, changed one at a time.
    state: Mutex<State<K, V>>,
    checkpoints: DashMap<PartitionKey, Position>,
    /// The effect locks of projections with effects.
    effect_locks: EffectLocks,
}

struct State<K, V> {
    /// Each generation's data (generation 1 is there from the start).
    maps: HashMap<u32, Arc<DashMap<K, V>>>,
    /// The generations of the projections that have been rebuilt.
    generations: HashMap<ProjectionName, Generations>,
    /// The last generation number used.
    last: u32,
    /// Dead letters: projection, generation, letter.
    dead_letters: Vec<(ProjectionName, u32, DeadLetter)>,
    /// Effect marks, by projection and partition.
    effects: HashMap<(ProjectionName, u32), Position>,
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
        let first = Arc::new(DashMap::new());
        MemoryModel {
            inner: Arc::new(Inner {
                current: RwLock::new(first.clone()),
                state: Mutex::new(State {
                    maps: HashMap::from([(1, first)]),
                    generations: HashMap::new(),
                    last: 1,
                    dead_letters: Vec::new(),
                    effects: HashMap::new(),
                }),
                checkpoints: DashMap::new(),
                effect_locks: EffectLocks::default(),
            }),
        }
    }
}

impl<K, V> Inner<K, V> {
    fn current(&self) -> Arc<DashMap<K, V>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<K, V>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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

    /// The value of `key` in the active generation, as of the last committed batch.
    pub fn get(&self, key: &K) -> Option<V> {
        self.inner.current().get(key).map(|v| v.value().clone())
    }

    /// The number of keys of the active generation.
    pub fn len(&self) -> usize {
        self.inner.current().len()
    }

    /// Whether the active generation holds nothing.
    pub fn is_empty(&self) -> bool {
        self.inner.current().is_empty()
    }

    /// A copy of every key and value of the active generation (one generation, whole, also
    /// across a swap).
    pub fn to_map(&self) -> HashMap<K, V> {
        self.inner
            .current()
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }
}

/// The writes of one batch into a [`MemoryModel`]: reads see the batch's own writes first.
pub struct MemoryTx<K, V> {
    /// The batch's generation's data.
    data: Arc<DashMap<K, V>>,
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
            None => self.data.get(key).map(|v| v.value().clone()),
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
        let effects = projection.has_effects();
        let _effect_lock = match effects {
            true => Some(self.inner.effect_locks.lock(batch.key).await),
            false => None,
        };
        let data = {
            let state = self.inner.state();
            check_generation(&batch, &state.generations_of(&batch.key.projection))?;
            state.maps.get(&batch.key.generation).cloned()
        };
        let Some(data) = data else {
            return Err(CommitError::Retired {
                active: self
                    .inner
                    .state()
                    .generations_of(&batch.key.projection)
                    .active,
            });
        };
        let mut tx = MemoryTx {
            data,
            writes: HashMap::new(),
        };
        let mark = (batch.key.projection.clone(), batch.key.partition);
        let due = match effects {
            true => effects_due(&batch, self.inner.state().effects.get(&mark).copied()),
            false => Vec::new(),
        };
        if !batch.handle.is_empty() {
            // A panicking handler is a failed handler; its writes were only buffered.
            let handled = async {
                projection.handle(&mut tx, batch.handle).await?;
                if !due.is_empty() {
                    projection.effects(&mut tx, &due).await?;
                }
                Ok::<(), annals::BoxError>(())
            };
            match std::panic::AssertUnwindSafe(handled).catch_unwind().await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(CommitError::Handler(e)),
                Err(panic) => {
                    return Err(CommitError::Handler(crate::panic_message(&*panic).into()))
                }
            }
        }
        let mut state = self.inner.state();
        // Checked again under the lock the swap takes: nothing lands in a retired generation.
        check_generation(&batch, &state.generations_of(&batch.key.projection))?;
        for (key, value) in tx.writes {
            match value {
                Some(value) => {
                    tx.data.insert(key, value);
                }
                None => {
                    tx.data.remove(&key);
                }
            }
        }
        let (name, generation) = (&batch.key.projection, batch.key.generation);
        state.dead_letters.retain(|(n, g, letter)| {
            !(n == name && *g == generation && batch.release.contains(&letter.event.id))
        });
        state.dead_letters.extend(
            batch
                .dead_letters
                .iter()
                .map(|l| (name.clone(), generation, l.clone())),
        );
        if let Some(last) = due.last() {
            let slot = state.effects.entry(mark).or_insert(last.position);
            *slot = (*slot).max(last.position);
        }
        self.inner
            .checkpoints
            .insert(batch.key.clone(), batch.checkpoint);
        Ok(())
    }

    async fn dead_letters(
        &self,
        projection: &ProjectionName,
        generation: u32,
    ) -> Result<Vec<DeadLetter>> {
        Ok(self
            .inner
            .state()
            .dead_letters
            .iter()
            .filter(|(name, g, _)| name == projection && *g == generation)
            .map(|(_, _, l)| l.clone())
            .collect())
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    async fn generations(&self, projection: &ProjectionName) -> Result<Generations> {
        Ok(self.inner.state().generations_of(projection))
    }

    async fn prepare<P: Projection<Self>>(
        &self,
        projection: &P,
        generation: u32,
        indexes: bool,
    ) -> Result<()> {
        let data = self.inner.state().maps.get(&generation).cloned();
        let mut tx = MemoryTx {
            data: data.unwrap_or_default(),
            writes: HashMap::new(),
        };
        projection
            .setup(&mut tx)
            .await
            .map_err(|e| annals::Error::backend("projections", e))?;
        if indexes {
            projection
                .indexes(&mut tx)
                .await
                .map_err(|e| annals::Error::backend("projections", e))?;
        }
        Ok(())
    }

    async fn record_partitions(
        &self,
        projection: &ProjectionName,
        generation: u32,
        partitions: u32,
    ) -> Result<()> {
        let mut state = self.inner.state();
        let mut generations = state.generations_of(projection);
        generations.record_partitions(generation, partitions);
        state.generations.insert(projection.clone(), generations);
        Ok(())
    }

    async fn begin_generation(&self, projection: &ProjectionName, resume: bool) -> Result<u32> {
        let mut state = self.inner.state();
        // The map is the model's: generations of one projection only.
        if let Some(other) = self
            .inner
            .checkpoints
            .iter()
            .map(|e| e.key().projection.clone())
            .find(|p| p != projection)
        {
            return Err(ProjectionError::Configuration {
                projection: projection.clone(),
                setting: "rebuild",
                reason: format!(
                    "this MemoryModel also holds projection `{other}`: a MemoryModel rebuilt by \
                     generation holds one projection"
                ),
            });
        }
        let mut generations = state.generations_of(projection);
        if let Some(building) = generations.building {
            if resume {
                return Ok(building);
            }
            state.forget(projection, building, &self.inner.checkpoints);
        }
        state.last += 1;
        let generation = state.last;
        state.maps.insert(generation, Arc::new(DashMap::new()));
        generations.building = Some(generation);
        generations.building_partitions = None;
        state.generations.insert(projection.clone(), generations);
        Ok(generation)
    }

    async fn swap(
        &self,
        projection: &ProjectionName,
        generation: u32,
        partitions: u32,
        at: Position,
        keep_old: bool,
    ) -> Result<Generations, SwapError> {
        // No batch with effects straddles the swap: its effects would be done and its commit
        // refused.
        let _effects = self
            .inner
            .effect_locks
            .lock_all(projection, partitions)
            .await;
        let mut state = self.inner.state();
        let mut generations = state.generations_of(projection);
        if generations.building != Some(generation) {
            return Err(SwapError::NotBuilding { generations });
        }
        let old = generations.active;
        check_caught_up(partitions, |partition| {
            let of = |g| {
                let key = PartitionKey::in_generation(projection.clone(), g, partition);
                self.inner.checkpoints.get(&key).map(|p| *p)
            };
            Ok((of(generation), of(old)))
        })?;
        let Some(data) = state.maps.get(&generation).cloned() else {
            return Err(SwapError::NotBuilding { generations });
        };
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = data;
        generations.swapped(at, keep_old);
        if !keep_old {
            state.forget(projection, old, &self.inner.checkpoints);
        }
        state
            .generations
            .insert(projection.clone(), generations.clone());
        Ok(generations)
    }

    async fn drop_generation(&self, projection: &ProjectionName, generation: u32) -> Result<()> {
        let mut state = self.inner.state();
        let mut generations = state.generations_of(projection);
        generations.check_droppable(projection, generation)?;
        state.forget(projection, generation, &self.inner.checkpoints);
        generations.kept.retain(|g| *g != generation);
        state.generations.insert(projection.clone(), generations);
        Ok(())
    }
}

impl<K, V> State<K, V> {
    fn generations_of(&self, projection: &ProjectionName) -> Generations {
        self.generations
            .get(projection)
            .cloned()
            .unwrap_or_default()
    }

    /// Drops a generation's data, checkpoints and dead letters.
    fn forget(
        &mut self,
        projection: &ProjectionName,
        generation: u32,
        checkpoints: &DashMap<PartitionKey, Position>,
    ) {
        self.maps.remove(&generation);
        checkpoints.retain(|k, _| !(&k.projection == projection && k.generation == generation));
        self.dead_letters
            .retain(|(n, g, _)| !(n == projection && *g == generation));
    }
}
