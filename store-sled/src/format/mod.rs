//! The on-disk format: keys, values, checksums. `FORMAT.md` describes the same layout in prose;
//! change both together, and bump [`FORMAT_VERSION`] for any change an older build would misread.
//!
//! Every kind of sled record lives in ONE sled tree, told apart by a one-byte key prefix. An
//! append is one commit record, framed in the log's segment files (`log.rs`); sled holds its
//! locator (`W`). The locators, stream index, heads and id index are derived from the commit
//! records and written later, in bulk; see `overlay.rs` and `recover.rs`.
//!
//! - [`codec`]: checksums and the strict byte reader and writers every value uses;
//! - [`keys`]: the keys of stream records, heads, ids, snapshots and checkpoints;
//! - [`event`]: event bodies;
//! - [`commit`]: commit records, the global log, and their locators;
//! - [`index`]: the derived entries (stream index, heads, id entries, the index marker);
//! - [`segment`]: id segments;
//! - [`saved`]: snapshots, checkpoints and the format marker.

use std::ops::RangeInclusive;

use annals::Error;

mod codec;
mod commit;
mod event;
mod index;
mod keys;
mod saved;
mod segment;

pub(crate) use commit::{
    commit_at, commit_key, commit_value, decode_locator, event_at, locate, locator_value,
    mixed_value, parse_commit, parse_commit_key, Commit, MixedEvent,
};
pub(crate) use event::encode_body;
pub(crate) use index::{
    decode_head, decode_id, decode_indexed, decode_stream_index, head_value, id_value,
    indexed_value, stream_index_value, Head, StreamRun, RUN_MAX,
};
pub(crate) use keys::{
    checkpoint_key, head_key, id_key, parse_stream_key, snapshot_key, stream_key, stream_prefix,
};
pub(crate) use saved::{
    checkpoint_value, decode_checkpoint, decode_format, decode_saves, decode_snapshot,
    decode_writes, format_value, save_digest, saves_value, snapshot_value, writes_value, Saves,
};
pub(crate) use segment::{
    decode_segment, segment_find, segment_for, segment_key, segment_value, CheckedSegment,
};

/// The format this build writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 5;
/// The formats this build opens: format 2 is format 3 without id segments, format 3 is format 4
/// without mixed commit records, listed stream-index runs and write counters; both are marked 4
/// at open.
pub(crate) const READABLE: RangeInclusive<u32> = 2..=FORMAT_VERSION;
/// The sled tree holding every record.
pub(crate) const TREE: &[u8] = b"annals";

/// Key of the format marker.
pub(crate) const META_FORMAT: &[u8] = b"Mformat";
/// Key of the index marker: every index entry up to this position is written.
pub(crate) const META_INDEXED: &[u8] = b"Mindexed";
/// Key of the write counter: raised before every flush the store makes (format 4).
pub(crate) const META_WRITES: &[u8] = b"Mwrites";
/// Key of the save counter: raised after every snapshot and checkpoint written (format 4).
pub(crate) const META_SAVES: &[u8] = b"Msaves";
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

/// The data is in a format this build cannot open: `found` is the format marker's version when
/// one could be read.
pub(crate) fn format_error(found: Option<u32>, reason: impl Into<String>) -> Error {
    Error::Format {
        backend: "sled",
        found,
        supported: READABLE,
        reason: reason.into(),
    }
}
