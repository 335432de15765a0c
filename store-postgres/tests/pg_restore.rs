//! `restore` on PostgreSQL: what the conformance suite cannot see. A restore racing appends or
//! other restores to the same streams (exactly one wins, nothing half-written), heads this store
//! remembered that another store moved on, its wake-ups here and in other processes, readers
//! tailing the log beside restores, and times PostgreSQL cannot hold.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use annals::{
    subscribe_all, Error, EventStore, ExpectedVersion, Filter, Metadata, Position, ReadStream,
    RecordedEvent, RestoreResult, RestoredEvent, StreamId, Timestamp, Version,
};
use annals_postgres::PgEventStore;
use futures::{StreamExt, TryStreamExt};
use support::{count_notifications, event, raw_client, server, wait_for_count, HANG_GUARD};

/// Far longer than any test: a store so configured never runs its fallback poll.
const NEVER: Duration = Duration::from_secs(3600);

fn sid(s: &str) -> StreamId {
    StreamId::new(s).expect("stream id")
}

/// Event `n` at `version` of `stream`, recorded `micros` after the Unix epoch.
fn restored(stream: &str, version: u64, micros: i64, n: u64) -> RestoredEvent {
    RestoredEvent::new(
        sid(stream),
        Version::new(version),
        Timestamp::from_unix_micros(micros),
        event("Restored", n),
    )
}

async fn stream(store: &PgEventStore, id: &str) -> Vec<RecordedEvent> {
    store
        .read_stream(&sid(id), ReadStream::forward())
        .try_collect()
        .await
        .expect("read_stream")
}

fn is_refusal(outcome: &annals::Result<impl std::fmt::Debug>) -> bool {
    matches!(
        outcome,
        Err(Error::VersionConflict { .. } | Error::IdempotencyConflict { .. })
    )
}

/// Waits until a `COPY` into `schema`'s events waits for a lock: a restore blocked by a row
/// another transaction holds.
async fn wait_until_copy_waits(raw: &tokio_postgres::Client, schema: &str) {
    let pattern = format!("COPY \"{schema}\".events%");
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            let row = raw
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE wait_event_type = 'Lock' AND query LIKE $1",
                    &[&pattern],
                )
                .await
                .expect("pg_stat_activity");
            if row.get::<_, i64>(0) > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the restore never waited for the held row");
}

/// A transaction of another writer holds the next version of a stream the restore continues:
/// the restore waits for it. When it commits, the restore is refused and writes nothing, not
/// even its other stream's events; when it rolls back, the restore writes its whole batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_waits_for_a_writer_holding_its_version_then_fails_whole_or_writes_whole() {
    let _alone = support::alone().await;
    let store = support::fresh_store("held").await;
    store
        .restore(vec![restored("held-a", 1, 1_000, 1)])
        .await
        .expect("restore");
    let mut raw = raw_client(server()).await;
    let watcher = raw_client(server()).await;
    let insert = format!(
        "INSERT INTO \"{}\".events (stream_id, version, event_id, event_type, schema_version, \
         content_type, payload, event_timestamp) \
         VALUES ($1, $2, gen_random_uuid(), 'Other', 1, 'application/json', '{{}}', now())",
        store.schema()
    );

    for commit in [true, false] {
        let head = stream(&store, "held-a").await.len() as u64;
        let tx = raw.transaction().await.expect("begin");
        tx.execute(
            &insert,
            &[&"held-a", &i64::try_from(head + 1).expect("version")],
        )
        .await
        .expect("the other writer's row");
        let side = format!("held-side-{commit}");
        // After the other writer's row, recorded now.
        let later = Timestamp::now().unix_micros() + 3_600_000_000;
        let batch = vec![
            restored(&side, 1, later, 10),
            restored("held-a", head + 1, later + 1, 11),
            restored(&side, 2, later + 2, 12),
        ];
        let restoring = {
            let store = store.clone();
            tokio::spawn(async move { store.restore(batch).await })
        };
        wait_until_copy_waits(&watcher, store.schema()).await;
        if commit {
            tx.commit().await.expect("commit");
        } else {
            tx.rollback().await.expect("rollback");
        }
        let outcome = tokio::time::timeout(HANG_GUARD, restoring)
            .await
            .expect("the restore hung")
            .expect("task");
        if commit {
            assert!(
                matches!(outcome, Err(Error::IdempotencyConflict { .. })),
                "another event holds the version: {outcome:?}"
            );
            assert!(
                stream(&store, &side).await.is_empty(),
                "nothing of a refused batch"
            );
            assert_eq!(stream(&store, "held-a").await.len() as u64, head + 1);
        } else {
            let result = outcome.expect("the other writer rolled back");
            assert_eq!((result.written, result.present), (3, 0));
            assert_eq!(stream(&store, &side).await.len(), 2);
            let a = stream(&store, "held-a").await;
            assert_eq!(a.len() as u64, head + 1);
            assert_eq!(a.last().expect("event").event_type, "Restored");
        }
    }
    let report = store.verify().await.expect("verify");
    assert!(report.is_clean(), "{report}");
}

