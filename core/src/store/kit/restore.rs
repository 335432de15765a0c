use std::collections::HashMap;

use super::StoredEventRef;
use crate::store::RestoredEvent;
use crate::{Error, EventId, ExpectedVersion, Result, StreamId, Timestamp, Version};

/// A stream as a store sees it before a [restore](crate::EventStore::restore): its version and
/// when its last event was recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamHead {
    /// The stream's version ([`Version::EMPTY`] for a new stream).
    pub version: Version,
    /// When its last event was recorded, if it has one.
    pub last_recorded_at: Option<Timestamp>,
}

/// What a restore must write, after [`plan_restore`] checked the batch.
#[derive(Debug, Default)]
pub struct RestorePlan {
    /// The events to write, in batch order, each following its stream's head.
    pub write: Vec<RestoredEvent>,
    /// Events the store already holds (same id, same stream and version).
    pub present: u64,
}

/// Checks a restore batch against the streams' heads and the ids already stored, and says what
/// to write: the contract of [`EventStore::restore`](crate::EventStore::restore) in one place.
///
/// `heads` holds the head of every stream of the batch that has events (others are empty);
/// `stored` where each of the batch's ids is already stored (ids not in it are new). A store
/// gathers both in its own way (one query, one read of its indexes), then writes
/// [`RestorePlan::write`] in one commit.
///
/// # Errors
///
/// As [`EventStore::restore`](crate::EventStore::restore) documents.
pub fn plan_restore(
    events: Vec<RestoredEvent>,
    heads: &HashMap<StreamId, StreamHead>,
    stored: &HashMap<EventId, StoredEventRef>,
) -> Result<RestorePlan> {
    // Per stream: the version the next event of the batch must have, and the last recording
    // time seen in it.
    let mut next: HashMap<StreamId, (Version, Option<Timestamp>)> = HashMap::new();
    let mut plan = RestorePlan::default();
    for event in events {
        let head = heads.get(&event.stream_id).copied().unwrap_or_default();
        let last_time = match next.get(&event.stream_id) {
            Some(&(version, time)) => {
                if event.version != version {
                    return Err(Error::InvalidEvent {
                        event_id: Some(event.event.id),
                        reason: format!(
                            "stream `{}` version {} follows version {} in the restore batch: a \
                             stream's versions must be consecutive",
                            event.stream_id,
                            event.version,
                            Version::new(version.get().saturating_sub(1))
                        ),
                    });
                }
                time
            }
            None => {
                if event.version.get() == 0 || event.version > head.version.next() {
                    return Err(Error::VersionConflict {
                        stream: event.stream_id.clone(),
                        expected: ExpectedVersion::Exact(Version::new(
                            event.version.get().saturating_sub(1),
                        )),
                        actual: head.version,
                    });
                }
                None
            }
        };
        let found = stored.get(&event.event.id);
        if event.version <= head.version {
            // A version the stream has: it must hold this very event.
            match found {
                Some(r) if r.stream_id == event.stream_id && r.version == event.version => {
                    plan.present += 1;
                }
                _ => {
                    return Err(Error::IdempotencyConflict {
                        stream: event.stream_id.clone(),
                        event_id: event.event.id,
                        existing_stream: found
                            .map_or_else(|| event.stream_id.clone(), |r| r.stream_id.clone()),
                    })
                }
            }
        } else {
            if let Some(r) = found {
                return Err(Error::IdempotencyConflict {
                    stream: event.stream_id.clone(),
                    event_id: event.event.id,
                    existing_stream: r.stream_id.clone(),
                });
            }
            let previous = last_time.or(if event.version == head.version.next() {
                head.last_recorded_at
            } else {
                None
            });
            if previous.is_some_and(|t| event.recorded_at < t) {
                return Err(Error::InvalidEvent {
                    event_id: Some(event.event.id),
                    reason: format!(
                        "stream `{}` version {} is recorded at {}, before the event preceding it \
                         ({}): recording times never run backwards within a stream",
                        event.stream_id,
                        event.version,
                        event.recorded_at,
                        previous.unwrap_or(event.recorded_at)
                    ),
                });
            }
        }
        next.insert(
            event.stream_id.clone(),
            (event.version.next(), Some(event.recorded_at)),
        );
        if event.version > head.version {
            plan.write.push(event);
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventData, Position};

    fn restored(stream: &str, version: u64, micros: i64) -> RestoredEvent {
        RestoredEvent::new(
            StreamId::new(stream).unwrap(),
            Version::new(version),
            Timestamp::from_unix_micros(micros),
            EventData::json("E", &version).unwrap(),
        )
    }

    #[test]
    fn writes_past_the_head_counts_the_rest_and_refuses_gaps_and_time_running_back() {
        let a = StreamId::new("a-1").unwrap();
        let held = restored("a-1", 1, 10);
        let heads = HashMap::from([(
            a.clone(),
            StreamHead {
                version: Version::new(1),
                last_recorded_at: Some(Timestamp::from_unix_micros(10)),
            },
        )]);
        let stored = HashMap::from([(
            held.event.id,
            StoredEventRef {
                stream_id: a.clone(),
                version: Version::new(1),
                position: Position::sequence(1),
            },
        )]);
        let plan = plan_restore(
            vec![held.clone(), restored("b-1", 1, 5), restored("a-1", 2, 20)],
            &heads,
            &stored,
        )
        .unwrap();
        assert_eq!((plan.present, plan.write.len()), (1, 2));

        let gap = plan_restore(vec![restored("a-1", 3, 20)], &heads, &stored);
        assert!(matches!(gap, Err(Error::VersionConflict { .. })), "{gap:?}");
        let skip = plan_restore(
            vec![restored("b-1", 1, 1), restored("b-1", 3, 2)],
            &heads,
            &stored,
        );
        assert!(matches!(skip, Err(Error::InvalidEvent { .. })), "{skip:?}");
        let back = plan_restore(vec![restored("a-1", 2, 9)], &heads, &stored);
        assert!(matches!(back, Err(Error::InvalidEvent { .. })), "{back:?}");
        let other = plan_restore(vec![restored("a-1", 1, 10)], &heads, &stored);
        assert!(
            matches!(other, Err(Error::IdempotencyConflict { .. })),
            "another event at a held version: {other:?}"
        );
    }
}
