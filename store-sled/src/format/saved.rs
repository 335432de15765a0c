//! What the store keeps besides events: snapshots, checkpoints, the format marker and the write
//! counters (format 4).

use annals::{Position, Snapshot, StreamId, Timestamp, Version};

use super::codec::{put_bytes, seal, unseal, Reader};
use super::{CRC_LEN, META_FORMAT, META_SAVES, META_WRITES};

// Snapshots: `N stream` → version, schema version, taken_at, content type, payload.

/// The value of a snapshot entry.
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

/// The snapshot of `stream` a snapshot entry holds.
pub(crate) fn decode_snapshot(
    stream: &StreamId,
    key: &[u8],
    value: &[u8],
) -> Result<Snapshot, String> {
    let mut r = Reader::new(unseal(key, value)?);
    let version = Version::new(r.u64()?);
    let schema_version = r.u16()?;
    let taken_at = Timestamp::from_unix_micros(r.i64()?);
    let content_type = r.string()?;
    let payload = r.bytes()?.to_vec();
    r.end()?;
    Ok(
        Snapshot::new(stream.clone(), version, content_type, payload)
            .with_schema_version(schema_version)
            .with_taken_at(taken_at),
    )
}

// Checkpoints: `C name` → commit, prepare.

/// The value of a checkpoint entry.
pub(crate) fn checkpoint_value(key: &[u8], position: Position) -> Vec<u8> {
    let mut value = Vec::with_capacity(CRC_LEN + 16);
    value.extend_from_slice(&[0; CRC_LEN]);
    value.extend_from_slice(&position.commit().to_be_bytes());
    value.extend_from_slice(&position.prepare().to_be_bytes());
    seal(key, value)
}

/// The position a checkpoint entry holds.
pub(crate) fn decode_checkpoint(key: &[u8], value: &[u8]) -> Result<Position, String> {
    let mut r = Reader::new(unseal(key, value)?);
    let position = Position::new(r.u64()?, r.u64()?);
    r.end()?;
    Ok(position)
}

// The format marker: `Mformat` → format version (BE u32).

/// The value of the format marker for `version`.
pub(crate) fn format_value(version: u32) -> Vec<u8> {
    let mut value = vec![0; CRC_LEN];
    value.extend_from_slice(&version.to_be_bytes());
    seal(META_FORMAT, value)
}

/// The version the format marker names.
pub(crate) fn decode_format(value: &[u8]) -> Result<u32, String> {
    let body = unseal(META_FORMAT, value)?;
    let bytes: [u8; 4] = body
        .try_into()
        .map_err(|_| format!("format marker of {} bytes, expected 4", body.len()))?;
    Ok(u32::from_be_bytes(bytes))
}

// The write counter: `Mwrites` → the number of the last flush the store stamped (BE u64).

/// The value of the write counter at `writes`.
pub(crate) fn writes_value(writes: u64) -> Vec<u8> {
    let mut value = vec![0; CRC_LEN];
    value.extend_from_slice(&writes.to_be_bytes());
    seal(META_WRITES, value)
}

/// The count the write counter holds.
pub(crate) fn decode_writes(value: &[u8]) -> Result<u64, String> {
    let mut r = Reader::new(unseal(META_WRITES, value)?);
    let writes = r.u64()?;
    r.end()?;
    Ok(writes)
}

// The save counter: `Msaves` → snapshots and checkpoints saved (BE u64), when the last one was
// (i64 µs), and the digest of those stored (BE u64, see `save_digest`).

/// What the save counter holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Saves {
    /// Snapshots and checkpoints written.
    pub(crate) count: u64,
    /// When the last one was.
    pub(crate) at: Timestamp,
    /// The XOR of [`save_digest`] over every snapshot and checkpoint stored.
    pub(crate) digest: u64,
}

/// The value of the save counter.
pub(crate) fn saves_value(saves: &Saves) -> Vec<u8> {
    let mut value = vec![0; CRC_LEN];
    value.extend_from_slice(&saves.count.to_be_bytes());
    value.extend_from_slice(&saves.at.unix_micros().to_be_bytes());
    value.extend_from_slice(&saves.digest.to_be_bytes());
    seal(META_SAVES, value)
}

/// What the save counter holds.
pub(crate) fn decode_saves(value: &[u8]) -> Result<Saves, String> {
    let mut r = Reader::new(unseal(META_SAVES, value)?);
    let count = r.u64()?;
    let at = Timestamp::from_unix_micros(r.i64()?);
    let digest = r.u64()?;
    r.end()?;
    Ok(Saves { count, at, digest })
}

/// One stored snapshot's or checkpoint's part of the save counter's digest: the CRC-32 of its
/// key (high half) and of its value (low half). A record lost, or back at an older value,
/// changes the XOR of them all.
pub(crate) fn save_digest(key: &[u8], value: &[u8]) -> u64 {
    (u64::from(crc32fast::hash(key)) << 32) | u64::from(crc32fast::hash(value))
}
