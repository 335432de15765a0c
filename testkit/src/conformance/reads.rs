use annals::{EventStore, ExpectedVersion, Filter, Position, ReadAll, ReadStream, Version};
use futures::TryStreamExt;

use super::{event, read_all, sid, StoreFactory, HANG_GUARD};

async fn versions<S: EventStore>(
    store: &S,
    stream: &annals::StreamId,
    options: ReadStream,
) -> Vec<u64> {
    store
        .read_stream(stream, options)
        .map_ok(|e| e.version.get())
        .try_collect()
        .await
        .expect("read_stream")
}

/// Forward and backward reads with starting versions and limits; a missing stream reads as
/// empty at version 0; reading from past the end gives nothing.
pub async fn read_stream_edges<F: StoreFactory>(factory: &F) {
    let store = factory.new_store().await;
    let stream = sid("edges-1");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            (1..=10).map(|i| event("E", i)).collect(),
        )
        .await
        .expect("append");
    let v = Version::new;
    assert_eq!(
        versions(&store, &stream, ReadStream::forward()).await,
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        versions(&store, &stream, ReadStream::backward()).await,
        (1..=10).rev().collect::<Vec<_>>()
    );
    assert_eq!(
        versions(&store, &stream, ReadStream::forward().from(v(4)).limit(3)).await,
        vec![4, 5, 6]
    );
    assert_eq!(
        versions(&store, &stream, ReadStream::backward().from(v(4)).limit(3)).await,
        vec![4, 3, 2]
    );
    assert_eq!(
        versions(&store, &stream, ReadStream::backward().limit(2)).await,
        vec![10, 9]
    );
    assert_eq!(
        versions(&store, &stream, ReadStream::backward().from(v(2)).limit(5)).await,
        vec![2, 1]
    );
    assert_eq!(
        versions(&store, &stream, ReadStream::forward().from(v(9)).limit(5)).await,
        vec![9, 10]
    );
    assert_eq!(
        versions(&store, &stream, ReadStream::forward().from(v(0)))
            .await
            .len(),
        10
    );
    // Failure paths: past the end, a zero limit, a missing stream.
    assert!(versions(&store, &stream, ReadStream::forward().from(v(11)))
        .await
        .is_empty());
    assert!(versions(&store, &stream, ReadStream::forward().limit(0))
        .await
        .is_empty());
    assert!(versions(&store, &stream, ReadStream::backward().from(v(0)))
        .await
        .is_empty());
    let missing = sid("edges-missing");
    assert!(versions(&store, &missing, ReadStream::forward())
        .await
        .is_empty());
    assert!(versions(&store, &missing, ReadStream::backward())
        .await
        .is_empty());
    assert_eq!(
        store.stream_version(&missing).await.expect("version"),
        Version::EMPTY
    );
    // A stream whose id is a prefix of another's does not see the other's events.
    let longer = sid("edges-10");
    store
        .append(&longer, ExpectedVersion::NoStream, vec![event("E", 0)])
        .await
        .expect("append");
    assert_eq!(
        versions(&store, &stream, ReadStream::forward()).await.len(),
        10
    );
    assert_eq!(
        versions(&store, &longer, ReadStream::forward()).await,
        vec![1]
    );
}

