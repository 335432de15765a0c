//! Restoring a copy of a store: events appended with the version and the recording time they
//! had where they came from.

use serde::{Deserialize, Serialize};

use crate::{EventData, Position, RecordedEvent, StreamId, Timestamp, Version};

/// An event to [restore](super::EventStore::restore): what was appended, with its version in
/// its stream and the time its original store recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RestoredEvent {
    /// The stream.
    pub stream_id: StreamId,
    /// Its version there.
    pub version: Version,
    /// When its original store recorded it; kept as the event's `recorded_at`.
    pub recorded_at: Timestamp,
    /// The event, with its id, type, payload and metadata.
    pub event: EventData,
}

impl RestoredEvent {
    /// `event` at `version` of `stream_id`, recorded at `recorded_at`.
    pub fn new(
        stream_id: StreamId,
        version: Version,
        recorded_at: Timestamp,
        event: EventData,
    ) -> Self {
        RestoredEvent {
            stream_id,
            version,
            recorded_at,
            event,
        }
    }

    /// A recorded event of another store, to be restored exactly.
    pub fn of(event: &RecordedEvent) -> Self {
        RestoredEvent::new(
            event.stream_id.clone(),
            event.version,
            event.recorded_at,
            event.to_event_data(),
        )
    }
}

/// What a [restore](super::EventStore::restore) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RestoreResult {
    /// Events written now.
    pub written: u64,
    /// Events the store already held (same id at the same version: a re-run), not written again.
    pub present: u64,
    /// The position of the last event written, if any.
    pub last_position: Option<Position>,
}

impl RestoreResult {
    /// `written` new events ending at `last_position`, `present` found already stored.
    pub fn new(written: u64, present: u64, last_position: Option<Position>) -> Self {
        RestoreResult {
            written,
            present,
            last_position,
        }
    }
}
