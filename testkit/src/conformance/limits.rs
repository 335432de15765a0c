use annals::{Error, EventData, EventStore, ExpectedVersion, Limit, StreamId};

use super::{event, read_all, sid, StoreFactory};

/// Invalid stream ids cannot be made, and over-limit or malformed appends are refused with an
/// error naming the rule before anything is written.
pub async fn rejects_bad_input<F: StoreFactory>(factory: &F) {
    for bad in [
        String::new(),
        "x".repeat(256),
        "a\u{0}b".into(),
        "tab\there".into(),
    ] {
        assert!(
            matches!(StreamId::new(&bad), Err(Error::InvalidStreamId { .. })),
            "{bad:?} must be refused"
        );
    }
    assert!(StreamId::new("x".repeat(255)).is_ok());

    let store = factory.new_store().await;
    let limits = store.limits();
    let stream = sid("limits-1");
    let expect_limit =
        |result: annals::Result<annals::AppendResult>, which: Limit, what: &str| match result {
            Err(Error::LimitExceeded { limit, value, max }) => {
                assert_eq!(limit, which, "{what}");
                assert!(value > max, "{what}: {value} should exceed {max}");
            }
            other => panic!("{what}: expected LimitExceeded({which:?}), got {other:?}"),
        };
    let raw = |len: usize| EventData::new("Raw", "application/octet-stream", vec![7u8; len]);

    expect_limit(
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![event("Ok", 1), raw(limits.max_payload_bytes() + 1)],
            )
            .await,
        Limit::PayloadBytes,
        "payload",
    );
    let many: Vec<_> = (0..=limits.max_batch_events() as u64)
        .map(|i| event("Many", i))
        .collect();
    expect_limit(
        store.append(&stream, ExpectedVersion::Any, many).await,
        Limit::BatchEvents,
        "batch size",
    );
    let big_header = event("Headed", 1).with_header("h", "v".repeat(limits.max_header_bytes()));
    expect_limit(
        store
            .append(&stream, ExpectedVersion::Any, vec![big_header])
            .await,
        Limit::HeaderBytes,
        "headers",
    );
    let long_type = EventData::new(
        "T".repeat(limits.max_event_type_bytes() + 1),
        "application/json",
        &b"{}"[..],
    );
    expect_limit(
        store
            .append(&stream, ExpectedVersion::Any, vec![long_type])
            .await,
        Limit::EventTypeBytes,
        "event type",
    );

    let dup = event("Dup", 1);
    for (what, events) in [
        ("an empty batch", vec![]),
        (
            "an empty event type",
            vec![EventData::new("", "application/json", &b"{}"[..])],
        ),
        (
            "schema version 0",
            vec![event("Zero", 1).with_schema_version(0)],
        ),
        (
            "an empty content type",
            vec![EventData::new("NoType", "", &b"{}"[..])],
        ),
        ("one id twice in a batch", vec![dup.clone(), dup.clone()]),
    ] {
        match store.append(&stream, ExpectedVersion::Any, events).await {
            Err(Error::InvalidEvent { .. }) => {}
            other => panic!("{what}: expected InvalidEvent, got {other:?}"),
        }
    }
    assert!(
        read_all(&store).await.is_empty(),
        "a refused append wrote something"
    );
    assert!(store
        .stream_version(&stream)
        .await
        .expect("version")
        .is_empty());

    // Exactly at the limits is fine.
    let at_limit = vec![
        raw(limits.max_payload_bytes()),
        event("Headed", 2).with_header("h", "v".repeat(limits.max_header_bytes() - 1)),
    ];
    store
        .append(&stream, ExpectedVersion::NoStream, at_limit)
        .await
        .expect("events exactly at the limits are accepted");
    assert_eq!(read_all(&store).await.len(), 2);
}