/// [`ReadAll`] filters by category, by event type and by both; a filter that matches nothing
/// reads nothing; limits count matching events.
pub async fn read_all_filters<F: StoreFactory>(factory: &F) {
    let store = factory.new_store().await;
    for (stream, types) in [
        ("account-1", ["Opened", "Deposited", "Deposited"]),
        ("order-1", ["Placed", "Deposited", "Shipped"]),
        ("account-2", ["Opened", "Withdrawn", "Deposited"]),
        ("accounting-1", ["Opened", "Opened", "Opened"]),
    ] {
        let events = types
            .iter()
            .enumerate()
            .map(|(i, t)| event(t, i as u64))
            .collect();
        store
            .append(&sid(stream), ExpectedVersion::Any, events)
            .await
            .expect("append");
    }
    let read = |filter: Filter, limit: usize| {
        store
            .read_all(ReadAll::all().filter(filter).limit(limit))
            .map_ok(|e| format!("{}:{}", e.stream_id, e.event_type))
            .try_collect::<Vec<_>>()
    };
    assert_eq!(
        read(Filter::all().category("account"), usize::MAX)
            .await
            .expect("read"),
        [
            "account-1:Opened",
            "account-1:Deposited",
            "account-1:Deposited",
            "account-2:Opened",
            "account-2:Withdrawn",
            "account-2:Deposited"
        ],
        "category filter (and `accounting` is another category)"
    );
    assert_eq!(
        read(Filter::all().event_type("Deposited"), usize::MAX)
            .await
            .expect("read"),
        [
            "account-1:Deposited",
            "account-1:Deposited",
            "order-1:Deposited",
            "account-2:Deposited"
        ]
    );
    assert_eq!(
        read(
            Filter::all()
                .category("order")
                .event_type("Deposited")
                .event_type("Shipped"),
            usize::MAX
        )
        .await
        .expect("read"),
        ["order-1:Deposited", "order-1:Shipped"]
    );
    assert_eq!(
        read(Filter::all().category("order").category("accounting"), 4)
            .await
            .expect("read"),
        [
            "order-1:Placed",
            "order-1:Deposited",
            "order-1:Shipped",
            "accounting-1:Opened"
        ],
        "the limit counts matching events"
    );
    assert!(read(Filter::all().category("nothing"), usize::MAX)
        .await
        .expect("read")
        .is_empty());
    assert!(read(Filter::all().event_type("Nothing"), usize::MAX)
        .await
        .expect("read")
        .is_empty());
    assert_eq!(
        read(Filter::all(), usize::MAX).await.expect("read").len(),
        12
    );
}

/// Reading the global log in pages, each starting after the last one's final event, gives the
/// same events as one read; `from` is inclusive; reading past the end gives nothing.
pub async fn read_all_paging<F: StoreFactory>(factory: &F) {
    let store = factory.new_store().await;
    for i in 0..25u64 {
        let n = 1 + i % 4;
        store
            .append(
                &sid(&format!("page-{}", i % 5)),
                ExpectedVersion::Any,
                (0..n).map(|k| event("P", k)).collect(),
            )
            .await
            .expect("append");
    }
    let whole = read_all(&store).await;
    assert_eq!(whole.len(), 25 / 4 * 10 + 1, "1+2+3+4 per four appends");
    super::assert_positions_increase(&whole, "read_all");
    let mut paged = Vec::new();
    let mut from = Position::START;
    loop {
        let page: Vec<_> = store
            .read_all(ReadAll::from(from).limit(7))
            .try_collect()
            .await
            .expect("page");
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        from = last.position.next();
        paged.extend(page);
    }
    assert_eq!(paged, whole, "paging neither skips nor repeats");
    let inclusive: Vec<_> = store
        .read_all(ReadAll::from(whole[5].position).limit(1))
        .try_collect()
        .await
        .expect("read");
    assert_eq!(inclusive[0], whole[5], "from is inclusive");
    let past: Vec<_> = store
        .read_all(ReadAll::from(whole.last().expect("events").position.next()))
        .try_collect()
        .await
        .expect("read");
    assert!(past.is_empty());
    assert_eq!(
        store.last_position().await.expect("last position"),
        Some(whole.last().expect("events").position)
    );
}

/// The stream listing shows each stream with its version and last write, and the commit
/// signal fires after an append; an empty store lists nothing and has no last position.
pub async fn stream_listing_and_signal<F: StoreFactory>(factory: &F) {
    let store = factory.new_store().await;
    assert_eq!(store.last_position().await.expect("last position"), None);
    let listed: Vec<_> = store.streams().try_collect().await.expect("streams");
    assert!(listed.is_empty());
    let mut watch = store.watch_commits();
    watch.mark_seen();
    store
        .append(
            &sid("list-b"),
            ExpectedVersion::NoStream,
            vec![event("E", 1), event("E", 2)],
        )
        .await
        .expect("append");
    tokio::time::timeout(HANG_GUARD, watch.changed())
        .await
        .expect("the commit signal did not fire")
        .expect("signal");
    let last = store
        .append(
            &sid("list-a"),
            ExpectedVersion::NoStream,
            vec![event("E", 1)],
        )
        .await
        .expect("append");
    let listed: Vec<_> = store.streams().try_collect().await.expect("streams");
    let summary: Vec<_> = listed
        .iter()
        .map(|s| (s.stream_id.to_string(), s.version.get()))
        .collect();
    assert_eq!(
        summary,
        [("list-a".to_owned(), 1), ("list-b".to_owned(), 2)]
    );
    assert_eq!(listed[0].last_position, last.last_position);
    assert!(listed[0].last_recorded_at >= listed[1].last_recorded_at);
}
