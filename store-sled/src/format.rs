//! The on-disk format: keys, values, checksums. `FORMAT.md` describes the same layout in prose;
//! change both together, and bump [`FORMAT_VERSION`] for any change an older build would misread.
//!
//! Every kind of record lives in ONE sled tree, told apart by a one-byte key prefix. sled applies
//! a batch atomically (also across a crash) only within one tree, so keeping the log, the stream
//! index, the heads and the id index in the same tree is what makes one append — one batch —
//! all-or-nothing, indexes included.

use std::collections::BTreeMap;

use annals::{
    Error, EventData, EventId, Metadata, Position, RecordedEvent, Snapshot, StreamId, Timestamp,
    Version,
};
use bytes::Bytes;
use uuid::Uuid;

/// The format this build writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// The sled tree holding every record.
pub(crate) const TREE: &[u8] = b"annals";

/// Key of the format marker.
pub(crate) const META_FORMAT: &[u8] = b"Mformat";
/// Prefix of stream records: `S stream-id 0xFF version(BE u64)` → event record.
pub(crate) const STREAM: u8 = b'S';
/// Prefix of the global log: `L position(BE u64)` → pointer to the stream record.
pub(crate) const LOG: u8 = b'L';
/// Prefix of stream heads: `H stream-id` → version, last position, last recorded_at.
pub(crate) const HEAD: u8 = b'H';
/// Prefix of the event-id index: `I uuid(16)` → stream, version, position.
pub(crate) const ID: u8 = b'I';
/// Prefix of snapshots: `N stream-id` → snapshot.
pub(crate) const SNAPSHOT: u8 = b'N';
/// Prefix of checkpoints: `C name` → position.
pub(crate) const CHECKPOINT: u8 = b'C';
/// Prefix of metadata: `M name`.
pub(crate) const META: u8 = b'M';
/// Ends the stream id inside stream-record keys. `0xFF` never occurs in UTF-8, so the keys of
/// `edges-1` and `edges-10` can never interleave.
pub(crate) const STREAM_END: u8 = 0xFF;

/// Bytes of the checksum that starts every value.
pub(crate) const CRC_LEN: usize = 4;
/// Offset of the body of an event record: crc, position, recorded_at.
pub(crate) const RECORD_HEADER: usize = CRC_LEN + 8 + 8;

// ---------------------------------------------------------------------------------------------
// Keys

pub(crate) fn stream_prefix(stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 10);
    key.push(STREAM);
    key.extend_from_slice(stream.as_bytes());
    key.push(STREAM_END);
    key
}

