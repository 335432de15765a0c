//! Point lookups in the derived indexes written to sled: a stream's head, an event id's place.
//! The writer's checks and the reads use them after consulting the overlay (`overlay.rs`).

use std::collections::HashMap;

use annals::store::kit::StoredEventRef;
use annals::{Error, EventId, Position, RecordPlace, Result, StreamId, Version};

use crate::error::{corrupt_somewhere, sled_error};
use crate::format::{self, CheckedSegment, Head};
use crate::log::Log;

/// Where `id` is stored, if anywhere: its `I` entry, else the id segment whose range holds it.
pub(crate) fn lookup_id(
    tree: &sled::Tree,
    log: &Log,
    id: EventId,
) -> Result<Option<StoredEventRef>> {
    let key = format::id_key(id);
    if let Some(value) = tree.get(key).map_err(sled_error)? {
        return id_entry(&key, &value, id).map(Some);
    }
    let bytes = id.as_uuid().as_bytes();
    let Some((segment_key, segment)) = format::segment_for(tree, bytes).map_err(sled_error)? else {
        return Ok(None);
    };
    let found = format::segment_find(&segment_key, &segment, bytes)
        .map_err(|reason| corrupt_somewhere(format!("id segment holding {id}: {reason}")))?;
    match found {
        Some(position) => segment_entry(tree, log, id, position).map(Some),
        None => Ok(None),
    }
}

/// Where each of `ids` (sorted, each once) is stored, for those stored: as [`lookup_id`] for
/// each, but an id segment is read (and its checksum checked) once for all the ids in its range
/// rather than once per id — a restore's ids come in runs.
pub(crate) fn lookup_sorted_ids(
    tree: &sled::Tree,
    log: &Log,
    ids: &[EventId],
) -> Result<Vec<(EventId, StoredEventRef)>> {
    let singles = single_entries(tree, ids)?;
    let mut found = Vec::new();
    // The segment read last, checked once.
    let mut segment: Option<CheckedSegment> = None;
    for &id in ids {
        let key = format::id_key(id);
        let scanned = singles.through;
        let single = if scanned.is_some_and(|through| *id.as_uuid().as_bytes() <= through) {
            singles.found.get(&id).cloned()
        } else {
            match tree.get(key).map_err(sled_error)? {
                Some(value) => Some(id_entry(&key, &value, id)?),
                None => None,
            }
        };
        if let Some(single) = single {
            found.push((id, single));
            continue;
        }
        let bytes = id.as_uuid().as_bytes();
        // Sorted ids: the segment of the previous one covers this one too while its key is
        // at or above it (no segment key lies between them).
        let covers = segment
            .as_ref()
            .is_some_and(|s| s.key.get(1..).is_some_and(|k| k >= &bytes[..]));
        if !covers {
            segment = match format::segment_for(tree, bytes).map_err(sled_error)? {
                Some((key, value)) => {
                    Some(CheckedSegment::check(key, value).map_err(|reason| {
                        corrupt_somewhere(format!("id segment holding {id}: {reason}"))
                    })?)
                }
                None => None,
            };
        }
        // No segment at or above this id: it is not stored.
        if let Some(position) = segment.as_ref().and_then(|s| s.find(bytes)) {
            found.push((id, segment_entry(tree, log, id, position)?));
        }
    }
    Ok(found)
}

/// The `I` entries of some sorted ids, and through which id they are all known.
struct Singles {
    found: HashMap<EventId, StoredEventRef>,
    /// Every id up to this one has its entry (if any) in `found` (`None`: no id has).
    through: Option<[u8; 16]>,
}

/// The `I` entries of sorted `ids`, found by one scan of the entries between the first and the
/// last id rather than a lookup each — while the scan meets few entries of other ids: past a
/// budget it stops.
fn single_entries(tree: &sled::Tree, ids: &[EventId]) -> Result<Singles> {
    let mut found = HashMap::new();
    let (Some(first), Some(last)) = (ids.first(), ids.last()) else {
        return Ok(Singles {
            found,
            through: None,
        });
    };
    let budget = 2 * ids.len() + 64;
    let mut through = None;
    for (visited, entry) in tree
        .range(format::id_key(*first)..=format::id_key(*last))
        .enumerate()
    {
        if visited >= budget {
            return Ok(Singles { found, through });
        }
        let (key, value) = entry.map_err(sled_error)?;
        let Some(bytes) = key.get(1..).and_then(|k| <[u8; 16]>::try_from(k).ok()) else {
            return Err(corrupt_somewhere("malformed id index key"));
        };
        let id = EventId::from_uuid(uuid::Uuid::from_bytes(bytes));
        if ids
            .binary_search_by_key(&bytes, |i| *i.as_uuid().as_bytes())
            .is_ok()
        {
            found.insert(id, id_entry(&key, &value, id)?);
        }
        through = Some(bytes);
    }
    Ok(Singles {
        found,
        through: Some(*last.as_uuid().as_bytes()),
    })
}

/// The place an `I` entry names.
fn id_entry(key: &[u8], value: &[u8], id: EventId) -> Result<StoredEventRef> {
    let (stream, version, position) = format::decode_id(key, value)
        .map_err(|reason| corrupt_somewhere(format!("id index entry of {id}: {reason}")))?;
    let (version, position) = (Version::new(version), Position::sequence(position));
    let stream_id = StreamId::new(stream).map_err(|e| {
        Error::corrupt(
            RecordPlace::new().version(version).position(position),
            format!("id index entry of {id}: {e}"),
        )
    })?;
    Ok(StoredEventRef {
        stream_id,
        version,
        position,
    })
}

/// The place of `id`, which a segment maps to `position`: the commit record there names the
/// stream and version (and must hold `id`).
fn segment_entry(
    tree: &sled::Tree,
    log: &Log,
    id: EventId,
    position: u64,
) -> Result<StoredEventRef> {
    let at = Position::sequence(position);
    let dangling = |reason: String| {
        Error::corrupt(
            RecordPlace::new().position(at),
            format!("id segment entry of {id}: {reason}"),
        )
    };
    let event = format::event_at(tree, log, position)?
        .ok_or_else(|| dangling("no commit record holds its position".into()))?
        .map_err(dangling)?;
    if event.id != id {
        return Err(dangling("the event at its position has another id".into()));
    }
    Ok(StoredEventRef {
        stream_id: StreamId::new(event.stream).map_err(|e| dangling(e.to_string()))?,
        version: Version::new(event.version),
        position: at,
    })
}

/// The stream's stored head (applied, possibly not yet flushed).
pub(crate) fn read_head(tree: &sled::Tree, stream: &StreamId) -> Result<Option<Head>> {
    let key = format::head_key(stream.as_str());
    let Some(value) = tree.get(&key).map_err(sled_error)? else {
        return Ok(None);
    };
    format::decode_head(&key, &value)
        .map(Some)
        .map_err(|reason| {
            Error::corrupt(
                RecordPlace::new().stream(stream.clone()),
                format!("stream head: {reason}"),
            )
        })
}
