use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::{StreamId, Version};

/// How many entries an eviction looks at to pick the least recently used one.
const EVICTION_SAMPLE: usize = 8;

/// A bounded map of recently used aggregate states, each valid at exactly its version.
///
/// Eviction is approximately least-recently-used: when full, the oldest of a small sample of
/// entries goes. That keeps every operation short and lock-local (no global LRU list).
#[derive(Debug)]
pub(crate) struct StateCache<A> {
    map: DashMap<StreamId, Cached<A>>,
    capacity: usize,
    clock: AtomicU64,
}

#[derive(Debug)]
struct Cached<A> {
    version: Version,
    state: A,
    used: AtomicU64,
}

impl<A: Clone> StateCache<A> {
    pub(crate) fn new(capacity: usize) -> Self {
        StateCache {
            map: DashMap::with_capacity(capacity.min(4096)),
            capacity,
            clock: AtomicU64::new(0),
        }
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// The cached state of `stream` and its version.
    pub(crate) fn get(&self, stream: &StreamId) -> Option<(Version, A)> {
        let entry = self.map.get(stream)?;
        entry.used.store(self.tick(), Ordering::Relaxed);
        Some((entry.version, entry.state.clone()))
    }

    /// Caches `state` at `version`, unless a newer state of the stream is already cached.
    pub(crate) fn put(&self, stream: &StreamId, version: Version, state: A) {
        if self.capacity == 0 {
            return;
        }
        if self.map.len() >= self.capacity && !self.map.contains_key(stream) {
            self.evict_one();
        }
        let used = AtomicU64::new(self.tick());
        match self.map.entry(stream.clone()) {
            Entry::Occupied(mut entry) => {
                if entry.get().version < version {
                    entry.insert(Cached {
                        version,
                        state,
                        used,
                    });
                }
            }
            Entry::Vacant(entry) => {
                entry.insert(Cached {
                    version,
                    state,
                    used,
                });
            }
        }
    }

    /// Drops the cached state of `stream` if it is not newer than `version`.
    pub(crate) fn evict(&self, stream: &StreamId, version: Version) {
        self.map
            .remove_if(stream, |_, cached| cached.version <= version);
    }

    pub(crate) fn clear(&self) {
        self.map.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    fn evict_one(&self) {
        let len = self.map.len();
        if len == 0 {
            return;
        }
        // Start the sample at a moving offset so that eviction does not always hit the
        // same shard.
        // Only a spread is wanted: truncating the tick on 32-bit targets is harmless.
        #[allow(clippy::cast_possible_truncation)]
        let offset = (self.tick() as usize).wrapping_mul(0x9E37_79B9) % len.min(256);
        let victim = self
            .map
            .iter()
            .skip(offset)
            .take(EVICTION_SAMPLE)
            .min_by_key(|entry| entry.used.load(Ordering::Relaxed))
            .map(|entry| entry.key().clone());
        if let Some(key) = victim {
            self.map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(n: usize) -> StreamId {
        StreamId::new(format!("c-{n}")).unwrap()
    }

    #[test]
    fn stays_bounded_and_never_goes_back_in_time() {
        let cache = StateCache::new(10);
        for n in 0..100 {
            cache.put(&sid(n), Version::new(1), n);
            assert!(cache.len() <= 10);
        }
        cache.put(&sid(500), Version::new(5), 5);
        cache.put(&sid(500), Version::new(3), 3);
        assert_eq!(cache.get(&sid(500)), Some((Version::new(5), 5)));
        cache.evict(&sid(500), Version::new(4));
        assert_eq!(cache.get(&sid(500)), Some((Version::new(5), 5)));
        cache.evict(&sid(500), Version::new(5));
        assert_eq!(cache.get(&sid(500)), None);
        let off = StateCache::new(0);
        off.put(&sid(1), Version::new(1), 1);
        assert_eq!(off.get(&sid(1)), None);
    }
}
