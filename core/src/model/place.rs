use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Position, RecordedEvent, StreamId, Version};

/// Where a stored record is: its stream, its version there and its global position, each when
/// known.
///
/// Carried by [`Error::Corrupt`](crate::Error::Corrupt) and by the problems of a
/// [`VerifyReport`](crate::VerifyReport), and printed the same way everywhere.
///
/// ```
/// use annals::{Position, RecordPlace, StreamId, Version};
///
/// let place = RecordPlace::new()
///     .stream(StreamId::new("account-1")?)
///     .version(Version::new(3))
///     .position(Position::sequence(17));
/// assert_eq!(place.to_string(), "stream account-1, version 3, position 17");
/// assert_eq!(RecordPlace::new().to_string(), "unknown place");
/// # Ok::<(), annals::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RecordPlace {
    /// The record's stream, when known.
    pub stream: Option<StreamId>,
    /// The record's version in its stream, when known.
    pub version: Option<Version>,
    /// The record's global position, when known.
    pub position: Option<Position>,
}

impl RecordPlace {
    /// A place not known at all; add what is known with the setters.
    pub const fn new() -> Self {
        RecordPlace {
            stream: None,
            version: None,
            position: None,
        }
    }

    /// The place of a recorded event: its stream, version and position.
    pub fn of(event: &RecordedEvent) -> Self {
        RecordPlace {
            stream: Some(event.stream_id.clone()),
            version: Some(event.version),
            position: Some(event.position),
        }
    }

    /// Sets the stream.
    #[must_use]
    pub fn stream(mut self, stream: StreamId) -> Self {
        self.stream = Some(stream);
        self
    }

    /// Sets the version.
    #[must_use]
    pub fn version(mut self, version: Version) -> Self {
        self.version = Some(version);
        self
    }

    /// Sets the global position.
    #[must_use]
    pub fn position(mut self, position: Position) -> Self {
        self.position = Some(position);
        self
    }

    /// Sets the global position when one is known.
    #[must_use]
    pub fn maybe_position(mut self, position: Option<Position>) -> Self {
        self.position = position.or(self.position);
        self
    }

    /// Whether nothing about the place is known.
    pub fn is_unknown(&self) -> bool {
        self.stream.is_none() && self.version.is_none() && self.position.is_none()
    }
}

impl fmt::Display for RecordPlace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(s) = &self.stream {
            write!(f, "stream {s}")?;
            sep = ", ";
        }
        if let Some(v) = self.version {
            write!(f, "{sep}version {v}")?;
            sep = ", ";
        }
        if let Some(p) = self.position {
            write!(f, "{sep}position {p}")?;
            sep = ", ";
        }
        if sep.is_empty() {
            f.write_str("unknown place")?;
        }
        Ok(())
    }
}
