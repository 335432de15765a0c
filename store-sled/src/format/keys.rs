//! The keys of stream-index entries, heads, id entries, snapshots and checkpoints (commit
//! records and id segments have theirs in their own files).

use annals::EventId;

use super::codec::be_u64;
use super::{CHECKPOINT, HEAD, ID, SNAPSHOT, STREAM, STREAM_END};

/// The start of every stream-index key of `stream`: `S stream-id 0xFF`.
pub(crate) fn stream_prefix(stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 10);
    key.push(STREAM);
    key.extend_from_slice(stream.as_bytes());
    key.push(STREAM_END);
    key
}

/// The stream-index key of the run of `stream` starting at `version`.
pub(crate) fn stream_key(stream: &str, version: u64) -> Vec<u8> {
    let mut key = stream_prefix(stream);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// The key of `stream`'s head.
pub(crate) fn head_key(stream: &str) -> Vec<u8> {
    prefixed(HEAD, stream.as_bytes())
}

/// The key of `id`'s single id-index entry.
pub(crate) fn id_key(id: EventId) -> [u8; 17] {
    let mut key = [ID; 17];
    key[1..].copy_from_slice(id.as_uuid().as_bytes());
    key
}

/// The key of `stream`'s snapshot.
pub(crate) fn snapshot_key(stream: &str) -> Vec<u8> {
    prefixed(SNAPSHOT, stream.as_bytes())
}

/// The key of the checkpoint `name`.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
