//! Reading recorded events: upcast to the current schema version, then decoded with the
//! codec their content type names.

use std::borrow::Cow;

use super::Repository;
use crate::codec::{with_codec, Codec};
use crate::{Aggregate, DomainEvent, Error, EventStore, RecordedEvent, SnapshotStore};

impl<A, S, C> Repository<A, S, C>
where
    A: Aggregate,
    S: EventStore + SnapshotStore,
    C: Codec,
{
    /// Decodes a stored event of this aggregate exactly as loading does: checks its type,
    /// upcasts it to the current schema version with the repository's upcasters, and decodes it
    /// with the codec its content type names. Projections use it to match on the aggregate's
    /// event enum without decoding by hand.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownEventType`], [`Error::Upcast`], [`Error::UnknownContentType`] or
    /// [`Error::Codec`]: the event cannot be read as this aggregate's event.
    pub fn decode(&self, recorded: &RecordedEvent) -> Result<A::Event, Error> {
        self.decode_event(recorded)
    }

    pub(super) fn decode_event(&self, recorded: &RecordedEvent) -> Result<A::Event, Error> {
        let Some(current) = A::Event::current_schema_version(&recorded.event_type) else {
            return Err(Error::UnknownEventType {
                event_type: recorded.event_type.clone(),
                schema_version: recorded.schema_version,
            });
        };
        let payload: Cow<'_, [u8]> = if recorded.schema_version < current {
            Cow::Owned(self.inner.upcasters.upcast(
                &recorded.event_type,
                recorded.schema_version,
                &recorded.content_type,
                &recorded.payload,
                current,
            )?)
        } else if recorded.schema_version > current {
            return Err(Error::Upcast {
                event_type: recorded.event_type.clone(),
                schema_version: recorded.schema_version,
                reason: format!(
                    "stored at a schema version newer than this reader's current version {current}"
                ),
            });
        } else {
            Cow::Borrowed(&recorded.payload)
        };
        with_codec!(self.inner.codecs, &recorded.content_type, |codec| {
            A::Event::decode(codec, &recorded.event_type, &payload)
        })
        .unwrap_or_else(|| {
            Err(Error::UnknownContentType {
                content_type: recorded.content_type.clone(),
                event_type: recorded.event_type.clone(),
            })
        })
    }
}
