use std::collections::BTreeMap;

use annals::{
    Error, EventData, EventId, EventStore, ExpectedVersion, Metadata, ReadStream, Timestamp,
    Version,
};
use futures::TryStreamExt;
use uuid::Uuid;

use super::{event, read_all, read_stream, sid, StoreFactory};

/// Appended events read back byte for byte, metadata included, from both the stream and the
/// global log; an invalid event in the batch fails the append and writes nothing.
pub async fn append_and_read_back<F: StoreFactory>(factory: &F) {
    let store = factory.new_store().await;
    let stream = sid("account-roundtrip");
    let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let mut headers = BTreeMap::new();
    headers.insert("user".to_owned(), "ada".to_owned());
    headers.insert("ünïcødé".to_owned(), "✓ \"quoted\" \\ back".to_owned());
    let metadata = Metadata::at(Timestamp::from_unix_micros(1_795_000_000_123_456))
        .with_correlation_id(Uuid::now_v7())
        .with_causation_id(Uuid::now_v7())
        .with_headers(headers);
    let events = vec![
        EventData::new("Opened", "application/octet-stream", binary.clone())
            .with_metadata(metadata.clone())
            .with_schema_version(3),
        EventData::new("Empty", "application/octet-stream", Vec::new()),
        EventData::json(
            "Deposited",
            &serde_json::json!({ "amount": 10, "note": "çà" }),
        )
        .expect("json"),
    ];
    let before = Timestamp::now();
    let result = store
        .append(&stream, ExpectedVersion::NoStream, events.clone())
        .await
        .expect("append");
    assert_eq!(result.first_version, Version::new(1));
    assert_eq!(result.last_version, Version::new(3));
    assert_eq!(result.count(), 3);
    assert!(result.first_position < result.last_position);

    let read = read_stream(&store, &stream).await;
    assert_eq!(read.len(), 3, "read back every appended event");
    for (i, (recorded, appended)) in read.iter().zip(&events).enumerate() {
        assert_eq!(
            recorded.to_event_data(),
            *appended,
            "event {i} changed in the store"
        );
        assert_eq!(recorded.stream_id, stream);
        assert_eq!(recorded.version, Version::new(i as u64 + 1));
        assert!(
            recorded.recorded_at >= Timestamp::from_unix_micros(before.unix_micros() - 5_000_000),
            "recorded_at {} is far before the append",
            recorded.recorded_at
        );
    }
    assert_eq!(read[0].payload.as_ref(), binary.as_slice());
    assert_eq!(read[0].position, result.first_position);
    assert_eq!(read[2].position, result.last_position);
    super::assert_positions_increase(&read, "read_stream");
    assert_eq!(
        read_all(&store).await,
        read,
        "the global log holds the same records"
    );
    assert_eq!(
        store.stream_version(&stream).await.expect("version"),
        Version::new(3)
    );

    // Failure path: an invalid event anywhere in the batch writes nothing.
    let bad = vec![
        event("Deposited", 1),
        event("Deposited", 2).with_schema_version(0),
    ];
    let err = store
        .append(&stream, ExpectedVersion::Any, bad)
        .await
        .expect_err("schema version 0 must be refused");
    assert!(matches!(err, Error::InvalidEvent { .. }), "got {err:?}");
    assert_eq!(
        read_stream(&store, &stream).await.len(),
        3,
        "nothing written"
    );
}

/// Each [`ExpectedVersion`] against an empty and a non-empty stream; a conflict carries the
/// expected and the actual version and writes nothing.
pub async fn expected_version_rules<F: StoreFactory>(factory: &F) {
    let store = factory.new_store().await;
    let mut n = 0;
    let mut case = |expected: ExpectedVersion, on_empty: bool| {
        n += 1;
        let stream = sid(&format!("rules-{n}"));
        (stream, expected, on_empty)
    };
    // (expected, against an empty stream?, succeeds?)
    let table = [
        (ExpectedVersion::Any, true, true),
        (ExpectedVersion::Any, false, true),
        (ExpectedVersion::NoStream, true, true),
        (ExpectedVersion::NoStream, false, false),
        (ExpectedVersion::StreamExists, true, false),
        (ExpectedVersion::StreamExists, false, true),
        (ExpectedVersion::exact(0), true, true),
        (ExpectedVersion::exact(0), false, false),
        (ExpectedVersion::exact(2), false, true),
        (ExpectedVersion::exact(1), false, false),
        (ExpectedVersion::exact(3), false, false),
        (ExpectedVersion::exact(1), true, false),
    ];
    for (expected, on_empty, succeeds) in table {
        let (stream, expected, _) = case(expected, on_empty);
        let start = if on_empty { 0 } else { 2 };
        if !on_empty {
            store
                .append(
                    &stream,
                    ExpectedVersion::NoStream,
                    vec![event("Seed", 1), event("Seed", 2)],
                )
                .await
                .expect("seed");
        }
        let outcome = store
            .append(&stream, expected, vec![event("Tried", 3)])
            .await;
        let version = store.stream_version(&stream).await.expect("version");
        match (succeeds, outcome) {
            (true, Ok(result)) => {
                assert_eq!(result.last_version, Version::new(start + 1), "{expected:?}");
                assert_eq!(version, Version::new(start + 1));
            }
            (
                false,
                Err(Error::VersionConflict {
                    stream: s,
                    expected: e,
                    actual,
                }),
            ) => {
                assert_eq!(s, stream);
                assert_eq!(e, expected);
                assert_eq!(
                    actual,
                    Version::new(start),
                    "conflict reports the actual version"
                );
                assert_eq!(version, Version::new(start), "a conflict writes nothing");
            }
            (succeeds, outcome) => panic!(
                "{expected:?} on a stream at {start}: expected success={succeeds}, got {outcome:?}"
            ),
        }
    }
}