pub(crate) fn stream_key(stream: &str, version: u64) -> Vec<u8> {
    let mut key = stream_prefix(stream);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

pub(crate) fn log_key(position: u64) -> [u8; 9] {
    let mut key = [LOG; 9];
    key[1..].copy_from_slice(&position.to_be_bytes());
    key
}

pub(crate) fn head_key(stream: &str) -> Vec<u8> {
    prefixed(HEAD, stream.as_bytes())
}

pub(crate) fn id_key(id: EventId) -> [u8; 17] {
    let mut key = [ID; 17];
    key[1..].copy_from_slice(id.as_uuid().as_bytes());
    key
}

pub(crate) fn snapshot_key(stream: &str) -> Vec<u8> {
    prefixed(SNAPSHOT, stream.as_bytes())
}

pub(crate) fn checkpoint_key(name: &str) -> Vec<u8> {
    prefixed(CHECKPOINT, name.as_bytes())
}

fn prefixed(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(rest.len() + 1);
    key.push(prefix);
    key.extend_from_slice(rest);
    key
}

/// Splits a stream-record key into its stream id text and version.
pub(crate) fn parse_stream_key(key: &[u8]) -> Result<(&str, u64), String> {
    let rest = key
        .strip_prefix(&[STREAM])
        .ok_or("not a stream-record key")?;
    if rest.len() < 9 || rest[rest.len() - 9] != STREAM_END {
        return Err("stream-record key without its version".into());
    }
    let (id, tail) = rest.split_at(rest.len() - 9);
    let stream = std::str::from_utf8(id).map_err(|_| "stream id is not UTF-8".to_owned())?;
    Ok((stream, be_u64(&tail[1..])))
}

pub(crate) fn parse_log_key(key: &[u8]) -> Option<u64> {
    (key.len() == 9 && key[0] == LOG).then(|| be_u64(&key[1..]))
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

// ---------------------------------------------------------------------------------------------
// Checksums: every value starts with a CRC-32 (little-endian) over the key and the rest of the
// value, so a value moved under another key is caught as well as flipped bits.

fn crc(key: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(body);
    hasher.finalize()
}

/// Fills in the checksum of `value` (whose first [`CRC_LEN`] bytes are reserved) for `key`.
pub(crate) fn seal(key: &[u8], mut value: Vec<u8>) -> Vec<u8> {
    let sum = crc(key, &value[CRC_LEN..]);
    value[..CRC_LEN].copy_from_slice(&sum.to_le_bytes());
    value
}

/// Checks the checksum of `value` stored under `key` and returns the bytes after it.
pub(crate) fn unseal<'a>(key: &[u8], value: &'a [u8]) -> Result<&'a [u8], String> {
    if value.len() < CRC_LEN {
        return Err(format!("value of {} bytes is too short", value.len()));
    }
    let mut stored = [0u8; 4];
    stored.copy_from_slice(&value[..CRC_LEN]);
    let stored = u32::from_le_bytes(stored);
    let body = &value[CRC_LEN..];
    let computed = crc(key, body);
    if stored != computed {
        return Err(format!(
            "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    Ok(body)
}

// ---------------------------------------------------------------------------------------------
// A small strict reader: every length is checked, nothing panics on bad bytes.

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err(format!(
                "truncated: wanted {n} bytes, {} left",
                self.bytes.len()
            ));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(be_u64(self.take(8)?))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(self.u64()? as i64)
    }
    fn uuid(&mut self) -> Result<Uuid, String> {
        let mut b = [0u8; 16];
        b.copy_from_slice(self.take(16)?);
        Ok(Uuid::from_bytes(b))
    }
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            value |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| format!("length {len} too large"))?;
        self.take(len)
    }
    fn string(&mut self) -> Result<String, String> {
        let raw = self.bytes()?;
        String::from_utf8(raw.to_vec()).map_err(|_| "text is not UTF-8".to_owned())
    }
    fn end(&self) -> Result<(), String> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(format!("{} unexpected trailing bytes", self.bytes.len()))
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7F) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

// ---------------------------------------------------------------------------------------------
// Event records

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
    put_varint(&mut out, m.headers.len() as u64);
    for (k, v) in &m.headers {
        put_bytes(&mut out, k.as_bytes());
        put_bytes(&mut out, v.as_bytes());
    }
    put_bytes(&mut out, &event.payload);
    out
}

/// The full value of a stream record under `key`.
pub(crate) fn record_value(
    key: &[u8],
    position: u64,
    recorded_at: Timestamp,
    body: &[u8],
) -> Vec<u8> {
    let mut value = Vec::with_capacity(RECORD_HEADER + body.len());
    value.extend_from_slice(&[0; CRC_LEN]);
    value.extend_from_slice(&position.to_be_bytes());
    value.extend_from_slice(&recorded_at.unix_micros().to_be_bytes());
    value.extend_from_slice(body);
    seal(key, value)
}

/// The position field of a stream record, read without checking the checksum: only for naming
/// the place in an error about that record.
pub(crate) fn unverified_position(value: &[u8]) -> Option<Position> {
    (value.len() >= CRC_LEN + 8).then(|| Position::sequence(be_u64(&value[CRC_LEN..])))
}

/// The position and recorded time of a stream record, checksum verified.
pub(crate) fn record_place(key: &[u8], value: &[u8]) -> Result<(u64, Timestamp), String> {
    let mut r = Reader {
        bytes: unseal(key, value)?,
    };
    Ok((r.u64()?, Timestamp::from_unix_micros(r.i64()?)))
}

/// Decodes a stream record of `stream` at `version`, checking its checksum.
pub(crate) fn decode_record(
    stream: &StreamId,
    version: u64,
    key: &[u8],
    value: &[u8],
) -> annals::Result<RecordedEvent> {
    let corrupt = |reason: String| {
        Error::corrupt(
            Some(stream.clone()),
            Some(Version::new(version)),
            unverified_position(value),
            reason,
        )
    };
    let body = unseal(key, value).map_err(corrupt)?;
    decode_checked(stream, version, body).map_err(corrupt)
}

