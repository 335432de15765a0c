//! Recovery at open: bring the derived indexes in line with the log.
//!
//! The log — the commit records — is the truth. The indexes are complete through the position in
//! the `Mindexed` marker. Three cases are repaired, all idempotent, so a crash during recovery is
//! recovered by the next open:
//!
//! - **redo**: commits after the marker (appended, not yet indexed when the process stopped) get
//!   their index entries written again, with the marker, in one sled batch;
//! - **an interrupted restore**: the records a restore had written when a crash stopped it (at
//!   the end of the log, each naming the restore's last position, past the log's end) are
//!   removed, so a restore is all or nothing;
//! - **drop**: if the marker is past the end of the log (index entries survived a crash that
//!   the commits they index did not), every index entry pointing past the end is removed and
//!   heads are recomputed from what is left. Entries are written only for flushed commits (and
//!   sled recovers a prefix of its log besides), so this is not expected to happen; it is
//!   handled so that no index can ever point nowhere.

use std::collections::{BTreeSet, HashMap};

use annals::{Error, Position, RecordPlace, Result, StreamId, Version};

use crate::error::{corrupt_somewhere, sled_error};
use crate::format::{self, Head, HEAD, ID, SEGMENT, STREAM};
use crate::log::{Loc, Log, TailScan};
use crate::overlay::{index_batch, CommitInfo};

pub(crate) fn frontier(tree: &sled::Tree) -> Result<[u8; 16]> {
    last_id_key(tree, SEGMENT)
}

/// The largest event id the indexes hold (zeros when they hold none): the last `I` key or the
/// last segment's (the `frontier`), whichever is larger.
pub(crate) fn max_indexed_id(tree: &sled::Tree, frontier: [u8; 16]) -> Result<[u8; 16]> {
    Ok(last_id_key(tree, ID)?.max(frontier))
}

fn last_id_key(tree: &sled::Tree, prefix: u8) -> Result<[u8; 16]> {
    match tree.scan_prefix([prefix]).next_back() {
        None => Ok([0; 16]),
        Some(entry) => {
            let (key, _) = entry.map_err(sled_error)?;
            key.get(1..)
                .and_then(|id| <[u8; 16]>::try_from(id).ok())
                .ok_or_else(|| corrupt_somewhere("malformed id index key"))
        }
    }
}

/// The index marker (0 when there is none yet).
pub(crate) fn indexed(tree: &sled::Tree) -> Result<u64> {
    match tree.get(format::META_INDEXED).map_err(sled_error)? {
        None => Ok(0),
        Some(value) => format::decode_indexed(&value)
            .map_err(|reason| corrupt_somewhere(format!("index marker: {reason}"))),
    }
}

/// Runs the repairs the store needs; returns the end of the log. Flushes what it wrote.
pub(crate) fn recover(db: &sled::Db, tree: &sled::Tree, log: &Log, scan: TailScan) -> Result<u64> {
    let TailScan {
        mut end,
        mut records,
        ..
    } = scan;
    if let Some(removed) = drop_interrupted_restore(log, &mut records, &mut end)? {
        tracing::warn!(
            records = removed,
            "removed the records of a restore a crash interrupted"
        );
    }
    // Locators past the end: written for records a crash lost (they are derived, written
    // before their records were durable).
    let stale: Vec<sled::IVec> = tree
        .range(format::commit_key(end + 1, 0)..=format::commit_key(u64::MAX, u64::MAX))
        .keys()
        .collect::<sled::Result<_>>()
        .map_err(sled_error)?;
    for key in &stale {
        tree.remove(key).map_err(sled_error)?;
    }
    if !stale.is_empty() {
        db.flush().map_err(sled_error)?;
    }
    let marker = indexed(tree)?;
    if marker > end {
        tracing::warn!(
            marker,
            end,
            "index entries past the end of the log: dropping them"
        );
        drop_past(tree, log, end)?;
        db.flush().map_err(sled_error)?;
    } else if marker < end {
        let redone = redo(tree, log, marker, end, &records)?;
        db.flush().map_err(sled_error)?;
        tracing::info!(
            from = marker + 1,
            position = end,
            commits = redone,
            "indexed the log's tail"
        );
    }
    Ok(end)
}