/// A batch is all or nothing: a valid batch is wholly visible with contiguous versions; a batch
/// refused for any reason (a limit, a conflict) leaves no trace.
pub async fn atomic_batch<F: StoreFactory>(factory: &F) {
    let store = factory.new_store().await;
    let stream = sid("batch-1");
    let batch: Vec<_> = (0..50).map(|i| event("Item", i)).collect();
    let result = store
        .append(&stream, ExpectedVersion::NoStream, batch.clone())
        .await
        .expect("append batch");
    assert_eq!(result.count(), 50);
    let read = read_stream(&store, &stream).await;
    assert_eq!(read.len(), 50);
    let ids: Vec<EventId> = read.iter().map(|e| e.id).collect();
    assert_eq!(ids, batch.iter().map(|e| e.id).collect::<Vec<_>>());

    // An oversized payload in the middle: nothing of the batch lands.
    let max = store.limits().max_payload_bytes();
    let mut bad: Vec<_> = (0..5).map(|i| event("Item", i)).collect();
    bad[2] = EventData::new("Big", "application/octet-stream", vec![0u8; max + 1]);
    let err = store
        .append(&stream, ExpectedVersion::Any, bad.clone())
        .await
        .expect_err("oversized payload");
    assert!(matches!(err, Error::LimitExceeded { .. }), "got {err:?}");
    // A conflicting batch: nothing lands either.
    let err = store
        .append(
            &stream,
            ExpectedVersion::exact(7),
            vec![event("X", 1), event("Y", 2)],
        )
        .await
        .expect_err("conflict");
    assert!(err.is_conflict());
    assert_eq!(read_stream(&store, &stream).await.len(), 50);
    assert_eq!(
        read_all(&store).await.len(),
        50,
        "the global log has no partial batch"
    );
    for e in &bad {
        assert!(
            read_all(&store).await.iter().all(|r| r.id != e.id),
            "a refused event is in the log"
        );
    }
}

/// Appending the same ids again returns the first result and writes nothing; ids that only
/// partly match, or match another stream, are an [`Error::IdempotencyConflict`].
pub async fn idempotent_reappend<F: StoreFactory>(factory: &F) {
    let store = factory.new_store().await;
    let stream = sid("idem-1");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![event("Before", 0)])
        .await
        .expect("first");
    let batch = vec![event("A", 1), event("B", 2)];
    let first = store
        .append(&stream, ExpectedVersion::exact(1), batch.clone())
        .await
        .expect("append");
    // A retry after a lost answer: the stale expected version must not matter.
    let again = store
        .append(&stream, ExpectedVersion::exact(1), batch.clone())
        .await
        .expect("retry is not an error");
    assert_eq!(again, first, "a retry returns the first append's result");
    let again_any = store
        .append(&stream, ExpectedVersion::Any, batch.clone())
        .await
        .expect("retry");
    assert_eq!(again_any, first);
    assert_eq!(
        read_stream(&store, &stream).await.len(),
        3,
        "no duplicate written"
    );

    // A single event of an earlier batch is also a retry of itself.
    let tail = store
        .append(&stream, ExpectedVersion::Any, vec![batch[1].clone()])
        .await
        .expect("retry of the last event alone");
    assert_eq!(tail.first_version, Version::new(3));

    // Partial overlaps and reorders are errors, and write nothing.
    let c = event("C", 3);
    for (name, bad) in [
        ("old then new", vec![batch[1].clone(), c.clone()]),
        ("new then old", vec![c.clone(), batch[0].clone()]),
        ("reordered", vec![batch[1].clone(), batch[0].clone()]),
    ] {
        match store.append(&stream, ExpectedVersion::Any, bad).await {
            Err(Error::IdempotencyConflict {
                stream: s,
                existing_stream,
                ..
            }) => {
                assert_eq!(s, stream, "{name}");
                assert_eq!(existing_stream, stream, "{name}");
            }
            other => panic!("{name}: expected an idempotency conflict, got {other:?}"),
        }
    }
    // The same ids in another stream are not a retry.
    let other = sid("idem-2");
    match store
        .append(&other, ExpectedVersion::Any, batch.clone())
        .await
    {
        Err(Error::IdempotencyConflict {
            existing_stream, ..
        }) => assert_eq!(existing_stream, stream),
        other => panic!("expected an idempotency conflict, got {other:?}"),
    }
    assert_eq!(read_stream(&store, &stream).await.len(), 3);
    assert!(store
        .stream_version(&other)
        .await
        .expect("version")
        .is_empty());
    let all: Vec<_> = store
        .read_stream(&stream, ReadStream::forward())
        .try_collect()
        .await
        .expect("read");
    assert!(all.iter().all(|e| e.id != c.id), "C must not be written");
}
