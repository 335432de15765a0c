//! The derived entries written from the commit records: the stream index, the stream heads, the
//! single id-index entries and the marker through which they are complete.

use annals::Timestamp;

use super::codec::{seal, unseal, Reader};
use super::{CRC_LEN, META_INDEXED};

// Stream index: `S stream-id 0xFF first-version` → first position (u64), count (u64) of the
// commit holding that stream's versions `first-version..`.

/// The value of a stream-index entry: `count` versions from position `first_position` on.
pub(crate) fn stream_index_value(key: &[u8], first_position: u64, count: u64) -> Vec<u8> {
    let mut value = Vec::with_capacity(CRC_LEN + 16);
    value.extend_from_slice(&[0; CRC_LEN]);
    value.extend_from_slice(&first_position.to_be_bytes());
    value.extend_from_slice(&count.to_be_bytes());
    seal(key, value)
}

/// The first position and count a stream-index entry names.
pub(crate) fn decode_stream_index(key: &[u8], value: &[u8]) -> Result<(u64, u64), String> {
    let mut r = Reader::new(unseal(key, value)?);
    let entry = (r.u64()?, r.u64()?);
    r.end()?;
    if entry.1 == 0 {
        return Err("a stream-index entry of zero events".into());
    }
    Ok(entry)
}

// The index marker: `Mindexed` → the position through which every index entry is written.

/// The value of the index marker at `position`.
pub(crate) fn indexed_value(position: u64) -> Vec<u8> {
    let mut value = vec![0; CRC_LEN];
    value.extend_from_slice(&position.to_be_bytes());
    seal(META_INDEXED, value)
}

/// The position the index marker names.
pub(crate) fn decode_indexed(value: &[u8]) -> Result<u64, String> {
    let mut r = Reader::new(unseal(META_INDEXED, value)?);
    let position = r.u64()?;
    r.end()?;
    Ok(position)
}

// Heads: `H stream` → version, last position, last recorded_at.

/// A stream's last version, where it is and when it was recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) version: u64,
    pub(crate) last_position: u64,
    pub(crate) last_recorded_at: Timestamp,
}

/// The value of a head entry.
pub(crate) fn head_value(key: &[u8], head: Head) -> Vec<u8> {
    let mut value = Vec::with_capacity(CRC_LEN + 24);
    value.extend_from_slice(&[0; CRC_LEN]);
    value.extend_from_slice(&head.version.to_be_bytes());
    value.extend_from_slice(&head.last_position.to_be_bytes());
    value.extend_from_slice(&head.last_recorded_at.unix_micros().to_be_bytes());
    seal(key, value)
}

/// The head a head entry holds.
pub(crate) fn decode_head(key: &[u8], value: &[u8]) -> Result<Head, String> {
    let mut r = Reader::new(unseal(key, value)?);
    let head = Head {
        version: r.u64()?,
        last_position: r.u64()?,
        last_recorded_at: Timestamp::from_unix_micros(r.i64()?),
    };
    r.end()?;
    Ok(head)
}

// Id index: `I uuid` → position, version, stream-id.

/// The value of a single id-index entry.
pub(crate) fn id_value(key: &[u8], stream: &str, version: u64, position: u64) -> Vec<u8> {
    let mut value = Vec::with_capacity(CRC_LEN + 16 + stream.len());
    value.extend_from_slice(&[0; CRC_LEN]);
    value.extend_from_slice(&position.to_be_bytes());
    value.extend_from_slice(&version.to_be_bytes());
    value.extend_from_slice(stream.as_bytes());
    seal(key, value)
}

/// The stream, version and position a single id-index entry names.
pub(crate) fn decode_id<'a>(key: &[u8], value: &'a [u8]) -> Result<(&'a str, u64, u64), String> {
    let mut r = Reader::new(unseal(key, value)?);
    let position = r.u64()?;
    let version = r.u64()?;
    let stream = std::str::from_utf8(r.rest()).map_err(|_| "stream id is not UTF-8".to_owned())?;
    Ok((stream, version, position))
}
