use crate::{AppendResult, Error, EventId, Position, Result, StreamId, Version};

/// Where an event id was found by a store's duplicate check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEventRef {
    /// The stream holding the event.
    pub stream_id: StreamId,
    /// Its version there.
    pub version: Version,
    /// Its global position.
    pub position: Position,
}

/// Decides what an append whose ids were looked up means, for store implementors.
///
/// `found[i]` is where the batch's `i`-th event id is already stored, if anywhere. The answer:
///
/// - `Ok(None)`: no id is known, the batch is new;
/// - `Ok(Some(result))`: every id is known, in `stream`, at consecutive versions in batch order:
///   the batch is a retry, and `result` is what the first append returned;
/// - `Err(IdempotencyConflict)`: anything else.
///
/// # Errors
///
/// [`Error::IdempotencyConflict`] naming the first id that breaks the pattern.
pub fn resolve_retry(
    stream: &StreamId,
    ids: &[EventId],
    found: &[Option<StoredEventRef>],
) -> Result<Option<AppendResult>> {
    debug_assert_eq!(ids.len(), found.len());
    if found.iter().all(Option::is_none) {
        return Ok(None);
    }
    let conflict = |i: usize| {
        let existing_stream = found[i]
            .as_ref()
            .map_or_else(|| stream.clone(), |r| r.stream_id.clone());
        let index = if found[i].is_some() {
            i
        } else {
            found.iter().position(Option::is_some).unwrap_or(i)
        };
        Error::IdempotencyConflict {
            stream: stream.clone(),
            event_id: ids[index],
            existing_stream,
        }
    };
    let Some(first) = found[0].as_ref() else {
        return Err(conflict(0));
    };
    let mut last = first;
    for (i, entry) in found.iter().enumerate() {
        match entry {
            Some(r)
                if r.stream_id == *stream && r.version.get() == first.version.get() + i as u64 =>
            {
                last = r;
            }
            _ => return Err(conflict(i)),
        }
    }
    Ok(Some(AppendResult {
        first_version: first.version,
        last_version: last.version,
        first_position: first.position,
        last_position: last.position,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(stream: &StreamId, v: u64) -> Option<StoredEventRef> {
        Some(StoredEventRef {
            stream_id: stream.clone(),
            version: Version::new(v),
            position: Position::sequence(v * 10),
        })
    }

    #[test]
    fn classifies_new_retry_and_conflict() {
        let s = StreamId::new("a-1").unwrap();
        let other = StreamId::new("b-1").unwrap();
        let ids = [EventId::new(), EventId::new()];
        assert_eq!(resolve_retry(&s, &ids, &[None, None]).unwrap(), None);
        let r = resolve_retry(&s, &ids, &[at(&s, 3), at(&s, 4)])
            .unwrap()
            .unwrap();
        assert_eq!((r.first_version.get(), r.last_version.get()), (3, 4));
        assert!(resolve_retry(&s, &ids, &[at(&s, 3), None]).is_err());
        assert!(resolve_retry(&s, &ids, &[None, at(&s, 3)]).is_err());
        assert!(resolve_retry(&s, &ids, &[at(&s, 4), at(&s, 3)]).is_err());
        match resolve_retry(&s, &ids, &[at(&other, 1), at(&other, 2)]) {
            Err(Error::IdempotencyConflict {
                existing_stream, ..
            }) => assert_eq!(existing_stream, other),
            other => panic!("{other:?}"),
        }
    }
}