/// Removes from the log's end the records of a restore a crash interrupted (they lie past
/// the index marker: a restore is indexed only once whole and visible): the log is cut at the
/// first of them, durably.
fn drop_interrupted_restore(
    log: &Log,
    records: &mut Vec<(u64, u64, Loc)>,
    end: &mut u64,
) -> Result<Option<usize>> {
    let mut removed = 0;
    let mut restore = None;
    let mut cut = None;
    while let Some(&(first, last, loc)) = records.last() {
        // A damaged record is left for the redo to report.
        let Ok(record) = log.read(loc, first, last) else {
            break;
        };
        let Ok(commit) = format::parse_commit(&record.key, &record.value) else {
            break;
        };
        let Some(restore_last) = commit.restore_last() else {
            break;
        };
        let interrupted = match restore {
            None => restore_last > commit.last(),
            Some(last) => restore_last == last,
        };
        if !interrupted {
            break;
        }
        restore = Some(restore_last);
        records.pop();
        cut = Some(loc);
        *end = first - 1;
        removed += 1;
    }
    match cut {
        Some(loc) => {
            log.cut(loc.segment, loc.offset, *end)?;
            Ok(Some(removed))
        }
        None => Ok(None),
    }
}

/// Reads one commit record into what the indexes need: one [`CommitInfo`] per piece (one for an
/// append's record).
pub(crate) fn commit_infos(key: &[u8], value: &[u8]) -> Result<Vec<CommitInfo>> {
    let (first, _) =
        format::parse_commit_key(key).ok_or_else(|| corrupt_somewhere("malformed commit key"))?;
    let at = RecordPlace::new().position(Position::sequence(first));
    let commit = format::parse_commit(key, value)
        .map_err(|reason| Error::corrupt(at.clone(), format!("commit record: {reason}")))?;
    let mut infos = Vec::new();
    for (start, len) in commit.pieces() {
        let stream = StreamId::new(commit.stream(start)).map_err(|e| {
            Error::corrupt(
                RecordPlace::new().position(Position::sequence(first + start)),
                format!("commit record: {e}"),
            )
        })?;
        // A capacity hint only: the commit's count was checked against its bytes.
        let mut ids = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        for i in start..start + len {
            ids.push(commit.event_id(i).map_err(|reason| {
                Error::corrupt(
                    RecordPlace::new()
                        .stream(stream.clone())
                        .version(Version::new(commit.version(i)))
                        .position(Position::sequence(first + i)),
                    reason,
                )
            })?);
        }
        infos.push(CommitInfo {
            stream,
            first_version: commit.version(start),
            first: first + start,
            recorded_at: commit.recorded_at(start + len - 1),
            ids,
        });
    }
    Ok(infos)
}

/// Writes the index entries of the commits after `marker`, through `end`. A damaged commit in
/// that tail stops the open with [`Error::Corrupt`]: indexing around it would hand its versions
/// out again.
fn redo(
    tree: &sled::Tree,
    log: &Log,
    marker: u64,
    end: u64,
    records: &[(u64, u64, Loc)],
) -> Result<usize> {
    let mut commits = Vec::new();
    let mut locators = Vec::new();
    let mut expect = marker + 1;
    for &(first, last, loc) in records {
        let record = log
            .read(loc, first, last)
            .map_err(|bad| bad.error(log.dir()))?;
        let key = record.key;
        locators.push((key, format::locator_value(&key, loc)));
        for info in commit_infos(&key, &record.value)? {
            if info.first != expect {
                return Err(Error::corrupt(
                    RecordPlace::new().position(Position::sequence(expect)),
                    format!(
                        "the log skips positions {expect} to {} after the index marker",
                        info.first - 1
                    ),
                ));
            }
            expect = info.last() + 1;
            commits.push(info);
        }
    }
    if expect != end + 1 {
        return Err(Error::corrupt(
            RecordPlace::new().position(Position::sequence(expect)),
            format!(
                "the log's records after the index marker end at {}, the log at {end}",
                expect - 1
            ),
        ));
    }
    let mut batch = sled::Batch::default();
    // Stream-index entries an interrupted round wrote for these commits may group them into
    // other runs than the redo does: remove them all, then write the redo's.
    let mut spans: HashMap<&StreamId, (u64, u64)> = HashMap::new();
    for c in &commits {
        let span = spans
            .entry(&c.stream)
            .or_insert((c.first_version, c.last_version()));
        span.0 = span.0.min(c.first_version);
        span.1 = span.1.max(c.last_version());
    }
    for (stream, (lo, hi)) in spans {
        let id = stream.as_str();
        for entry in tree.range(format::stream_key(id, lo)..=format::stream_key(id, hi)) {
            let (key, _) = entry.map_err(sled_error)?;
            batch.remove(key);
        }
    }
    // An interrupted round may have written segments for some of these ids: the redo's ids at
    // or below the frontier get `I` entries (found either way).
    for (key, value) in locators {
        batch.insert(key.to_vec(), value);
    }
    let mut frontier = frontier(tree)?;
    index_batch(&mut batch, commits.iter(), end, &mut frontier);
    tree.apply_batch(batch).map_err(sled_error)?;
    Ok(commits.len())
}

