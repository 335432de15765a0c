//! Shared helpers of the sled store's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;

use annals::{EventData, EventStore, ReadAll, ReadStream, RecordedEvent, StreamId};
use annals_sled::{Durability, SledEventStore};
use futures::TryStreamExt;

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
pub fn raw_tree(path: &Path) -> (sled::Db, sled::Tree) {
    let db = sled::open(path).expect("raw sled open");
    let tree = db.open_tree("annals").expect("the annals tree");
    (db, tree)
}

/// The key of a stream record, as FORMAT.md lays it out.
pub fn record_key(stream: &str, version: u64) -> Vec<u8> {
    let mut key = vec![b'S'];
    key.extend_from_slice(stream.as_bytes());
    key.push(0xFF);
    key.extend_from_slice(&version.to_be_bytes());
    key
}
