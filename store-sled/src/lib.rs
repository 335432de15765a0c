//! # annals-sled
//!
//! The embedded [Annals](annals) event store: durable, with no server to start, on
//! [sled](https://docs.rs/sled/0.34.7) 0.34.7. [`SledEventStore`] implements
//! [`EventStore`](annals::EventStore) (with its [`restore`](annals::EventStore::restore),
//! [`close`](annals::EventStore::close) and [`verify`](annals::EventStore::verify)),
//! [`SnapshotStore`](annals::SnapshotStore),
//! [`CheckpointStore`](annals::CheckpointStore) and [`Leases`](annals::Leases), and passes the
//! conformance suite of `annals-testkit`.
//!
//! # Usage
//!
//! ```
//! use annals::{EventData, EventStore, ExpectedVersion, ReadStream, StreamId};
//! use annals_sled::SledEventStore;
//! use futures::TryStreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> annals::Result<()> {
//! # let dir = tempfile::tempdir().map_err(|e| annals::Error::backend("test", e))?;
//! # let path = dir.path().join("annals-data");
//! let store = SledEventStore::builder().path(&path).open().await?;
//! let account = StreamId::new("account-42")?;
//! store
//!     .append(&account, ExpectedVersion::NoStream, vec![
//!         EventData::json("Opened", &serde_json::json!({ "owner": "ada" }))?,
//!     ])
//!     .await?;
//! store.close().await?;
//! drop(store);
//!
//! // Everything survives a reopen, and `verify` checks every record.
//! let store = SledEventStore::builder().path(&path).open().await?;
//! let events: Vec<_> = store.read_stream(&account, ReadStream::forward()).try_collect().await?;
//! assert_eq!(events.len(), 1);
//! assert!(store.verify().await?.is_clean());
//! # Ok(())
//! # }
//! ```
//!
//! # What it promises
//!
//! - **Atomic appends**: an append is one commit record holding all its events, framed at the
//!   end of the log — append-only, checksummed segment files the store owns, beside sled's
//!   (write-ahead layout, see `FORMAT.md`) — and a frame that does not read back whole is not
//!   part of the log: a torn tail a crash leaves past what was made durable is cut off at open,
//!   damage before it is [`Error::Corrupt`](annals::Error::Corrupt) naming the position and the
//!   file. The commit locators, stream, head and event-id indexes in sled are derived from the
//!   log in bulk and redone from it at open, so a crash never leaves part of an append, nor an
//!   index pointing nowhere.
//! - **Bulk restore** ([`restore`](annals::EventStore::restore), what `import` and `migrate`
//!   use): events of many streams keep their versions and recording times; a batch is checked
//!   by the writer as appends are, written as *mixed* commit records (at most 16 events each,
//!   each naming the restore's end, so what a crash leaves of an unfinished restore is removed
//!   at the next open: all or nothing, also across a crash) and made durable and visible by the
//!   same group commit and flush as appends. Batches of 5,000 events of 1,000 interleaved
//!   streams restore at a few hundred thousand events a second.
//! - **Durability** ([`Durability`]): by default an append is answered after the log's
//!   `fdatasync`. Appends arriving together share one (group commit); sled, holding only
//!   derived entries, snapshots and checkpoints, is flushed when asked and about once per few
//!   thousand events. With
//!   [`Durability::Buffered`] an append is answered after the in-memory write, and the store
//!   flushes on a timer and on close.
//! - **Readers never see what could vanish**: with [`Durability::Flush`], reads and
//!   subscriptions see only flushed events.
//! - **Integrity**: every stored value carries a CRC-32 over its key and bytes; reads check
//!   it and a mismatch is [`Error::Corrupt`](annals::Error::Corrupt) whose
//!   [`RecordPlace`](annals::RecordPlace) names the stream, version and position.
//!   [`verify`](annals::EventStore::verify) walks the whole store and reports what it finds in
//!   the core [`VerifyReport`](annals::VerifyReport).
//! - **No silent loss on damaged files**: sled recovers an older state from damaged files
//!   without a word, so the store keeps a write counter inside sled (raised before every flush)
//!   and a save counter (raised with every snapshot and checkpoint), and a small manifest file
//!   beside sled's, `annals-manifest`, recording what it had made durable (written atomically at
//!   open, at close and at most once a second by a thread of its own, never on the append
//!   path). Files holding less are refused at open with
//!   [`Error::Corrupt`](annals::Error::Corrupt) naming what is missing (the positions, or the
//!   snapshots and checkpoints written after a time), and [`verify`](annals::EventStore::verify)
//!   reports it as [`ProblemKind::Missing`](annals::ProblemKind::Missing), as it does a
//!   snapshot or checkpoint back at an older value (checked against a digest the save counter
//!   keeps); [`accept_loss`](SledEventStoreBuilder::accept_loss) opens such files anyway. A loss within the
//!   manifest's last second before a crash is not told apart from the crash. A missing manifest
//!   is created by the first open of a store that never had one, and is an error after that.
//!   Files sled cannot read — it panics on some, calls others "unsupported" — are
//!   [`Error::Corrupt`](annals::Error::Corrupt) saying the files are damaged, with their path
//!   and sled's message. See `FORMAT.md`, "Lost writes".
//! - **Format**: the layout is versioned (`FORMAT.md`); a store written by a newer build, a
//!   damaged format marker, or a sled database that is not an Annals store is refused with
//!   [`Error::Format`](annals::Error::Format) (`backend: "sled"`, the version `found` when
//!   readable, and the `supported` versions: 2 to [`FORMAT_VERSION`], a store of format 2 to 4
//!   — its log still inside sled — being upgraded at open, its commit records moved into
//!   segment files, safely across a crash), never misread. The store is its whole directory:
//!   sled's files, the log's segment files in `annals-log/` and the manifest; copy (back up)
//!   all of it together, with the store closed. Builder mistakes (no path, a zero flush
//!   interval) are [`Error::Configuration`](annals::Error::Configuration).
//! - **Bounded memory**: full-log reads ([`read_all`](annals::EventStore::read_all),
//!   subscriptions, `verify`'s pass over the log, export, migrate, projection catch-up) read
//!   the segment files in order with a buffer of at most 256 KiB and consult sled once, so
//!   their memory does not grow with the store (a process reading a 3,000,000-event log peaks
//!   within a few MiB of one reading 300,000: the report's `sled.read_all.memory` line); the
//!   operating system's page cache, not the process, caches the files. Sled's cache (64 MiB by
//!   default, a hint sled 0.34 does not always keep) holds the indexes point reads use; besides
//!   it, only the not-yet-indexed tail of the log (at most tens of thousands of events' ids and
//!   places) and a bounded cache of stream heads stay in memory. (`verify` also walks every
//!   key of sled's indexes once: that walk goes through sled's cache.)
//! - **Reads off the async workers**: reads fetch their pages of sled records (a few hundred
//!   records each) inside `block_in_place` on a multi-thread tokio runtime and on the blocking
//!   pool on a current-thread one, so a long read never holds up the runtime's other tasks.
//!   (Known limit: on a current-thread runtime that has *entered* a multi-thread runtime's
//!   handle, tokio cannot tell the two apart and `block_in_place` panics; read and append from
//!   a task of the runtime you entered in that setup.)
//! - **Room beside the events**: [`open_tree`](SledEventStore::open_tree) lends a sled tree of
//!   the store's database to the caller — the sled read model of `annals-projections` keeps its
//!   trees there, in the same files and the same log, made durable by the store's flushes. The
//!   store never reads, writes or verifies such a tree.
//! - **Leases** ([`Leases`](annals::Leases)): in-process ([`LocalLeases`](annals::LocalLeases)),
//!   shared by the clones of a store. That is enough because a sled database is opened by one
//!   process at a time (sled locks its files), so every user of the data is in this process.
//!
//! # Supported Rust versions
//!
//! The minimum supported Rust version is 1.89.

