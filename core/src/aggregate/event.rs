use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{codec_error, Codec};
use crate::{Error, EventId, Metadata, Position, Timestamp, Version};

/// An aggregate's event type: it names each event (`event_type`) and the schema version of its
/// payload, and encodes the payload.
///
/// Derive it on an enum with `#[derive(DomainEvent)]` (feature `derive`, on by default): each
/// variant is an event type named after the variant, whose stored payload is the variant's
/// fields alone (`Deposited { amount: 5 }` is stored as `{"amount":5}` with event type
/// `Deposited`). Attributes:
///
/// - `#[annals(schema_version = N)]` on the enum: the default schema version of every variant
///   (1 when absent);
/// - `#[annals(event_type = "Name", schema_version = N)]` on a variant: its own name or
///   version.
///
/// ```
/// use annals::{codec::Json, DomainEvent};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
/// enum AccountEvent {
///     Opened { owner: String },
///     #[annals(schema_version = 2)]
///     Deposited { amount: u64 },
///     #[annals(event_type = "AccountClosed")]
///     Closed,
/// }
///
/// let event = AccountEvent::Deposited { amount: 5 };
/// assert_eq!((event.event_type(), event.schema_version()), ("Deposited", 2));
/// let payload = event.encode(&Json)?;
/// assert_eq!(payload, br#"{"amount":5}"#);
/// assert_eq!(AccountEvent::decode(&Json, "Deposited", &payload)?, event);
/// assert_eq!(AccountEvent::Closed.event_type(), "AccountClosed");
/// # Ok::<(), annals::Error>(())
/// ```
///
/// Implemented by hand, only [`EVENT_TYPES`](Self::EVENT_TYPES) and
/// [`event_type`](Self::event_type) are required; the default encoding stores the whole value
/// with its serde representation.
pub trait DomainEvent:
    Clone + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// Every event type with its current schema version. Reading an event of a type not listed
    /// is an [`Error::UnknownEventType`]; upcasters bring older schema versions up to these.
    const EVENT_TYPES: &'static [(&'static str, u16)];

    /// This event's type, e.g. `Deposited`.
    fn event_type(&self) -> &'static str;

    /// This event's schema version: by default the one listed for its type in
    /// [`EVENT_TYPES`](Self::EVENT_TYPES), else 1.
    fn schema_version(&self) -> u16 {
        Self::current_schema_version(self.event_type()).unwrap_or(1)
    }

    /// The current schema version of `event_type`, or `None` when the type is unknown.
    fn current_schema_version(event_type: &str) -> Option<u16> {
        Self::EVENT_TYPES
            .iter()
            .find(|(name, _)| *name == event_type)
            .map(|&(_, version)| version)
    }

    /// Encodes this event's payload with `codec`; by default the whole value.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] when the codec fails.
    fn encode<C: Codec>(&self, codec: &C) -> Result<Vec<u8>, Error> {
        codec
            .encode(self)
            .map_err(|e| codec_error(codec, self.event_type(), e))
    }

    /// Decodes an event of type `event_type` (at its current schema version) from `payload`
    /// written by `codec`; by default the whole value.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownEventType`] for a type not in [`EVENT_TYPES`](Self::EVENT_TYPES),
    /// [`Error::Codec`] when the payload is not valid.
    fn decode<C: Codec>(codec: &C, event_type: &str, payload: &[u8]) -> Result<Self, Error> {
        if Self::current_schema_version(event_type).is_none() {
            return Err(Error::UnknownEventType {
                event_type: event_type.to_owned(),
                schema_version: 0,
            });
        }
        codec
            .decode(payload)
            .map_err(|e| codec_error(codec, event_type, e))
    }
}

/// A decoded event with its place in the store and its metadata.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Envelope<E> {
    /// The event, upcast to its current schema version.
    pub event: E,
    /// Its version in its stream.
    pub version: Version,
    /// Its place in the global log.
    pub position: Position,
    /// When the store committed it.
    pub recorded_at: Timestamp,
    /// Its id.
    pub id: EventId,
    /// Correlation, causation, time and headers.
    pub metadata: Metadata,
}
