//! The write and save counters kept inside sled (format 4), and what of them is durable: what
//! the manifest (`manifest.rs`) may claim.
//!
//! Sled's recovery hands back a *prefix* of its log: a damaged entry ends the log there, and
//! everything written after it is gone without an error. The counters make such a loss
//! visible. Every flush of sled the store makes for its writers (an explicit flush, an indexing
//! round's, the close) is preceded by a sled insert raising `Mwrites`; every snapshot or checkpoint is
//! followed by one raising `Msaves`. A state sled recovers holds a counter value only if it
//! holds everything written before it, so a state holding less than the manifest recorded lost
//! writes the store had made durable.

use std::sync::{Mutex, MutexGuard};

use annals::{Error, Result, Timestamp};

use crate::error::{corrupt_somewhere, sled_error};
use crate::format::{self, Saves};

/// What the store's files hold (or must hold) of its writes: the write counter, the end of the
/// log, and the save counter with the time of the last save.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) writes: u64,
    pub(crate) log_end: u64,
    pub(crate) saves: u64,
    pub(crate) saved_at: Timestamp,
}

impl Tally {
    /// Nothing written yet.
    pub(crate) fn zero() -> Tally {
        Tally {
            writes: 0,
            log_end: 0,
            saves: 0,
            saved_at: Timestamp::from_unix_micros(0),
        }
    }
}

/// The counters as written to sled, and what of them is durable.
#[derive(Debug)]
pub(crate) struct Marks {
    /// The last write count inserted. Held while the next is inserted, so inserts never go
    /// out of order.
    writes: Mutex<u64>,
    /// The save counter as last inserted; held from a save's insert to its counter's.
    saves: Mutex<Saves>,
    /// What a flush made durable: what the manifest may claim.
    durable: Mutex<Tally>,
}

/// What a flush is about to make durable: the write count inserted just before it, and the
/// saves counted by then.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stamp {
    writes: Option<u64>,
    saves: (u64, Timestamp),
}

/// What the files hold of the write and save counters.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Found {
    /// The counters and the end of the log, as the manifest records them.
    pub(crate) tally: Tally,
    /// The save counter, digest included.
    pub(crate) saves: Saves,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every field is a plain value, consistent after every statement.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Marks {
    /// The counters of a store whose files hold `found` (read at open, so durable).
    pub(crate) fn new(found: Found) -> Marks {
        Marks {
            writes: Mutex::new(found.tally.writes),
            saves: Mutex::new(found.saves),
            durable: Mutex::new(found.tally),
        }
    }

    /// Raises the write counter in sled before a flush; hand the stamp to
    /// [`flushed`](Self::flushed) once the flush succeeded. A failed insert is logged: the
    /// flush still runs, it only does not count.
    pub(crate) fn stamp(&self, tree: &sled::Tree) -> Stamp {
        let mut writes = lock(&self.writes);
        let next = *writes + 1;
        let stamped = match tree.insert(format::META_WRITES, format::writes_value(next)) {
            Ok(_) => {
                *writes = next;
                Some(next)
            }
            Err(error) => {
                tracing::error!(%error, "raising the write counter failed");
                None
            }
        };
        drop(writes);
        let saves = *lock(&self.saves);
        Stamp {
            writes: stamped,
            saves: (saves.count, saves.at),
        }
    }

    /// A flush that began after `stamp` succeeded, and every position up to `log_end` was
    /// written before it began.
    pub(crate) fn flushed(&self, stamp: Stamp, log_end: u64) {
        let mut durable = lock(&self.durable);
        durable.log_end = durable.log_end.max(log_end);
        if let Some(writes) = stamp.writes {
            durable.writes = durable.writes.max(writes);
        }
        if stamp.saves.0 > durable.saves {
            (durable.saves, durable.saved_at) = stamp.saves;
        }
    }

    /// What is durable.
    /// The log was made durable through `log_end` (sled was not flushed).
    pub(crate) fn log_flushed(&self, log_end: u64) {
        let mut durable = lock(&self.durable);
        durable.log_end = durable.log_end.max(log_end);
    }

    pub(crate) fn durable(&self) -> Tally {
        *lock(&self.durable)
    }

    /// Writes a snapshot or checkpoint (`key`, `value`) and then raises the save counter, its
    /// digest moved from the value replaced to the new one.
    pub(crate) fn save(&self, tree: &sled::Tree, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        let mut saves = lock(&self.saves);
        let mut digest = saves.digest ^ format::save_digest(&key, &value);
        if let Some(old) = tree.insert(&key, value).map_err(sled_error)? {
            digest ^= format::save_digest(&key, &old);
        }
        let next = Saves {
            count: saves.count + 1,
            at: Timestamp::now(),
            digest,
        };
        tree.insert(format::META_SAVES, format::saves_value(&next))
            .map_err(sled_error)?;
        *saves = next;
        Ok(())
    }

    /// Checks the snapshots and checkpoints stored against the save counter's digest: whether
    /// one is missing, or back at an older value, although the counter is whole (a loss in the
    /// middle of sled's files, where the counters cannot see it). Saves wait meanwhile.
    ///
    /// # Errors
    ///
    /// When sled fails to read.
    pub(crate) fn saves_lost(&self, tree: &sled::Tree) -> Result<Option<String>> {
        let _saves = lock(&self.saves);
        let Some(value) = tree.get(format::META_SAVES).map_err(sled_error)? else {
            return Ok(None);
        };
        // A damaged counter is reported with the other markers.
        let Ok(recorded) = format::decode_saves(&value) else {
            return Ok(None);
        };
        let stored = saves_digest(tree)?;
        Ok((stored != recorded.digest).then(|| {
            format!(
                "a snapshot or checkpoint is missing or back at an older value: the ones stored                  do not match the store's record of them ({} saved, the last at {})",
                recorded.count, recorded.at
            )
        }))
    }
}

