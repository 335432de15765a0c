use annals::{
    Error, EventStore, ExpectedVersion, RecordedEvent, RestoredEvent, Timestamp, Version,
};

use super::{assert_positions_increase, event, read_all, read_stream, sid, StoreFactory};

fn restored(stream: &str, version: u64, micros: i64, n: u64) -> RestoredEvent {
    RestoredEvent::new(
        sid(stream),
        Version::new(version),
        Timestamp::from_unix_micros(micros),
        event("Restored", n),
    )
}

/// The same event, as far as a copy must keep it.
fn same(a: &RecordedEvent, b: &RestoredEvent) -> bool {
    a.stream_id == b.stream_id
        && a.version == b.version
        && a.recorded_at == b.recorded_at
        && a.id == b.event.id
        && a.payload == b.event.payload
        && a.metadata == b.event.metadata
}

/// `restore` writes events of several streams in one batch with their versions and recording
/// times kept, in batch order in the global log; a re-run writes nothing and counts them
/// present; it continues a stream from its head.
pub async fn restore_keeps_versions_and_times<F: StoreFactory>(factory: &F) {
    let store = factory.new_store().await;
    let batch = vec![
        restored("copy-a", 1, 1_600_000_000_000_000, 1),
        restored("copy-b", 1, 1_600_000_000_000_001, 2),
        restored("copy-a", 2, 1_600_000_000_000_002, 3),
        restored("copy-b", 2, 1_600_000_000_000_003, 4),
        restored("copy-a", 3, 1_600_000_000_000_004, 5),
    ];
    let result = store.restore(batch.clone()).await.expect("restore");
    assert_eq!((result.written, result.present), (5, 0), "{result:?}");
    let log = read_all(&store).await;
    assert_eq!(log.len(), 5);
    assert_positions_increase(&log, "restored log");
    for (recorded, original) in log.iter().zip(&batch) {
        assert!(
            same(recorded, original),
            "the log keeps batch order, versions and recording times:\n{recorded:?}\n{original:?}"
        );
    }
    assert_eq!(result.last_position, log.last().map(|e| e.position));
    let a = read_stream(&store, &sid("copy-a")).await;
    assert_eq!(
        a.iter().map(|e| e.version.get()).collect::<Vec<_>>(),
        [1, 2, 3]
    );

    // A re-run, and a longer one: what is there is present, the rest follows the head.
    let again = store.restore(batch.clone()).await.expect("re-run");
    assert_eq!((again.written, again.present), (0, 5), "{again:?}");
    let mut longer = batch.clone();
    longer.push(restored("copy-b", 3, 1_600_000_000_000_005, 6));
    let more = store.restore(longer).await.expect("a longer re-run");
    assert_eq!((more.written, more.present), (1, 5), "{more:?}");
    assert_eq!(read_all(&store).await.len(), 6);
    // Ordinary appends go on after restored events.
    store
        .append(
            &sid("copy-a"),
            ExpectedVersion::exact(3),
            vec![event("After", 7)],
        )
        .await
        .expect("append after restore");
}

/// A restore batch with any fault writes nothing of the batch: a gap after a stream's head,
/// versions that skip, a recording time before its stream's previous event, an event id held
/// elsewhere, another event at a version the stream has.
pub async fn restore_is_all_or_nothing<F: StoreFactory>(factory: &F) {
    let store = factory.new_store().await;
    let held = restored("whole-a", 1, 2_000, 1);
    store.restore(vec![held.clone()]).await.expect("restore");
    let good = || restored("whole-b", 1, 1_000, 10);
    let cases: Vec<(&str, Vec<RestoredEvent>)> = vec![
        (
            "a gap after the head",
            vec![good(), restored("whole-a", 3, 3_000, 2)],
        ),
        (
            "versions that skip",
            vec![
                good(),
                restored("whole-c", 1, 1, 3),
                restored("whole-c", 3, 2, 4),
            ],
        ),
        (
            "time running backwards",
            vec![good(), restored("whole-a", 2, 1_999, 5)],
        ),
        ("an id held elsewhere", {
            let mut moved = held.clone();
            moved.stream_id = sid("whole-d");
            vec![good(), moved]
        }),
        (
            "another event at a held version",
            vec![good(), restored("whole-a", 1, 2_000, 6)],
        ),
    ];
    for (what, batch) in cases {
        let refused = store.restore(batch).await;
        assert!(
            matches!(
                refused,
                Err(Error::VersionConflict { .. }
                    | Error::InvalidEvent { .. }
                    | Error::IdempotencyConflict { .. })
            ),
            "{what}: expected a refusal, got {refused:?}"
        );
        let log = read_all(&store).await;
        assert_eq!(
            log.len(),
            1,
            "{what}: nothing of a refused batch is written"
        );
    }
}
