//! The on-disk format: keys, values, checksums. `FORMAT.md` describes the same layout in prose;
//! change both together, and bump [`FORMAT_VERSION`] for any change an older build would misread.
//!
//! Every kind of record lives in ONE sled tree, told apart by a one-byte key prefix. An append
//! is one commit record (`W`) — one sled insert, atomic by itself. The stream index, heads and
//! id index are derived from the commit records and written later in one batch (same tree, so
//! that batch and its `Mindexed` marker are atomic together); see `overlay.rs` and `recover.rs`.

use std::collections::BTreeMap;

use annals::{
    Error, EventData, EventId, Metadata, Position, RecordedEvent, Snapshot, StreamId, Timestamp,
    Version,
};
use bytes::Bytes;
use uuid::Uuid;

/// The format this build writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 3;
/// The sled tree holding every record.
pub(crate) const TREE: &[u8] = b"annals";

/// Key of the format marker.
pub(crate) const META_FORMAT: &[u8] = b"Mformat";
/// Key of the index marker: every index entry up to this position is written.
pub(crate) const META_INDEXED: &[u8] = b"Mindexed";
/// Prefix of the stream index: `S stream-id 0xFF first-version(BE u64)` → commit place.
pub(crate) const STREAM: u8 = b'S';
/// Prefix of commit records, the global log: `W first(BE u64) last(BE u64)` → events.
pub(crate) const COMMIT: u8 = b'W';
/// Prefix of stream heads: `H stream-id` → version, last position, last recorded_at.
pub(crate) const HEAD: u8 = b'H';
/// Prefix of the event-id index: `I uuid(16)` → stream, version, position.
pub(crate) const ID: u8 = b'I';
/// Prefix of id segments: `J uuid(16)` → the stored ids in (previous segment's key, this key],
/// sorted, with their positions.
pub(crate) const SEGMENT: u8 = b'J';
/// Most ids in one segment.
pub(crate) const SEGMENT_MAX: usize = 512;
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

// ---------------------------------------------------------------------------------------------
// Commit records: `W first(BE u64) last(BE u64)` → one append's events.
//
// Value layout: crc32 of the header (over key ++ header) | recorded_at i64 | first version u64 |
// stream id (varint length + UTF-8) | count (varint) | per event: body length (varint) and body
// crc32 (LE, over key ++ the event's position BE ++ body) | the bodies, concatenated. A flipped
// byte in one body fails that event only; the framing is covered by the header's checksum.

/// The key of the commit record holding positions `first..=last`.
pub(crate) fn commit_key(first: u64, last: u64) -> [u8; 17] {
    let mut key = [COMMIT; 17];
    key[1..9].copy_from_slice(&first.to_be_bytes());
    key[9..].copy_from_slice(&last.to_be_bytes());
    key
}

/// The first and last positions a commit key names.
pub(crate) fn parse_commit_key(key: &[u8]) -> Option<(u64, u64)> {
    (key.len() == 17 && key[0] == COMMIT && be_u64(&key[1..9]) <= be_u64(&key[9..]))
        .then(|| (be_u64(&key[1..9]), be_u64(&key[9..])))
}

/// The commit record holding `position`, if any: its key and value.
pub(crate) fn commit_at(
    tree: &sled::Tree,
    position: u64,
) -> sled::Result<Option<(sled::IVec, sled::IVec)>> {
    let found = tree
        .range(commit_key(0, 0)..=commit_key(position, u64::MAX))
        .next_back()
        .transpose()?;
    Ok(found.filter(|(key, _)| parse_commit_key(key).is_some_and(|(_, last)| last >= position)))
}

/// What the commit record holding a position says of the event there.
#[derive(Debug)]
pub(crate) struct EventAt {
    pub(crate) stream: String,
    pub(crate) version: u64,
    pub(crate) id: EventId,
}

/// The stream, version and id of the event at `position`: `None` when no commit record holds
/// it, `Some(Err(reason))` when the record is damaged.
pub(crate) fn event_at(
    tree: &sled::Tree,
    position: u64,
) -> sled::Result<Option<Result<EventAt, String>>> {
    let Some((key, value)) = commit_at(tree, position)? else {
        return Ok(None);
    };
    let read = || {
        let (first, _) = parse_commit_key(&key).ok_or("malformed commit key")?;
        let commit = parse_commit(&key, &value)?;
        let i = position - first;
        Ok(EventAt {
            stream: commit.stream.to_owned(),
            version: commit.first_version + i,
            id: commit.event_id(i as usize)?,
        })
    };
    Ok(Some(read()))
}