/// Appends and restores to the same streams at once, round after round: exactly one of each
/// pair wins; the loser is refused with a conflict and writes nothing (the restore's other
/// stream stays empty); every stream's versions run 1..n.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_and_an_append_racing_for_a_stream_exactly_one_wins() {
    let store = support::fresh_store("race").await;
    let other = support::store_on(store.schema()).await;
    let mut restores_won = 0;
    for round in 0..40u64 {
        let contested = format!("race-{}", round % 4);
        let side = format!("race-side-{round}");
        let head = store
            .stream_version(&sid(&contested))
            .await
            .expect("version")
            .get();
        // After the appended events, recorded now.
        let time = Timestamp::now().unix_micros() + 3_600_000_000;
        let batch = vec![
            restored(&side, 1, time, round),
            restored(&contested, head + 1, time + 1, round),
            restored(&side, 2, time + 2, round),
        ];
        // The append goes through another store value (another process), half the time.
        let appender = if round % 2 == 0 { &store } else { &other };
        let contested_id = sid(&contested);
        // A head start of one or the other now and then; a plain race otherwise.
        let (append_after, restore_after) = match round % 3 {
            0 => (Duration::ZERO, Duration::ZERO),
            1 => (Duration::from_millis(20), Duration::ZERO),
            _ => (Duration::ZERO, Duration::from_millis(20)),
        };
        let (appended, restoring) = tokio::join!(
            async {
                tokio::time::sleep(append_after).await;
                appender
                    .append(
                        &contested_id,
                        ExpectedVersion::exact(head),
                        vec![event("Appended", round)],
                    )
                    .await
            },
            async {
                tokio::time::sleep(restore_after).await;
                store.restore(batch).await
            },
        );
        assert!(
            appended.is_ok() != restoring.is_ok(),
            "round {round}: exactly one wins: {appended:?} {restoring:?}"
        );
        if let Ok(result) = &restoring {
            restores_won += 1;
            assert_eq!((result.written, result.present), (3, 0));
            assert!(is_refusal(&appended), "round {round}: {appended:?}");
            assert_eq!(stream(&store, &side).await.len(), 2);
        } else {
            assert!(is_refusal(&restoring), "round {round}: {restoring:?}");
            assert!(
                stream(&store, &side).await.is_empty(),
                "round {round}: the refused restore wrote its other stream"
            );
        }
        assert_eq!(
            store
                .stream_version(&sid(&contested))
                .await
                .expect("version")
                .get(),
            head + 1
        );
    }
    println!("restores won {restores_won} of 40 rounds");
    let report = store.verify().await.expect("verify");
    assert!(report.is_clean(), "{report}");
}

/// Two restores of different events at the same versions of the same streams, written in
/// opposite orders (so they may deadlock): exactly one wins whole. The same restore twice at
/// once writes its events once: the other run finds them present.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restores_racing_each_other_write_one_batch_whole() {
    let store = support::fresh_store("twins").await;
    let other = support::store_on(store.schema()).await;
    let mut total = 0;
    for round in 0..3u64 {
        let (a, b) = (format!("twins-a-{round}"), format!("twins-b-{round}"));
        let first = vec![
            restored(&a, 1, 1, 1),
            restored(&b, 1, 2, 2),
            restored(&a, 2, 3, 3),
        ];
        let second = vec![restored(&b, 1, 1, 4), restored(&a, 1, 2, 5)];
        let (one, two) = tokio::join!(store.restore(first.clone()), other.restore(second));
        assert!(
            one.is_ok() != two.is_ok(),
            "round {round}: exactly one wins: {one:?} {two:?}"
        );
        let loser = if one.is_ok() { &two } else { &one };
        assert!(
            matches!(loser, Err(Error::IdempotencyConflict { .. })),
            "round {round}: {loser:?}"
        );
        let written: usize = stream(&store, &a).await.len() + stream(&store, &b).await.len();
        assert_eq!(written, if one.is_ok() { 3 } else { 2 }, "round {round}");
        total += written;
    }

    let batch: Vec<RestoredEvent> = (0..50)
        .map(|i| restored(&format!("same-{}", i % 5), i / 5 + 1, 10, i))
        .collect();
    let (one, two) = tokio::join!(store.restore(batch.clone()), other.restore(batch.clone()));
    let (one, two) = (one.expect("first run"), two.expect("second run"));
    let mut counts = [(one.written, one.present), (two.written, two.present)];
    counts.sort_unstable();
    assert_eq!(counts, [(0, 50), (50, 0)], "{one:?} {two:?}");
    // Counted by stream: another test's open transaction may hold the global log back.
    let mut stored = total;
    for round in 0..3 {
        for s in ["a", "b"] {
            stored += stream(&store, &format!("twins-{s}-{round}")).await.len();
        }
    }
    for s in 0..5 {
        stored += stream(&store, &format!("same-{s}")).await.len();
    }
    assert_eq!(stored, 2 * total + 50);
}