fn decode_checked(stream: &StreamId, version: u64, body: &[u8]) -> Result<RecordedEvent, String> {
    let mut r = Reader { bytes: body };
    let position = r.u64()?;
    let recorded_at = Timestamp::from_unix_micros(r.i64()?);
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
    let payload = Bytes::copy_from_slice(r.bytes()?);
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
        payload,
        metadata: Metadata {
            correlation_id,
            causation_id,
            timestamp,
            headers,
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Log entries: `L position` → version(BE) stream-id.

pub(crate) fn log_value(key: &[u8], stream: &str, version: u64) -> Vec<u8> {
    let mut value = Vec::with_capacity(CRC_LEN + 8 + stream.len());
    value.extend_from_slice(&[0; CRC_LEN]);
    value.extend_from_slice(&version.to_be_bytes());
    value.extend_from_slice(stream.as_bytes());
    seal(key, value)
}

/// Decodes a log entry into the stream text and version it points to.
pub(crate) fn decode_log<'a>(key: &[u8], value: &'a [u8]) -> Result<(&'a str, u64), String> {
    let body = unseal(key, value)?;
    let mut r = Reader { bytes: body };
    let version = r.u64()?;
    let stream = std::str::from_utf8(r.bytes).map_err(|_| "stream id is not UTF-8".to_owned())?;
    Ok((stream, version))
}

// ---------------------------------------------------------------------------------------------
// Heads: `H stream` → version, last position, last recorded_at.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) version: u64,
    pub(crate) last_position: u64,
    pub(crate) last_recorded_at: Timestamp,
}

pub(crate) fn head_value(key: &[u8], head: Head) -> Vec<u8> {
    let mut value = Vec::with_capacity(CRC_LEN + 24);
    value.extend_from_slice(&[0; CRC_LEN]);
    value.extend_from_slice(&head.version.to_be_bytes());
    value.extend_from_slice(&head.last_position.to_be_bytes());
    value.extend_from_slice(&head.last_recorded_at.unix_micros().to_be_bytes());
    seal(key, value)
}

pub(crate) fn decode_head(key: &[u8], value: &[u8]) -> Result<Head, String> {
    let mut r = Reader {
        bytes: unseal(key, value)?,
    };
    let head = Head {
        version: r.u64()?,
        last_position: r.u64()?,
        last_recorded_at: Timestamp::from_unix_micros(r.i64()?),
    };
    r.end()?;
    Ok(head)
}

// ---------------------------------------------------------------------------------------------
// Id index: `I uuid` → position, version, stream-id.

pub(crate) fn id_value(key: &[u8], stream: &str, version: u64, position: u64) -> Vec<u8> {
    let mut value = Vec::with_capacity(CRC_LEN + 16 + stream.len());
    value.extend_from_slice(&[0; CRC_LEN]);
    value.extend_from_slice(&position.to_be_bytes());
    value.extend_from_slice(&version.to_be_bytes());
    value.extend_from_slice(stream.as_bytes());
    seal(key, value)
}

pub(crate) fn decode_id<'a>(key: &[u8], value: &'a [u8]) -> Result<(&'a str, u64, u64), String> {
    let mut r = Reader {
        bytes: unseal(key, value)?,
    };
    let position = r.u64()?;
    let version = r.u64()?;
    let stream = std::str::from_utf8(r.bytes).map_err(|_| "stream id is not UTF-8".to_owned())?;
    Ok((stream, version, position))
}

// ---------------------------------------------------------------------------------------------
// Snapshots: `N stream` → version, schema version, taken_at, content type, payload.

pub(crate) fn snapshot_value(key: &[u8], s: &Snapshot) -> Vec<u8> {
    let mut value = Vec::with_capacity(CRC_LEN + 32 + s.content_type.len() + s.payload.len());
    value.extend_from_slice(&[0; CRC_LEN]);
    value.extend_from_slice(&s.version.get().to_be_bytes());
    value.extend_from_slice(&s.schema_version.to_be_bytes());
    value.extend_from_slice(&s.taken_at.unix_micros().to_be_bytes());
    put_bytes(&mut value, s.content_type.as_bytes());
    put_bytes(&mut value, &s.payload);
    seal(key, value)
}

