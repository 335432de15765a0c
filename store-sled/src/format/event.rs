//! Event bodies: everything of an event but its place, which the commit record holding it gives.

use std::collections::BTreeMap;

use annals::{EventData, EventId, Metadata, Position, RecordedEvent, StreamId, Timestamp, Version};

use super::codec::{put_bytes, put_varint, Reader};
use crate::num::u64_from;

/// Encodes the part of an event record that does not depend on where the store puts it. Done
/// by the appending task, before it queues, so the writer only adds the place and the checksum.
pub(crate) fn encode_body(event: &EventData) -> Vec<u8> {
    let m = &event.metadata;
    let mut out = Vec::with_capacity(
        64 + event.event_type.len()
            + event.content_type.len()
            + m.header_bytes()
            + event.payload.len(),
    );
    out.extend_from_slice(event.id.as_uuid().as_bytes());
    out.extend_from_slice(&event.schema_version.to_be_bytes());
    put_bytes(&mut out, event.event_type.as_bytes());
    put_bytes(&mut out, event.content_type.as_bytes());
    let flags = u8::from(m.correlation_id.is_some()) | (u8::from(m.causation_id.is_some()) << 1);
    out.push(flags);
    for id in [m.correlation_id, m.causation_id].into_iter().flatten() {
        out.extend_from_slice(id.as_bytes());
    }
    out.extend_from_slice(&m.timestamp.unix_micros().to_be_bytes());
    put_varint(&mut out, u64_from(m.headers.len()));
    for (k, v) in &m.headers {
        put_bytes(&mut out, k.as_bytes());
        put_bytes(&mut out, v.as_bytes());
    }
    put_bytes(&mut out, &event.payload);
    out
}

/// The id at the start of an event body.
pub(super) fn body_id(body: &[u8]) -> Result<EventId, String> {
    Ok(EventId::from_uuid(Reader::new(body).uuid()?))
}

/// Decodes the event body of `stream`'s `version` at `position`.
pub(super) fn decode_body(
    stream: &StreamId,
    version: u64,
    position: u64,
    recorded_at: Timestamp,
    body: &[u8],
) -> Result<RecordedEvent, String> {
    let mut r = Reader::new(body);
    let id = EventId::from_uuid(r.uuid()?);
    let schema_version = r.u16()?;
    let event_type = r.string()?;
    let content_type = r.string()?;
    let flags = r.u8()?;
    if flags & !0b11 != 0 {
        return Err(format!("unknown metadata flags {flags:#04x}"));
    }
    let correlation_id = if flags & 1 != 0 {
        Some(r.uuid()?)
    } else {
        None
    };
    let causation_id = if flags & 2 != 0 {
        Some(r.uuid()?)
    } else {
        None
    };
    let timestamp = Timestamp::from_unix_micros(r.i64()?);
    let count = r.varint()?;
    let mut headers = BTreeMap::new();
    for _ in 0..count {
        let k = r.string()?;
        let v = r.string()?;
        headers.insert(k, v);
    }
    let payload = r.bytes()?.to_vec();
    r.end()?;
    Ok(RecordedEvent {
        stream_id: stream.clone(),
        version: Version::new(version),
        position: Position::sequence(position),
        recorded_at,
        id,
        event_type,
        schema_version,
        content_type,
        payload: payload.into(),
        metadata: Metadata::at(timestamp)
            .with_correlation_id(correlation_id)
            .with_causation_id(causation_id)
            .with_headers(headers),
    })
}
