//! Wake-ups across processes (two stores on one schema stand for two processes): LISTEN/NOTIFY,
//! polling while the LISTEN connection is down, held-back readers woken when a foreign
//! transaction ends, and the fallback poll that bounds how long a lost notification delays
//! subscribers. (`pg_processes` does the same with real processes.)

mod support;

use std::time::Duration;

use annals::{subscribe_all, EventStore, ExpectedVersion, Filter, Position, StreamId};
use annals_postgres::PgEventStore;
use futures::StreamExt;
use support::{
    count_notifications, event, raw_client, server, wait_for_count, wait_signalled, HANG_GUARD,
};

/// Far longer than any test: a store so configured notifies once for its first append and
/// never again, or never polls.
const NEVER: Duration = Duration::from_secs(3600);

/// A second store value on `first`'s schema (its own pool and LISTEN connection, as another
/// process's) polling every `poll` while it cannot rely on notifications, and without the
/// fallback poll: what wakes its subscribers is what the test is about.
async fn second_store(first: &PgEventStore, poll: Duration) -> PgEventStore {
    PgEventStore::builder()
        .connection_string(server().connection_string())
        .schema(first.schema())
        .poll_interval(poll)
        .fallback_poll_interval(NEVER)
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
    let _alone = support::alone().await;
    let writer = support::fresh_store("notify").await;
    let reader = second_store(&writer, NEVER).await;
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
    let _alone = support::alone().await;
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
    let _alone = support::alone().await;
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

/// A notification that never comes — its writer is alive but notifies at most once an hour and
/// never closes, as a process killed between its commit and its `pg_notify` — delays a
/// subscriber of another store value by at most its fallback poll interval. Without the
/// fallback poll nothing ever wakes it; the guard below catches that, it is no speed assertion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_notification_delays_subscribers_by_the_fallback_poll_interval_at_most() {
    let _alone = support::alone().await;
    const GUARD: Duration = Duration::from_secs(30);
    let writer = support::init(support::builder_on(server(), "lost").notify_interval(NEVER)).await;
    let reader = PgEventStore::builder()
        .connection_string(server().connection_string())
        .schema(writer.schema())
        .poll_interval(Duration::from_millis(200))
        .fallback_poll_interval(Duration::from_millis(200))
        .open()
        .await
        .expect("open the reader");
    let (_listener, mut notifications) =
        count_notifications(&format!("annals_{}", writer.schema())).await;
    let stream = StreamId::new("lost-1").expect("id");

    // The writer's first append is announced; the reader's store signals it. Subscribing only
    // then leaves the subscriber no wake-up owed for it: after reading it, only something new
    // wakes the subscriber.
    let first = writer
        .append(&stream, ExpectedVersion::NoStream, vec![event("First", 1)])
        .await
        .expect("append");
    wait_for_count(
        &mut notifications,
        1,
        "the first append was never announced",
    )
    .await;
    wait_signalled(&reader, first.last_position).await;
    let mut live = subscribe_all(reader.clone(), Position::START, Filter::all());
    assert_eq!(next_type(&mut live).await, "First");

    // This one falls in the writer's hour-long notification gap: no notification, ever.
    writer
        .append(&stream, ExpectedVersion::exact(1), vec![event("Second", 2)])
        .await
        .expect("append");
    let second = tokio::time::timeout(GUARD, live.next())
        .await
        .expect("the subscriber was never woken for an event whose notification was lost")
        .expect("stream ended")
        .expect("event");
    assert_eq!(second.event_type, "Second");
    assert_eq!(
        *notifications.borrow(),
        1,
        "a notification came after all: the test proved nothing"
    );
}
