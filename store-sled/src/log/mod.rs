//! The global log in segment files (format 5): append-only, checksummed, read sequentially.
//!
//! The commit records — the log, the store's one source of truth — live in files of their own
//! beside sled's, in the directory [`DIR`]: *segments*, each named by the first position it holds
//! and preallocated to the segment size (64 MiB by default), so a write never changes a file's
//! size. A segment is a header, then *frames*: the commit records in position order, each with
//! its length and a CRC-32, never split across segments; a full segment ends with a *seal*
//! frame naming its last position, and the next segment starts right after it. The unwritten
//! rest of the last segment is zeros: a frame head of zeros is the end of the log.
//!
//! Why files of our own: sled 0.34 keeps in memory every page a scan touched (its cache size is
//! a hint), so reading a whole log kept in sled costs memory in proportion to the log. Read
//! sequentially from files with a bounded buffer, the log costs a full read nothing but the
//! operating system's page cache, which is not the process's memory.
//!
//! Sled keeps only what is derived or small: for each commit record a *locator* (`W` key, see
//! `format/locator.rs`) naming the segment and offset of its frame, used by point reads (a
//! stream's events, an id's event); the full-log reads, `verify`'s pass over the log and the
//! recovery at open read the segments in order and never scan the locators.
//!
//! Writes: the writer frames a group's records into memory ([`Log::append`]) and writes them at
//! once ([`Log::write_out`]) before any of them becomes visible; the flusher makes them durable
//! with one `fdatasync` per group commit ([`Log::sync`]), outside the lock the writer takes, so
//! the next group is framed while the disk works. Reads and writes use positional I/O on shared
//! file handles: no cursor is shared.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use annals::{Error, Position, RecordPlace, Result};

use crate::format::{self, CRC_LEN};

mod frame;
mod reader;
mod recover;
mod write;

use frame::*;
pub(crate) use frame::{segment_name, sync_dir};
pub(crate) use reader::{Item, LogReader};

/// The log's directory, inside the store's directory (beside sled's files).
pub(crate) const DIR: &str = "annals-log";
/// The segment size by default.
pub(crate) const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// The smallest segment size the builder accepts.
pub(crate) const MIN_SEGMENT_BYTES: u64 = 4 * 1024;

const MAGIC: &[u8; 8] = b"ANNALSLG";
const SEGMENT_VERSION: u32 = 1;
/// Header: magic (8), version (u32 BE), first position (u64 BE), CRC-32 (LE) of the 20 bytes
/// before it.
pub(crate) const HEADER: u64 = 24;
/// Frame head: body length (u32 LE), CRC-32 (LE) over the length's 4 bytes and the body.
const FRAME_HEAD: u64 = 8;
/// Frame kinds (the body's first byte).
const KIND_COMMIT: u8 = 1;
const KIND_SEAL: u8 = 2;
/// Framed bytes a `Durability::Buffered` writer keeps before writing them.
const WRITE_AT: usize = 64 * 1024;
/// The smallest and largest steps of zeros written ahead of the frames.
const ZERO_STEP_MIN: u64 = 1024 * 1024;
const ZERO_STEP_MAX: u64 = 8 * 1024 * 1024;
/// Bytes read at a time by a sequential reader.
const READ_AHEAD: usize = 256 * 1024;

/// Where a commit record's frame is: the segment (its first position), the frame's offset in
/// it and the frame's whole length (head included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

/// A commit record read from the log: its positions, its frame's place and its value (the
/// commit record proper, `format/commit.rs`).
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) first: u64,
    pub(crate) last: u64,
    pub(crate) loc: Loc,
    /// The key the record's checksums are computed over (`format::commit_key`).
    pub(crate) key: [u8; 17],
    pub(crate) value: Vec<u8>,
}

/// A frame that does not read back: where, and why.
#[derive(Clone, Debug)]
pub(crate) struct Bad {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    /// The position the log was expected to hold there.
    pub(crate) position: u64,
    pub(crate) reason: String,
}

impl Bad {
    pub(crate) fn error(&self, dir: &Path) -> Error {
        Error::corrupt(
            RecordPlace::new().position(Position::sequence(self.position)),
            self.describe(dir),
        )
    }

    pub(crate) fn describe(&self, dir: &Path) -> String {
        format!(
            "the log's segment file {} is damaged at offset {}: {}",
            dir.join(segment_name(self.segment)).display(),
            self.offset,
            self.reason
        )
    }
}

