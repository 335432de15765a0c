//! Everything survives close and reopen; positions continue; the format is checked at open.

mod support;

use annals::{
    CheckpointStore, Error, EventStore, ExpectedVersion, Position, Snapshot, SnapshotStore,
    Timestamp, Version,
};
use annals_sled::{Durability, SledEventStore};
use support::{event, format_marker, open, open_with, raw_tree, read_all, read_stream, shut, sid};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_a_reopen_and_positions_continue() {
    for durability in [Durability::Flush, Durability::Buffered] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let store = open_with(&path, durability).await;
        for i in 0..10u64 {
            store
                .append(
                    &sid(&format!("account-{}", i % 3)),
                    ExpectedVersion::Any,
                    vec![event("Deposited", i), event("Noted", i)],
                )
                .await
                .expect("append");
        }
        let snapshot = Snapshot::new(
            sid("account-1"),
            Version::new(4),
            "application/json",
            &b"{\"balance\":4}"[..],
        )
        .with_taken_at(Timestamp::from_unix_micros(1_795_000_000_000_000));
        store
            .save_snapshot(snapshot.clone())
            .await
            .expect("snapshot");
        store
            .save_checkpoint("balances", Position::sequence(17))
            .await
            .expect("checkpoint");
        let before = read_all(&store).await;
        assert_eq!(before.len(), 20);
        shut(store).await;

        let store = open_with(&path, durability).await;
        assert_eq!(
            read_all(&store).await,
            before,
            "{durability:?}: the log survives"
        );
        assert_eq!(
            store
                .stream_version(&sid("account-0"))
                .await
                .expect("version"),
            Version::new(8)
        );
        assert_eq!(
            store
                .load_snapshot(&sid("account-1"))
                .await
                .expect("snapshot"),
            Some(snapshot)
        );
        assert_eq!(
            store.load_checkpoint("balances").await.expect("checkpoint"),
            Some(Position::sequence(17))
        );
        assert_eq!(
            store.last_position().await.expect("last"),
            Some(Position::sequence(20))
        );
        let next = store
            .append(
                &sid("account-0"),
                ExpectedVersion::exact(8),
                vec![event("After", 0)],
            )
            .await
            .expect("append after reopen");
        assert_eq!(
            next.first_position,
            Position::sequence(21),
            "positions continue"
        );
        assert_eq!(next.first_version, Version::new(9), "versions continue");
        // Idempotency survives too: re-appending a stored event is a retry.
        let again = store
            .append(
                &sid("account-0"),
                ExpectedVersion::Any,
                vec![before[0].to_event_data()],
            )
            .await
            .expect("retry of a stored event");
        assert_eq!(again.first_position, before[0].position);
        let report = store.verify().await.expect("verify");
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.events, 21);
        drop(store); // dropping without close flushes and releases too

        let store = open(&path).await;
        assert_eq!(read_all(&store).await.len(), 21, "{durability:?}");
        assert_eq!(read_stream(&store, &sid("account-0")).await.len(), 9);
    }
}

#[tokio::test]
async fn a_newer_format_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = open(&path).await;
    store
        .append(&sid("a-1"), ExpectedVersion::NoStream, vec![event("E", 1)])
        .await
        .expect("append");
    shut(store).await;
    // The marker as another build would write it.
    let set_marker = |version: u32| {
        let (db, tree) = raw_tree(&path);
        tree.insert(b"Mformat", format_marker(version))
            .expect("insert");
        db.flush().expect("flush");
    };
    let newer = annals_sled::FORMAT_VERSION + 1;
    set_marker(newer);
    match SledEventStore::builder().path(&path).open().await {
        Err(Error::Format {
            backend,
            found,
            reason,
            ..
        }) => {
            assert_eq!((backend, found), ("sled", Some(newer)));
            assert!(reason.contains(&format!("format {newer}")), "{reason}");
            assert!(reason.contains("newer"), "{reason}");
        }
        other => panic!("expected a format error, got {other:?}"),
    }
    // The first, unreleased layout (before commit records) is refused too, never misread.
    set_marker(1);
    match SledEventStore::builder().path(&path).open().await {
        Err(Error::Format { found, reason, .. }) => {
            assert_eq!(found, Some(1));
            assert!(reason.contains("format 1"), "{reason}");
            assert!(reason.contains("older"), "{reason}");
        }
        other => panic!("expected a format error, got {other:?}"),
    }
    // A damaged marker is refused as well, not misread.
    {
        let (db, tree) = raw_tree(&path);
        tree.insert(b"Mformat", &b"\0\0\0\0\0\0\0\x01"[..])
            .expect("insert");
        db.flush().expect("flush");
    }
    match SledEventStore::builder().path(&path).open().await {
        Err(Error::Format { found, reason, .. }) => {
            assert_eq!(found, None, "a damaged marker has no readable version");
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected a format error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_foreign_sled_database_and_a_missing_path_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("foreign");
    {
        let db = sled::open(&path).expect("sled");
        db.insert(b"user-data", b"not events").expect("insert");
        db.flush().expect("flush");
    }
    match SledEventStore::builder().path(&path).open().await {
        Err(Error::Format { reason, .. }) => {
            assert!(reason.contains("not an Annals store"), "{reason}")
        }
        other => panic!("expected a format error, got {other:?}"),
    }
    // The foreign data is untouched.
    let db = sled::open(&path).expect("sled");
    assert_eq!(
        db.get(b"user-data").expect("get").as_deref(),
        Some(&b"not events"[..])
    );
    drop(db);

    match SledEventStore::builder().open().await {
        Err(Error::Configuration { setting, reason }) => {
            assert_eq!(setting, "path");
            assert!(reason.contains("path"), "{reason}");
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_store_open_elsewhere_is_unavailable_and_a_closed_one_refuses_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = open(&path).await;
    match SledEventStore::builder().path(&path).open().await {
        Err(Error::Unavailable { backend, .. }) => assert_eq!(backend, "sled"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    store.close().await.expect("close");
    let refused = store
        .append(&sid("a-1"), ExpectedVersion::Any, vec![event("E", 1)])
        .await;
    assert!(matches!(refused, Err(Error::Closed)), "{refused:?}");
}
