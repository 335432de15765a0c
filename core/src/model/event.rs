use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Position, StreamId, Timestamp, Version};

/// The id of an event: a UUID, and the key that makes appends idempotent.
///
/// [`EventId::new`] makes a UUID v7 (time-ordered, so ids index well);
/// [`EventId::derived`] makes a UUID v5 from a command id and an index, so a retried command
/// emits the same ids again and the store recognises the retry.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    /// A new time-ordered id (UUID v7).
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        EventId(Uuid::now_v7())
    }

    /// The id of the `index`-th event emitted by the command `command_id` (UUID v5): the same
    /// inputs always give the same id.
    pub fn derived(command_id: Uuid, index: u32) -> Self {
        let mut name = [0u8; 20];
        name[..16].copy_from_slice(command_id.as_bytes());
        name[16..].copy_from_slice(&index.to_be_bytes());
        EventId(Uuid::new_v5(&command_id, &name))
    }

    /// Wraps an existing UUID.
    pub const fn from_uuid(uuid: Uuid) -> Self {
        EventId(uuid)
    }

    /// The UUID.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl From<Uuid> for EventId {
    fn from(uuid: Uuid) -> Self {
        EventId(uuid)
    }
}

impl From<EventId> for Uuid {
    fn from(id: EventId) -> Self {
        id.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0)
    }
}

impl FromStr for EventId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(EventId(s.parse()?))
    }
}

/// What travels with an event besides its payload.
///
/// ```
/// use annals::Metadata;
/// use uuid::Uuid;
///
/// let request = Uuid::now_v7();
/// let metadata = Metadata::now().with_correlation_id(request).with_header("user", "ada");
/// assert_eq!(metadata.correlation_id, Some(request));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Metadata {
    /// Ties together every event caused, directly or not, by one original request.
    pub correlation_id: Option<Uuid>,
    /// The message (usually the command) that caused this event.
    pub causation_id: Option<Uuid>,
    /// When the event happened, as the writer saw it (the store adds its own `recorded_at`).
    pub timestamp: Timestamp,
    /// Free-form text headers (user id, tenant, trace context…), limited in total size by
    /// [`Limits::max_header_bytes`](crate::Limits::max_header_bytes).
    pub headers: BTreeMap<String, String>,
}

impl Metadata {
    /// Metadata stamped now, with no ids and no headers.
    pub fn now() -> Self {
        Metadata::at(Timestamp::now())
    }

    /// Metadata stamped `timestamp`, with no ids and no headers.
    pub fn at(timestamp: Timestamp) -> Self {
        Metadata {
            correlation_id: None,
            causation_id: None,
            timestamp,
            headers: BTreeMap::new(),
        }
    }

    /// Sets (or, with `None`, clears) the correlation id.
    #[must_use]
    pub fn with_correlation_id(mut self, id: impl Into<Option<Uuid>>) -> Self {
        self.correlation_id = id.into();
        self
    }

    /// Sets (or, with `None`, clears) the causation id.
    #[must_use]
    pub fn with_causation_id(mut self, id: impl Into<Option<Uuid>>) -> Self {
        self.causation_id = id.into();
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key.into(), value.into());
        self
    }

    /// Replaces the headers.
    #[must_use]
    pub fn with_headers(mut self, headers: BTreeMap<String, String>) -> Self {
        self.headers = headers;
        self
    }

    /// The total size of the headers in bytes (keys plus values).
    pub fn header_bytes(&self) -> usize {
        self.headers.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata::now()
    }
}

/// The content type of payloads written by the JSON codec.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// The content type of payloads written by the bincode codec.
pub const CONTENT_TYPE_BINCODE: &str = "application/x-bincode";
/// The content type of raw bytes whose meaning only the writer knows.
pub const CONTENT_TYPE_OCTET_STREAM: &str = "application/octet-stream";