/// A store takes the heads it remembers (from its own restores and reads) as the streams'
/// heads without reading them; another store moving those streams on never makes it refuse a
/// good batch, accept a bad one, or miss events a re-run finds present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_a_store_remembers_that_went_stale_are_checked_against_the_server() {
    let a = support::fresh_store("stale").await;
    let b = support::store_on(a.schema()).await;
    let batch = |from: u64, n: u64| {
        vec![
            restored("stale-x", from, 100 * i64::try_from(from).expect("v"), n),
            restored(
                "stale-y",
                from,
                100 * i64::try_from(from).expect("v"),
                n + 1,
            ),
        ]
    };
    let first = batch(1, 10);
    a.restore(first.clone()).await.expect("a: versions 1");
    let second = batch(2, 20);
    b.restore(second.clone()).await.expect("b: versions 2");

    // `a` remembers version 1 of both: a batch following version 2 is good.
    let third = batch(3, 30);
    let r = a.restore(third.clone()).await.expect("a: versions 3");
    assert_eq!((r.written, r.present), (2, 0));
    // `b` remembers version 2: other events at version 3 are refused, nothing written.
    let refused = b.restore(batch(3, 40)).await;
    assert!(
        matches!(refused, Err(Error::IdempotencyConflict { .. })),
        "{refused:?}"
    );
    // A re-run through `b` finds `a`'s events present; through `a` too.
    let again = b.restore(third.clone()).await.expect("b: re-run");
    assert_eq!((again.written, again.present), (0, 2));
    let again = a.restore(third.clone()).await.expect("a: re-run");
    assert_eq!((again.written, again.present), (0, 2));
    // A whole re-run, and one that goes on: `b`'s heads are now right.
    let mut longer: Vec<RestoredEvent> = [first, second, third].concat();
    longer.extend(batch(4, 50));
    let more = b.restore(longer).await.expect("b: longer re-run");
    assert_eq!((more.written, more.present), (2, 6));
    // A gap after the real head is refused, whatever the store remembers.
    let gap = a.restore(batch(6, 60)).await;
    assert!(
        matches!(gap, Err(Error::VersionConflict { actual, .. }) if actual == Version::new(4)),
        "{gap:?}"
    );
    // So is a recording time before the real head's, which `a` never saw.
    let back = a.restore(vec![restored("stale-x", 5, 399, 70)]).await;
    assert!(matches!(back, Err(Error::InvalidEvent { .. })), "{back:?}");
    // An append after restores, at the head the store learnt from them.
    a.append(
        &sid("stale-x"),
        ExpectedVersion::exact(4),
        vec![event("After", 80)],
    )
    .await
    .expect("append");
    let versions: Vec<u64> = stream(&a, "stale-x")
        .await
        .iter()
        .map(|e| e.version.get())
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    let report = a.verify().await.expect("verify");
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.events, 9);
}

/// A restore wakes this store's subscribers and, with a notification, other processes':
/// a subscriber of another store value that never runs its fallback poll receives the whole
/// batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_wakes_subscribers_here_and_in_other_processes() {
    let writer = support::fresh_store("wake").await;
    let reader = support::init(
        support::builder_with_schema(server(), writer.schema()).fallback_poll_interval(NEVER),
    )
    .await;
    let (_listener, mut notifications) =
        count_notifications(&format!("annals_{}", writer.schema())).await;
    let here = subscribe_all(writer.clone(), Position::START, Filter::all());
    let there = subscribe_all(reader.clone(), Position::START, Filter::all());
    let batch: Vec<RestoredEvent> = (0..20)
        .map(|i| restored(&format!("wake-{}", i % 3), i / 3 + 1, 5, i))
        .collect();
    let result: RestoreResult = writer.restore(batch.clone()).await.expect("restore");
    assert_eq!(result.written, 20);
    wait_for_count(&mut notifications, 1, "the restore was never announced").await;
    for (name, live) in [("here", here), ("there", there)] {
        let got: Vec<RecordedEvent> = tokio::time::timeout(HANG_GUARD, live.take(20).try_collect())
            .await
            .unwrap_or_else(|_| panic!("{name}: the subscriber was never woken"))
            .expect("subscription");
        let ids: Vec<_> = got.iter().map(|e| e.id).collect();
        let want: Vec<_> = batch.iter().map(|e| e.event.id).collect();
        assert_eq!(ids, want, "{name}: the batch, in batch order");
        assert_eq!(got.last().map(|e| e.position), result.last_position);
        assert!(got
            .iter()
            .all(|e| e.recorded_at == Timestamp::from_unix_micros(5)));
    }
}