/// Removes every index entry pointing past `end` and sets the marker to `end`, in one batch.
fn drop_past(tree: &sled::Tree, log: &Log, end: u64) -> Result<()> {
    let mut batch = sled::Batch::default();
    let mut streams = BTreeSet::new();
    for entry in tree.scan_prefix([STREAM]) {
        let (key, value) = entry.map_err(sled_error)?;
        if let Ok(run) = format::decode_stream_index(&key, &value) {
            if run.last() > end {
                if let Ok((stream, _)) = format::parse_stream_key(&key) {
                    streams.insert(stream.to_owned());
                }
                match run.through(end) {
                    None => batch.remove(key),
                    Some(cut) => {
                        let value = format::stream_index_value(&key, &cut);
                        batch.insert(key, value);
                    }
                }
            }
        }
    }
    for entry in tree.scan_prefix([ID]) {
        let (key, value) = entry.map_err(sled_error)?;
        if matches!(format::decode_id(&key, &value), Ok((_, _, p)) if p > end) {
            batch.remove(key);
        }
    }
    // A segment holding an id past the end goes; its other ids get `I` entries.
    for entry in tree.scan_prefix([SEGMENT]) {
        let (key, value) = entry.map_err(sled_error)?;
        let Ok(entries) = format::decode_segment(&key, &value) else {
            continue;
        };
        if entries.iter().all(|(_, p)| *p <= end) {
            continue;
        }
        batch.remove(key);
        for (id, position) in entries.into_iter().filter(|(_, p)| *p <= end) {
            let Some(Ok(event)) = format::event_at(tree, log, position)? else {
                continue;
            };
            if event.id.as_uuid().as_bytes() != &id {
                continue;
            }
            let id_key = format::id_key(event.id);
            batch.insert(
                id_key.to_vec(),
                format::id_value(&id_key, &event.stream, event.version, position),
            );
        }
    }
    for entry in tree.scan_prefix([HEAD]) {
        let (key, value) = entry.map_err(sled_error)?;
        if matches!(format::decode_head(&key, &value), Ok(h) if h.last_position > end) {
            streams.insert(String::from_utf8_lossy(&key[1..]).into_owned());
        }
    }
    for stream in streams {
        let head_key = format::head_key(&stream);
        match last_indexed_at_or_before(tree, log, &stream, end)? {
            Some(head) => batch.insert(head_key.clone(), format::head_value(&head_key, head)),
            None => batch.remove(head_key),
        }
    }
    batch.insert(format::META_INDEXED, format::indexed_value(end));
    tree.apply_batch(batch).map_err(sled_error)
}

/// The stream's head from its stream-index entries, ignoring commits past `end`.
pub(crate) fn last_indexed_at_or_before(
    tree: &sled::Tree,
    log: &Log,
    stream: &str,
    end: u64,
) -> Result<Option<Head>> {
    for entry in tree.scan_prefix(format::stream_prefix(stream)).rev() {
        let (key, value) = entry.map_err(sled_error)?;
        let Ok(run) = format::decode_stream_index(&key, &value) else {
            continue;
        };
        // A run of commits may straddle `end`; commits never do.
        let Some(run) = run.through(end) else {
            continue;
        };
        let Ok((_, first_version)) = format::parse_stream_key(&key) else {
            continue;
        };
        let last = run.last();
        let Ok(Some(record)) = format::commit_at(tree, log, last) else {
            continue;
        };
        let Ok(commit) = format::parse_commit(&record.key, &record.value) else {
            continue;
        };
        return Ok(Some(Head {
            version: first_version + run.count - 1,
            last_position: last,
            last_recorded_at: commit.recorded_at(last - commit.first),
        }));
    }
    Ok(None)
}