fn body_crc(key: &[u8], position: u64, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(&position.to_be_bytes());
    hasher.update(body);
    hasher.finalize()
}

/// The full value of the commit record under `key` (from [`commit_key`]).
pub(crate) fn commit_value<'b>(
    key: &[u8],
    recorded_at: Timestamp,
    stream: &str,
    first_version: u64,
    bodies: impl ExactSizeIterator<Item = &'b [u8]> + Clone,
) -> Vec<u8> {
    let first = be_u64(&key[1..9]);
    let total: usize = bodies.clone().map(<[u8]>::len).sum();
    let mut value = Vec::with_capacity(32 + stream.len() + bodies.len() * 8 + total);
    value.extend_from_slice(&[0; CRC_LEN]);
    value.extend_from_slice(&recorded_at.unix_micros().to_be_bytes());
    value.extend_from_slice(&first_version.to_be_bytes());
    put_bytes(&mut value, stream.as_bytes());
    put_varint(&mut value, bodies.len() as u64);
    for (i, body) in bodies.clone().enumerate() {
        put_varint(&mut value, body.len() as u64);
        value.extend_from_slice(&body_crc(key, first + i as u64, body).to_le_bytes());
    }
    let header = value.len();
    let sum = crc(key, &value[CRC_LEN..header]);
    value[..CRC_LEN].copy_from_slice(&sum.to_le_bytes());
    for body in bodies {
        value.extend_from_slice(body);
    }
    value
}

/// A commit record whose header passed its checksum; its events are checked one by one.
#[derive(Debug)]
pub(crate) struct Commit<'a> {
    pub(crate) first: u64,
    pub(crate) recorded_at: Timestamp,
    pub(crate) first_version: u64,
    pub(crate) stream: &'a str,
    key: &'a [u8],
    /// Offset, length and checksum of each body.
    entries: Vec<(usize, usize, u32)>,
    value: &'a [u8],
}

