use std::fmt;

use serde::{Deserialize, Serialize};

use super::EventData;
use crate::Error;

/// The limits an append must stay within; breaking one fails the whole append before anything
/// is written.
///
/// ```
/// use annals::Limits;
///
/// let limits = Limits::new().with_max_payload_bytes(64 * 1024);
/// assert_eq!(limits.max_payload_bytes(), 64 * 1024);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    max_payload_bytes: usize,
    max_batch_events: usize,
    max_batch_bytes: usize,
    max_header_bytes: usize,
    max_event_type_bytes: usize,
}

/// Which of the [`Limits`] was broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Limit {
    /// One event's payload, in bytes.
    PayloadBytes,
    /// The number of events in one append.
    BatchEvents,
    /// The total payload bytes of one append.
    BatchBytes,
    /// One event's headers (keys plus values), in bytes.
    HeaderBytes,
    /// One event type name, in bytes.
    EventTypeBytes,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::PayloadBytes => "payload size in bytes",
            Limit::BatchEvents => "events per append",
            Limit::BatchBytes => "payload bytes per append",
            Limit::HeaderBytes => "header size in bytes",
            Limit::EventTypeBytes => "event type length in bytes",
        })
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new()
    }
}

impl Limits {
    /// The default limits:
    ///
    /// - payload: 1 MiB per event;
    /// - batch: 10,000 events and 16 MiB of payload per append;
    /// - headers: 16 KiB per event;
    /// - event type: 255 bytes.
    pub const fn new() -> Self {
        Limits {
            max_payload_bytes: 1024 * 1024,
            max_batch_events: 10_000,
            max_batch_bytes: 16 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            max_event_type_bytes: 255,
        }
    }

    /// Sets the largest payload of one event, in bytes.
    #[must_use]
    pub const fn with_max_payload_bytes(mut self, n: usize) -> Self {
        self.max_payload_bytes = n;
        self
    }

    /// Sets the most events one append may carry.
    #[must_use]
    pub const fn with_max_batch_events(mut self, n: usize) -> Self {
        self.max_batch_events = n;
        self
    }

    /// Sets the most payload bytes one append may carry.
    #[must_use]
    pub const fn with_max_batch_bytes(mut self, n: usize) -> Self {
        self.max_batch_bytes = n;
        self
    }

    /// Sets the largest headers of one event (keys plus values), in bytes.
    #[must_use]
    pub const fn with_max_header_bytes(mut self, n: usize) -> Self {
        self.max_header_bytes = n;
        self
    }

    /// Sets the longest event type name, in bytes.
    #[must_use]
    pub const fn with_max_event_type_bytes(mut self, n: usize) -> Self {
        self.max_event_type_bytes = n;
        self
    }

    /// The largest payload of one event, in bytes.
    pub const fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    /// The most events per append.
    pub const fn max_batch_events(&self) -> usize {
        self.max_batch_events
    }

    /// The most payload bytes per append.
    pub const fn max_batch_bytes(&self) -> usize {
        self.max_batch_bytes
    }

    /// The largest headers per event, in bytes.
    pub const fn max_header_bytes(&self) -> usize {
        self.max_header_bytes
    }

    /// The longest event type name, in bytes.
    pub const fn max_event_type_bytes(&self) -> usize {
        self.max_event_type_bytes
    }

    /// Checks a batch against these limits and the rules every event obeys (a non-empty batch,
    /// non-empty event types, schema versions of 1 or more, no id twice in one batch).
    ///
    /// # Errors
    ///
    /// [`Error::LimitExceeded`] naming the limit, the value and the maximum, or
    /// [`Error::InvalidEvent`] for a batch that breaks a rule.
    pub fn check(&self, events: &[EventData]) -> Result<(), Error> {
        if events.is_empty() {
            return Err(Error::InvalidEvent {
                event_id: None,
                reason: "an append needs at least one event".into(),
            });
        }
        exceeds(Limit::BatchEvents, events.len(), self.max_batch_events)?;
        let mut total = 0usize;
        let mut ids = std::collections::HashSet::with_capacity(events.len());
        for event in events {
            exceeds(
                Limit::PayloadBytes,
                event.payload.len(),
                self.max_payload_bytes,
            )?;
            exceeds(
                Limit::HeaderBytes,
                event.metadata.header_bytes(),
                self.max_header_bytes,
            )?;
            exceeds(
                Limit::EventTypeBytes,
                event.event_type.len(),
                self.max_event_type_bytes,
            )?;
            total += event.payload.len();
            let reason = if event.event_type.is_empty() {
                "the event type is empty"
            } else if event.event_type.chars().any(char::is_control) {
                "the event type contains a control character"
            } else if event.schema_version == 0 {
                "the schema version is 0 (versions start at 1)"
            } else if event.content_type.is_empty() {
                "the content type is empty"
            } else if !ids.insert(event.id) {
                "the same event id appears twice in one append"
            } else {
                continue;
            };
            return Err(Error::InvalidEvent {
                event_id: Some(event.id),
                reason: reason.into(),
            });
        }
        exceeds(Limit::BatchBytes, total, self.max_batch_bytes)
    }
}

fn exceeds(limit: Limit, value: usize, max: usize) -> Result<(), Error> {
    if value > max {
        Err(Error::LimitExceeded {
            limit,
            value: value as u64,
            max: max as u64,
        })
    } else {
        Ok(())
    }
}
