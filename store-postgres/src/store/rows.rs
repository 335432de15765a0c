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

use crate::types::{bits_to_u64, PgTime, Xid8};

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
    let unknown = RecordPlace::new();
    let xid: Xid8 = get(row, 0, &unknown)?;
    let seq: i64 = get(row, 1, &unknown)?;
    let position = position(xid, seq, &unknown)?;
    let place = RecordPlace::new().position(position);
    let stream_id = stream_id(get(row, 2, &place)?, &place)?;
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
    let payload: Vec<u8> = get(row, 8, &place)?;
    let headers = match get::<serde_json::Value>(row, 12, &place)? {
        serde_json::Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Ok((k, s)),
                other => Err(Error::corrupt(
                    place.clone(),
                    format!("header {k:?} is not a string: {other}"),
                )),
            })
            .collect::<Result<BTreeMap<_, _>>>()?,
        other => {
            return Err(Error::corrupt(
                place,
                format!("headers are not an object: {other}"),
            ))
        }
    };
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
        payload: Bytes::from(payload),
        metadata: Metadata::at(timestamp.0)
            .with_correlation_id(correlation)
            .with_causation_id(causation)
            .with_headers(headers),
    })
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