/// The digest of every snapshot and checkpoint stored.
fn saves_digest(tree: &sled::Tree) -> Result<u64> {
    let mut digest = 0;
    for prefix in [format::SNAPSHOT, format::CHECKPOINT] {
        for entry in tree.scan_prefix([prefix]) {
            let (key, value) = entry.map_err(sled_error)?;
            digest ^= format::save_digest(&key, &value);
        }
    }
    Ok(digest)
}

/// What the files hold: the counters (zero when this version never wrote them) and the end of
/// the log, `log_end`. A store without a save counter yet (one written by a format 2 or 3 build)
/// gets one now, whose digest covers the snapshots and checkpoints it holds.
///
/// # Errors
///
/// [`Error::Corrupt`] when a counter is damaged.
pub(crate) fn read_found(tree: &sled::Tree, log_end: u64) -> Result<Found> {
    let mut tally = Tally {
        log_end,
        ..Tally::zero()
    };
    if let Some(value) = tree.get(format::META_WRITES).map_err(sled_error)? {
        tally.writes = format::decode_writes(&value).map_err(|reason| damaged("write", &reason))?;
    }
    let saves = match tree.get(format::META_SAVES).map_err(sled_error)? {
        Some(value) => format::decode_saves(&value).map_err(|reason| damaged("save", &reason))?,
        None => {
            let saves = Saves {
                count: 0,
                at: Timestamp::from_unix_micros(0),
                digest: saves_digest(tree)?,
            };
            tree.insert(format::META_SAVES, format::saves_value(&saves))
                .map_err(sled_error)?;
            saves
        }
    };
    tally.saves = saves.count;
    tally.saved_at = saves.at;
    Ok(Found { tally, saves })
}

/// What the files hold, as the manifest records it (see [`read_found`]).
///
/// # Errors
///
/// [`Error::Corrupt`] when a counter is damaged.
pub(crate) fn read_tally(tree: &sled::Tree, log_end: u64) -> Result<Tally> {
    let mut tally = Tally {
        log_end,
        ..Tally::zero()
    };
    if let Some(value) = tree.get(format::META_WRITES).map_err(sled_error)? {
        tally.writes = format::decode_writes(&value).map_err(|reason| damaged("write", &reason))?;
    }
    if let Some(value) = tree.get(format::META_SAVES).map_err(sled_error)? {
        let saves = format::decode_saves(&value).map_err(|reason| damaged("save", &reason))?;
        tally.saves = saves.count;
        tally.saved_at = saves.at;
    }
    Ok(tally)
}

fn damaged(which: &str, reason: &str) -> Error {
    corrupt_somewhere(format!("the {which} counter is damaged: {reason}"))
}
