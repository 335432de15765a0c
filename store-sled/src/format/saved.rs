//! What the store keeps besides events: snapshots, checkpoints and the format marker.

use annals::{Position, Snapshot, StreamId, Timestamp, Version};

use super::codec::{put_bytes, seal, unseal, Reader};
use super::{CRC_LEN, META_FORMAT};

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
