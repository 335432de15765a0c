//! Restores on sled (issue 12, §5): events of many streams in one batch, written as mixed commit
//! records, keep their versions and recording times across a reopen, a redo of their index
//! entries and streams long enough to need several stream-index entries per round.

mod support;

use annals::{
    EventStore, ExpectedVersion, ReadStream, RecordedEvent, RestoredEvent, StreamInfo, Timestamp,
    Version,
};
use futures::TryStreamExt;
use support::{event, open, raw_tree, read_all, read_stream, shut, sid, to_u64};

/// `count` events of `streams` streams `prefix-0..`, interleaved (event `i` in stream
/// `i % streams`), recorded a microsecond apart from `t0`.
fn interleaved(prefix: &str, streams: u64, count: u64, t0: i64) -> Vec<RestoredEvent> {
    (0..count)
        .map(|i| {
            RestoredEvent::new(
                sid(&format!("{prefix}-{}", i % streams)),
                Version::new(i / streams + 1),
                Timestamp::from_unix_micros(t0 + i64::try_from(i).expect("small")),
                event("Restored", i),
            )
        })
        .collect()
}

/// Whether `read` is `original` as restored: same id, stream, version, recording time, payload.
fn same(read: &RecordedEvent, original: &RestoredEvent) -> bool {
    read.id == original.event.id
        && read.stream_id == original.stream_id
        && read.version == original.version
        && read.recorded_at == original.recorded_at
        && read.payload == original.event.payload
}

