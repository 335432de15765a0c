//! Commit records: `W first(BE u64) last(BE u64)` → one append's events; together, the global
//! log.
//!
//! Two layouts share the key, told apart by the 8 bytes after the header checksum:
//!
//! - **single-stream** (an append): crc32 of the header (over key ++ header) | recorded_at i64 |
//!   first version u64 | stream id (varint length + UTF-8) | count (varint) | per event: body
//!   length (varint) and body crc32 (LE, over key ++ the event's position BE ++ body) | the
//!   bodies, concatenated;
//! - **mixed** (a restore, format 4): crc32 of the header | [`MIXED`] (i64::MIN, which no
//!   recording time an append gives can be) | the last position of the restore that wrote it
//!   (u64) | stream count (varint), the stream ids (varint length + UTF-8 each) | count
//!   (varint) | per event: stream (varint index into the ids), version (varint), recorded_at
//!   i64, body length (varint), body crc32 | the bodies.
//!
//! A flipped byte in one body fails that event only; the framing is covered by the header's
//! checksum.

use annals::{Error, EventId, Position, RecordPlace, RecordedEvent, StreamId, Timestamp, Version};

use super::codec::{be_u64, crc, put_bytes, put_varint, stored_crc, Reader};
use super::event::{body_id, decode_body};
use super::{COMMIT, CRC_LEN};
use crate::error::sled_error;
use crate::log::{Loc, Log, Record};
use crate::num::u64_from;

/// What a mixed record holds where a single-stream one has its recording time: `i64::MIN`, a
/// time no append records (appends record the clock's time).
pub(crate) const MIXED: i64 = i64::MIN;

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

/// The commit record holding `position`, if any, read from the log through its locator.
pub(crate) fn commit_at(
    tree: &sled::Tree,
    log: &Log,
    position: u64,
) -> annals::Result<Option<Record>> {
    let Some((first, last, loc)) = locate(tree, position)? else {
        return Ok(None);
    };
    log.read(loc, first, last)
        .map(Some)
        .map_err(|bad| bad.error(log.dir()))
}

/// The locator of the commit record holding `position`, if any: its first and last positions
/// and where its frame is.
pub(crate) fn locate(tree: &sled::Tree, position: u64) -> annals::Result<Option<(u64, u64, Loc)>> {
    let found = tree
        .range(commit_key(0, 0)..=commit_key(position, u64::MAX))
        .next_back()
        .transpose()
        .map_err(sled_error)?;
    let Some((key, value)) = found else {
        return Ok(None);
    };
    let at = |p: u64| RecordPlace::new().position(Position::sequence(p));
    let Some((first, last)) = parse_commit_key(&key) else {
        return Err(Error::corrupt(at(position), "malformed commit locator key"));
    };
    if last < position {
        return Ok(None);
    }
    let loc = decode_locator(&key, &value)
        .map_err(|reason| Error::corrupt(at(first), format!("commit locator: {reason}")))?;
    Ok(Some((first, last, loc)))
}

/// What the commit record holding a position says of the event there.
#[derive(Debug)]
pub(crate) struct EventAt {
    pub(crate) stream: String,
    pub(crate) version: u64,
    pub(crate) id: EventId,
}

/// The stream, version and id of the event at `position`: `None` when no commit record holds
/// it, `Some(Err(reason))` when the record (or its locator) is damaged.
pub(crate) fn event_at(
    tree: &sled::Tree,
    log: &Log,
    position: u64,
) -> annals::Result<Option<Result<EventAt, String>>> {
    let record = match commit_at(tree, log, position) {
        Ok(Some(record)) => record,
        Ok(None) => return Ok(None),
        Err(Error::Corrupt { reason, .. }) => return Ok(Some(Err(reason))),
        Err(error) => return Err(error),
    };
    let read = || {
        let commit = parse_commit(&record.key, &record.value)?;
        let i = position - commit.first;
        Ok(EventAt {
            stream: commit.stream(i).to_owned(),
            version: commit.version(i),
            id: commit.event_id(i)?,
        })
    };
    Ok(Some(read()))
}

/// The locator of the commit record under `key` (from [`commit_key`]) whose frame is at `loc`:
/// crc32 (LE, over key ++ the rest) | segment (u64 BE) | offset (u64 BE) | frame length (u32 BE).
pub(crate) fn locator_value(key: &[u8], loc: Loc) -> Vec<u8> {
    let mut value = Vec::with_capacity(CRC_LEN + 20);
    value.extend_from_slice(&[0; CRC_LEN]);
    value.extend_from_slice(&loc.segment.to_be_bytes());
    value.extend_from_slice(&loc.offset.to_be_bytes());
    value.extend_from_slice(&loc.len.to_be_bytes());
    let sum = crc(key, &value[CRC_LEN..]);
    value[..CRC_LEN].copy_from_slice(&sum.to_le_bytes());
    value
}

