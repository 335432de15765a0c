//! Commit records: positions run on, every event decodes, the stream index covers each commit
//! and the id index finds each event.

use annals::{EventId, ProblemKind, Result, StreamId};

use super::walk::Walk;
use crate::error::sled_error;
use crate::format;

impl Walk<'_> {
    /// A commit record: positions run on, every event decodes, its index entries agree.
    pub(super) fn commit(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let Some((first, last)) = format::parse_commit_key(key) else {
            self.problem_somewhere(ProblemKind::Corrupt, "malformed commit key");
            return Ok(());
        };
        if first > self.visible {
            return Ok(());
        }
        if first != self.last_log + 1 {
            let detail = format!(
                "the global log jumps from position {} to {first}",
                self.last_log
            );
            self.problem(ProblemKind::LogGap, None, None, Some(first), detail);
        }
        self.last_log = last;
        self.locators += 1;
        let loc = match format::decode_locator(key, value) {
            Ok(loc) => loc,
            Err(reason) => {
                self.problem(
                    ProblemKind::Corrupt,
                    None,
                    None,
                    Some(first),
                    format!("commit locator: {reason}"),
                );
                return Ok(());
            }
        };
        let record = match self.log.read(loc, first, last) {
            Ok(record) => record,
            Err(bad) => {
                let detail = bad.describe(self.log.dir());
                self.problem(ProblemKind::Corrupt, None, None, Some(first), detail);
                return Ok(());
            }
        };
        let commit = match format::parse_commit(key, &record.value) {
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
        self.report.events += commit.count();
        for (start, len) in commit.pieces() {
            let stream = commit.stream(start);
            let Ok(stream_id) = StreamId::new(stream) else {
                self.problem(
                    ProblemKind::Corrupt,
                    None,
                    Some(commit.version(start)),
                    Some(first + start),
                    format!("invalid stream id {stream:?}"),
                );
                continue;
            };
            self.check_stream_covers(&commit, start, len)?;
            for i in start..start + len {
                let (version, position) = (commit.version(i), first + i);
                match commit.event(&stream_id, i) {
                    Ok(event) => self.check_id_of(stream, version, position, event.id)?,
                    Err(error) => self.problem(
                        ProblemKind::Corrupt,
                        Some(stream),
                        Some(version),
                        Some(position),
                        error.to_string(),
                    ),
                }
            }
        }
        Ok(())
    }

    /// The stream index maps the piece of `commit` from event `start` on (`len` events of one
    /// stream, versions running on) to its positions.
    fn check_stream_covers(
        &mut self,
        commit: &format::Commit<'_>,
        start: u64,
        len: u64,
    ) -> Result<()> {
        let stream = commit.stream(start);
        let (version, position) = (commit.version(start), commit.first + start);
        let end = version + len; // the first version after the piece
                                 // The piece may span several entries (an indexing round's entry of a stream holds at
                                 // most so many listed positions): each maps its part of the piece.
        let mut v = version;
        let mut covered = true;
        while covered && v < end {
            let entry = self
                .tree
                .range(format::stream_key(stream, 0)..=format::stream_key(stream, v))
                .next_back()
                .transpose()
                .map_err(sled_error)?;
            let mapped = entry.and_then(|(k, value)| {
                let (_, fv) = format::parse_stream_key(&k).ok()?;
                let run = format::decode_stream_index(&k, &value).ok()?;
                let upto = (fv + run.count).min(end);
                let maps =
                    v < upto && (v..upto).all(|x| run.position(x - fv) == position + (x - version));
                maps.then_some(upto)
            });
            match mapped {
                Some(upto) => v = upto,
                None => covered = false,
            }
        }
        if !covered {
            self.problem(
                ProblemKind::LogMismatch,
                Some(stream),
                Some(v),
                Some(position + (v - version)),
                "the commit record has no matching stream-index entry",
            );
        }
        Ok(())
    }

    /// The id index maps the event's `id` to its own place.
    fn check_id_of(
        &mut self,
        stream: &str,
        version: u64,
        position: u64,
        id: EventId,
    ) -> Result<()> {
        let id_key = format::id_key(id);
        match self.tree.get(id_key).map_err(sled_error)? {
            None if self.in_segment(id, position)? => {}
            None => self.problem(
                ProblemKind::IdIndexMismatch,
                Some(stream),
                Some(version),
                Some(position),
                format!("event id {id} is not in the id index"),
            ),
            Some(entry) => match format::decode_id(&id_key, &entry) {
                Ok((s, v, p)) if s == stream && v == version && p == position => {}
                Ok((s, v, p)) => self.problem(
                    ProblemKind::IdIndexMismatch,
                    Some(stream),
                    Some(version),
                    Some(position),
                    format!("the id index maps {id} to `{s}` version {v} position {p}"),
                ),
                Err(_) => {} // reported when the walk reaches the index entry
            },
        }
        Ok(())
    }
}
