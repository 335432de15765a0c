//! The derived entries written from the commit records: the stream index, the stream heads, the
//! single id-index entries and the marker through which they are complete.

use annals::Timestamp;

use super::codec::{put_varint, seal, unseal, Reader};
use super::{CRC_LEN, META_INDEXED};
use crate::num::u64_from;

// Stream index: `S stream-id 0xFF first-version` → first position (u64), count (u64) of the
// stream's versions `first-version..` held there; then, when those versions are not at
// consecutive positions (format 4), `count - 1` varint gaps: each version's position minus the
// previous one's.

/// Most versions one stream-index entry with a list of positions holds.
pub(crate) const RUN_MAX: usize = 1024;

/// Where a stream-index entry puts `count` versions of its stream: at consecutive positions from
/// `first` on, or at the listed positions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StreamRun {
    pub(crate) first: u64,
    pub(crate) count: u64,
    /// The positions of every version when they are not consecutive (empty when they are).
    listed: Vec<u64>,
}

impl StreamRun {
    /// The run of the versions at `positions` (increasing; at least one).
    pub(crate) fn of(positions: &[u64]) -> StreamRun {
        let first = positions.first().copied().unwrap_or(0);
        let consecutive = positions.windows(2).all(|w| w[1] == w[0] + 1);
        StreamRun {
            first,
            count: u64_from(positions.len()),
            listed: if consecutive {
                Vec::new()
            } else {
                positions.to_vec()
            },
        }
    }

    /// The run of `count` versions at consecutive positions from `first` on.
    pub(crate) fn consecutive(first: u64, count: u64) -> StreamRun {
        StreamRun {
            first,
            count,
            listed: Vec::new(),
        }
    }

    /// The position of the run's `i`-th version (from 0, below `count`).
    pub(crate) fn position(&self, i: u64) -> u64 {
        if self.listed.is_empty() {
            self.first + i
        } else {
            let index = usize::try_from(i).unwrap_or(usize::MAX);
            self.listed[index.min(self.listed.len() - 1)]
        }
    }

    /// The position of its last version.
    pub(crate) fn last(&self) -> u64 {
        self.position(self.count - 1)
    }

    /// The versions at or before `end`: the run cut there (`None` when none is).
    pub(crate) fn through(&self, end: u64) -> Option<StreamRun> {
        let positions: Vec<u64> = (0..self.count)
            .map(|i| self.position(i))
            .take_while(|p| *p <= end)
            .collect();
        (!positions.is_empty()).then(|| StreamRun::of(&positions))
    }
}

/// The value of a stream-index entry holding `run`.
pub(crate) fn stream_index_value(key: &[u8], run: &StreamRun) -> Vec<u8> {
    let mut value = Vec::with_capacity(CRC_LEN + 16 + run.listed.len() * 2);
    value.extend_from_slice(&[0; CRC_LEN]);
    value.extend_from_slice(&run.first.to_be_bytes());
    value.extend_from_slice(&run.count.to_be_bytes());
    for pair in run.listed.windows(2) {
        put_varint(&mut value, pair[1] - pair[0]);
    }
    seal(key, value)
}

/// The run a stream-index entry holds.
pub(crate) fn decode_stream_index(key: &[u8], value: &[u8]) -> Result<StreamRun, String> {
    let mut r = Reader::new(unseal(key, value)?);
    let (first, count) = (r.u64()?, r.u64()?);
    if count == 0 {
        return Err("a stream-index entry of zero events".into());
    }
    let mut listed = Vec::new();
    if !r.rest().is_empty() {
        if count > u64_from(RUN_MAX) {
            return Err(format!("a listed run of {count} versions"));
        }
        listed.push(first);
        let mut at = first;
        for _ in 1..count {
            let gap = r.varint()?;
            if gap == 0 {
                return Err("listed positions do not increase".into());
            }
            at = at.checked_add(gap).ok_or("position past the largest")?;
            listed.push(at);
        }
        r.end()?;
    } else if first.checked_add(count - 1).is_none() {
        return Err("positions past the largest".into());
    }
    Ok(StreamRun {
        first,
        count,
        listed,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_round_trip_consecutive_or_listed() {
        let key = b"Sa-1\xff\0\0\0\0\0\0\0\x01";
        for positions in [vec![5], vec![5, 6, 7], vec![5, 9, 10, 400, 100_000]] {
            let run = StreamRun::of(&positions);
            let value = stream_index_value(key, &run);
            let back = decode_stream_index(key, &value).unwrap();
            assert_eq!(back, run);
            let read: Vec<u64> = (0..back.count).map(|i| back.position(i)).collect();
            assert_eq!(read, positions);
            assert_eq!(back.last(), *positions.last().unwrap());
        }
        // The consecutive form is format 3's, byte for byte.
        assert_eq!(
            stream_index_value(key, &StreamRun::of(&[5, 6])).len(),
            CRC_LEN + 16
        );
        let run = StreamRun::of(&[5, 9, 10]);
        assert_eq!(run.through(9), Some(StreamRun::of(&[5, 9])));
        assert_eq!(run.through(4), None);
        let value = stream_index_value(key, &run);
        for n in CRC_LEN + 16..value.len() {
            assert!(decode_stream_index(key, &value[..n]).is_err(), "{n}");
        }
    }
}