/// The frame place a locator names.
pub(crate) fn decode_locator(key: &[u8], value: &[u8]) -> Result<Loc, String> {
    if value.len() != CRC_LEN + 20 {
        return Err(format!("a locator of {} bytes", value.len()));
    }
    if stored_crc(value) != crc(key, &value[CRC_LEN..]) {
        return Err("checksum mismatch".into());
    }
    let len = u32::from_be_bytes(value[20..24].try_into().unwrap_or([0; 4]));
    Ok(Loc {
        segment: be_u64(&value[4..12]),
        offset: be_u64(&value[12..20]),
        len,
    })
}

fn body_crc(key: &[u8], position: u64, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(&position.to_be_bytes());
    hasher.update(body);
    hasher.finalize()
}

/// The full value of the single-stream commit record under `key` (from [`commit_key`]): one
/// append, all recorded at `recorded_at`.
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
    seal_header(key, value, bodies)
}

/// One event of a mixed commit record: its stream, version, recording time and body.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MixedEvent<'a> {
    pub(crate) stream: &'a str,
    pub(crate) version: u64,
    pub(crate) recorded_at: Timestamp,
    pub(crate) body: &'a [u8],
}

/// The full value of the mixed commit record under `key` (from [`commit_key`]): events of any
/// streams, each with its own version and recording time (what a restore writes), part of the
/// restore whose last position is `restore_last`.
pub(crate) fn mixed_value(key: &[u8], restore_last: u64, events: &[MixedEvent<'_>]) -> Vec<u8> {
    let first = be_u64(&key[1..9]);
    let mut streams: Vec<&str> = Vec::new();
    let mut slots = Vec::with_capacity(events.len());
    for event in events {
        // Records are small (a few dozen events): a linear search beats hashing.
        let slot = match streams.iter().position(|s| *s == event.stream) {
            Some(slot) => slot,
            None => {
                streams.push(event.stream);
                streams.len() - 1
            }
        };
        slots.push(u64_from(slot));
    }
    let total: usize = events.iter().map(|e| e.body.len()).sum();
    let names: usize = streams.iter().map(|s| s.len() + 2).sum();
    let mut value = Vec::with_capacity(24 + names + events.len() * 32 + total);
    value.extend_from_slice(&[0; CRC_LEN]);
    value.extend_from_slice(&MIXED.to_be_bytes());
    value.extend_from_slice(&restore_last.to_be_bytes());
    put_varint(&mut value, u64_from(streams.len()));
    for stream in &streams {
        put_bytes(&mut value, stream.as_bytes());
    }
    put_varint(&mut value, u64_from(events.len()));
    for ((position, event), slot) in (first..).zip(events).zip(slots) {
        put_varint(&mut value, slot);
        put_varint(&mut value, event.version);
        value.extend_from_slice(&event.recorded_at.unix_micros().to_be_bytes());
        put_varint(&mut value, u64_from(event.body.len()));
        value.extend_from_slice(&body_crc(key, position, event.body).to_le_bytes());
    }
    seal_header(key, value, events.iter().map(|e| e.body))
}

/// Fills in the header checksum of `value` (the header so far) and appends the bodies.
fn seal_header<'b>(
    key: &[u8],
    mut value: Vec<u8>,
    bodies: impl Iterator<Item = &'b [u8]>,
) -> Vec<u8> {
    let header = value.len();
    let sum = crc(key, &value[CRC_LEN..header]);
    value[..CRC_LEN].copy_from_slice(&sum.to_le_bytes());
    for body in bodies {
        value.extend_from_slice(body);
    }
    value
}

/// Where one body is in a commit record's value, its stored checksum, and the event's place.
#[derive(Debug)]
struct Entry {
    offset: usize,
    len: usize,
    crc: u32,
    /// Its stream, as an index into [`Commit::streams`].
    stream: usize,
    version: u64,
    recorded_at: Timestamp,
}

