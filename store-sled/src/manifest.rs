//! The manifest: a small file beside sled's, `annals-manifest`, recording how much the store had
//! made durable (the write counter, the end of the log, the save counter — see `marks.rs`). At
//! open, and in `verify`, files holding less than it records lost durable writes to damage (see
//! `FORMAT.md`, "Lost writes").
//!
//! It is written atomically — a temporary file, `fsync`, rename, `fsync` of the directory — at
//! open, at close and at most once a second in between, by a thread of its own: never on the
//! append path. It only ever records what a flush made durable, so no crash can leave it ahead
//! of the files; a loss within its last interval before a crash is not told apart from the
//! crash itself.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use annals::{Error, Position, Problem, ProblemKind, RecordPlace, Result, Timestamp};

use crate::marks::{Marks, Tally};

/// The manifest's file name, in the store's directory.
pub(crate) const FILE: &str = "annals-manifest";
/// The name it is written under before the rename.
const TEMP: &str = "annals-manifest.tmp";
/// How often the thread looks for something new to record.
const INTERVAL: Duration = Duration::from_secs(1);
/// The manifest's first bytes.
const MAGIC: &[u8; 8] = b"ANNALSMF";
/// The layout below.
const VERSION: u32 = 1;
/// Bytes of a manifest: magic, version, writes, log end, saves, saved at, CRC-32.
const LEN: usize = 8 + 4 + 8 + 8 + 8 + 8 + 4;

