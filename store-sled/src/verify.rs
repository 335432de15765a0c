//! [`SledEventStore::verify`](crate::SledEventStore::verify): one pass over every key, plus point
//! lookups to check that each index and its target agree. Memory stays bounded: the walk keeps
//! only the stream it is in and at most [`MAX_PROBLEMS`] problems.

use std::fmt;

use annals::{EventId, Position, Result, StreamId, Version};

use crate::format::{self, CHECKPOINT, COMMIT, HEAD, ID, META, SEGMENT, SNAPSHOT, STREAM};
use crate::overlay::Overlay;
use crate::sled_error;

/// The most problems a report lists; more are only counted.
pub const MAX_PROBLEMS: usize = 1000;

/// What [`SledEventStore::verify`](crate::SledEventStore::verify) found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Event records checked.
    pub events: u64,
    /// Streams seen.
    pub streams: u64,
    /// Snapshots checked.
    pub snapshots: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// The last position of the global log.
    pub last_position: Option<Position>,
    /// What is wrong, in key order (at most [`MAX_PROBLEMS`]).
    pub problems: Vec<Problem>,
    /// Problems found beyond [`MAX_PROBLEMS`], not listed.
    pub problems_omitted: u64,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.problems_omitted == 0
    }

    fn push(&mut self, problem: Problem) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(problem);
        } else {
            self.problems_omitted += 1;
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} events in {} streams, {} snapshots, {} checkpoints: ",
            self.events, self.streams, self.snapshots, self.checkpoints
        )?;
        if self.is_clean() {
            return f.write_str("no problems");
        }
        write!(
            f,
            "{} problems",
            self.problems.len() as u64 + self.problems_omitted
        )?;
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        if self.problems_omitted > 0 {
            write!(f, "\n  … and {} more", self.problems_omitted)?;
        }
        Ok(())
    }
}

/// One thing wrong in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// What kind of problem.
    pub kind: ProblemKind,
    /// The stream concerned, when known.
    pub stream: Option<StreamId>,
    /// The version concerned, when known.
    pub version: Option<Version>,
    /// The global position concerned, when known.
    pub position: Option<Position>,
    /// The facts.
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.kind)?;
        if let Some(s) = &self.stream {
            write!(f, " stream `{s}`")?;
        }
        if let Some(v) = self.version {
            write!(f, " version {v}")?;
        }
        if let Some(p) = self.position {
            write!(f, " position {p}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// The kinds of [`Problem`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemKind {
    /// A record failed its checksum or could not be decoded.
    Corrupt,
    /// A stream's versions do not run 1, 2, 3… without gaps.
    VersionGap,
    /// A stream's positions do not increase with its versions.
    PositionOrder,
    /// The global log skips positions.
    LogGap,
    /// A global log entry does not point to the record holding that position (or a record has
    /// no log entry).
    LogMismatch,
    /// The event-id index does not agree with the records.
    IdIndexMismatch,
    /// A stream's head does not agree with its last record.
    HeadMismatch,
    /// A snapshot is of a version the stream has not reached.
    SnapshotAhead,
    /// A key this format does not define.
    UnknownKey,
    /// The format marker is missing or wrong.
    FormatMarker,
}

struct Walk<'a> {
    tree: &'a sled::Tree,
    visible: u64,
    report: VerifyReport,
    /// The stream being walked: its id, last version and last position.
    current: Option<(String, u64, u64)>,
    last_log: u64,
    /// The key of the last id segment walked (zeros before the first).
    last_segment: [u8; 16],
}

