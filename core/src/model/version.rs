use std::fmt;

use serde::{Deserialize, Serialize};

/// The version of a stream: the n-th event of a stream has version n, the first is 1, and an
/// empty (or missing) stream is at [`Version::EMPTY`] (0).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Version(u64);

impl Version {
    /// The version of a stream without events.
    pub const EMPTY: Version = Version(0);
    /// The version of a stream's first event.
    pub const FIRST: Version = Version(1);

    /// The version `n`.
    pub const fn new(n: u64) -> Self {
        Version(n)
    }

    /// The version as a number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The version after this one.
    #[must_use]
    pub const fn next(self) -> Self {
        Version(self.0 + 1)
    }

    /// This version moved forward by `n` events.
    #[must_use]
    pub const fn advance(self, n: u64) -> Self {
        Version(self.0 + n)
    }

    /// Whether this is the version of an empty stream.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::str::FromStr for Version {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Version(s.trim().parse()?))
    }
}

impl From<u64> for Version {
    fn from(n: u64) -> Self {
        Version(n)
    }
}

impl From<Version> for u64 {
    fn from(v: Version) -> Self {
        v.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// What the writer believes the stream's version to be; the append fails with
/// [`Error::VersionConflict`](crate::Error::VersionConflict) when it is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// No check: append whatever the stream's version.
    Any,
    /// The stream must have no events yet.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream must be at exactly this version (`Exact(Version::EMPTY)` is `NoStream`).
    Exact(Version),
}

impl ExpectedVersion {
    /// `Exact(Version::new(n))`.
    pub const fn exact(n: u64) -> Self {
        ExpectedVersion::Exact(Version::new(n))
    }

    /// Whether a stream at `actual` satisfies this expectation.
    pub fn is_satisfied_by(self, actual: Version) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual.is_empty(),
            ExpectedVersion::StreamExists => !actual.is_empty(),
            ExpectedVersion::Exact(v) => v == actual,
        }
    }

    /// Checks this expectation against `actual`, giving the conflict error for `stream` if it fails.
    ///
    /// # Errors
    ///
    /// [`Error::VersionConflict`](crate::Error::VersionConflict) carrying both versions.
    pub fn check(self, stream: &crate::StreamId, actual: Version) -> Result<(), crate::Error> {
        if self.is_satisfied_by(actual) {
            Ok(())
        } else {
            Err(crate::Error::VersionConflict {
                stream: stream.clone(),
                expected: self,
                actual,
            })
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("an existing stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

impl From<Version> for ExpectedVersion {
    fn from(v: Version) -> Self {
        ExpectedVersion::Exact(v)
    }
}
