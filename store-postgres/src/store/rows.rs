//! Every row the store reads back, decoded and checked: a column that cannot be read, or a
//! value the schema allows but the model does not (a negative version, a header that is not a
//! string), is an [`Error::Corrupt`] naming the record's place as far as it is known.

use std::collections::BTreeMap;

use annals::store::kit::{StoredEventRef, StreamHead};
use annals::{
    Error, EventId, Metadata, Position, RecordPlace, RecordedEvent, Result, Snapshot, StreamId,
    StreamInfo, Version,
};
use bytes::Bytes;
use tokio_postgres::types::FromSql;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::types::{bits_to_u64, JsonText, PgTime, Xid8};

/// Column `idx` of `row`, a record at `place`.
pub(super) fn get<'a, T: FromSql<'a>>(row: &'a Row, idx: usize, place: &RecordPlace) -> Result<T> {
    row.try_get(idx)
        .map_err(|e| Error::corrupt(place.clone(), e.to_string()))
}

/// A stored version (a `bigint`, never negative in a sound store).
pub(super) fn version(stored: i64, place: &RecordPlace) -> Result<Version> {
    u64::try_from(stored)
        .map(Version::new)
        .map_err(|_| Error::corrupt(place.clone(), format!("negative version {stored}")))
}

/// A stored position: the transaction id and the `seq` (never negative in a sound store).
pub(super) fn position(xid: Xid8, seq: i64, place: &RecordPlace) -> Result<Position> {
    u64::try_from(seq)
        .map(|seq| Position::new(xid.0, seq))
        .map_err(|_| Error::corrupt(place.clone(), format!("negative seq {seq}")))
}

/// A stored stream id.
pub(super) fn stream_id(text: &str, place: &RecordPlace) -> Result<StreamId> {
    StreamId::new(text).map_err(|e| Error::corrupt(place.clone(), format!("stored stream id: {e}")))
}

/// A row of [`EVENT_COLUMNS`](crate::schema): one stored event.
pub(super) fn event(row: &Row) -> Result<RecordedEvent> {
    event_of(row, None)
}

/// A row of [`EVENT_COLUMNS`](crate::schema) read from `stream`: the row's stream id is checked
/// against `stream`, which the event then shares, rather than validated and copied anew.
pub(super) fn stream_event(row: &Row, stream: &StreamId) -> Result<RecordedEvent> {
    event_of(row, Some(stream))
}

/// One stored event, of the stream `known` when the read was of one stream.
///
/// Per row, it allocates only what the event owns alone: the event type, the content type, the
/// payload (one copy out of the row), and the headers when there are any.
fn event_of(row: &Row, known: Option<&StreamId>) -> Result<RecordedEvent> {
    let unknown = RecordPlace::new();
    let xid: Xid8 = get(row, 0, &unknown)?;
    let seq: i64 = get(row, 1, &unknown)?;
    let position = position(xid, seq, &unknown)?;
    let place = RecordPlace::new().position(position);
    let stored: &str = get(row, 2, &place)?;
    let stream_id = match known {
        Some(known) if known.as_str() == stored => known.clone(),
        _ => stream_id(stored, &place)?,
    };
    let place = place.stream(stream_id.clone());
    let version = version(get(row, 3, &place)?, &place)?;
    let place = place.version(version);
    let id: Uuid = get(row, 4, &place)?;
    let schema_version: i32 = get(row, 6, &place)?;
    let schema_version = u16::try_from(schema_version).map_err(|_| {
        Error::corrupt(
            place.clone(),
            format!("schema version {schema_version} is out of range"),
        )
    })?;
    let payload: &[u8] = get(row, 8, &place)?;
    let headers = headers(get(row, 12, &place)?, &place)?;
    let timestamp: PgTime = get(row, 11, &place)?;
    let recorded_at: PgTime = get(row, 13, &place)?;
    let correlation: Option<Uuid> = get(row, 9, &place)?;
    let causation: Option<Uuid> = get(row, 10, &place)?;
    Ok(RecordedEvent {
        stream_id,
        version,
        position,
        recorded_at: recorded_at.0,
        id: EventId::from_uuid(id),
        event_type: get(row, 5, &place)?,
        schema_version,
        content_type: get(row, 7, &place)?,
        payload: Bytes::copy_from_slice(payload),
        metadata: Metadata::at(timestamp.0)
            .with_correlation_id(correlation)
            .with_causation_id(causation)
            .with_headers(headers),
    })
}

/// Stored headers: a JSON object of strings. The empty object (most events' headers) is not
/// parsed at all, and the others straight into the map; only a value that is not such an object
/// is parsed again, to say what is wrong with it.
fn headers(json: JsonText<'_>, place: &RecordPlace) -> Result<BTreeMap<String, String>> {
    if json.is_empty_object() {
        return Ok(BTreeMap::new());
    }
    if let Ok(headers) = serde_json::from_slice::<BTreeMap<String, String>>(json.0) {
        return Ok(headers);
    }
    let value: serde_json::Value = serde_json::from_slice(json.0)
        .map_err(|e| Error::corrupt(place.clone(), format!("headers: {e}")))?;
    match value {
        serde_json::Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Ok((k, s)),
                other => Err(Error::corrupt(
                    place.clone(),
                    format!("header {k:?} is not a string: {other}"),
                )),
            })
            .collect(),
        other => Err(Error::corrupt(
            place.clone(),
            format!("headers are not an object: {other}"),
        )),
    }
}