/// What the writer appends to: the last segment.
#[derive(Debug)]
struct Tail {
    segment: u64,
    file: Arc<File>,
    /// The offset after the last frame framed (written or pending).
    end: u64,
    /// The last position framed (0 when none).
    last: u64,
    /// How far the file holds written bytes (frames or zeros written ahead of them).
    zeroed: u64,
    /// Frames framed and not yet written: (file, offset, bytes), in order.
    pending: Vec<(Arc<File>, u64, Vec<u8>)>,
    /// Files written since the last sync, other than the current one (sealed meanwhile).
    dirty: Vec<Arc<File>>,
    /// Bytes in `pending`.
    pending_bytes: usize,
}

/// The writer's end of the log at some moment, to take back what was framed after it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LogMark {
    segment: u64,
    end: u64,
    last: u64,
    zeroed: u64,
    chunks: usize,
    chunk_len: usize,
}

/// The log: its segments and the writer's end of it.
#[derive(Debug)]
pub(crate) struct Log {
    dir: PathBuf,
    /// The directory of a temporary store's log, removed with it.
    _temporary: Option<tempfile::TempDir>,
    segment_bytes: u64,
    files: RwLock<BTreeMap<u64, Arc<File>>>,
    tail: Mutex<Option<Tail>>,
    /// Held while framed bytes are written, so whoever finds them written finds them whole.
    writing: Mutex<()>,
    /// The last position whose frame is written to its file.
    written: AtomicU64,
    /// Set when framed bytes could not be written: they are lost to this process, so nothing
    /// more is framed after them (the next open finds the log's end where the writes stopped).
    failed: AtomicBool,
}

/// What the open found at the end of the log.
#[derive(Debug, Default)]
pub(crate) struct TailScan {
    /// The last position of the log (0 when empty).
    pub(crate) end: u64,
    /// The records after the position the scan was asked for, in order (their values are
    /// read again when needed).
    pub(crate) records: Vec<(u64, u64, Loc)>,
    /// A frame that does not read back, where the log would go on: a torn tail, or damage.
    pub(crate) bad: Option<Bad>,
}

impl Log {
    /// Opens (creating if needed) the log of the store at `store_dir`, or a temporary one.
    pub(crate) fn open(store_dir: Option<&Path>, segment_bytes: u64) -> Result<Log> {
        let (dir, temporary) = match store_dir {
            Some(path) => (path.join(DIR), None),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("annals-log")
                    .tempdir()
                    .map_err(|e| io_error("creating a temporary log directory", &e))?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let created = !dir.exists();
        std::fs::create_dir_all(&dir).map_err(|e| io_error("creating the log directory", &e))?;
        if created {
            if let Some(parent) = dir.parent() {
                sync_dir(parent).map_err(|e| io_error("syncing the store directory", &e))?;
            }
        }
        let mut files = BTreeMap::new();
        for entry in
            std::fs::read_dir(&dir).map_err(|e| io_error("listing the log directory", &e))?
        {
            let entry = entry.map_err(|e| io_error("listing the log directory", &e))?;
            let name = entry.file_name();
            let Some(first) = name.to_str().and_then(parse_segment_name) else {
                continue;
            };
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(entry.path())
                .map_err(|e| io_error("opening a segment file", &e))?;
            files.insert(first, Arc::new(file));
        }
        Ok(Log {
            dir,
            _temporary: temporary,
            segment_bytes,
            files: RwLock::new(files),
            tail: Mutex::new(None),
            writing: Mutex::new(()),
            written: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the log has no segment at all (a new store, or one of format 4 or older).
    pub(crate) fn is_empty(&self) -> bool {
        self.files_read().is_empty()
    }

    fn files_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Arc<File>>> {
        self.files.read().unwrap_or_else(|e| e.into_inner())
    }

    fn tail(&self) -> MutexGuard<'_, Option<Tail>> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last position framed by the writer (0 when none).
    pub(crate) fn end(&self) -> u64 {
        self.tail().as_ref().map_or(0, |tail| tail.last)
    }

    /// The first positions of the segments, in order.
    pub(crate) fn segments(&self) -> Vec<u64> {
        self.files_read().keys().copied().collect()
    }

    fn file(&self, segment: u64) -> Option<Arc<File>> {
        self.files_read().get(&segment).cloned()
    }
}
