//! Problems, as the core [`VerifyReport`](annals::VerifyReport) lists them: kind, place, facts.

use annals::{Position, Problem, ProblemKind, RecordPlace, StreamId, Version};

use super::walk::Walk;

/// Where a problem is, from what the walk knows of it.
pub(super) fn place(
    stream: Option<&str>,
    version: Option<u64>,
    position: Option<u64>,
) -> RecordPlace {
    let mut place = RecordPlace::new();
    if let Some(stream) = stream.and_then(|s| StreamId::new(s).ok()) {
        place = place.stream(stream);
    }
    if let Some(version) = version {
        place = place.version(Version::new(version));
    }
    place.maybe_position(position.map(Position::sequence))
}

impl Walk<'_> {
    /// Reports a problem of `kind` at the place named by `stream`, `version` and `position`.
    pub(super) fn problem(
        &mut self,
        kind: ProblemKind,
        stream: Option<&str>,
        version: Option<u64>,
        position: Option<u64>,
        detail: impl Into<String>,
    ) {
        self.report
            .push(Problem::new(kind, place(stream, version, position), detail));
    }

    /// Reports a problem of `kind` whose place is unknown.
    pub(super) fn problem_somewhere(&mut self, kind: ProblemKind, detail: impl Into<String>) {
        self.problem(kind, None, None, None, detail);
    }
}
