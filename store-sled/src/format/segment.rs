//! Id segments: `J last-uuid` → count (BE u32), then per id: uuid (16), position (BE u64); the
//! ids strictly increasing, the last one the key's.

use super::codec::{be_u64, seal, unseal};
use super::{CRC_LEN, SEGMENT};

/// Bytes of one id-segment entry.
const SEGMENT_ENTRY: usize = 24;

/// The key of the segment whose last id is `last`.
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

/// The segment value of `entries` (sorted by id, strictly; at most
/// [`SEGMENT_MAX`](super::SEGMENT_MAX) of them) under `key`.
pub(crate) fn segment_value(key: &[u8], entries: &[([u8; 16], u64)]) -> Vec<u8> {
    let mut value = Vec::with_capacity(CRC_LEN + 4 + entries.len() * SEGMENT_ENTRY);
    value.extend_from_slice(&[0; CRC_LEN]);
    debug_assert!(entries.len() <= super::SEGMENT_MAX);
    // Segments hold at most SEGMENT_MAX (512) ids, so the count always fits.
    let count = u32::try_from(entries.len()).unwrap_or(u32::MAX);
    value.extend_from_slice(&count.to_be_bytes());
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
    Ok(search(segment_entries(key, value)?, id))
}

/// A segment checked once for many lookups ([`CheckedSegment::find`]).
#[derive(Debug)]
pub(crate) struct CheckedSegment {
    pub(crate) key: sled::IVec,
    value: sled::IVec,
}

impl CheckedSegment {
    /// Checks the segment `value` under `key` (checksum and length).
    pub(crate) fn check(key: sled::IVec, value: sled::IVec) -> Result<CheckedSegment, String> {
        segment_entries(&key, &value)?;
        Ok(CheckedSegment { key, value })
    }

    /// The position of `id` in the segment, if it holds it.
    pub(crate) fn find(&self, id: &[u8; 16]) -> Option<u64> {
        // Checked at construction: the entries follow the checksum and the count.
        self.value
            .get(CRC_LEN + 4..)
            .and_then(|entries| search(entries, id))
    }
}

/// Binary search of checked segment `entries` for `id`.
fn search(entries: &[u8], id: &[u8; 16]) -> Option<u64> {
    let (mut lo, mut hi) = (0, entries.len() / SEGMENT_ENTRY);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let entry = &entries[mid * SEGMENT_ENTRY..(mid + 1) * SEGMENT_ENTRY];
        match entry[..16].cmp(&id[..]) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Some(be_u64(&entry[16..])),
        }
    }
    None
}

fn segment_entries<'a>(key: &[u8], value: &'a [u8]) -> Result<&'a [u8], String> {
    if key.len() != 17 || key[0] != SEGMENT {
        return Err("malformed segment key".to_owned());
    }
    let body = unseal(key, value)?;
    if body.len() < 4 {
        return Err("segment too short".to_owned());
    }
    let count = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let entries = &body[4..];
    let expected = usize::try_from(count)
        .ok()
        .and_then(|count| count.checked_mul(SEGMENT_ENTRY));
    if count == 0 || expected != Some(entries.len()) {
        return Err(format!(
            "segment of {} bytes does not hold {count} entries",
            entries.len()
        ));
    }
    Ok(entries)
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
}