mod builder;
mod commit_state;
mod durability;
mod error;
mod flusher;
mod format;
mod log;
mod lookup;
mod manifest;
mod marks;
mod num;
mod open;
mod overlay;
mod read;
mod recover;
mod store;
mod upgrade;
mod verify;
mod writer;

pub use builder::SledEventStoreBuilder;
pub use durability::Durability;
pub use store::SledEventStore;

/// The version of the on-disk format this build writes and reads (see `FORMAT.md`). Stores in
/// formats 2 to 4 are opened too, and upgraded to 5 on the way (format 3 added id segments,
/// format 4 mixed commit records, listed stream-index runs and the write counters, format 5
/// moved the log out of sled into segment files).
pub const FORMAT_VERSION: u32 = format::FORMAT_VERSION;

/// Hooks for recovery tests: they write what a crash at a chosen moment leaves behind. Not part
/// of the supported API.
#[doc(hidden)]
pub mod testing {
    use std::path::Path;

    use annals::{EventData, RestoredEvent, Result, StreamId, Timestamp};

    use crate::error::sled_error;
    use crate::log::{Log, DEFAULT_SEGMENT_BYTES};
    use crate::num::u64_from;
    use crate::overlay::{index_batch, CommitInfo};
    use crate::{format, recover, writer};

