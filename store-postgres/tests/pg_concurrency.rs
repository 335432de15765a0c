//! Concurrent appends on separate connections: the expected-version check has no race.

mod support;

use std::sync::Arc;

use annals::{Error, EventStore, ExpectedVersion, ReadAll, ReadStream, StreamId, Version};
use futures::TryStreamExt;
use tokio::sync::Barrier;

/// 16 connections append to one stream at the same `Exact` version, round after round: each
/// version is won exactly once and every loser gets the conflict error with the winner's version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_connections_race_on_one_stream() {
    const TASKS: usize = 16;
    const ROUNDS: u64 = 25;
    let store =
        support::init(support::builder_on(support::server(), "race").pool_size(TASKS)).await;
    let stream = StreamId::new("race-1").expect("id");
    let barrier = Arc::new(Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (store, stream, barrier) = (store.clone(), stream.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            let mut lost = 0;
            for round in 0..ROUNDS {
                barrier.wait().await;
                match store
                    .append(
                        &stream,
                        ExpectedVersion::exact(round),
                        vec![support::event(
                            "Raced",
                            u64::try_from(task).expect("a task"),
                        )],
                    )
                    .await
                {
                    Ok(r) => won.push(r.last_version.get()),
                    Err(Error::VersionConflict { actual, .. }) => {
                        assert_eq!(actual, Version::new(round + 1), "the loser sees the winner");
                        lost += 1;
                    }
                    Err(other) => panic!("task {task}, round {round}: {other:?}"),
                }
                barrier.wait().await;
            }
            (won, lost)
        }));
    }
    let mut won = Vec::new();
    let mut lost = 0;
    for t in tasks {
        let (w, l) = t.await.expect("task");
        won.extend(w);
        lost += l;
    }
    won.sort_unstable();
    assert_eq!(
        won,
        (1..=ROUNDS).collect::<Vec<_>>(),
        "each version won exactly once"
    );
    assert_eq!(
        lost,
        (u64::try_from(TASKS).expect("tasks") - 1) * ROUNDS,
        "everyone else conflicted"
    );
    let versions: Vec<u64> = store
        .read_stream(&stream, ReadStream::forward())
        .map_ok(|e| e.version.get())
        .try_collect()
        .await
        .expect("read");
    assert_eq!(versions, (1..=ROUNDS).collect::<Vec<_>>());
}

/// 16 connections create the same new stream at once (`NoStream`): one wins, the rest conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_connections_create_one_stream() {
    const TASKS: usize = 16;
    let store =
        support::init(support::builder_on(support::server(), "create").pool_size(TASKS)).await;
    let barrier = Arc::new(Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store
                .append(
                    &StreamId::new("new-1").expect("id"),
                    ExpectedVersion::NoStream,
                    vec![
                        support::event("Created", u64::try_from(task).expect("a task")),
                        support::event("Next", 0),
                    ],
                )
                .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(r) => {
                assert_eq!(r.last_version, Version::new(2));
                wins += 1;
            }
            Err(Error::VersionConflict { actual, .. }) => assert_eq!(actual, Version::new(2)),
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(wins, 1);
    // The stream, not the global log: the log shows a commit only once every older transaction
    // on the server has ended, and the other tests of this binary share the server.
    let all: Vec<_> = store
        .read_stream(&StreamId::new("new-1").expect("id"), ReadStream::forward())
        .try_collect()
        .await
        .expect("read");
    assert_eq!(all.len(), 2, "only the winner's batch is stored");
}

/// The same batch appended by 8 connections at once (a client retrying in a hurry) is stored
/// once, and every caller gets the same answer — never a unique-violation error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_of_one_batch_store_it_once() {
    const TASKS: usize = 8;
    let store =
        support::init(support::builder_on(support::server(), "retry").pool_size(TASKS)).await;
    let batch: Vec<_> = (0..3).map(|i| support::event("Once", i)).collect();
    let barrier = Arc::new(Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (store, barrier, batch) = (store.clone(), barrier.clone(), batch.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store
                .append(
                    &StreamId::new("once-1").expect("id"),
                    ExpectedVersion::Any,
                    batch,
                )
                .await
                .expect("a retry is not an error")
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    // The stream, not the global log (which shows a commit only once every older transaction on
    // the shared server has ended).
    let all: Vec<_> = store
        .read_stream(&StreamId::new("once-1").expect("id"), ReadStream::forward())
        .try_collect()
        .await
        .expect("read");
    assert_eq!(all.len(), 3);
}

/// A 100-event batch is one multi-row insert whose global order is its version order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_keeps_its_order_in_the_global_log() {
    let store = support::fresh_store("order").await;
    let batch: Vec<_> = (0..100).map(|i| support::event("Item", i)).collect();
    let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
    let r = store
        .append(
            &StreamId::new("batch-1").expect("id"),
            ExpectedVersion::NoStream,
            batch,
        )
        .await
        .expect("append");
    // Other tests of this binary share the server: their open transactions may hold readers back.
    support::wait_visible(&store, r.last_position).await;
    let all: Vec<_> = store
        .read_all(ReadAll::all())
        .try_collect()
        .await
        .expect("read");
    assert_eq!(all.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert_eq!(all[0].position, r.first_position);
    assert_eq!(all[99].position, r.last_position);
    assert!(
        all.iter()
            .all(|e| e.position.commit() == r.first_position.commit()),
        "one transaction"
    );
}