/// A commit record whose header passed its checksum; its events are checked one by one.
///
/// A single-stream record (an append) and a mixed one (a restore) read the same way: event `i`
/// (from 0) is at position `first + i`, of [`stream(i)`](Self::stream) at
/// [`version(i)`](Self::version), recorded at [`recorded_at(i)`](Self::recorded_at).
#[derive(Debug)]
pub(crate) struct Commit<'a> {
    pub(crate) first: u64,
    /// A mixed record's: the last position of the restore that wrote it.
    restore_last: Option<u64>,
    streams: Vec<&'a str>,
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
    let time = r.i64()?;
    let (restore_last, streams, places) = if time == MIXED {
        let restore_last = r.u64()?;
        if restore_last < last {
            return Err(format!(
                "a mixed record of positions up to {last} in a restore ending at {restore_last}"
            ));
        }
        let (streams, places) = mixed_header(&mut r, last - first + 1)?;
        (Some(restore_last), streams, places)
    } else {
        let (streams, places) =
            single_header(&mut r, last - first + 1, Timestamp::from_unix_micros(time))?;
        (None, streams, places)
    };
    let header = value.len() - r.rest().len();
    let stored = stored_crc(value);
    let computed = crc(key, &value[CRC_LEN..header]);
    if stored != computed {
        return Err(format!(
            "checksum mismatch in the commit header (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    let mut offset = header;
    let mut entries = Vec::with_capacity(places.len());
    for place in places {
        entries.push(Entry {
            offset,
            len: place.len,
            crc: place.crc,
            stream: place.stream,
            version: place.version,
            recorded_at: place.recorded_at,
        });
        offset = offset.checked_add(place.len).ok_or("length too large")?;
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
        restore_last,
        streams,
        key,
        entries,
        value,
    })
}

/// What a header says of one event before the bodies are located.
struct Place {
    len: usize,
    crc: u32,
    stream: usize,
    version: u64,
    recorded_at: Timestamp,
}

/// Checks a header's event count against the key's (`expected`) and gives a capacity hint.
fn counted(r: &mut Reader<'_>, expected: u64) -> Result<(u64, Vec<Place>), String> {
    let count = r.varint()?;
    if count != expected {
        return Err(format!(
            "the record holds {count} events, its key says {expected}"
        ));
    }
    // A capacity hint only: the count is checked against the bytes below.
    let places = Vec::with_capacity(usize::try_from(count.min(10_000)).unwrap_or(0));
    Ok((count, places))
}

fn body_entry(r: &mut Reader<'_>) -> Result<(usize, u32), String> {
    let len = usize::try_from(r.varint()?).map_err(|_| "length too large")?;
    Ok((len, r.u32_le()?))
}

/// The rest of a single-stream header: first version, stream, count, then per event its body
/// length and checksum.
fn single_header<'a>(
    r: &mut Reader<'a>,
    expected: u64,
    recorded_at: Timestamp,
) -> Result<(Vec<&'a str>, Vec<Place>), String> {
    let first_version = r.u64()?;
    let stream = std::str::from_utf8(r.bytes()?).map_err(|_| "stream id is not UTF-8")?;
    let (count, mut places) = counted(r, expected)?;
    for i in 0..count {
        let (len, crc) = body_entry(r)?;
        let version = first_version
            .checked_add(i)
            .ok_or("versions past the largest")?;
        places.push(Place {
            len,
            crc,
            stream: 0,
            version,
            recorded_at,
        });
    }
    Ok((vec![stream], places))
}

/// The rest of a mixed header: the stream table, count, then per event its stream, version,
/// recording time, body length and checksum.
fn mixed_header<'a>(
    r: &mut Reader<'a>,
    expected: u64,
) -> Result<(Vec<&'a str>, Vec<Place>), String> {
    let names = r.varint()?;
    if names == 0 || names > expected {
        return Err(format!(
            "a mixed record of {expected} events names {names} streams"
        ));
    }
    let mut streams = Vec::with_capacity(usize::try_from(names.min(1024)).unwrap_or(0));
    for _ in 0..names {
        streams.push(std::str::from_utf8(r.bytes()?).map_err(|_| "stream id is not UTF-8")?);
    }
    let (count, mut places) = counted(r, expected)?;
    for _ in 0..count {
        let stream = usize::try_from(r.varint()?)
            .ok()
            .filter(|s| *s < streams.len())
            .ok_or("an event names a stream the record does not list")?;
        let version = r.varint()?;
        if version == 0 {
            return Err("an event at version 0".into());
        }
        let recorded_at = Timestamp::from_unix_micros(r.i64()?);
        let (len, crc) = body_entry(r)?;
        places.push(Place {
            len,
            crc,
            stream,
            version,
            recorded_at,
        });
    }
    Ok((streams, places))
}