/// Restorers and appenders at once, readers tailing the log: every reader sees every event
/// exactly once, in increasing positions, each stream's versions in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restores_beside_appends_never_make_a_reader_skip() {
    const RESTORERS: u64 = 4;
    const BATCHES: u64 = 10;
    const PER_BATCH: u64 = 200;
    const APPENDERS: u64 = 4;
    const APPENDS: u64 = 250;
    const TOTAL: u64 = RESTORERS * BATCHES * PER_BATCH + APPENDERS * APPENDS;
    let store = support::init(support::builder_on(server(), "beside").pool_size(16)).await;
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
    for w in 0..RESTORERS {
        let store = store.clone();
        let written = written.clone();
        writers.push(tokio::spawn(async move {
            // 20 streams per restorer, interleaved, 10 events each per batch.
            for b in 0..BATCHES {
                let batch: Vec<RestoredEvent> = (0..PER_BATCH)
                    .map(|i| {
                        let version = b * (PER_BATCH / 20) + i / 20 + 1;
                        let micros = i64::try_from(b * PER_BATCH + i).expect("time");
                        restored(&format!("copy{w}-{}", i % 20), version, micros, i)
                    })
                    .collect();
                let ids: Vec<_> = batch.iter().map(|e| e.event.id).collect();
                let r = store.restore(batch).await.expect("restore");
                assert_eq!(r.written, PER_BATCH);
                written.lock().expect("lock").extend(ids);
            }
        }));
    }
    for w in 0..APPENDERS {
        let store = store.clone();
        let written = written.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..APPENDS {
                let e = event("Live", n);
                let id = e.id;
                store
                    .append(
                        &sid(&format!("live{w}-{}", n % 5)),
                        ExpectedVersion::Any,
                        vec![e],
                    )
                    .await
                    .expect("append");
                written.lock().expect("lock").insert(id);
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let written = written.lock().expect("lock").clone();
    assert_eq!(written.len() as u64, TOTAL);
    for reader in readers {
        let events = reader.await.expect("reader task");
        let ids: HashSet<_> = events.iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), events.len(), "an event was delivered twice");
        assert_eq!(ids, written, "a reader missed events");
        for pair in events.windows(2) {
            assert!(pair[0].position < pair[1].position, "positions go back");
        }
        let mut versions: HashMap<StreamId, u64> = HashMap::new();
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

/// PostgreSQL's `timestamptz` starts in 4714 BC: an earlier recording time, or an earlier
/// event timestamp (of a restore or an append), is refused with the facts before anything is
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_postgres_cannot_hold_are_refused_before_anything_is_written() {
    let store = support::fresh_store("ancient").await;
    let ancient = Timestamp::from_unix_micros(i64::MIN / 2);
    let refused = store
        .restore(vec![
            restored("ancient-a", 1, 0, 1),
            RestoredEvent::new(sid("ancient-b"), Version::new(1), ancient, event("Old", 2)),
        ])
        .await;
    assert!(
        matches!(&refused, Err(Error::InvalidEvent { reason, .. }) if reason.contains("4714 BC")),
        "{refused:?}"
    );
    let old = event("Old", 3).with_metadata(Metadata::at(ancient));
    let refused = store
        .restore(vec![RestoredEvent::new(
            sid("ancient-c"),
            Version::new(1),
            Timestamp::from_unix_micros(0),
            old.clone(),
        )])
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidEvent { .. })),
        "{refused:?}"
    );
    let refused = store
        .append(&sid("ancient-d"), ExpectedVersion::Any, vec![old])
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidEvent { .. })),
        "{refused:?}"
    );
    for s in ["ancient-a", "ancient-b", "ancient-c", "ancient-d"] {
        assert!(stream(&store, s).await.is_empty(), "{s}");
    }
    // The earliest time it holds goes in and comes back.
    let earliest = Timestamp::from_unix_micros(-210_866_803_200_000_000);
    store
        .restore(vec![RestoredEvent::new(
            sid("ancient-e"),
            Version::new(1),
            earliest,
            event("Oldest", 4).with_metadata(Metadata::at(earliest)),
        )])
        .await
        .expect("the earliest time");
    let back = stream(&store, "ancient-e").await;
    assert_eq!(back[0].recorded_at, earliest);
    assert_eq!(back[0].metadata.timestamp, earliest);
}
