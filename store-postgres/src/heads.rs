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
//! A restore needs more of a stream's head: its version *and* the recording time of its last
//! event, which the map keeps when it learnt them together (from a restore, or a read that
//! returned the row). A restore takes a remembered head as the stream's head without reading
//! it: the recording time of a stored row never changes, and a head that moved on since is
//! caught by the unique key, as for appends (see `store::restore`).
//!
//! The map is bounded: past [`CAPACITY`] streams it starts afresh. Forgetting costs one probe,
//! never correctness.

use std::sync::atomic::{AtomicUsize, Ordering};

use annals::{StreamId, Timestamp};
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

/// How many streams the map remembers before it starts afresh.
const CAPACITY: usize = 65_536;

/// The highest version seen stored of a stream, with its row's recording time when known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    version: u64,
    recorded_at: Option<Timestamp>,
}

impl Seen {
    /// Keeps the higher version; at the same version, a known recording time.
    fn merge(&mut self, other: Seen) {
        if other.version > self.version
            || (other.version == self.version && self.recorded_at.is_none())
        {
            *self = other;
        }
    }
}

/// The highest version this store has seen stored, per stream.
#[derive(Debug, Default)]
pub(crate) struct KnownHeads {
    versions: DashMap<StreamId, Seen>,
    /// Streams added since the map last started afresh.
    added: AtomicUsize,
}

impl KnownHeads {
    /// Whether the row at `version` of `stream` is known to be stored.
    pub(crate) fn knows(&self, stream: &StreamId, version: u64) -> bool {
        self.versions
            .get(stream)
            .is_some_and(|seen| seen.version >= version)
    }

    /// The highest version of `stream` known to be stored and its row's recording time, if
    /// both are known.
    pub(crate) fn head(&self, stream: &StreamId) -> Option<(u64, Timestamp)> {
        let seen = *self.versions.get(stream)?;
        Some((seen.version, seen.recorded_at?))
    }

    /// Records that the row at `version` of `stream` is stored (and so every row before it).
    pub(crate) fn saw(&self, stream: &StreamId, version: u64) {
        self.learn(
            stream,
            Seen {
                version,
                recorded_at: None,
            },
        );
    }

    /// Records that the row at `version` of `stream`, recorded at `recorded_at`, is stored.
    pub(crate) fn saw_at(&self, stream: &StreamId, version: u64, recorded_at: Timestamp) {
        self.learn(
            stream,
            Seen {
                version,
                recorded_at: Some(recorded_at),
            },
        );
    }

    fn learn(&self, stream: &StreamId, new: Seen) {
        if new.version == 0 {
            return;
        }
        if let Some(mut seen) = self.versions.get_mut(stream) {
            seen.merge(new);
            return;
        }
        let added = match self.versions.entry(stream.clone()) {
            Entry::Occupied(mut seen) => {
                seen.get_mut().merge(new);
                false
            }
            Entry::Vacant(slot) => {
                slot.insert(new);
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
        assert_eq!(heads.head(&a), None, "no recording time learnt");
        let (t1, t2) = (
            Timestamp::from_unix_micros(1),
            Timestamp::from_unix_micros(2),
        );
        heads.saw_at(&a, 3, t1);
        assert_eq!(heads.head(&a), Some((3, t1)));
        heads.saw_at(&a, 2, t2);
        heads.saw(&a, 3);
        assert_eq!(heads.head(&a), Some((3, t1)), "older rows teach nothing");
        heads.saw(&a, 4);
        assert_eq!(heads.head(&a), None, "a newer row without its time");
        heads.saw_at(&a, 4, t2);
        assert_eq!(heads.head(&a), Some((4, t2)));
        for i in 0..CAPACITY {
            heads.saw(&StreamId::new(format!("b-{i}")).expect("id"), 1);
        }
        assert!(!heads.knows(&a, 1), "past capacity the map starts afresh");
        assert!(heads.versions.len() < CAPACITY);
    }
}
