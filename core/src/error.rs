//! The one error type of the core and of every store.

use std::ops::RangeInclusive;

use crate::{EventId, ExpectedVersion, Limit, RecordPlace, StreamId, Version};

/// A boxed error from a backend or a codec.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in Annals.
///
/// Each failure a caller may want to handle is its own variant carrying the facts: a version
/// conflict carries both versions, a corruption names the record, a broken limit names the
/// limit, the value and the maximum. Backend failures keep their cause as the
/// [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream was not at the expected version; nothing was written.
    #[error(
        "version conflict on stream `{stream}`: expected {expected}, but it is at version {actual}"
    )]
    VersionConflict {
        /// The stream appended to.
        stream: StreamId,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// The stream's actual version.
        actual: Version,
    },

    /// A stream id broke the rules of [`StreamId`].
    #[error("invalid stream id {id:?}: {reason}")]
    InvalidStreamId {
        /// The offending id (cut to 300 characters).
        id: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// An append broke one of the [`Limits`](crate::Limits); nothing was written.
    #[error("limit exceeded: {limit} is {value}, the maximum is {max}")]
    LimitExceeded {
        /// Which limit.
        limit: Limit,
        /// The value found.
        value: u64,
        /// The maximum allowed.
        max: u64,
    },

    /// An event broke a rule every event obeys (empty type, schema version 0, an empty batch…);
    /// nothing was written.
    #[error("invalid event{}: {reason}", fmt_opt_id(.event_id))]
    InvalidEvent {
        /// The event, when one is to blame.
        event_id: Option<EventId>,
        /// Why it was refused.
        reason: String,
    },

    /// Some but not all of the batch's event ids were already appended, or they were appended
    /// elsewhere (another stream, another order): the batch is neither new nor a retry.
    #[error("event {event_id} was already appended to `{existing_stream}`; the batch for `{stream}` is neither new nor an exact retry of an earlier append")]
    IdempotencyConflict {
        /// The stream appended to.
        stream: StreamId,
        /// An id of the batch that was already stored.
        event_id: EventId,
        /// The stream holding that id.
        existing_stream: StreamId,
    },

    /// A stored record failed its integrity check or could not be decoded, or stored state is
    /// missing or damaged.
    #[error("corrupt record ({place}): {reason}")]
    Corrupt {
        /// Where the record is, as far as known.
        place: RecordPlace,
        /// What is wrong.
        reason: String,
    },

    /// A payload could not be encoded or decoded.
    #[error("codec `{content_type}` failed on event type `{event_type}`: {source}")]
    Codec {
        /// The codec's content type.
        content_type: String,
        /// The event type being encoded or decoded (or the snapshot's aggregate type).
        event_type: String,
        /// The codec's error.
        #[source]
        source: BoxError,
    },

    /// A payload's content type names no known codec.
    #[error("unknown content type `{content_type}` (event type `{event_type}`): no codec is registered for it")]
    UnknownContentType {
        /// The content type found.
        content_type: String,
        /// The event type it was found on.
        event_type: String,
    },

    /// An event type (at that schema version) is not known to the reader.
    #[error("unknown event type `{event_type}` at schema version {schema_version}")]
    UnknownEventType {
        /// The event type found.
        event_type: String,
        /// Its schema version.
        schema_version: u16,
    },

    /// An upcaster chain is broken or an upcaster failed.
    #[error("upcasting `{event_type}` from schema version {schema_version}: {reason}")]
    Upcast {
        /// The event type.
        event_type: String,
        /// The schema version being upcast.
        schema_version: u16,
        /// What is wrong.
        reason: String,
    },

    /// The backend cannot be reached (server down, connection refused or lost before the
    /// request was sent). Nothing was written; retrying later is safe.
    #[error("{backend} is unavailable: {source}")]
    Unavailable {
        /// Which backend (`sled`, `postgres`, `nats`…).
        backend: &'static str,
        /// The cause.
        #[source]
        source: BoxError,
    },

    /// The connection was lost while an append was being committed: it may or may not have been
    /// written. Retrying with the same event ids is safe, since appends are idempotent.
    #[error("the outcome of the append to `{stream}` is unknown ({backend} connection lost during commit); retry it with the same event ids")]
    AppendOutcomeUnknown {
        /// Which backend.
        backend: &'static str,
        /// The stream appended to.
        stream: StreamId,
        /// The cause.
        #[source]
        source: BoxError,
    },

    /// The backend gave up on a request that took too long.
    #[error("{backend} timed out: {source}")]
    Timeout {
        /// Which backend.
        backend: &'static str,
        /// The cause.
        #[source]
        source: BoxError,
    },

    /// A setting given to a builder, or a store URL, is missing or wrong; nothing was opened.
    #[error("invalid setting `{setting}`: {reason}")]
    Configuration {
        /// The setting, as named by the builder method or URL part that takes it.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The store's schema was never set up (or is incomplete) on its server: call the store's
    /// `init()` once.
    #[error("the Annals schema `{schema}` is not set up (or is incomplete): call `init()` on the store first")]
    NotInitialized {
        /// The schema (or namespace) that was looked for.
        schema: String,
    },

    /// The store's data is in a format this build cannot read: written by a newer (or an old,
    /// unconvertible) build, or not an Annals store at all. Nothing was changed.
    #[error("{backend} data format{}: {reason} (this build reads format versions {}–{})", fmt_found(*.found), .supported.start(), .supported.end())]
    Format {
        /// Which backend's format.
        backend: &'static str,
        /// The format version found, when there is a readable one.
        found: Option<u32>,
        /// The format versions this build reads.
        supported: RangeInclusive<u32>,
        /// What is wrong, and what to do.
        reason: String,
    },

    /// The store was closed.
    #[error("the store is closed")]
    Closed,

    /// Any other backend failure.
    #[error("{backend} error: {source}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// The cause.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Whether this is a [`Error::VersionConflict`].
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::VersionConflict { .. })
    }

    /// Whether retrying the *same* operation later, unchanged, may succeed: the backend was
    /// unavailable, timed out, or lost the connection during an append.
    ///
    /// A version conflict is not transient: the same append fails again. A caller retries it
    /// only after reloading the stream and deciding anew (see [`is_conflict`](Self::is_conflict));
    /// [`Repository`](crate::Repository) does that.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::Timeout { .. } | Error::AppendOutcomeUnknown { .. }
        )
    }

    /// A corruption error for a record at `place`.
    pub fn corrupt(place: RecordPlace, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            place,
            reason: reason.into(),
        }
    }

    /// A configuration error naming the `setting` at fault.
    pub fn configuration(setting: &'static str, reason: impl Into<String>) -> Self {
        Error::Configuration {
            setting,
            reason: reason.into(),
        }
    }

    /// Wraps any other backend error.
    pub fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            backend,
            source: source.into(),
        }
    }
}

