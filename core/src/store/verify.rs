//! What a store's own integrity check ([`EventStore::verify`](super::EventStore::verify)) found.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Position, RecordPlace};

/// What [`EventStore::verify`](super::EventStore::verify) found: what was checked and every
/// problem, each with its place.
///
/// A report lists at most [`VerifyReport::MAX_PROBLEMS`] problems and counts the rest, so a
/// badly damaged store cannot make the check run out of memory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The last position of the global log, if it has any event.
    pub last_position: Option<Position>,
    /// What is wrong, in the order found (at most [`MAX_PROBLEMS`](Self::MAX_PROBLEMS)).
    pub problems: Vec<Problem>,
    /// Problems found beyond [`MAX_PROBLEMS`](Self::MAX_PROBLEMS), counted but not listed.
    pub problems_omitted: u64,
}

impl VerifyReport {
    /// The most problems a report lists; more are only counted.
    pub const MAX_PROBLEMS: usize = 1000;

    /// An empty report: nothing checked, nothing found.
    pub fn new() -> Self {
        VerifyReport::default()
    }

    /// Whether no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.problems_omitted == 0
    }

    /// Every problem found, listed or not.
    pub fn problem_count(&self) -> u64 {
        // A Vec's length always fits in u64 on the platforms Rust supports.
        u64::try_from(self.problems.len()).unwrap_or(u64::MAX) + self.problems_omitted
    }

    /// Adds `problem`, or only counts it once [`MAX_PROBLEMS`](Self::MAX_PROBLEMS) are listed.
    pub fn push(&mut self, problem: Problem) {
        if self.problems.len() < Self::MAX_PROBLEMS {
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
        write!(f, "{} problems", self.problem_count())?;
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        if self.problems_omitted > 0 {
            write!(f, "\n  … and {} more", self.problems_omitted)?;
        }
        Ok(())
    }
}

/// One thing wrong in a store.
///
/// Prints as `<place>: <kind>: <detail>`, e.g.
/// `stream account-1, version 3: corrupt record: checksum mismatch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Problem {
    /// What kind of problem.
    pub kind: ProblemKind,
    /// Where, as far as known.
    pub place: RecordPlace,
    /// The facts.
    pub detail: String,
}

impl Problem {
    /// A problem of `kind` at `place`.
    pub fn new(kind: ProblemKind, place: RecordPlace, detail: impl Into<String>) -> Self {
        Problem {
            kind,
            place,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.place.is_unknown() {
            f.write_str("store")?;
        } else {
            write!(f, "{}", self.place)?;
        }
        write!(f, ": {}: {}", self.kind, self.detail)
    }
}

/// The kinds of [`Problem`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ProblemKind {
    /// A record failed its checksum or could not be decoded.
    Corrupt,
    /// A stream's versions do not run 1, 2, 3… without gaps.
    VersionGap,
    /// A stream's positions do not increase with its versions, or the global log's positions
    /// do not increase.
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
    /// A key the store's format does not define.
    UnknownKey,
    /// The format marker is missing or wrong.
    FormatMarker,
    /// Stored state the store knows it wrote is gone (damaged files recovered to an older state).
    Missing,
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProblemKind::Corrupt => "corrupt record",
            ProblemKind::VersionGap => "gap in the stream's versions",
            ProblemKind::PositionOrder => "positions out of order",
            ProblemKind::LogGap => "gap in the global log",
            ProblemKind::LogMismatch => "global log and records disagree",
            ProblemKind::IdIndexMismatch => "event-id index and records disagree",
            ProblemKind::HeadMismatch => "stream head and records disagree",
            ProblemKind::SnapshotAhead => "snapshot ahead of its stream",
            ProblemKind::UnknownKey => "unknown key",
            ProblemKind::FormatMarker => "format marker",
            ProblemKind::Missing => "missing data",
        })
    }
}
