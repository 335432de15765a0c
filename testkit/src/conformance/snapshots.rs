use annals::{CheckpointStore, Position, Snapshot, SnapshotStore, Timestamp, Version};
use bytes::Bytes;

use super::{sid, StoreFactory};

fn snapshot(stream: &str, version: u64, payload: &'static [u8]) -> Snapshot {
    Snapshot::new(
        sid(stream),
        Version::new(version),
        "application/json",
        Bytes::from_static(payload),
    )
    .with_schema_version(2)
    .with_taken_at(Timestamp::from_unix_micros(1_795_000_000_000_001))
}

/// Snapshots: a missing one loads as `None`; a saved one loads back equal; a newer one
/// overwrites; streams do not share snapshots.
pub async fn snapshots<F: StoreFactory>(factory: &F) {
    let store = factory.new_store().await;
    let a = sid("snap-1");
    assert_eq!(store.load_snapshot(&a).await.expect("load"), None);
    let first = snapshot("snap-1", 10, b"{\"balance\":10}");
    store.save_snapshot(first.clone()).await.expect("save");
    assert_eq!(store.load_snapshot(&a).await.expect("load"), Some(first));
    let second = snapshot("snap-1", 20, b"{\"balance\":20}");
    store
        .save_snapshot(second.clone())
        .await
        .expect("overwrite");
    assert_eq!(
        store.load_snapshot(&a).await.expect("load"),
        Some(second.clone())
    );
    assert_eq!(
        store.load_snapshot(&sid("snap-2")).await.expect("load"),
        None
    );
    assert_eq!(
        store.load_snapshot(&sid("snap-10")).await.expect("load"),
        None,
        "ids are exact"
    );
    let other = snapshot("snap-2", 1, b"\x00\xff");
    store.save_snapshot(other.clone()).await.expect("save");
    assert_eq!(store.load_snapshot(&a).await.expect("load"), Some(second));
    assert_eq!(
        store.load_snapshot(&sid("snap-2")).await.expect("load"),
        Some(other)
    );
}

/// Checkpoints: a missing one loads as `None`; saved ones load back; a newer one overwrites;
/// names are independent and exact.
pub async fn checkpoints<F: StoreFactory>(factory: &F) {
    let store = factory.new_store().await;
    assert_eq!(store.load_checkpoint("balances").await.expect("load"), None);
    store
        .save_checkpoint("balances", Position::new(5, 7))
        .await
        .expect("save");
    assert_eq!(
        store.load_checkpoint("balances").await.expect("load"),
        Some(Position::new(5, 7))
    );
    store
        .save_checkpoint("balances", Position::new(9, 0))
        .await
        .expect("overwrite");
    assert_eq!(
        store.load_checkpoint("balances").await.expect("load"),
        Some(Position::new(9, 0))
    );
    assert_eq!(store.load_checkpoint("balance").await.expect("load"), None);
    store
        .save_checkpoint(
            "ünïcødé name/with:chars",
            Position::new(i64::MAX as u64, i64::MAX as u64),
        )
        .await
        .expect("save");
    assert_eq!(
        store
            .load_checkpoint("ünïcødé name/with:chars")
            .await
            .expect("load"),
        Some(Position::new(i64::MAX as u64, i64::MAX as u64))
    );
    assert_eq!(
        store.load_checkpoint("balances").await.expect("load"),
        Some(Position::new(9, 0))
    );
}