/// A row of the idempotency lookup: `event_id, stream_id, version, transaction_id, seq`.
pub(super) fn stored_ref(row: &Row) -> Result<(Uuid, StoredEventRef)> {
    let unknown = RecordPlace::new();
    let id: Uuid = get(row, 0, &unknown)?;
    let xid: Xid8 = get(row, 3, &unknown)?;
    let position = position(xid, get(row, 4, &unknown)?, &unknown)?;
    let place = RecordPlace::new().position(position);
    let stream_id = stream_id(get(row, 1, &place)?, &place)?;
    let place = place.stream(stream_id.clone());
    let version = version(get(row, 2, &place)?, &place)?;
    Ok((
        id,
        StoredEventRef {
            stream_id,
            version,
            position,
        },
    ))
}

/// A row of a restore's heads: `stream_id, version, recorded_at` of the stream's last event.
pub(super) fn stream_head(row: &Row) -> Result<(StreamId, StreamHead)> {
    let unknown = RecordPlace::new();
    let stream_id = stream_id(get(row, 0, &unknown)?, &unknown)?;
    let place = RecordPlace::new().stream(stream_id.clone());
    let version = version(get(row, 1, &place)?, &place)?;
    let at: PgTime = get(row, 2, &place.clone().version(version))?;
    Ok((
        stream_id,
        StreamHead {
            version,
            last_recorded_at: Some(at.0),
        },
    ))
}

/// A row of the stream listing: `stream_id, version, transaction_id, seq, recorded_at`.
pub(super) fn stream_info(row: &Row) -> Result<StreamInfo> {
    let unknown = RecordPlace::new();
    let xid: Xid8 = get(row, 2, &unknown)?;
    let position = position(xid, get(row, 3, &unknown)?, &unknown)?;
    let place = RecordPlace::new().position(position);
    let stream_id = stream_id(get(row, 0, &place)?, &place)?;
    let place = place.stream(stream_id.clone());
    let version = version(get(row, 1, &place)?, &place)?;
    let at: PgTime = get(row, 4, &place.clone().version(version))?;
    Ok(StreamInfo::new(stream_id, version, position, at.0))
}

/// A row of the snapshot of `stream`: `version, schema_version, content_type, payload,
/// taken_at`. The version holds a `u64`'s bits (see `save_snapshot`).
pub(super) fn snapshot(row: &Row, stream: &StreamId) -> Result<Snapshot> {
    let place = RecordPlace::new().stream(stream.clone());
    let version = Version::new(bits_to_u64(get(row, 0, &place)?));
    let schema_version: i32 = get(row, 1, &place)?;
    let schema_version = u16::try_from(schema_version).map_err(|_| {
        Error::corrupt(
            place.clone(),
            format!("snapshot schema version {schema_version} is out of range"),
        )
    })?;
    let content_type: String = get(row, 2, &place)?;
    let payload: Vec<u8> = get(row, 3, &place)?;
    let taken_at: PgTime = get(row, 4, &place)?;
    Ok(
        Snapshot::new(stream.clone(), version, content_type, Bytes::from(payload))
            .with_schema_version(schema_version)
            .with_taken_at(taken_at.0),
    )
}

/// A row of the checkpoint `name`: `commit_pos, prepare`, each a `u64`'s bits.
pub(super) fn checkpoint(row: &Row, name: &str) -> Result<Position> {
    let bad = |e: tokio_postgres::Error| {
        Error::corrupt(RecordPlace::new(), format!("checkpoint {name:?}: {e}"))
    };
    let commit: i64 = row.try_get(0).map_err(bad)?;
    let prepare: i64 = row.try_get(1).map_err(bad)?;
    Ok(Position::new(bits_to_u64(commit), bits_to_u64(prepare)))
}

#[cfg(test)]
mod tests {
    use tokio_postgres::types::{FromSql, Type};

    use super::*;

    fn read(raw: &[u8]) -> Result<BTreeMap<String, String>> {
        let mut jsonb = vec![1];
        jsonb.extend_from_slice(raw);
        let text = JsonText::from_sql(&Type::JSONB, &jsonb).expect("jsonb");
        headers(text, &RecordPlace::new())
    }

    #[test]
    fn headers_decode_as_the_json_object_of_strings_they_are() {
        assert!(read(b"{}").expect("empty").is_empty());
        let two = read(br#"{"a": "1", "b": "x\"y"}"#).expect("two");
        assert_eq!(two.get("a").map(String::as_str), Some("1"));
        assert_eq!(two.get("b").map(String::as_str), Some("x\"y"));
        let not_string = read(br#"{"a": 1}"#).expect_err("a number");
        assert!(
            not_string.to_string().contains("\"a\" is not a string"),
            "{not_string}"
        );
        let not_object = read(b"[]").expect_err("an array");
        assert!(
            not_object.to_string().contains("not an object"),
            "{not_object}"
        );
        assert!(JsonText::from_sql(&Type::JSONB, b"\x02{}").is_err());
    }
}