fn fmt_opt_id(id: &Option<EventId>) -> String {
    id.map(|id| format!(" {id}")).unwrap_or_default()
}

fn fmt_found(found: Option<u32>) -> String {
    found.map(|v| format!(" version {v}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Position;

    #[test]
    fn a_version_conflict_is_a_conflict_and_not_transient() {
        let conflict = Error::VersionConflict {
            stream: StreamId::new("account-1").unwrap(),
            expected: ExpectedVersion::exact(1),
            actual: Version::new(2),
        };
        assert!(conflict.is_conflict());
        assert!(
            !conflict.is_transient(),
            "a generic retry layer must not retry a conflict blindly"
        );
        let down = Error::Unavailable {
            backend: "postgres",
            source: "connection refused".into(),
        };
        assert!(down.is_transient() && !down.is_conflict());
    }

    #[test]
    fn errors_name_what_kind_of_thing_went_wrong() {
        let corrupt = Error::corrupt(
            RecordPlace::new()
                .stream(StreamId::new("account-1").unwrap())
                .version(Version::new(3))
                .position(Position::sequence(9)),
            "checksum mismatch",
        );
        assert_eq!(
            corrupt.to_string(),
            "corrupt record (stream account-1, version 3, position 9): checksum mismatch"
        );
        let setting = Error::configuration("flush_interval", "must be above zero");
        assert_eq!(
            setting.to_string(),
            "invalid setting `flush_interval`: must be above zero"
        );
        let format = Error::Format {
            backend: "sled",
            found: Some(4),
            supported: 2..=3,
            reason: "written by a newer annals-sled".into(),
        };
        assert_eq!(
            format.to_string(),
            "sled data format version 4: written by a newer annals-sled (this build reads format versions 2–3)"
        );
    }
}
