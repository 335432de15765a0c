//! `close` announces the last appends to other processes before it returns: a process that
//! appends, closes and exits never leaves another process's subscribers waiting. (Its own
//! binary, so its own server: no other test's transaction holds the readers back, and nothing
//! else notifies on its channel.)

mod support;

use std::time::Duration;

use annals::{
    subscribe_all, Error, EventStore, ExpectedVersion, Filter, Leases, Position, ReadAll,
    RecordedEvent, StreamId,
};
use annals_postgres::PgEventStore;
use futures::stream::BoxStream;
use futures::StreamExt;
use support::{count_notifications, event, server, wait_for_count, wait_signalled, HANG_GUARD};

/// Far longer than the test: within it, a store so configured sends one notification for its
/// first append and none for later ones, and never polls (not even its fallback poll).
const NEVER: Duration = Duration::from_secs(3600);

async fn next(live: &mut BoxStream<'static, annals::Result<RecordedEvent>>) -> RecordedEvent {
    tokio::time::timeout(HANG_GUARD, live.next())
        .await
        .expect("no wake-up came")
        .expect("stream ended")
        .expect("event")
}

/// The writer notifies at most once an hour, so after its first append's notification only
/// `close` can send another: the notifications counted on the channel prove it did, and a
/// subscriber of another store value (its own pool and LISTEN connection, as in another
/// process, never polling, not even its fallback poll) receives every event with no further
/// commit anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_sends_the_notification_still_owed_to_other_processes() {
    let writer = support::init(support::builder_on(server(), "close").notify_interval(NEVER)).await;
    let reader = PgEventStore::builder()
        .connection_string(server().connection_string())
        .schema(writer.schema())
        .poll_interval(NEVER)
        .fallback_poll_interval(NEVER)
        .open()
        .await
        .expect("open the reader");
    let (_listener, mut notifications) =
        count_notifications(&format!("annals_{}", writer.schema())).await;
    let stream = StreamId::new("close-1").expect("id");

    // The first append is announced at once; the reader's store signals it. Subscribing only
    // then leaves the subscriber no wake-up owed for it: after reading it, only a notification
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
    assert_eq!(next(&mut live).await.event_type, "First");

    // These fall in the writer's notification gap: announced by nobody until `close`.
    writer
        .append(&stream, ExpectedVersion::exact(1), vec![event("Second", 2)])
        .await
        .expect("append");
    writer
        .append(
            &stream,
            ExpectedVersion::exact(2),
            vec![event("Third", 3), event("Fourth", 4)],
        )
        .await
        .expect("append");
    writer.close().await.expect("close");

    // `close` returned after sending the notification it owed; no commit happens from here on.
    wait_for_count(
        &mut notifications,
        2,
        "close did not send the notification it owed",
    )
    .await;
    for expected in ["Second", "Third", "Fourth"] {
        assert_eq!(next(&mut live).await.event_type, expected);
    }

    // Closing again is harmless; the closed store refuses work; the other store goes on.
    writer.close().await.expect("a second close");
    let refused = writer
        .append(&stream, ExpectedVersion::exact(4), vec![event("Late", 5)])
        .await;
    assert!(matches!(refused, Err(Error::Closed)), "{refused:?}");
    let read = writer.read_all(ReadAll::all()).collect::<Vec<_>>().await;
    assert!(matches!(read[..], [Err(Error::Closed)]), "{read:?}");
    assert!(matches!(writer.try_lease("l").await, Err(Error::Closed)));
    assert!(matches!(writer.verify().await, Err(Error::Closed)));
    assert_eq!(
        reader
            .stream_version(&stream)
            .await
            .expect("the other store still works")
            .get(),
        4
    );
}
