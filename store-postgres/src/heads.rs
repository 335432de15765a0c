//! What a store knows of its streams' heads, so that most exact-version appends skip the probe
//! of their expected-version check.
//!
//! An append at `Exact(n)` must fail unless the stream is at version `n`. The unique
//! `(stream_id, version)` key already refuses it when the stream is *past* `n` (the row at
//! `n + 1` exists); only a stream *behind* `n` needs the probe "does the row at `n` exist?".
//! Events are never deleted, so once this store has seen the row at version `n` stored — its own
//! append wrote it, a read returned it, a conflict reported the stream past it — the probe can
//! only say yes, and the append can be a plain insert.
//!
//! The map is bounded: past [`CAPACITY`] streams it starts afresh. Forgetting costs one probe,
//! never correctness.

use std::sync::atomic::{AtomicUsize, Ordering};

use annals::StreamId;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

/// How many streams the map remembers before it starts afresh.
const CAPACITY: usize = 65_536;

/// The highest version this store has seen stored, per stream.
#[derive(Debug, Default)]
pub(crate) struct KnownHeads {
    versions: DashMap<StreamId, u64>,
    /// Streams added since the map last started afresh.
    added: AtomicUsize,
}

impl KnownHeads {
    /// Whether the row at `version` of `stream` is known to be stored.
    pub(crate) fn knows(&self, stream: &StreamId, version: u64) -> bool {
        self.versions
            .get(stream)
            .is_some_and(|seen| *seen >= version)
    }

    /// Records that the row at `version` of `stream` is stored (and so every row before it).
    pub(crate) fn saw(&self, stream: &StreamId, version: u64) {
        if version == 0 {
            return;
        }
        if let Some(mut seen) = self.versions.get_mut(stream) {
            *seen = (*seen).max(version);
            return;
        }
        let added = match self.versions.entry(stream.clone()) {
            Entry::Occupied(mut seen) => {
                let seen = seen.get_mut();
                *seen = (*seen).max(version);
                false
            }
            Entry::Vacant(slot) => {
                slot.insert(version);
                true
            }
        };
        // Outside the entry's lock: clearing takes every shard's.
        if added && self.added.fetch_add(1, Ordering::Relaxed) + 1 > CAPACITY {
            self.added.store(0, Ordering::Relaxed);
            self.versions.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_highest_version_and_forgets_past_capacity() {
        let heads = KnownHeads::default();
        let a = StreamId::new("a-1").expect("id");
        assert!(!heads.knows(&a, 1));
        heads.saw(&a, 3);
        heads.saw(&a, 2);
        assert!(heads.knows(&a, 3) && heads.knows(&a, 1));
        assert!(!heads.knows(&a, 4));
        for i in 0..CAPACITY {
            heads.saw(&StreamId::new(format!("b-{i}")).expect("id"), 1);
        }
        assert!(!heads.knows(&a, 1), "past capacity the map starts afresh");
        assert!(heads.versions.len() < CAPACITY);
    }
}
