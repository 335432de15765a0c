//! Stream-index entries (versions run on, the commits they name are there) and heads (they
//! agree with their stream's last record).

use annals::{ProblemKind, Result};

use super::walk::Walk;
use crate::error::sled_error;
use crate::format::{self, StreamRun};

/// Where a stream-index entry points: `count` versions from `version` on, at the positions of
/// `run`, `first` to `last`.
struct Run<'k> {
    stream: &'k str,
    version: u64,
    first: u64,
    last: u64,
    count: u64,
    run: StreamRun,
}

impl Walk<'_> {
    /// A stream-index entry: versions run on, and the commit it names is there.
    pub(super) fn stream_entry(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let Some(run) = self.parse_run(key, value) else {
            return Ok(());
        };
        if run.last > self.visible {
            return Ok(()); // appended after the walk started
        }
        let same = matches!(&self.current, Some((s, _, _)) if s == run.stream);
        if !same {
            self.finish_stream()?;
            self.report.streams += 1;
            self.current = Some((run.stream.to_owned(), 0, 0));
        }
        self.check_run_order(&run);
        if self.check_run_commits(&run)? {
            self.current = Some((run.stream.to_owned(), run.version + run.count - 1, run.last));
        }
        Ok(())
    }

    /// Decodes a stream-index entry; a damaged one is reported and skipped.
    fn parse_run<'k>(&mut self, key: &'k [u8], value: &[u8]) -> Option<Run<'k>> {
        let (stream, version) = match format::parse_stream_key(key) {
            Ok(parsed) => parsed,
            Err(reason) => {
                self.problem_somewhere(ProblemKind::Corrupt, reason);
                return None;
            }
        };
        match format::decode_stream_index(key, value) {
            Ok(run) => Some(Run {
                stream,
                version,
                first: run.first,
                last: run.last(),
                count: run.count,
                run,
            }),
            Err(reason) => {
                self.problem(
                    ProblemKind::Corrupt,
                    Some(stream),
                    Some(version),
                    None,
                    format!("stream index: {reason}"),
                );
                None
            }
        }
    }

    /// The run follows the stream's previous one: the next version, a later position.
    fn check_run_order(&mut self, run: &Run<'_>) {
        let (last_version, last_position) = match &self.current {
            Some((_, v, p)) => (*v, *p),
            None => (0, 0),
        };
        if run.version != last_version + 1 {
            self.problem(
                ProblemKind::VersionGap,
                Some(run.stream),
                Some(run.version),
                Some(run.first),
                format!("follows version {last_version}"),
            );
        }
        if run.first <= last_position {
            self.problem(
                ProblemKind::PositionOrder,
                Some(run.stream),
                Some(run.version),
                Some(run.first),
                format!("position is not after the previous version's {last_position}"),
            );
        }
    }

    /// The commit records of the run's positions are there and hold the stream's versions at
    /// them. Returns whether they are all there.
    fn check_run_commits(&mut self, run: &Run<'_>) -> Result<bool> {
        let mut trouble = None;
        let mut i = 0;
        while i < run.count {
            let p = run.run.position(i);
            let found = match format::commit_at(self.tree, self.log, p) {
                Ok(found) => found,
                Err(_) => {
                    // A damaged record is reported with the log: skip the positions it holds.
                    let last = format::locate(self.tree, p)
                        .ok()
                        .flatten()
                        .map_or(p, |(_, last, _)| last);
                    while i < run.count && run.run.position(i) <= last {
                        i += 1;
                    }
                    continue;
                }
            };
            let Some(record) = found else {
                // The versions are not all there: the next entry shows the gap.
                self.problem(
                    ProblemKind::LogMismatch,
                    Some(run.stream),
                    Some(run.version + i),
                    Some(p),
                    format!(
                        "the stream index points to positions {} to {}, the log has no record of position {p}",
                        run.first, run.last
                    ),
                );
                return Ok(false);
            };
            let Ok(commit) = format::parse_commit(&record.key, &record.value) else {
                // A damaged record is reported with the log: skip the positions it holds.
                let last = record.last;
                while i < run.count && run.run.position(i) <= last {
                    i += 1;
                }
                continue;
            };
            while i < run.count {
                let q = run.run.position(i);
                if q > commit.last() {
                    break;
                }
                let j = q - commit.first;
                let (stream, version) = (commit.stream(j), commit.version(j));
                if trouble.is_none() && (stream != run.stream || version != run.version + i) {
                    trouble = Some(format!(
                        "the stream index points to a commit of `{stream}` version {version} at position {q}"
                    ));
                }
                i += 1;
            }
        }
        if let Some(detail) = trouble {
            self.problem(
                ProblemKind::LogMismatch,
                Some(run.stream),
                Some(run.version),
                Some(run.first),
                detail,
            );
        }
        Ok(true)
    }

    /// Compares the stream just walked with its head.
    pub(super) fn finish_stream(&mut self) -> Result<()> {
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

    /// A head: it decodes, and the stream index holds the version it names.
    pub(super) fn head(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let stream = String::from_utf8_lossy(&key[1..]).into_owned();
        let head = match format::decode_head(key, value) {
            Err(reason) => {
                self.problem(
                    ProblemKind::Corrupt,
                    Some(&stream),
                    None,
                    None,
                    format!("stream head: {reason}"),
                );
                return Ok(());
            }
            Ok(head) if head.last_position > self.visible => return Ok(()),
            Ok(head) => head,
        };
        let covered = self
            .tree
            .range(format::stream_key(&stream, 0)..=format::stream_key(&stream, head.version))
            .next_back()
            .transpose()
            .map_err(sled_error)?
            .and_then(|(k, v)| {
                let (_, fv) = format::parse_stream_key(&k).ok()?;
                let run = format::decode_stream_index(&k, &v).ok()?;
                Some(fv + run.count > head.version)
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
        Ok(())
    }
}
