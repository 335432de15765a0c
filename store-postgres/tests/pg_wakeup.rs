//! Wake-ups across processes (two stores on one schema stand for two processes): LISTEN/NOTIFY,
//! the polling fallback while the LISTEN connection is down, and held-back readers woken when a
//! foreign transaction ends.

mod support;

use std::time::Duration;

use annals::{subscribe_all, EventStore, ExpectedVersion, Filter, Position, StreamId};
use annals_postgres::PgEventStore;
use futures::StreamExt;
use support::{event, raw_client, server, HANG_GUARD};

async fn second_store(first: &PgEventStore, poll: Duration) -> PgEventStore {
    PgEventStore::builder()
        .connection_string(server().connection_string())
        .schema(first.schema())
        .poll_interval(poll)
        .open()
        .await
        .expect("open")
}

async fn next_type(
    live: &mut futures::stream::BoxStream<'static, annals::Result<annals::RecordedEvent>>,
) -> String {
    tokio::time::timeout(HANG_GUARD, live.next())
        .await
        .expect("no wake-up came")
        .expect("stream ended")
        .expect("event")
        .event_type
}

/// A subscriber of one store is woken by appends through another (its own polling is made so
/// slow that only a notification can wake it within the hang guard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_commit_wakes_subscribers() {
    let writer = support::fresh_store("notify").await;
    let reader = second_store(&writer, Duration::from_secs(3600)).await;
    let mut live = subscribe_all(reader.clone(), Position::START, Filter::all());
    // Let the reader's store settle (its first check) before relying on notifications.
    writer
        .append(
            &StreamId::new("n-1").expect("id"),
            ExpectedVersion::Any,
            vec![event("First", 1)],
        )
        .await
        .expect("append");
    assert_eq!(next_type(&mut live).await, "First");
    for i in 0..5 {
        writer
            .append(
                &StreamId::new("n-1").expect("id"),
                ExpectedVersion::Any,
                vec![event("Next", i)],
            )
            .await
            .expect("append");
        assert_eq!(next_type(&mut live).await, "Next");
    }
}

/// While the LISTEN connection is gone, polling wakes subscribers; it comes back by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_covers_a_lost_listen_connection() {
    let writer = support::fresh_store("fallback").await;
    let reader = second_store(&writer, Duration::from_millis(20)).await;
    let mut live = subscribe_all(reader.clone(), Position::START, Filter::all());
    let stream = StreamId::new("f-1").expect("id");
    writer
        .append(&stream, ExpectedVersion::Any, vec![event("Before", 0)])
        .await
        .expect("append");
    assert_eq!(next_type(&mut live).await, "Before");

    // Cut every LISTEN connection of the server.
    let admin = raw_client(server()).await;
    let cut: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = 'annals-postgres listener' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .expect("terminate")
        .get(0);
    assert!(cut >= 1, "no LISTEN connection to cut");
    for i in 0..3 {
        writer
            .append(&stream, ExpectedVersion::Any, vec![event("During", i)])
            .await
            .expect("append");
        assert_eq!(next_type(&mut live).await, "During");
    }
}

/// A foreign transaction with an older id holds readers back; its end sends no notification,
/// yet the subscriber gets the held-back event once it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_back_readers_are_woken_when_a_foreign_transaction_ends() {
    let store = support::fresh_store("held").await;
    let mut live = subscribe_all(store.clone(), Position::START, Filter::all());
    let mut raw = raw_client(server()).await;
    let tx = raw.transaction().await.expect("begin");
    // Any transaction with an id holds the horizon: this one writes elsewhere.
    tx.execute("SELECT pg_current_xact_id()", &[])
        .await
        .expect("take an id");
    store
        .append(
            &StreamId::new("h-1").expect("id"),
            ExpectedVersion::Any,
            vec![event("Held", 0)],
        )
        .await
        .expect("append");
    tx.commit().await.expect("commit");
    assert_eq!(next_type(&mut live).await, "Held");
}
