//! Upgrading a store of format 2, 3 or 4 (the log inside sled) to format 5 (the log in segment
//! files, sled holding a locator per commit record).
//!
//! Two steps, each safe across a crash:
//!
//! 1. The marker still says the old format: the commit records are copied, unchanged and in
//!    order, from sled into new segment files (any left by an interrupted attempt are removed
//!    first), which are then made durable. Sled is not written.
//! 2. `Mupgrading` and the format marker 5 are written and flushed together (sled recovers a
//!    prefix of its writes, and the marker comes last): from here the segments are the log.
//!    Then each `W` value — the commit record itself — is replaced by its locator, and
//!    `Mupgrading` removed. An open that finds `Mupgrading` redoes this step from the segments.
//!
//! The copy reads all of sled's commit records once: its memory is that of a full scan of the
//! old layout, paid once.

use annals::{Error, Position, RecordPlace, Result};

use crate::error::sled_error;
use crate::format::{self, COMMIT, FORMAT_VERSION};
use crate::log::{Log, LogReader};
use crate::open::write_marker;

/// Present while step 2 of an upgrade runs.
pub(crate) const META_UPGRADING: &[u8] = b"Mupgrading";

/// Records copied between two writes to the files.
const WRITE_EVERY: usize = 1024;

/// Whether an upgrade stopped in its second step.
pub(crate) fn interrupted(tree: &sled::Tree) -> Result<bool> {
    Ok(tree.get(META_UPGRADING).map_err(sled_error)?.is_some())
}

/// Upgrades a store of `version` (2 to 4) to format 5.
pub(crate) fn run(db: &sled::Db, tree: &sled::Tree, log: &Log, version: u32) -> Result<()> {
    log.reset()?;
    let mut copied = 0usize;
    for entry in tree.scan_prefix([COMMIT]) {
        let (key, value) = entry.map_err(sled_error)?;
        let Some((first, last)) = format::parse_commit_key(&key) else {
            return Err(Error::corrupt(
                RecordPlace::new(),
                "upgrading the store: a malformed commit key",
            ));
        };
        log.append(first, last, &value).map_err(|_| {
            Error::corrupt(
                RecordPlace::new().position(Position::sequence(first)),
                format!(
                    "upgrading the store: the log in sled is not contiguous at position {first}"
                ),
            )
        })?;
        copied += 1;
        if copied.is_multiple_of(WRITE_EVERY) {
            log.write_out()?;
        }
    }
    log.write_out()?;
    log.sync()
        .map_err(|e| Error::backend("sled", format!("syncing the log failed: {e}")))?;
    tree.insert(META_UPGRADING, format::indexed_value(0))
        .map_err(sled_error)?;
    write_marker(db, tree)?;
    tracing::info!(
        from = version,
        to = FORMAT_VERSION,
        records = copied,
        "moved the log out of sled into segment files"
    );
    finish(db, tree, log)
}

/// Step 2: every `W` value becomes the locator of its record in the segments.
pub(crate) fn finish(db: &sled::Db, tree: &sled::Tree, log: &Log) -> Result<()> {
    let reader = LogReader::from_start(log).map_err(|bad| bad.error(log.dir()))?;
    if let Some(mut reader) = reader {
        while let Some(record) = reader.next_record().map_err(|bad| bad.error(log.dir()))? {
            let key = record.key;
            tree.insert(key, format::locator_value(&key, record.loc))
                .map_err(sled_error)?;
        }
    }
    tree.remove(META_UPGRADING).map_err(sled_error)?;
    db.flush().map_err(sled_error)?;
    Ok(())
}