/// Checks every way of reading the restored `batch` (and nothing else in those streams).
async fn check_restored(
    store: &annals_sled::SledEventStore,
    batch: &[RestoredEvent],
    streams: u64,
) {
    let log = read_all(store).await;
    let restored: Vec<&RecordedEvent> = log
        .iter()
        .filter(|e| e.stream_id.as_str().starts_with("copy-"))
        .collect();
    assert_eq!(restored.len(), batch.len());
    for (read, original) in restored.iter().zip(batch) {
        assert!(same(read, original), "{read:?}\n{original:?}");
    }
    for s in 0..streams {
        let stream = sid(&format!("copy-{s}"));
        let expected: Vec<&RestoredEvent> =
            batch.iter().filter(|e| e.stream_id == stream).collect();
        let forward = read_stream(store, &stream).await;
        assert_eq!(forward.len(), expected.len(), "{stream}");
        for (read, original) in forward.iter().zip(&expected) {
            assert!(same(read, original), "{read:?}\n{original:?}");
        }
        let backward: Vec<RecordedEvent> = store
            .read_stream(&stream, ReadStream::backward())
            .try_collect()
            .await
            .expect("read backward");
        assert!(backward.iter().rev().eq(forward.iter()), "{stream}");
        let middle = to_u64(expected.len()) / 2 + 1;
        let window: Vec<RecordedEvent> = store
            .read_stream(
                &stream,
                ReadStream::forward().from(Version::new(middle)).limit(3),
            )
            .try_collect()
            .await
            .expect("read a window");
        assert_eq!(
            window.first().map(|e| e.version),
            Some(Version::new(middle))
        );
        assert_eq!(
            store.stream_version(&stream).await.expect("version"),
            Version::new(to_u64(expected.len()))
        );
    }
    let infos: Vec<StreamInfo> = store.streams().try_collect().await.expect("streams");
    for info in infos
        .iter()
        .filter(|i| i.stream_id.as_str().starts_with("copy-"))
    {
        let last = batch
            .iter()
            .rev()
            .find(|e| e.stream_id == info.stream_id)
            .expect("a restored stream");
        assert_eq!(
            info.last_recorded_at, last.recorded_at,
            "{}",
            info.stream_id
        );
        assert_eq!(info.version, last.version);
    }
    let report = store.verify().await.expect("verify");
    assert!(report.is_clean(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_times_survive_a_reopen_and_a_redo_of_the_indexes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = open(&path).await;
    store
        .append(
            &sid("live-1"),
            ExpectedVersion::NoStream,
            vec![event("E", 0)],
        )
        .await
        .expect("append");
    let batch = interleaved("copy", 7, 300, 1_500_000_000_000_000);
    let result = store.restore(batch.clone()).await.expect("restore");
    assert_eq!((result.written, result.present), (300, 0));
    // Appends go on after restored events, in restored streams too.
    store
        .append(
            &sid("live-1"),
            ExpectedVersion::exact(1),
            vec![event("E", 1)],
        )
        .await
        .expect("append");
    check_restored(&store, &batch, 7).await;
    shut(store).await;

    let store = open(&path).await;
    check_restored(&store, &batch, 7).await;
    assert_eq!(read_all(&store).await.len(), 302);
    shut(store).await;

    // The process "died" before indexing the restore: every derived entry and the marker go,
    // and the open indexes the mixed records again from the log.
    {
        let (db, tree) = raw_tree(&path);
        for prefix in [b'S', b'H', b'I', b'J'] {
            for entry in tree.scan_prefix([prefix]) {
                let (key, _) = entry.expect("read");
                tree.remove(key).expect("remove");
            }
        }
        tree.remove(b"Mindexed").expect("remove");
        db.flush().expect("flush");
    }
    let store = open(&path).await;
    check_restored(&store, &batch, 7).await;
    let again = store.restore(batch.clone()).await.expect("a re-run");
    assert_eq!((again.written, again.present), (0, 300));
    shut(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_interleaved_streams_span_several_stream_index_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = open(&path).await;
    // Two streams alternating: 1,500 listed positions each, more than one entry holds.
    let batch = interleaved("copy", 2, 3000, 1_600_000_000_000_000);
    store.restore(batch.clone()).await.expect("restore");
    check_restored(&store, &batch, 2).await;
    shut(store).await;
    let entries = {
        let (_db, tree) = raw_tree(&path);
        let mut prefix = b"Scopy-0".to_vec();
        prefix.push(0xFF);
        tree.scan_prefix(prefix).count()
    };
    assert!(entries >= 2, "{entries} stream-index entries");
    let store = open(&path).await;
    check_restored(&store, &batch, 2).await;
    shut(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_and_appends_interleave_from_many_tasks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = open(&path).await;
    let batch = interleaved("copy", 5, 500, 1_700_000_000_000_000);
    let mut tasks = Vec::new();
    for (n, chunk) in batch.chunks(100).enumerate() {
        // Restores must keep batch order within a stream: each chunk waits for the previous.
        let restore = store.restore(chunk.to_vec()).await.expect("restore");
        assert_eq!(restore.written, 100);
        let appender = store.clone();
        tasks.push(tokio::spawn(async move {
            appender
                .append(
                    &sid(&format!("live-{n}")),
                    ExpectedVersion::NoStream,
                    vec![event("E", to_u64(n))],
                )
                .await
                .expect("append")
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    check_restored(&store, &batch, 5).await;
    assert_eq!(read_all(&store).await.len(), 505);
    // The later chunks' ids are older than the appends' (made before them): they are found in
    // single id entries, the earlier ones in segments; a re-run finds them all.
    shut(store).await;
    let store = open(&path).await;
    let again = store.restore(batch.clone()).await.expect("a re-run");
    assert_eq!((again.written, again.present), (0, 500));
    shut(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_a_crash_interrupted_is_removed_whole_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = open(&path).await;
    store
        .append(
            &sid("live-1"),
            ExpectedVersion::NoStream,
            vec![event("E", 0)],
        )
        .await
        .expect("append");
    shut(store).await;
    // 100 events in 7 mixed records; the crash kept the first 3.
    let batch = interleaved("copy", 5, 100, 1_800_000_000_000_000);
    {
        let (db, tree) = raw_tree(&path);
        let first = annals_sled::testing::write_partial_restore(&tree, &path, batch.clone(), 3)
            .expect("write part of a restore");
        assert_eq!(first, 2);
        db.flush().expect("flush");
    }
    let store = open(&path).await;
    assert_eq!(
        read_all(&store).await.len(),
        1,
        "nothing of the restore is left"
    );
    assert_eq!(
        store.stream_version(&sid("copy-0")).await.expect("version"),
        Version::new(0)
    );
    let report = store.verify().await.expect("verify");
    assert!(report.is_clean(), "{report}");
    let result = store.restore(batch.clone()).await.expect("restore again");
    assert_eq!((result.written, result.present), (100, 0));
    check_restored(&store, &batch, 5).await;
    shut(store).await;

    // A whole restore's records (all 7) are a complete restore: kept and indexed at open.
    let more = interleaved("more", 3, 40, 1_900_000_000_000_000);
    {
        let (db, tree) = raw_tree(&path);
        annals_sled::testing::write_partial_restore(&tree, &path, more.clone(), usize::MAX)
            .expect("write a whole restore");
        db.flush().expect("flush");
    }
    let store = open(&path).await;
    assert_eq!(read_all(&store).await.len(), 141);
    assert_eq!(read_stream(&store, &sid("more-1")).await.len(), 13);
    assert!(store.verify().await.expect("verify").is_clean());
    shut(store).await;
}
