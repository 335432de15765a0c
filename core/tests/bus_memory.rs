//! The in-process bus: catch-up then live, and a lagging subscriber that loses nothing.

use std::time::Duration;

use annals::{
    Bus, EventData, EventStore, ExpectedVersion, Filter, InMemoryBus, InMemoryStore, Position,
    StreamId,
};
use futures::StreamExt;

const GUARD: Duration = Duration::from_secs(30);

fn event(n: u64) -> EventData {
    EventData::json("Counted", &n).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_catches_up_then_follows_live() {
    let store = InMemoryStore::new();
    let stream = StreamId::new("count-1").unwrap();
    store
        .append(&stream, ExpectedVersion::Any, (0..5).map(event).collect())
        .await
        .unwrap();
    let bus = InMemoryBus::start(store.clone()).await.unwrap();
    let events = bus.subscribe(Position::START, Filter::all());
    let reader = tokio::spawn(async move {
        tokio::time::timeout(
            GUARD,
            events
                .take(15)
                .map(|e| e.unwrap().version.get())
                .collect::<Vec<_>>(),
        )
        .await
        .expect("bus lost events")
    });
    for n in 5..15 {
        store
            .append(&stream, ExpectedVersion::Any, vec![event(n)])
            .await
            .unwrap();
    }
    assert_eq!(reader.await.unwrap(), (1..=15).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_subscriber_reads_the_store_and_loses_nothing() {
    let store = InMemoryStore::new();
    // A tiny channel: the subscriber below cannot keep up with it.
    let bus = InMemoryBus::with_capacity(store.clone(), 4).await.unwrap();
    let mut slow = bus.subscribe(Position::START, Filter::all().category("count"));
    let stream = StreamId::new("count-1").unwrap();
    let other = StreamId::new("other-1").unwrap();
    // Take one event so the subscriber is live on the broadcast, then write far more than the
    // channel holds without reading.
    store
        .append(&stream, ExpectedVersion::Any, vec![event(0)])
        .await
        .unwrap();
    assert_eq!(slow.next().await.unwrap().unwrap().version.get(), 1);
    for n in 1..500 {
        store
            .append(&stream, ExpectedVersion::Any, vec![event(n)])
            .await
            .unwrap();
        store
            .append(&other, ExpectedVersion::Any, vec![event(n)])
            .await
            .unwrap();
    }
    let rest: Vec<u64> = tokio::time::timeout(
        GUARD,
        slow.take(499).map(|e| e.unwrap().version.get()).collect(),
    )
    .await
    .expect("lagging subscriber lost events");
    assert_eq!(rest, (2..=500).collect::<Vec<_>>());
}
