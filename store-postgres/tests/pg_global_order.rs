//! The global log never skips: an event whose transaction commits after a later-numbered one
//! is still delivered, before it, to readers that tail the log.

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use annals::{
    subscribe_all, EventId, EventStore, ExpectedVersion, Filter, Position, ReadAll, RecordedEvent,
    StreamId,
};
use futures::{StreamExt, TryStreamExt};
use support::{event, raw_client, server, Rng, HANG_GUARD};

/// Transaction A takes the first sequence number and stays open; transaction B takes the second
/// and commits. Readers must not pass A: they see nothing until A commits, then A before B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_is_never_skipped() {
    let store = support::fresh_store("skip").await;
    let tail = {
        let live = subscribe_all(store.clone(), Position::START, Filter::all());
        tokio::spawn(async move {
            tokio::time::timeout(
                HANG_GUARD,
                live.take(2)
                    .map(|e| e.expect("subscription"))
                    .collect::<Vec<_>>(),
            )
            .await
            .expect("the subscriber lost an event")
        })
    };

    // Transaction A, a raw insert into the store's table, held open.
    let a_id = EventId::new();
    let mut raw = raw_client(server()).await;
    let tx = raw.transaction().await.expect("begin A");
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO \"{}\".events (stream_id, version, event_id, event_type, \
                 schema_version, content_type, payload, event_timestamp) \
                 VALUES ('skip-a', 1, $1, 'A', 1, 'application/json', '{{}}', now()) \
                 RETURNING transaction_id::text, seq",
                store.schema()
            ),
            &[a_id.as_uuid()],
        )
        .await
        .expect("append A in an open transaction");
    let a_position = Position::new(
        row.get::<_, String>(0).parse().expect("xid"),
        u64::try_from(row.get::<_, i64>(1)).expect("a seq"),
    );

    // Transaction B commits while A is open.
    let b = store
        .append(
            &StreamId::new("skip-b").expect("id"),
            ExpectedVersion::NoStream,
            vec![event("B", 2)],
        )
        .await
        .expect("append B");
    assert!(
        a_position < b.first_position,
        "A ({a_position}) took its position before B ({})",
        b.first_position
    );

    // Readers must not pass A: B is committed, but invisible to the global log.
    let visible: Vec<RecordedEvent> = store
        .read_all(ReadAll::all())
        .try_collect()
        .await
        .expect("read");
    assert!(
        visible.is_empty(),
        "a reader saw {:?} while A was open: it would skip A",
        visible.iter().map(|e| e.position).collect::<Vec<_>>()
    );
    assert_eq!(store.last_position().await.expect("last"), None);
    // Single streams are not held back.
    assert_eq!(
        store
            .stream_version(&StreamId::new("skip-b").expect("id"))
            .await
            .expect("version")
            .get(),
        1
    );

    tx.commit().await.expect("commit A");

    // The tailing reader gets both, A first: it can checkpoint after each.
    let seen = tail.await.expect("subscriber task");
    assert_eq!(seen[0].id, a_id, "A comes first");
    assert_eq!(seen[0].position, a_position);
    assert_eq!(seen[1].position, b.first_position);
    // A reader resuming from its checkpoint after A gets exactly B.
    let after_a: Vec<RecordedEvent> = store
        .read_all(ReadAll::from(seen[0].position.next()))
        .try_collect()
        .await
        .expect("read");
    assert_eq!(after_a, seen[1..]);
    let all: Vec<RecordedEvent> = store
        .read_all(ReadAll::all())
        .try_collect()
        .await
        .expect("read");
    assert_eq!(all, seen);
}

/// 16 writers and 2 tailing readers, 20,000 events: every reader sees every event exactly
/// once, in increasing positions, each stream's versions in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_never_make_a_reader_skip() {
    const WRITERS: u64 = 16;
    const TOTAL: u64 = 20_000;
    const PER_WRITER: u64 = TOTAL / WRITERS;
    let store = support::init(support::builder_on(server(), "random").pool_size(24)).await;

    let reader = |name: &'static str| {
        let live = subscribe_all(store.clone(), Position::START, Filter::all());
        tokio::spawn(async move {
            let events: Vec<RecordedEvent> = tokio::time::timeout(
                HANG_GUARD,
                live.take(usize::try_from(TOTAL).expect("a count"))
                    .map(|e| e.expect("subscription"))
                    .collect(),
            )
            .await
            .unwrap_or_else(|_| panic!("{name} lost events"));
            events
        })
    };
    let readers = [reader("reader 1"), reader("reader 2")];

    let written = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let written = written.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = Rng::new(0x5eed ^ ((w + 1) * 7919));
            let mut done = 0;
            while done < PER_WRITER {
                let n = (1 + rng.below(5)).min(PER_WRITER - done);
                // Shared streams make writers collide on stream rows too.
                let stream = StreamId::new(format!("rand-{}", rng.below(40))).expect("id");
                let batch: Vec<_> = (0..n).map(|i| event("R", done + i)).collect();
                let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
                store
                    .append(&stream, ExpectedVersion::Any, batch)
                    .await
                    .expect("append");
                written.lock().expect("lock").extend(ids);
                done += n;
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let written = written.lock().expect("lock").clone();
    assert_eq!(u64::try_from(written.len()).expect("a count"), TOTAL);
    for reader in readers {
        let events = reader.await.expect("reader task");
        let ids: HashSet<_> = events.iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), events.len(), "an event was delivered twice");
        assert_eq!(ids, written, "a reader missed events");
        let mut versions = std::collections::HashMap::new();
        for pair in events.windows(2) {
            assert!(pair[0].position < pair[1].position, "positions go back");
        }
        for e in &events {
            let last = versions.entry(e.stream_id.clone()).or_insert(0);
            assert_eq!(
                e.version.get(),
                *last + 1,
                "{} skipped a version",
                e.stream_id
            );
            *last = e.version.get();
        }
    }
}
