//! Recovery of the derived indexes at open: a commit record whose index entries were never
//! written (a crash between the two) is indexed again (redo), and index entries that survived
//! without their commit record are dropped.

mod support;

use annals::{Error, EventStore, ExpectedVersion, Position, StreamInfo, Version};
use annals_sled::testing;
use futures::TryStreamExt;
use support::{event, open, raw_tree, read_all, read_stream, shut, sid, to_u64};

#[tokio::test]
async fn commits_without_index_entries_are_indexed_again_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = open(&path).await;
    store
        .append(
            &sid("a-1"),
            ExpectedVersion::NoStream,
            vec![event("E", 1), event("E", 2)],
        )
        .await
        .expect("append");
    store
        .append(&sid("b-1"), ExpectedVersion::NoStream, vec![event("E", 3)])
        .await
        .expect("append");
    shut(store).await;

    // The process "died" right after writing two commit records, before indexing them.
    let tail_a = vec![event("E", 4), event("E", 5)];
    let tail_c = vec![event("E", 6)];
    {
        let (db, tree) = raw_tree(&path);
        let first = testing::write_unindexed_commit(&tree, &path, &sid("a-1"), 3, &tail_a)
            .expect("write a commit");
        assert_eq!(first, 4);
        testing::write_unindexed_commit(&tree, &path, &sid("c-1"), 1, &tail_c)
            .expect("write a commit");
        db.flush().expect("flush");
    }

    let store = open(&path).await;
    let a = read_stream(&store, &sid("a-1")).await;
    assert_eq!(
        a.len(),
        4,
        "the unindexed commit is read back through the stream"
    );
    assert_eq!(a[2].id, tail_a[0].id);
    assert_eq!(a[3].version, Version::new(4));
    assert_eq!(a[3].position, Position::sequence(5));
    assert_eq!(read_stream(&store, &sid("c-1")).await[0].id, tail_c[0].id);
    assert_eq!(
        store.stream_version(&sid("a-1")).await.expect("version"),
        Version::new(4)
    );
    assert_eq!(read_all(&store).await.len(), 6);
    let streams: Vec<StreamInfo> = store.streams().try_collect().await.expect("streams");
    let names: Vec<_> = streams.iter().map(|s| s.stream_id.as_str()).collect();
    assert_eq!(names, ["a-1", "b-1", "c-1"]);
    // The id index was redone: re-appending a recovered event is a retry, not a new event.
    let retry = store
        .append(&sid("a-1"), ExpectedVersion::Any, vec![tail_a[0].clone()])
        .await
        .expect("retry");
    assert_eq!(retry.first_position, Position::sequence(4));
    // Versions and positions continue after the recovered commits.
    let next = store
        .append(&sid("a-1"), ExpectedVersion::exact(4), vec![event("E", 7)])
        .await
        .expect("append");
    assert_eq!(next.first_version, Version::new(5));
    assert_eq!(next.first_position, Position::sequence(7));
    let report = store.verify().await.expect("verify");
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.events, 7);
    shut(store).await;
}

#[tokio::test]
async fn index_entries_past_the_end_of_the_log_are_dropped_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = open(&path).await;
    store
        .append(&sid("a-1"), ExpectedVersion::NoStream, vec![event("E", 1)])
        .await
        .expect("append");
    shut(store).await;

    // An index batch survived; the commit it indexed did not.
    let ghost = vec![event("E", 2), event("E", 3)];
    {
        let (db, tree) = raw_tree(&path);
        testing::write_index_without_commit(&tree, &path, &sid("a-1"), 2, &ghost).expect("write");
        testing::write_index_without_commit(&tree, &path, &sid("g-1"), 1, &[event("E", 4)])
            .expect("write");
        db.flush().expect("flush");
    }

    let store = open(&path).await;
    assert_eq!(
        store.stream_version(&sid("a-1")).await.expect("version"),
        Version::new(1),
        "the head is recomputed from what the log holds"
    );
    assert_eq!(
        store.stream_version(&sid("g-1")).await.expect("version"),
        Version::new(0)
    );
    assert_eq!(read_stream(&store, &sid("a-1")).await.len(), 1);
    let streams: Vec<StreamInfo> = store.streams().try_collect().await.expect("streams");
    assert_eq!(streams.len(), 1, "{streams:?}");
    let report = store.verify().await.expect("verify");
    assert!(report.is_clean(), "{report}");
    // The ghost's ids are free again: appending one elsewhere is no idempotency conflict.
    let placed = store
        .append(
            &sid("h-1"),
            ExpectedVersion::NoStream,
            vec![ghost[0].clone()],
        )
        .await;
    assert!(
        !matches!(placed, Err(Error::IdempotencyConflict { .. })),
        "{placed:?}"
    );
    let placed = placed.expect("append");
    assert_eq!(placed.first_position, Position::sequence(2));
    let next = store
        .append(&sid("a-1"), ExpectedVersion::exact(1), vec![event("E", 5)])
        .await
        .expect("append");
    assert_eq!(next.first_version, Version::new(2));
    assert!(store.verify().await.expect("verify").is_clean());
    shut(store).await;
}

#[tokio::test]
async fn a_lone_writers_many_appends_share_stream_index_entries_and_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = support::open_with(&path, annals_sled::Durability::Buffered).await;
    for i in 0..600u64 {
        store
            .append(
                &sid("lone-1"),
                ExpectedVersion::exact(i),
                vec![event("E", i)],
            )
            .await
            .expect("append");
        if i == 300 {
            // Another stream between two runs of this one.
            store
                .append(&sid("other-1"), ExpectedVersion::Any, vec![event("O", i)])
                .await
                .expect("append");
        }
    }
    shut(store).await;
    let entries = {
        let (_db, tree) = raw_tree(&path);
        let mut prefix = b"Slone-1".to_vec();
        prefix.push(0xFF);
        tree.scan_prefix(prefix).count()
    };
    // One entry per stream and indexing round: the other stream's append between two of this
    // one's makes it list its positions rather than start another entry.
    assert!(
        (1..600).contains(&entries),
        "600 appends in {entries} stream-index entries"
    );

    let store = open(&path).await;
    let all = read_stream(&store, &sid("lone-1")).await;
    assert_eq!(all.len(), 600);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.version, Version::new(to_u64(i) + 1));
    }
    let window: Vec<_> = store
        .read_stream(
            &sid("lone-1"),
            annals::ReadStream::forward()
                .from(Version::new(250))
                .limit(300),
        )
        .try_collect()
        .await
        .expect("read");
    assert_eq!(window.first().map(|e| e.version), Some(Version::new(250)));
    assert_eq!(window.len(), 300);
    let back: Vec<_> = store
        .read_stream(
            &sid("lone-1"),
            annals::ReadStream::backward().from(Version::new(590)),
        )
        .try_collect()
        .await
        .expect("read");
    assert_eq!(back.len(), 590);
    assert_eq!(back[0].version, Version::new(590));
    assert_eq!(back[589].version, Version::new(1));
    assert_eq!(read_all(&store).await.len(), 601);
    let report = store.verify().await.expect("verify");
    assert!(report.is_clean(), "{report}");
    shut(store).await;
}