/// Parses the header of a commit record (checksum verified) and checks its framing.
pub(crate) fn parse_commit<'a>(key: &'a [u8], value: &'a [u8]) -> Result<Commit<'a>, String> {
    let (first, last) = parse_commit_key(key).ok_or("malformed commit key")?;
    if value.len() < CRC_LEN {
        return Err(format!("value of {} bytes is too short", value.len()));
    }
    let mut r = Reader {
        bytes: &value[CRC_LEN..],
    };
    let recorded_at = Timestamp::from_unix_micros(r.i64()?);
    let first_version = r.u64()?;
    let stream = std::str::from_utf8(r.bytes()?).map_err(|_| "stream id is not UTF-8")?;
    let count = r.varint()?;
    if count != last - first + 1 {
        return Err(format!(
            "the record holds {count} events, its key says {}",
            last - first + 1
        ));
    }
    let mut lens = Vec::with_capacity(count.min(10_000) as usize);
    for _ in 0..count {
        let len = usize::try_from(r.varint()?).map_err(|_| "length too large")?;
        let mut sum = [0u8; 4];
        sum.copy_from_slice(r.take(4)?);
        lens.push((len, u32::from_le_bytes(sum)));
    }
    let header = value.len() - r.bytes.len();
    let mut stored = [0u8; 4];
    stored.copy_from_slice(&value[..CRC_LEN]);
    let stored = u32::from_le_bytes(stored);
    let computed = crc(key, &value[CRC_LEN..header]);
    if stored != computed {
        return Err(format!(
            "checksum mismatch in the commit header (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    let mut offset = header;
    let mut entries = Vec::with_capacity(lens.len());
    for (len, sum) in lens {
        entries.push((offset, len, sum));
        offset = offset.checked_add(len).ok_or("length too large")?;
    }
    if offset != value.len() {
        return Err(format!(
            "the bodies take {} bytes, the record has {}",
            offset - header,
            value.len() - header
        ));
    }
    Ok(Commit {
        first,
        recorded_at,
        first_version,
        stream,
        key,
        entries,
        value,
    })
}

impl Commit<'_> {
    /// Events in the record.
    pub(crate) fn count(&self) -> u64 {
        self.entries.len() as u64
    }

    /// The checked body of event `i`.
    fn body(&self, i: usize) -> Result<&[u8], String> {
        let (offset, len, sum) = self.entries[i];
        let body = &self.value[offset..offset + len];
        let computed = body_crc(self.key, self.first + i as u64, body);
        if computed != sum {
            return Err(format!(
                "checksum mismatch (stored {sum:#010x}, computed {computed:#010x})"
            ));
        }
        Ok(body)
    }

    /// The id of event `i`, its checksum verified.
    pub(crate) fn event_id(&self, i: usize) -> Result<EventId, String> {
        let body = self.body(i)?;
        let mut r = Reader { bytes: body };
        Ok(EventId::from_uuid(r.uuid()?))
    }

    /// Decodes event `i`; a damaged event is [`Error::Corrupt`] naming it.
    pub(crate) fn event(&self, stream: &StreamId, i: usize) -> annals::Result<RecordedEvent> {
        let version = self.first_version + i as u64;
        let position = self.first + i as u64;
        self.body(i)
            .and_then(|body| decode_body(stream, version, position, self.recorded_at, body))
            .map_err(|reason| {
                Error::corrupt(
                    Some(stream.clone()),
                    Some(Version::new(version)),
                    Some(Position::sequence(position)),
                    reason,
                )
            })
    }
}

fn decode_body(
    stream: &StreamId,
    version: u64,
    position: u64,
    recorded_at: Timestamp,
    body: &[u8],
) -> Result<RecordedEvent, String> {
    let mut r = Reader { bytes: body };
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
// Stream index: `S stream-id 0xFF first-version` → first position (u64), count (u64) of the
// commit holding that stream's versions `first-version..`.

pub(crate) fn stream_index_value(key: &[u8], first_position: u64, count: u64) -> Vec<u8> {
    let mut value = Vec::with_capacity(CRC_LEN + 16);
    value.extend_from_slice(&[0; CRC_LEN]);
    value.extend_from_slice(&first_position.to_be_bytes());
    value.extend_from_slice(&count.to_be_bytes());
    seal(key, value)
}

/// The first position and count a stream-index entry names.
pub(crate) fn decode_stream_index(key: &[u8], value: &[u8]) -> Result<(u64, u64), String> {
    let mut r = Reader {
        bytes: unseal(key, value)?,
    };
    let entry = (r.u64()?, r.u64()?);
    r.end()?;
    if entry.1 == 0 {
        return Err("a stream-index entry of zero events".into());
    }
    Ok(entry)
}

// ---------------------------------------------------------------------------------------------
// The index marker: `Mindexed` → the position through which every index entry is written.

pub(crate) fn indexed_value(position: u64) -> Vec<u8> {
    let mut value = vec![0; CRC_LEN];
    value.extend_from_slice(&position.to_be_bytes());
    seal(META_INDEXED, value)
}

pub(crate) fn decode_indexed(value: &[u8]) -> Result<u64, String> {
    let mut r = Reader {
        bytes: unseal(META_INDEXED, value)?,
    };
    let position = r.u64()?;
    r.end()?;
    Ok(position)
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
// Id segments: `J last-uuid` → count (BE u32), then per id: uuid (16), position (BE u64); the ids
// strictly increasing, the last one the key's.

/// Bytes of one id-segment entry.
const SEGMENT_ENTRY: usize = 24;

pub(crate) fn segment_key(last: &[u8; 16]) -> [u8; 17] {
    let mut key = [SEGMENT; 17];
    key[1..].copy_from_slice(last);
    key
}

/// The id segment whose range holds `id` (the first at or above it), if any: key and value.
pub(crate) fn segment_for(
    tree: &sled::Tree,
    id: &[u8; 16],
) -> sled::Result<Option<(sled::IVec, sled::IVec)>> {
    tree.range(segment_key(id)..=segment_key(&[0xFF; 16]))
        .next()
        .transpose()
}

/// The segment value of `entries` (sorted by id, strictly) under `key`.
pub(crate) fn segment_value(key: &[u8], entries: &[([u8; 16], u64)]) -> Vec<u8> {
    let mut value = Vec::with_capacity(CRC_LEN + 4 + entries.len() * SEGMENT_ENTRY);
    value.extend_from_slice(&[0; CRC_LEN]);
    value.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for (id, position) in entries {
        value.extend_from_slice(id);
        value.extend_from_slice(&position.to_be_bytes());
    }
    seal(key, value)
}

/// The checked entries of a segment: checksum, length, strictly increasing ids ending with the
/// key's.
pub(crate) fn decode_segment(key: &[u8], value: &[u8]) -> Result<Vec<([u8; 16], u64)>, String> {
    let entries = segment_entries(key, value)?;
    let mut out = Vec::with_capacity(entries.len() / SEGMENT_ENTRY);
    for entry in entries.chunks_exact(SEGMENT_ENTRY) {
        let mut id = [0u8; 16];
        id.copy_from_slice(&entry[..16]);
        if out.last().is_some_and(|(prev, _)| *prev >= id) {
            return Err("segment ids are not strictly increasing".to_owned());
        }
        out.push((id, be_u64(&entry[16..])));
    }
    if out.last().map(|(id, _)| &id[..]) != key.get(1..) {
        return Err("the segment's last id is not its key's".to_owned());
    }
    Ok(out)
}

/// The position of `id` in the segment, if it holds it (a binary search; checksum and length
/// checked, order trusted).
pub(crate) fn segment_find(key: &[u8], value: &[u8], id: &[u8; 16]) -> Result<Option<u64>, String> {
    let entries = segment_entries(key, value)?;
    let (mut lo, mut hi) = (0, entries.len() / SEGMENT_ENTRY);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let entry = &entries[mid * SEGMENT_ENTRY..(mid + 1) * SEGMENT_ENTRY];
        match entry[..16].cmp(&id[..]) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Ok(Some(be_u64(&entry[16..]))),
        }
    }
    Ok(None)
}

fn segment_entries<'a>(key: &[u8], value: &'a [u8]) -> Result<&'a [u8], String> {
    if key.len() != 17 || key[0] != SEGMENT {
        return Err("malformed segment key".to_owned());
    }
    let body = unseal(key, value)?;
    if body.len() < 4 {
        return Err("segment too short".to_owned());
    }
    let count = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
    let entries = &body[4..];
    if count == 0 || entries.len() != count * SEGMENT_ENTRY {
        return Err(format!(
            "segment of {} bytes does not hold {count} entries",
            entries.len()
        ));
    }
    Ok(entries)
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
    fn segments_round_trip_and_find() {
        let entries: Vec<([u8; 16], u64)> =
            (1..=5u8).map(|i| ([i * 10; 16], u64::from(i))).collect();
        let key = segment_key(&entries[4].0);
        let value = segment_value(&key, &entries);
        assert_eq!(decode_segment(&key, &value).unwrap(), entries);
        for (id, position) in &entries {
            assert_eq!(segment_find(&key, &value, id).unwrap(), Some(*position));
        }
        assert_eq!(segment_find(&key, &value, &[15; 16]).unwrap(), None);
        assert_eq!(segment_find(&key, &value, &[0; 16]).unwrap(), None);
        let mut flipped = value.clone();
        flipped[10] ^= 1;
        assert!(segment_find(&key, &flipped, &[10; 16]).is_err());
        assert!(decode_segment(&segment_key(&[1; 16]), &value).is_err());
    }

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
    fn commits_round_trip_and_catch_flips() {
        let stream = StreamId::new("a-1").unwrap();
        let events = [
            EventData::new("T", "application/octet-stream", vec![1, 2, 3]).with_header("k", "v"),
            EventData::new("U", "application/json", b"{}".to_vec()),
        ];
        let bodies: Vec<Vec<u8>> = events.iter().map(encode_body).collect();
        let key = commit_key(42, 43);
        let value = commit_value(
            &key,
            Timestamp::from_unix_micros(5),
            "a-1",
            7,
            bodies.iter().map(Vec::as_slice),
        );
        let commit = parse_commit(&key, &value).unwrap();
        assert_eq!(
            (commit.first, commit.first_version, commit.stream),
            (42, 7, "a-1")
        );
        for (i, event) in events.iter().enumerate() {
            let read = commit.event(&stream, i).unwrap();
            assert_eq!(&read.to_event_data(), event);
            assert_eq!(read.position, Position::sequence(42 + i as u64));
            assert_eq!(read.version, Version::new(7 + i as u64));
        }
        // Every flipped byte fails the header or the event it lands in, never silently.
        for i in 0..value.len() {
            let mut bad = value.clone();
            bad[i] ^= 0x10;
            match parse_commit(&key, &bad) {
                Err(_) => {}
                Ok(c) => assert!(
                    (0..2).any(|e| matches!(c.event(&stream, e), Err(Error::Corrupt { .. }))),
                    "byte {i}"
                ),
            }
        }
        // The same bytes under another key are caught too.
        assert!(parse_commit(&commit_key(44, 45), &value).is_err());
        // Truncations never panic.
        for n in 0..value.len() {
            assert!(parse_commit(&key, &value[..n]).is_err());
        }
    }
}
