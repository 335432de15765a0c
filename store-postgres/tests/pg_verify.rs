//! `verify` finds what is wrong, each problem at its place, and reads of damaged rows fail with
//! `Error::Corrupt` at the row's place instead of panicking.

mod support;

use annals::{
    Error, EventStore, ExpectedVersion, ProblemKind, ReadStream, RecordedEvent, Snapshot,
    SnapshotStore, StreamId, Version,
};
use futures::StreamExt;
use support::{event, raw_client, server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_gaps_snapshots_ahead_and_unreadable_rows() {
    let store = support::fresh_store("verify").await;
    let sound = StreamId::new("sound-1").expect("id");
    store
        .append(
            &sound,
            ExpectedVersion::NoStream,
            vec![event("A", 1), event("B", 2)],
        )
        .await
        .expect("append");
    store
        .save_snapshot(Snapshot::new(
            sound.clone(),
            Version::new(9),
            "application/json",
            "{}",
        ))
        .await
        .expect("snapshot");
    assert_eq!(
        store.verify().await.expect("verify").problems.len(),
        1,
        "only the snapshot is wrong so far"
    );

    // Damage the store behind its back: a gap (versions 1, 2, 4), a header that is not a
    // string, a schema version out of range.
    let insert = |stream: &str, version: i64, schema_version: i32, headers: &str| {
        format!(
            "INSERT INTO \"{}\".events (stream_id, version, event_id, event_type, schema_version, \
             content_type, payload, event_timestamp, headers) \
             VALUES ('{stream}', {version}, gen_random_uuid(), 'E', {schema_version}, \
             'application/json', '\\x7b7d', now(), '{headers}'); ",
            store.schema()
        )
    };
    let raw = raw_client(server()).await;
    raw.batch_execute(&format!(
        "{}{}{}{}",
        insert("gap-1", 1, 1, "{}"),
        insert("gap-1", 2, 1, "{}"),
        insert("gap-1", 4, 1, "{}"),
        insert("bad-1", 1, 70_000, r#"{"n": 1}"#),
    ))
    .await
    .expect("damage");

    let report = store.verify().await.expect("verify");
    assert_eq!(report.events, 6, "{report}");
    assert_eq!(report.streams, 3, "{report}");
    assert_eq!(report.snapshots, 1, "{report}");
    let kinds: Vec<(ProblemKind, Option<&str>, Option<u64>)> = report
        .problems
        .iter()
        .map(|p| {
            (
                p.kind,
                p.place.stream.as_ref().map(StreamId::as_str),
                p.place.version.map(Version::get),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (ProblemKind::VersionGap, Some("gap-1"), Some(3)),
            (ProblemKind::SnapshotAhead, Some("sound-1"), Some(9)),
            (ProblemKind::Corrupt, Some("bad-1"), Some(1)),
        ],
        "{report}"
    );

    // Reading the damaged row is a corruption at its place, after nothing else.
    let read: Vec<annals::Result<RecordedEvent>> = store
        .read_stream(&StreamId::new("bad-1").expect("id"), ReadStream::forward())
        .collect()
        .await;
    match &read[..] {
        [Err(Error::Corrupt { place, .. })] => {
            assert_eq!(place.stream.as_ref().map(StreamId::as_str), Some("bad-1"));
            assert_eq!(place.version, Some(Version::new(1)));
            assert!(place.position.is_some());
        }
        other => panic!("expected one corruption, got {other:?}"),
    }
}