    /// The log of the closed store at `path`, open for appends at its end.
    fn open_log(path: &Path) -> Result<Log> {
        let log = Log::open(Some(path), DEFAULT_SEGMENT_BYTES)?;
        if log.is_empty() {
            log.start()?;
        } else {
            log.scan_tail(0)?;
        }
        Ok(log)
    }

    fn write(log: &Log) -> Result<()> {
        log.write_out()?;
        log.sync().map_err(|e| annals::Error::backend("sled", e))
    }

    fn commit(
        log: &Log,
        stream: &StreamId,
        first_version: u64,
        events: &[EventData],
    ) -> (CommitInfo, Vec<u8>) {
        let first = log.end() + 1;
        let bodies: Vec<Vec<u8>> = events.iter().map(format::encode_body).collect();
        let recorded_at = Timestamp::now();
        let key = format::commit_key(first, first + u64_from(events.len()) - 1);
        let value = format::commit_value(
            &key,
            recorded_at,
            stream.as_str(),
            first_version,
            bodies.iter().map(Vec::as_slice),
        );
        let info = CommitInfo {
            stream: stream.clone(),
            first_version,
            first,
            recorded_at,
            ids: events.iter().map(|e| e.id).collect(),
        };
        (info, value)
    }

    /// Writes a commit record at the end of the log of the closed store at `path` WITHOUT its
    /// locator and index entries in sled (`tree`, that store's), as a crash between the log
    /// write and the index write leaves it. Returns its first position.
    pub fn write_unindexed_commit(
        _tree: &sled::Tree,
        path: &Path,
        stream: &StreamId,
        first_version: u64,
        events: &[EventData],
    ) -> Result<u64> {
        let log = open_log(path)?;
        let (info, value) = commit(&log, stream, first_version, events);
        log.append(info.first, info.last(), &value)?;
        write(&log)?;
        Ok(info.first)
    }

    /// Writes the first `records` commit records of a restore of `events` (new events, each
    /// following its stream's head) at the end of the log of the closed store at `path`,
    /// without index entries: what a crash part-way through the restore leaves behind. Returns
    /// the restore's first position.
    pub fn write_partial_restore(
        _tree: &sled::Tree,
        path: &Path,
        events: Vec<RestoredEvent>,
        records: usize,
    ) -> Result<u64> {
        let log = open_log(path)?;
        let first = log.end() + 1;
        let written: Vec<(RestoredEvent, Vec<u8>)> = events
            .into_iter()
            .map(|e| {
                let body = format::encode_body(&e.event);
                (e, body)
            })
            .collect();
        for (key, value) in writer::mixed_records(first, &written)
            .into_iter()
            .take(records)
        {
            let (f, l) = format::parse_commit_key(&key)
                .ok_or_else(|| annals::Error::backend("sled", "malformed commit key"))?;
            log.append(f, l, &value)?;
        }
        write(&log)?;
        Ok(first)
    }

    /// Writes the index entries (the locator and the index marker too) of a commit past the
    /// end of the log of the closed store at `path`, WITHOUT the commit record: an index that
    /// survived what it indexes.
    pub fn write_index_without_commit(
        tree: &sled::Tree,
        path: &Path,
        stream: &StreamId,
        first_version: u64,
        events: &[EventData],
    ) -> Result<u64> {
        let log = open_log(path)?;
        let (info, value) = commit(&log, stream, first_version, events);
        // Framed, never written: the locator names where the record would have been.
        let loc = log.append(info.first, info.last(), &value)?;
        let key = format::commit_key(info.first, info.last());
        let mut batch = sled::Batch::default();
        batch.insert(key.to_vec(), format::locator_value(&key, loc));
        let mut frontier = recover::frontier(tree)?;
        index_batch(
            &mut batch,
            std::iter::once(&info),
            info.last(),
            &mut frontier,
        );
        tree.apply_batch(batch).map_err(sled_error)?;
        Ok(info.first)
    }
}