/// An event to append: everything but the place the store gives it.
///
/// ```
/// use annals::EventData;
///
/// let event = EventData::json("Deposited", &serde_json::json!({ "amount": 10 }))?
///     .with_header("user", "alice");
/// assert_eq!(event.content_type, "application/json");
/// # Ok::<(), annals::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventData {
    /// The event's id, the idempotency key of appends.
    pub id: EventId,
    /// What happened, e.g. `Deposited`.
    pub event_type: String,
    /// The version of the payload's schema for this event type (1 or more); upcasters bring
    /// old versions up to date on read.
    pub schema_version: u16,
    /// The codec that wrote the payload, e.g. [`CONTENT_TYPE_JSON`].
    pub content_type: String,
    /// The encoded event.
    pub payload: Bytes,
    /// Correlation, causation, time and headers.
    pub metadata: Metadata,
}

impl EventData {
    /// An event of type `event_type` (schema version 1) with a raw payload, a new id and metadata
    /// stamped now.
    pub fn new(
        event_type: impl Into<String>,
        content_type: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> Self {
        EventData {
            id: EventId::new(),
            event_type: event_type.into(),
            schema_version: 1,
            content_type: content_type.into(),
            payload: payload.into(),
            metadata: Metadata::now(),
        }
    }

    /// An event whose payload is `value` encoded as JSON.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`](crate::Error::Codec) when `value` cannot be encoded.
    pub fn json<T: Serialize + ?Sized>(
        event_type: impl Into<String>,
        value: &T,
    ) -> Result<Self, crate::Error> {
        let event_type = event_type.into();
        let payload = serde_json::to_vec(value).map_err(|e| crate::Error::Codec {
            content_type: CONTENT_TYPE_JSON.into(),
            event_type: event_type.clone(),
            source: Box::new(e),
        })?;
        Ok(EventData::new(event_type, CONTENT_TYPE_JSON, payload))
    }

    /// Sets the id.
    #[must_use]
    pub fn with_id(mut self, id: EventId) -> Self {
        self.id = id;
        self
    }

    /// Sets the schema version.
    #[must_use]
    pub fn with_schema_version(mut self, schema_version: u16) -> Self {
        self.schema_version = schema_version;
        self
    }

    /// Sets the metadata.
    #[must_use]
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.headers.insert(key.into(), value.into());
        self
    }
}

/// An event as the store recorded it: the appended event plus its place in its stream and in
/// the global log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// The stream the event belongs to.
    pub stream_id: StreamId,
    /// Its version in that stream (the first event is 1).
    pub version: Version,
    /// Its place in the store's global log.
    pub position: Position,
    /// When the store committed it.
    pub recorded_at: Timestamp,
    /// The event's id.
    pub id: EventId,
    /// What happened.
    pub event_type: String,
    /// The payload's schema version.
    pub schema_version: u16,
    /// The codec that wrote the payload.
    pub content_type: String,
    /// The encoded event.
    pub payload: Bytes,
    /// Correlation, causation, time and headers.
    pub metadata: Metadata,
}

impl RecordedEvent {
    /// Records `event` at the given place.
    pub fn new(
        event: EventData,
        stream_id: StreamId,
        version: Version,
        position: Position,
        recorded_at: Timestamp,
    ) -> Self {
        RecordedEvent {
            stream_id,
            version,
            position,
            recorded_at,
            id: event.id,
            event_type: event.event_type,
            schema_version: event.schema_version,
            content_type: event.content_type,
            payload: event.payload,
            metadata: event.metadata,
        }
    }

    /// The stream's category (the text before the first `-` of its id).
    pub fn category(&self) -> &str {
        self.stream_id.category()
    }

    /// The event as it was appended, without its place.
    pub fn to_event_data(&self) -> EventData {
        EventData {
            id: self.id,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            content_type: self.content_type.clone(),
            payload: self.payload.clone(),
            metadata: self.metadata.clone(),
        }
    }
}

/// The result of a successful append.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AppendResult {
    /// The version of the first appended event.
    pub first_version: Version,
    /// The version of the last appended event: the stream's version after the append.
    pub last_version: Version,
    /// The global position of the first appended event.
    pub first_position: Position,
    /// The global position of the last appended event.
    pub last_position: Position,
}

impl AppendResult {
    /// The number of events appended.
    pub fn count(&self) -> u64 {
        self.last_version.get() - self.first_version.get() + 1
    }
}
