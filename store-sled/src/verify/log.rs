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
        self.check_stream_covers(&commit)?;
        for i in 0..commit.count() {
            let (version, position) = (commit.first_version + i, first + i);
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
        Ok(())
    }

    /// The stream index names this commit.
    fn check_stream_covers(&mut self, commit: &format::Commit<'_>) -> Result<()> {
        let (stream, first) = (commit.stream, commit.first);
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
