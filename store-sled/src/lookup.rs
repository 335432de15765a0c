//! Point lookups in the derived indexes written to sled: a stream's head, an event id's place.
//! The writer's checks and the reads use them after consulting the overlay (`overlay.rs`).

use annals::store::kit::StoredEventRef;
use annals::{Error, EventId, Position, RecordPlace, Result, StreamId, Version};

use crate::error::{corrupt_somewhere, sled_error};
use crate::format::{self, Head};

/// Where `id` is stored, if anywhere: its `I` entry, else the id segment whose range holds it.
pub(crate) fn lookup_id(tree: &sled::Tree, id: EventId) -> Result<Option<StoredEventRef>> {
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
        Some(position) => segment_entry(tree, id, position).map(Some),
        None => Ok(None),
    }
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
fn segment_entry(tree: &sled::Tree, id: EventId, position: u64) -> Result<StoredEventRef> {
    let at = Position::sequence(position);
    let dangling = |reason: String| {
        Error::corrupt(
            RecordPlace::new().position(at),
            format!("id segment entry of {id}: {reason}"),
        )
    };
    let event = format::event_at(tree, position)
        .map_err(sled_error)?
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
