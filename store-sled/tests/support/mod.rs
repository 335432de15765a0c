//! Shared helpers of the sled store's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;

use annals::{EventData, EventStore, ReadAll, ReadStream, RecordedEvent, StreamId};
use annals_sled::{Durability, SledEventStore};
use futures::TryStreamExt;

/// A length or a count as `u64` (a `usize` always fits on the targets Rust supports).
pub fn to_u64(n: usize) -> u64 {
    u64::try_from(n).expect("a usize fits in u64")
}

/// A `u64` index (or offset) as `usize`.
pub fn to_usize(n: u64) -> usize {
    usize::try_from(n).expect("an index of something in memory fits in usize")
}

/// A stream id.
pub fn sid(s: &str) -> StreamId {
    StreamId::new(s).expect("valid stream id")
}

/// A JSON event `{"n": n}`.
pub fn event(event_type: &str, n: u64) -> EventData {
    EventData::json(event_type, &serde_json::json!({ "n": n })).expect("json")
}

/// Opens a durable store at `path`.
pub async fn open(path: &Path) -> SledEventStore {
    open_with(path, Durability::Flush).await
}

/// Opens a store at `path`.
pub async fn open_with(path: &Path, durability: Durability) -> SledEventStore {
    SledEventStore::builder()
        .path(path)
        .durability(durability)
        .open()
        .await
        .expect("open the store")
}

/// Closes the store and drops it, releasing sled's files.
pub async fn shut(store: SledEventStore) {
    store.close().await.expect("close");
    drop(store);
}

/// The whole stream.
pub async fn read_stream(store: &SledEventStore, stream: &StreamId) -> Vec<RecordedEvent> {
    store
        .read_stream(stream, ReadStream::forward())
        .try_collect()
        .await
        .expect("read_stream")
}

/// The whole log.
pub async fn read_all(store: &SledEventStore) -> Vec<RecordedEvent> {
    store
        .read_all(ReadAll::all())
        .try_collect()
        .await
        .expect("read_all")
}

/// Opens the raw sled tree of a closed store, for tests that damage it on purpose.
///
/// A sled database dropped a moment ago (a store closed, or an open refused after reading the
/// format marker) releases its file lock when sled's own threads finish: a lock still held is
/// retried for up to two seconds, as the store's own open does.
pub fn raw_tree(path: &Path) -> (sled::Db, sled::Tree) {
    let started = std::time::Instant::now();
    let db = loop {
        match sled::open(path) {
            Err(sled::Error::Io(io))
                if io.to_string().contains("could not acquire lock")
                    && started.elapsed() < std::time::Duration::from_secs(2) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => break other.expect("raw sled open"),
        }
    };
    let tree = db.open_tree("annals").expect("the annals tree");
    (db, tree)
}

/// The key of the commit record holding `stream`'s `version`, found through the stream index
/// as FORMAT.md lays it out, and the event's index inside the record.
pub fn commit_of(tree: &sled::Tree, stream: &str, version: u64) -> (Vec<u8>, usize) {
    let mut lo = vec![b'S'];
    lo.extend_from_slice(stream.as_bytes());
    lo.push(0xFF);
    let mut hi = lo.clone();
    lo.extend_from_slice(&0u64.to_be_bytes());
    hi.extend_from_slice(&version.to_be_bytes());
    let (key, value) = tree
        .range(lo..=hi)
        .next_back()
        .expect("a stream-index entry")
        .expect("read");
    let be = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
    let first_version = be(&key[key.len() - 8..]);
    // The entry names a run of positions; the commit holding ours starts at or before it.
    let position = be(&value[4..12]) + (version - first_version);
    let mut hi = vec![b'W'];
    hi.extend_from_slice(&position.to_be_bytes());
    hi.extend_from_slice(&u64::MAX.to_be_bytes());
    let (commit, _) = tree
        .range(vec![b'W']..=hi)
        .next_back()
        .expect("a commit record")
        .expect("read");
    let first = be(&commit[1..9]);
    (commit.to_vec(), to_usize(position - first))
}

/// Where the commit record under the `W` key `key` is in the log's segment files (FORMAT.md):
/// the segment file of the store at `path`, and the byte range of the record proper (after its
/// frame head and positions), read from the record's locator in `tree`.
pub fn record_place(
    path: &std::path::Path,
    tree: &sled::Tree,
    key: &[u8],
) -> (std::path::PathBuf, std::ops::Range<usize>) {
    let value = tree.get(key).expect("get").expect("the locator exists");
    let be = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
    let segment = be(&value[4..12]);
    let offset = to_usize(be(&value[12..20]));
    let len = u32::from_be_bytes(value[20..24].try_into().expect("4 bytes")) as usize;
    let file = path.join("annals-log").join(format!("{segment:020}.seg"));
    (file, offset + 8 + 17..offset + len)
}

/// Puts the closed format 5 store at `path` back into the layout formats 2 to 4 share: each
/// commit record inside sled under its `W` key (instead of its locator), no segment files.
pub fn log_back_into_sled(path: &std::path::Path) {
    {
        let (db, tree) = raw_tree(path);
        let keys: Vec<sled::IVec> = tree
            .scan_prefix(b"W")
            .keys()
            .collect::<Result<_, _>>()
            .expect("scan");
        for key in keys {
            let (file, range) = record_place(path, &tree, &key);
            let bytes = std::fs::read(&file).expect("read the segment");
            tree.insert(key, &bytes[range]).expect("insert");
        }
        db.flush().expect("flush");
    }
    std::fs::remove_dir_all(path.join("annals-log")).expect("remove the log");
}

/// Changes the commit record under the `W` key `key` in the log's segment files of the closed
/// store at `path`; a record made shorter is padded with zeros to its frame's length.
pub fn damage_record(path: &std::path::Path, key: &[u8], change: impl FnOnce(&mut Vec<u8>)) {
    let (file, range) = {
        let (_db, tree) = raw_tree(path);
        record_place(path, &tree, key)
    };
    let mut bytes = std::fs::read(&file).expect("read the segment");
    let mut record = bytes[range.clone()].to_vec();
    change(&mut record);
    assert!(record.len() <= range.len(), "a record cannot grow in place");
    record.resize(range.len(), 0);
    bytes[range].copy_from_slice(&record);
    std::fs::write(&file, bytes).expect("write the segment");
}

/// The byte range of event `index`'s body inside a commit record (FORMAT.md).
pub fn body_range(value: &[u8], index: usize) -> std::ops::Range<usize> {
    fn varint(value: &[u8], at: &mut usize) -> usize {
        let (mut n, mut shift) = (0usize, 0);
        loop {
            let b = value[*at];
            *at += 1;
            n |= usize::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return n;
            }
            shift += 7;
        }
    }
    let mut at = 4 + 8 + 8;
    let stream_len = varint(value, &mut at);
    at += stream_len;
    let count = varint(value, &mut at);
    let mut lens = Vec::new();
    for _ in 0..count {
        lens.push(varint(value, &mut at));
        at += 4;
    }
    let start = at + lens[..index].iter().sum::<usize>();
    start..start + lens[index]
}

/// The format marker's value as a build of format `version` writes it: crc32(key ++ body) LE,
/// then the version as BE u32.
pub fn format_marker(version: u32) -> Vec<u8> {
    let body = version.to_be_bytes();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(b"Mformat");
    hasher.update(&body);
    let mut value = hasher.finalize().to_le_bytes().to_vec();
    value.extend_from_slice(&body);
    value
}