impl Walk<'_> {
    fn problem(
        &mut self,
        kind: ProblemKind,
        stream: Option<&str>,
        version: Option<u64>,
        position: Option<u64>,
        detail: impl Into<String>,
    ) {
        self.report.push(Problem {
            kind,
            stream: stream.and_then(|s| StreamId::new(s).ok()),
            version: version.map(Version::new),
            position: position.map(Position::sequence),
            detail: detail.into(),
        });
    }

    /// A stream-index entry: versions run on, and the commit it names is there.
    fn stream_entry(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let (stream, version) = match format::parse_stream_key(key) {
            Ok(parsed) => parsed,
            Err(reason) => {
                self.problem(ProblemKind::Corrupt, None, None, None, reason);
                return Ok(());
            }
        };
        let (first, count) = match format::decode_stream_index(key, value) {
            Ok(entry) => entry,
            Err(reason) => {
                self.problem(
                    ProblemKind::Corrupt,
                    Some(stream),
                    Some(version),
                    None,
                    format!("stream index: {reason}"),
                );
                return Ok(());
            }
        };
        let last = first + count - 1;
        if last > self.visible {
            return Ok(()); // appended after the walk started
        }
        let same = matches!(&self.current, Some((s, _, _)) if s == stream);
        if !same {
            self.finish_stream()?;
            self.report.streams += 1;
            self.current = Some((stream.to_owned(), 0, 0));
        }
        let (last_version, last_position) = match &self.current {
            Some((_, v, p)) => (*v, *p),
            None => (0, 0),
        };
        if version != last_version + 1 {
            self.problem(
                ProblemKind::VersionGap,
                Some(stream),
                Some(version),
                Some(first),
                format!("follows version {last_version}"),
            );
        }
        if first <= last_position {
            self.problem(
                ProblemKind::PositionOrder,
                Some(stream),
                Some(version),
                Some(first),
                format!("position is not after the previous version's {last_position}"),
            );
        }
        // The commit records of positions first..=last: one after the other, all of this
        // stream, their versions running with the positions.
        let mut expect = first;
        let mut trouble = None;
        for item in self
            .tree
            .range(format::commit_key(first, 0)..=format::commit_key(last, u64::MAX))
        {
            let (key, record) = item.map_err(sled_error)?;
            let Some((c_first, c_last)) = format::parse_commit_key(&key) else {
                continue; // reported with the log
            };
            if c_first != expect {
                break;
            }
            if let Ok(commit) = format::parse_commit(&key, &record) {
                if commit.stream != stream || commit.first_version != version + (c_first - first) {
                    trouble = Some(format!(
                        "the stream index points to a commit of `{}` version {}",
                        commit.stream, commit.first_version
                    ));
                }
            } // a damaged record is reported with the log
            expect = c_last + 1;
        }
        if expect != last + 1 {
            // The versions are not all there: the next entry shows the gap.
            self.problem(
                ProblemKind::LogMismatch,
                Some(stream),
                Some(version),
                Some(first),
                format!(
                    "the stream index points to positions {first} to {last}, the log has no record of position {expect}"
                ),
            );
            return Ok(());
        }
        if let Some(detail) = trouble {
            self.problem(
                ProblemKind::LogMismatch,
                Some(stream),
                Some(version),
                Some(first),
                detail,
            );
        }
        self.current = Some((stream.to_owned(), version + count - 1, last));
        Ok(())
    }

    /// Compares the stream just walked with its head.
    fn finish_stream(&mut self) -> Result<()> {
        let Some((stream, version, position)) = self.current.take() else {
            return Ok(());
        };
        let key = format::head_key(&stream);
        match self.tree.get(&key).map_err(sled_error)? {
            None => self.problem(
                ProblemKind::HeadMismatch,
                Some(&stream),
                Some(version),
                Some(position),
                "the stream has records but no head",
            ),
            Some(value) => match format::decode_head(&key, &value) {
                Ok(head) if head.last_position > self.visible => {}
                Ok(head) if head.version == version && head.last_position == position => {}
                Ok(head) => self.problem(
                    ProblemKind::HeadMismatch,
                    Some(&stream),
                    Some(version),
                    Some(position),
                    format!(
                        "the last record is version {version} at position {position}, the head says version {} at position {}",
                        head.version, head.last_position
                    ),
                ),
                Err(_) => {} // reported when the walk reaches the head
            },
        }
        Ok(())
    }

    /// A commit record: positions run on, every event decodes, its index entries agree.
    fn commit(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let Some((first, last)) = format::parse_commit_key(key) else {
            self.problem(
                ProblemKind::Corrupt,
                None,
                None,
                None,
                "malformed commit key",
            );
            return Ok(());
        };
        if first > self.visible {
            return Ok(());
        }
        if first != self.last_log + 1 {
            self.problem(
                ProblemKind::LogGap,
                None,
                None,
                Some(first),
                format!(
                    "the global log jumps from position {} to {first}",
                    self.last_log
                ),
            );
        }
        self.last_log = last;
        let commit = match format::parse_commit(key, value) {
            Ok(commit) => commit,
            Err(reason) => {
                self.problem(
                    ProblemKind::Corrupt,
                    None,
                    None,
                    Some(first),
                    format!("commit record: {reason}"),
                );
                return Ok(());
            }
        };
        let stream = commit.stream;
        let Ok(stream_id) = StreamId::new(stream) else {
            self.problem(
                ProblemKind::Corrupt,
                None,
                Some(commit.first_version),
                Some(first),
                format!("invalid stream id {stream:?}"),
            );
            return Ok(());
        };
        self.report.events += commit.count();
        // The stream index names this commit.
        let covered = self
            .tree
            .range(format::stream_key(stream, 0)..=format::stream_key(stream, commit.first_version))
            .next_back()
            .transpose()
            .map_err(sled_error)?
            .and_then(|(k, v)| {
                let (_, fv) = format::parse_stream_key(&k).ok()?;
                let (fp, count) = format::decode_stream_index(&k, &v).ok()?;
                let d = commit.first_version - fv;
                Some(fp + d == first && d + commit.count() <= count)
            })
            .unwrap_or(false);
        if !covered {
            self.problem(
                ProblemKind::LogMismatch,
                Some(stream),
                Some(commit.first_version),
                Some(first),
                "the commit record has no matching stream-index entry",
            );
        }
        for i in 0..commit.count() {
            let (version, position) = (commit.first_version + i, first + i);
            let event = match commit.event(&stream_id, i as usize) {
                Ok(event) => event,
                Err(error) => {
                    self.problem(
                        ProblemKind::Corrupt,
                        Some(stream),
                        Some(version),
                        Some(position),
                        error.to_string(),
                    );
                    continue;
                }
            };
            let id_key = format::id_key(event.id);
            match self.tree.get(id_key).map_err(sled_error)? {
                None if self.in_segment(event.id, position)? => {}
                None => self.problem(
                    ProblemKind::IdIndexMismatch,
                    Some(stream),
                    Some(version),
                    Some(position),
                    format!("event id {} is not in the id index", event.id),
                ),
                Some(entry) => match format::decode_id(&id_key, &entry) {
                    Ok((s, v, p)) if s == stream && v == version && p == position => {}
                    Ok((s, v, p)) => self.problem(
                        ProblemKind::IdIndexMismatch,
                        Some(stream),
                        Some(version),
                        Some(position),
                        format!(
                            "the id index maps {} to `{s}` version {v} position {p}",
                            event.id
                        ),
                    ),
                    Err(_) => {} // reported when the walk reaches the index entry
                },
            }
        }
        Ok(())
    }

    fn head(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let stream = String::from_utf8_lossy(&key[1..]).into_owned();
        match format::decode_head(key, value) {
            Err(reason) => self.problem(
                ProblemKind::Corrupt,
                Some(&stream),
                None,
                None,
                format!("stream head: {reason}"),
            ),
            Ok(head) if head.last_position > self.visible => {}
            Ok(head) => {
                let covered = self
                    .tree
                    .range(
                        format::stream_key(&stream, 0)..=format::stream_key(&stream, head.version),
                    )
                    .next_back()
                    .transpose()
                    .map_err(sled_error)?
                    .and_then(|(k, v)| {
                        let (_, fv) = format::parse_stream_key(&k).ok()?;
                        let (_, count) = format::decode_stream_index(&k, &v).ok()?;
                        Some(fv + count > head.version)
                    })
                    .unwrap_or(false);
                if !covered {
                    self.problem(
                        ProblemKind::HeadMismatch,
                        Some(&stream),
                        Some(head.version),
                        Some(head.last_position),
                        "the head names a version that has no record",
                    );
                }
            }
        }
        Ok(())
    }

    fn id(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let (stream, version, position) = match format::decode_id(key, value) {
            Ok(entry) => entry,
            Err(reason) => {
                self.problem(
                    ProblemKind::Corrupt,
                    None,
                    None,
                    None,
                    format!("id index entry: {reason}"),
                );
                return Ok(());
            }
        };
        if position > self.visible {
            return Ok(());
        }
        let there = self
            .tree
            .range(format::commit_key(0, 0)..=format::commit_key(position, u64::MAX))
            .next_back()
            .transpose()
            .map_err(sled_error)?
            .and_then(|(k, _)| format::parse_commit_key(&k))
            .is_some_and(|(_, last)| last >= position);
        if !there {
            self.problem(
                ProblemKind::IdIndexMismatch,
                Some(stream),
                Some(version),
                Some(position),
                "the id index points to a record that does not exist",
            );
        }
        Ok(())
    }

    /// Whether the id segment whose range holds `id` maps it to `position`.
    fn in_segment(&self, id: EventId, position: u64) -> Result<bool> {
        let bytes = id.as_uuid().as_bytes();
        let segment = format::segment_for(self.tree, bytes).map_err(sled_error)?;
        // A damaged segment is reported when the walk reaches it.
        Ok(segment.is_some_and(|(key, value)| {
            format::segment_find(&key, &value, bytes).is_ok_and(|p| p == Some(position))
        }))
    }

    fn segment(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let entries = match format::decode_segment(key, value) {
            Ok(entries) => entries,
            Err(reason) => {
                self.problem(
                    ProblemKind::Corrupt,
                    None,
                    None,
                    None,
                    format!("id segment: {reason}"),
                );
                return Ok(());
            }
        };
        // A lookup reads the first segment whose key is at or above the id: an id at or below
        // the previous segment's key would never be found here.
        if entries
            .first()
            .is_some_and(|(id, _)| *id <= self.last_segment)
        {
            self.problem(
                ProblemKind::IdIndexMismatch,
                None,
                None,
                None,
                "an id segment overlaps the one before it",
            );
        }
        if let Some((last, _)) = entries.last() {
            self.last_segment = *last;
        }
        for (id, position) in entries {
            if position > self.visible {
                continue;
            }
            let id = EventId::from_uuid(uuid::Uuid::from_bytes(id));
            let holds = format::event_at(self.tree, position)
                .map_err(sled_error)?
                .is_some_and(|event| event.is_ok_and(|event| event.id == id));
            if !holds {
                self.problem(
                    ProblemKind::IdIndexMismatch,
                    None,
                    None,
                    Some(position),
                    format!("an id segment maps {id} to a position that does not hold it"),
                );
            }
        }
        Ok(())
    }

    fn snapshot(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.report.snapshots += 1;
        let text = String::from_utf8_lossy(&key[1..]).into_owned();
        let Ok(stream) = StreamId::new(&text) else {
            self.problem(
                ProblemKind::Corrupt,
                None,
                None,
                None,
                format!("snapshot of invalid stream id {text:?}"),
            );
            return Ok(());
        };
        match format::decode_snapshot(&stream, key, value) {
            Err(reason) => self.problem(
                ProblemKind::Corrupt,
                Some(&text),
                None,
                None,
                format!("snapshot: {reason}"),
            ),
            Ok(snapshot) => {
                let head_key = format::head_key(&text);
                let head = match self.tree.get(&head_key).map_err(sled_error)? {
                    None => 0,
                    Some(v) => format::decode_head(&head_key, &v).map_or(u64::MAX, |h| h.version),
                };
                if snapshot.version.get() > head {
                    self.problem(
                        ProblemKind::SnapshotAhead,
                        Some(&text),
                        Some(snapshot.version.get()),
                        None,
                        format!(
                            "the snapshot is of version {}, the stream is at {head}",
                            snapshot.version
                        ),
                    );
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn run(tree: &sled::Tree, overlay: &Overlay, visible: u64) -> Result<VerifyReport> {
    // Index everything visible and keep other indexers out: the walk then checks every index
    // entry against the log, and none moves under it.
    let mut guard = overlay.lock_indexing();
    overlay.index_locked(&mut guard, tree, visible)?;
    let mut walk = Walk {
        tree,
        visible,
        report: VerifyReport {
            last_position: (visible > 0).then(|| Position::sequence(visible)),
            ..VerifyReport::default()
        },
        current: None,
        last_log: 0,
        last_segment: [0; 16],
    };
    let mut marker = false;
    for item in tree.iter() {
        let (key, value) = item.map_err(sled_error)?;
        match key.first().copied() {
            Some(STREAM) => walk.stream_entry(&key, &value)?,
            Some(COMMIT) => walk.commit(&key, &value)?,
            Some(HEAD) => walk.head(&key, &value)?,
            Some(ID) => walk.id(&key, &value)?,
            Some(SEGMENT) => walk.segment(&key, &value)?,
            Some(SNAPSHOT) => walk.snapshot(&key, &value)?,
            Some(CHECKPOINT) => {
                walk.report.checkpoints += 1;
                if let Err(reason) = format::decode_checkpoint(&key, &value) {
                    let name = String::from_utf8_lossy(&key[1..]).into_owned();
                    walk.problem(
                        ProblemKind::Corrupt,
                        None,
                        None,
                        None,
                        format!("checkpoint `{name}`: {reason}"),
                    );
                }
            }
            Some(META) if &key[..] == format::META_INDEXED => {
                if let Err(reason) = format::decode_indexed(&value) {
                    walk.problem(
                        ProblemKind::Corrupt,
                        None,
                        None,
                        None,
                        format!("index marker: {reason}"),
                    );
                }
            }
            Some(META) if &key[..] == format::META_FORMAT => {
                marker = true;
                match format::decode_format(&value) {
                    Ok(format::FORMAT_VERSION) => {}
                    Ok(other) => walk.problem(
                        ProblemKind::FormatMarker,
                        None,
                        None,
                        None,
                        format!("format {other}"),
                    ),
                    Err(reason) => {
                        walk.problem(ProblemKind::FormatMarker, None, None, None, reason)
                    }
                }
            }
            _ => walk.problem(
                ProblemKind::UnknownKey,
                None,
                None,
                None,
                format!("key {:?}", String::from_utf8_lossy(&key)),
            ),
        }
    }
    walk.finish_stream()?;
    if !marker {
        walk.problem(
            ProblemKind::FormatMarker,
            None,
            None,
            None,
            "the format marker is missing",
        );
    }
    if walk.last_log != visible {
        walk.problem(
            ProblemKind::LogGap,
            None,
            None,
            Some(visible),
            format!(
                "the global log ends at position {}, expected {visible}",
                walk.last_log
            ),
        );
    }
    Ok(walk.report)
}