impl Commit<'_> {
    /// Events in the record.
    pub(crate) fn count(&self) -> u64 {
        u64_from(self.entries.len())
    }

    /// The position of the record's last event.
    pub(crate) fn last(&self) -> u64 {
        self.first + self.count() - 1
    }

    /// A mixed record's: the last position of the restore that wrote it (`None` for an
    /// append's record).
    pub(crate) fn restore_last(&self) -> Option<u64> {
        self.restore_last
    }

    fn entry(&self, i: u64) -> &Entry {
        // Callers pass `i < count()`, as every place in this crate does.
        let index = usize::try_from(i).unwrap_or(usize::MAX);
        &self.entries[index.min(self.entries.len() - 1)]
    }

    /// The stream of event `i` (from 0, below [`count`](Self::count)).
    pub(crate) fn stream(&self, i: u64) -> &str {
        self.streams[self.entry(i).stream]
    }

    /// The version of event `i` in its stream.
    pub(crate) fn version(&self, i: u64) -> u64 {
        self.entry(i).version
    }

    /// When event `i` was recorded.
    pub(crate) fn recorded_at(&self, i: u64) -> Timestamp {
        self.entry(i).recorded_at
    }

    /// The record's events as pieces: runs of consecutive events of one stream whose versions
    /// run on, each as (first event index, events). A single-stream record is one piece.
    pub(crate) fn pieces(&self) -> Vec<(u64, u64)> {
        let mut pieces: Vec<(u64, u64)> = Vec::new();
        for (i, entry) in (0u64..).zip(&self.entries) {
            match pieces.last_mut() {
                Some((start, len))
                    if self.entry(*start).stream == entry.stream
                        && self.entry(*start).version + *len == entry.version =>
                {
                    *len += 1;
                }
                _ => pieces.push((i, 1)),
            }
        }
        pieces
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

    /// Checks every event body's checksum: the whole record reads back.
    pub(crate) fn check(&self) -> Result<(), String> {
        for i in 0..self.count() {
            self.body(i)
                .map_err(|reason| format!("event {} of the record: {reason}", self.first + i))?;
        }
        Ok(())
    }

    /// The id of event `i` (from 0), its checksum verified.
    pub(crate) fn event_id(&self, i: u64) -> Result<EventId, String> {
        body_id(self.body(i)?)
    }

    /// Decodes event `i` (from 0) of `stream` (its [`stream(i)`](Self::stream)); a damaged
    /// event is [`Error::Corrupt`] naming it.
    pub(crate) fn event(&self, stream: &StreamId, i: u64) -> annals::Result<RecordedEvent> {
        let version = self.version(i);
        let position = self.first + i;
        self.body(i)
            .and_then(|body| decode_body(stream, version, position, self.recorded_at(i), body))
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
            (commit.first, commit.version(0), commit.stream(1)),
            (42, 7, "a-1")
        );
        assert_eq!(commit.pieces(), [(0, 2)]);
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

    #[test]
    fn mixed_records_round_trip_and_catch_flips() {
        let events = [
            EventData::new("T", "application/json", b"{}".to_vec()),
            EventData::new("U", "application/json", b"[1]".to_vec()),
            EventData::new("V", "application/json", b"2".to_vec()),
        ];
        let bodies: Vec<Vec<u8>> = events.iter().map(encode_body).collect();
        let places = [("a-1", 3, 10), ("b-1", 1, 5), ("a-1", 4, 11)];
        let mixed: Vec<MixedEvent<'_>> = places
            .iter()
            .zip(&bodies)
            .map(|(&(stream, version, micros), body)| MixedEvent {
                stream,
                version,
                recorded_at: Timestamp::from_unix_micros(micros),
                body,
            })
            .collect();
        let key = commit_key(7, 9);
        let value = mixed_value(&key, 20, &mixed);
        let commit = parse_commit(&key, &value).unwrap();
        assert_eq!(commit.pieces(), [(0, 1), (1, 1), (2, 1)]);
        assert_eq!(commit.restore_last(), Some(20));
        assert!(parse_commit(&key, &mixed_value(&key, 8, &mixed)).is_err());
        for (i, ((stream, version, micros), event)) in (0..).zip(places.iter().zip(&events)) {
            assert_eq!(commit.stream(i), *stream);
            assert_eq!(commit.version(i), *version);
            assert_eq!(commit.recorded_at(i), Timestamp::from_unix_micros(*micros));
            let read = commit.event(&StreamId::new(*stream).unwrap(), i).unwrap();
            assert_eq!(&read.to_event_data(), event);
            assert_eq!(read.recorded_at, Timestamp::from_unix_micros(*micros));
            assert_eq!(read.position, Position::sequence(7 + i));
        }
        for i in 0..value.len() {
            let mut bad = value.clone();
            bad[i] ^= 0x10;
            match parse_commit(&key, &bad) {
                Err(_) => {}
                Ok(c) => assert!((0..3).any(|e| c.event_id(e).is_err()), "byte {i}"),
            }
        }
        for n in 0..value.len() {
            assert!(parse_commit(&key, &value[..n]).is_err());
        }
    }
}