pub(crate) fn decode_snapshot(
    stream: &StreamId,
    key: &[u8],
    value: &[u8],
) -> Result<Snapshot, String> {
    let mut r = Reader {
        bytes: unseal(key, value)?,
    };
    let version = Version::new(r.u64()?);
    let schema_version = r.u16()?;
    let taken_at = Timestamp::from_unix_micros(r.i64()?);
    let content_type = r.string()?;
    let payload = Bytes::copy_from_slice(r.bytes()?);
    r.end()?;
    Ok(Snapshot {
        stream_id: stream.clone(),
        version,
        schema_version,
        content_type,
        payload,
        taken_at,
    })
}

// ---------------------------------------------------------------------------------------------
// Checkpoints: `C name` → commit, prepare.

pub(crate) fn checkpoint_value(key: &[u8], position: Position) -> Vec<u8> {
    let mut value = Vec::with_capacity(CRC_LEN + 16);
    value.extend_from_slice(&[0; CRC_LEN]);
    value.extend_from_slice(&position.commit().to_be_bytes());
    value.extend_from_slice(&position.prepare().to_be_bytes());
    seal(key, value)
}

pub(crate) fn decode_checkpoint(key: &[u8], value: &[u8]) -> Result<Position, String> {
    let mut r = Reader {
        bytes: unseal(key, value)?,
    };
    let position = Position::new(r.u64()?, r.u64()?);
    r.end()?;
    Ok(position)
}

// ---------------------------------------------------------------------------------------------
// The format marker: `Mformat` → format version (BE u32).

pub(crate) fn format_value(version: u32) -> Vec<u8> {
    let mut value = vec![0; CRC_LEN];
    value.extend_from_slice(&version.to_be_bytes());
    seal(META_FORMAT, value)
}

pub(crate) fn decode_format(value: &[u8]) -> Result<u32, String> {
    let body = unseal(META_FORMAT, value)?;
    let bytes: [u8; 4] = body
        .try_into()
        .map_err(|_| format!("format marker of {} bytes, expected 4", body.len()))?;
    Ok(u32::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for n in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, n);
            assert_eq!(Reader { bytes: &out }.varint().unwrap(), n);
        }
        assert!(Reader { bytes: &[0x80; 11] }.varint().is_err());
        assert!(Reader { bytes: &[0x80] }.varint().is_err());
    }

    #[test]
    fn prefix_streams_keep_apart() {
        // Every key of edges-10 lies outside the key range of edges-1.
        let (lo, hi) = (stream_key("edges-1", 0), stream_key("edges-1", u64::MAX));
        for v in [0, 1, 255, 256, u64::MAX] {
            let other = stream_key("edges-10", v);
            assert!(other < lo || other > hi, "{other:?}");
            assert!(!other.starts_with(&stream_prefix("edges-1")));
        }
        let a = stream_key("edges-1", u64::MAX);
        assert_eq!(parse_stream_key(&a).unwrap(), ("edges-1", u64::MAX));
    }

    #[test]
    fn records_round_trip_and_catch_flips() {
        let stream = StreamId::new("a-1").unwrap();
        let event =
            EventData::new("T", "application/octet-stream", vec![1, 2, 3]).with_header("k", "v");
        let key = stream_key("a-1", 7);
        let value = record_value(
            &key,
            42,
            Timestamp::from_unix_micros(5),
            &encode_body(&event),
        );
        let read = decode_record(&stream, 7, &key, &value).unwrap();
        assert_eq!(read.to_event_data(), event);
        assert_eq!(read.position, Position::sequence(42));
        for i in 0..value.len() {
            let mut bad = value.clone();
            bad[i] ^= 0x10;
            let err = decode_record(&stream, 7, &key, &bad).unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "byte {i}: {err:?}");
        }
        // The same bytes under another key are caught too.
        let other = stream_key("a-1", 8);
        assert!(decode_record(&stream, 8, &other, &value).is_err());
        // Truncations never panic.
        for n in 0..value.len() {
            assert!(decode_record(&stream, 7, &key, &value[..n]).is_err());
        }
    }
}