/// The manifest's bytes for `tally`.
fn encode(tally: &Tally) -> Vec<u8> {
    let mut out = Vec::with_capacity(LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&tally.writes.to_be_bytes());
    out.extend_from_slice(&tally.log_end.to_be_bytes());
    out.extend_from_slice(&tally.saves.to_be_bytes());
    out.extend_from_slice(&tally.saved_at.unix_micros().to_be_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The tally a manifest's bytes record.
fn decode(bytes: &[u8]) -> std::result::Result<Tally, String> {
    if bytes.len() != LEN {
        return Err(format!("{} bytes, expected {LEN}", bytes.len()));
    }
    let (body, crc) = bytes.split_at(LEN - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(format!(
            "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    if &body[..8] != MAGIC {
        return Err("not an Annals manifest".into());
    }
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&body[at..at + 8]);
        b
    };
    let version = u32::from_be_bytes([body[8], body[9], body[10], body[11]]);
    if version != VERSION {
        return Err(format!(
            "manifest layout {version}, this build reads {VERSION}"
        ));
    }
    Ok(Tally {
        writes: u64::from_be_bytes(word(12)),
        log_end: u64::from_be_bytes(word(20)),
        saves: u64::from_be_bytes(word(28)),
        saved_at: Timestamp::from_unix_micros(i64::from_be_bytes(word(36))),
    })
}

/// The manifest in `dir`: `Ok(None)` when there is none, `Err` when it cannot be read or is
/// damaged.
pub(crate) fn read(dir: &Path) -> std::result::Result<Option<Tally>, String> {
    match fs::read(dir.join(FILE)) {
        Ok(bytes) => decode(&bytes).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes the manifest for `tally` into `dir`, atomically.
pub(crate) fn write(dir: &Path, tally: &Tally) -> io::Result<()> {
    let temp = dir.join(TEMP);
    {
        let mut file = File::create(&temp)?;
        file.write_all(&encode(tally))?;
        file.sync_all()?;
    }
    fs::rename(&temp, dir.join(FILE))?;
    // The rename is durable once the directory is.
    File::open(dir)?.sync_all()
}

/// What files holding `found` miss of what the manifest `recorded`: one line per kind of loss
/// (events, snapshots and checkpoints, other writes), each with the place it starts at. Empty
/// when nothing is missing.
pub(crate) fn missing(found: &Tally, recorded: &Tally) -> Vec<(RecordPlace, String)> {
    let mut lost = Vec::new();
    if found.log_end < recorded.log_end {
        lost.push((
            RecordPlace::new().position(Position::sequence(found.log_end + 1)),
            format!(
                "the events at positions {} to {} are missing: the log ends at {}, the manifest \
                 records it ending at {}",
                found.log_end + 1,
                recorded.log_end,
                found.log_end,
                recorded.log_end
            ),
        ));
    }
    if found.saves < recorded.saves {
        let after = if found.saves == 0 {
            "the first one".to_owned()
        } else {
            format!("{} (the last one the files hold)", found.saved_at)
        };
        lost.push((
            RecordPlace::new(),
            format!(
                "snapshots or checkpoints written after {after} are missing, up to the one of \
                 {}: the files count {} snapshot and checkpoint writes, the manifest {}",
                recorded.saved_at, found.saves, recorded.saves
            ),
        ));
    }
    if found.writes < recorded.writes && lost.is_empty() {
        lost.push((
            RecordPlace::new(),
            format!(
                "the files hold an older state than the manifest records (write {} of {}): \
                 writes after it are missing (by the manifest's counts no event, snapshot or \
                 checkpoint, only index entries)",
                found.writes, recorded.writes
            ),
        ));
    }
    lost
}

/// What the open found of the files against the manifest.
#[derive(Debug, Default)]
pub(crate) struct Check {
    /// What the manifest recorded (`None`: there was none, or it was damaged).
    pub(crate) recorded: Option<Tally>,
    /// The losses found (only when opened with `accept_loss`; otherwise they are an error).
    pub(crate) lost: Vec<Problem>,
}

/// Checks sled's files in `dir`, holding `found` (before the open repairs anything), against
/// the manifest there. A first open by a build writing manifests finds none (and
/// [`record`] makes it); from then on it must be there.
///
/// # Errors
///
/// [`Error::Corrupt`] when the files hold less than the manifest records, or the manifest is
/// missing (from a store whose write counter says it had one) or damaged — unless `accept`,
/// when the losses are returned instead.
pub(crate) fn check_at_open(dir: &Path, found: &Tally, accept: bool) -> Result<Check> {
    let mut lost: Vec<(RecordPlace, String)> = Vec::new();
    let recorded = match read(dir) {
        Ok(recorded) => recorded,
        Err(reason) => {
            lost.push((
                RecordPlace::new(),
                format!("the manifest `{FILE}` is damaged: {reason}"),
            ));
            None
        }
    };
    match recorded {
        Some(recorded) => lost.extend(missing(found, &recorded)),
        None if lost.is_empty() && found.writes > 0 => lost.push((
            RecordPlace::new(),
            format!(
                "the manifest `{FILE}` is missing, and the store's write counter says it had \
                 one: what the store wrote since cannot be checked"
            ),
        )),
        None => {}
    }
    if !lost.is_empty() && !accept {
        let (place, _) = lost[0].clone();
        let what: Vec<String> = lost.into_iter().map(|(_, what)| sentence(&what)).collect();
        return Err(Error::corrupt(
            place,
            format!(
                "sled's files at {} are damaged: sled recovered an older state than the store \
                 had made durable. {} Restore the store from a backup, or open it with \
                 `accept_loss` to use what is left.",
                dir.display(),
                what.join(" ")
            ),
        ));
    }
    Ok(Check {
        recorded,
        lost: lost
            .into_iter()
            .map(|(place, what)| Problem::new(ProblemKind::Missing, place, what))
            .collect(),
    })
}

/// `what` as a sentence: capitalised, with a full stop.
fn sentence(what: &str) -> String {
    let mut chars = what.chars();
    match chars.next() {
        Some(first) => format!("{}{}.", first.to_uppercase(), chars.as_str()),
        None => String::new(),
    }
}

/// Records `found` (what the files hold once the open repaired them) as the manifest in `dir`,
/// unless the manifest `recorded` says the same already.
///
/// # Errors
///
/// [`Error::Backend`] when the manifest cannot be written.
pub(crate) fn record(dir: &Path, recorded: Option<Tally>, found: &Tally) -> Result<()> {
    if recorded == Some(*found) {
        return Ok(());
    }
    write(dir, found).map_err(|e| {
        Error::backend(
            "sled",
            format!("writing the manifest in {} failed: {e}", dir.display()),
        )
    })
}

/// The files against the manifest, for `verify`: the problems found (none when there is no
/// manifest to check against, as for a temporary store).
pub(crate) fn check_now(dir: &Path, found: &Tally) -> Vec<Problem> {
    match read(dir) {
        Ok(Some(recorded)) => missing(found, &recorded)
            .into_iter()
            .map(|(place, what)| Problem::new(ProblemKind::Missing, place, what))
            .collect(),
        Ok(None) => vec![Problem::new(
            ProblemKind::Missing,
            RecordPlace::new(),
            format!("the manifest `{FILE}` is missing"),
        )],
        Err(reason) => vec![Problem::new(
            ProblemKind::Corrupt,
            RecordPlace::new(),
            format!("the manifest `{FILE}` is damaged: {reason}"),
        )],
    }
}

/// The thread keeping the manifest up to date.
#[derive(Debug)]
pub(crate) struct Keeper {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Mutex<Option<JoinHandle<io::Result<()>>>>,
}

impl Keeper {
    /// Starts the thread: every [`INTERVAL`] it records what `marks` says is durable, when that
    /// changed since `written` (what the manifest holds); at [`stop`](Self::stop) it records it
    /// a last time.
    pub(crate) fn spawn(dir: PathBuf, marks: Arc<Marks>, written: Tally) -> Result<Keeper> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = stop.clone();
        let thread = std::thread::Builder::new()
            .name("annals-sled-manifest".into())
            .spawn(move || {
                let mut written = written;
                loop {
                    let stopping = {
                        let (lock, wake) = &*signal;
                        let stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                        let (stopped, _) = wake
                            .wait_timeout_while(stopped, INTERVAL, |stopped| !*stopped)
                            .unwrap_or_else(|e| e.into_inner());
                        *stopped
                    };
                    let now = marks.durable();
                    if now != written {
                        match write(&dir, &now) {
                            Ok(()) => written = now,
                            Err(error) if stopping => return Err(error),
                            Err(error) => {
                                tracing::error!(%error, "writing the manifest failed; will retry");
                            }
                        }
                    }
                    if stopping {
                        return Ok(());
                    }
                }
            })
            .map_err(|e| Error::backend("sled", e))?;
        Ok(Keeper {
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Records what is durable a last time and stops the thread; waits for it. Call it after the
    /// store's last flush. Stopping twice is harmless.
    pub(crate) fn stop(&self) -> io::Result<()> {
        {
            let (lock, wake) = &*self.stop;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
            wake.notify_one();
        }
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        match thread.map(JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(error))) => Err(error),
            Some(Err(_)) => Err(io::Error::other("the manifest thread panicked")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_round_trip_and_catch_damage() {
        let tally = Tally {
            writes: 7,
            log_end: 4000,
            saves: 12,
            saved_at: Timestamp::from_unix_micros(1_700_000_000_000_000),
        };
        let bytes = encode(&tally);
        assert_eq!(bytes.len(), LEN);
        assert_eq!(decode(&bytes), Ok(tally));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x04;
            assert!(decode(&bad).is_err(), "byte {i}");
        }
        assert!(decode(&bytes[..LEN - 1]).is_err());

        let older = Tally {
            log_end: 3990,
            saves: 10,
            ..tally
        };
        let lost = missing(&older, &tally);
        assert_eq!(lost.len(), 2, "{lost:?}");
        assert!(lost[0].1.contains("3991 to 4000"), "{}", lost[0].1);
        assert!(
            lost[1].1.contains("snapshots or checkpoints"),
            "{}",
            lost[1].1
        );
        assert!(missing(&tally, &tally).is_empty());
        let only_writes = Tally { writes: 6, ..tally };
        assert_eq!(missing(&only_writes, &tally).len(), 1);
    }
}
