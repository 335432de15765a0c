//! Commit records: `W first(BE u64) last(BE u64)` → one append's events; together, the global
//! log.
//!
//! Value layout: crc32 of the header (over key ++ header) | recorded_at i64 | first version u64 |
//! stream id (varint length + UTF-8) | count (varint) | per event: body length (varint) and body
//! crc32 (LE, over key ++ the event's position BE ++ body) | the bodies, concatenated. A flipped
//! byte in one body fails that event only; the framing is covered by the header's checksum.

use annals::{Error, EventId, Position, RecordPlace, RecordedEvent, StreamId, Timestamp, Version};

use super::codec::{be_u64, crc, put_bytes, put_varint, stored_crc, Reader};
use super::event::{body_id, decode_body};
use super::{COMMIT, CRC_LEN};
use crate::num::u64_from;

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
            id: commit.event_id(i)?,
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
    put_varint(&mut value, u64_from(bodies.len()));
    for (position, body) in (first..).zip(bodies.clone()) {
        put_varint(&mut value, u64_from(body.len()));
        value.extend_from_slice(&body_crc(key, position, body).to_le_bytes());
    }
    let header = value.len();
    let sum = crc(key, &value[CRC_LEN..header]);
    value[..CRC_LEN].copy_from_slice(&sum.to_le_bytes());
    for body in bodies {
        value.extend_from_slice(body);
    }
    value
}

/// Where one body is in a commit record's value, and its stored checksum.
#[derive(Debug)]
struct Entry {
    offset: usize,
    len: usize,
    crc: u32,
}

/// A commit record whose header passed its checksum; its events are checked one by one.
#[derive(Debug)]
pub(crate) struct Commit<'a> {
    pub(crate) first: u64,
    pub(crate) recorded_at: Timestamp,
    pub(crate) first_version: u64,
    pub(crate) stream: &'a str,
    key: &'a [u8],
    entries: Vec<Entry>,
    value: &'a [u8],
}

/// Parses the header of a commit record (checksum verified) and checks its framing.
pub(crate) fn parse_commit<'a>(key: &'a [u8], value: &'a [u8]) -> Result<Commit<'a>, String> {
    let (first, last) = parse_commit_key(key).ok_or("malformed commit key")?;
    if value.len() < CRC_LEN {
        return Err(format!("value of {} bytes is too short", value.len()));
    }
    let mut r = Reader::new(&value[CRC_LEN..]);
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
    // A capacity hint only: the count is checked against the bytes below.
    let mut lens = Vec::with_capacity(usize::try_from(count.min(10_000)).unwrap_or(0));
    for _ in 0..count {
        let len = usize::try_from(r.varint()?).map_err(|_| "length too large")?;
        lens.push((len, r.u32_le()?));
    }
    let header = value.len() - r.rest().len();
    let stored = stored_crc(value);
    let computed = crc(key, &value[CRC_LEN..header]);
    if stored != computed {
        return Err(format!(
            "checksum mismatch in the commit header (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    let mut offset = header;
    let mut entries = Vec::with_capacity(lens.len());
    for (len, crc) in lens {
        entries.push(Entry { offset, len, crc });
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
        u64_from(self.entries.len())
    }

    /// The checked body of event `i` (from 0).
    fn body(&self, i: u64) -> Result<&[u8], String> {
        let entry = usize::try_from(i)
            .ok()
            .and_then(|i| self.entries.get(i))
            .ok_or_else(|| format!("the record has no event {i}"))?;
        let body = &self.value[entry.offset..entry.offset + entry.len];
        let computed = body_crc(self.key, self.first + i, body);
        if computed != entry.crc {
            return Err(format!(
                "checksum mismatch (stored {:#010x}, computed {computed:#010x})",
                entry.crc
            ));
        }
        Ok(body)
    }

    /// The id of event `i` (from 0), its checksum verified.
    pub(crate) fn event_id(&self, i: u64) -> Result<EventId, String> {
        body_id(self.body(i)?)
    }

    /// Decodes event `i` (from 0); a damaged event is [`Error::Corrupt`] naming it.
    pub(crate) fn event(&self, stream: &StreamId, i: u64) -> annals::Result<RecordedEvent> {
        let version = self.first_version + i;
        let position = self.first + i;
        self.body(i)
            .and_then(|body| decode_body(stream, version, position, self.recorded_at, body))
            .map_err(|reason| {
                Error::corrupt(
                    RecordPlace::new()
                        .stream(stream.clone())
                        .version(Version::new(version))
                        .position(Position::sequence(position)),
                    reason,
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use annals::EventData;

    use super::*;
    use crate::format::encode_body;

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
        for (i, event) in (0..).zip(&events) {
            let read = commit.event(&stream, i).unwrap();
            assert_eq!(&read.to_event_data(), event);
            assert_eq!(read.position, Position::sequence(42 + i));
            assert_eq!(read.version, Version::new(7 + i));
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
