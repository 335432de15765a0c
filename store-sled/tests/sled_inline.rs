//! `Durability::Flush` on a multi-thread runtime: a lone appender commits and flushes inline,
//! appenders arriving together go through the flusher's groups. Whatever path an append takes,
//! an answered append is readable at once, checks see every earlier append, and the log stays
//! contiguous across a reopen.

mod support;

use std::sync::Arc;

use annals::{Error, EventStore, ExpectedVersion};
use support::{event, open, read_all, read_stream, shut, sid, to_u64};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_and_concurrent_durable_appends_mix_without_losing_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = Arc::new(open(&path).await);
    let lone = sid("lone");
    let mut total = 0u64;

    // A lone appender in a spawned task (a worker thread): each answer is readable at once.
    let s = store.clone();
    let id = lone.clone();
    tokio::spawn(async move {
        for i in 0..30u64 {
            let result = s
                .append(&id, ExpectedVersion::exact(i), vec![event("Lone", i)])
                .await
                .expect("lone append");
            assert_eq!(result.last_version.get(), i + 1);
            assert_eq!(to_u64(read_stream(&s, &id).await.len()), i + 1);
        }
    })
    .await
    .expect("lone task");
    total += 30;

    // A crowd: 8 tasks on their own streams, and 2 tasks racing on one stream with exact
    // expected versions, where exactly one append per version may win.
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = sid(&format!("crowd-{t}"));
            for i in 0..20u64 {
                s.append(&id, ExpectedVersion::exact(i), vec![event("Crowd", i)])
                    .await
                    .expect("crowd append");
            }
            0u64
        }));
    }
    for _ in 0..2 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = sid("contested");
            let mut won = 0u64;
            for i in 0..20u64 {
                match s
                    .append(&id, ExpectedVersion::exact(i), vec![event("Race", i)])
                    .await
                {
                    Ok(_) => won += 1,
                    Err(Error::VersionConflict { .. }) => {}
                    Err(other) => panic!("unexpected error: {other}"),
                }
            }
            won
        }));
    }
    let mut won = 0;
    for task in tasks {
        won += task.await.expect("task");
    }
    total += 8 * 20;
    let contested = read_stream(&store, &sid("contested")).await;
    assert_eq!(
        to_u64(contested.len()),
        won,
        "every winner is stored, no loser is"
    );
    assert_eq!(
        contested.len(),
        20,
        "each version was won by exactly one of the two"
    );
    total += won;

    // Alone again: the next appends see everything the crowd wrote, and a retry of an append
    // already answered returns its first outcome without writing it twice.
    let retry = event("Lone", 30);
    let first = store
        .append(&lone, ExpectedVersion::exact(30), vec![retry.clone()])
        .await
        .expect("append after the crowd");
    let again = store
        .append(&lone, ExpectedVersion::exact(30), vec![retry])
        .await
        .expect("idempotent retry");
    assert_eq!(first, again);
    total += 1;
    let stale = store
        .append(&lone, ExpectedVersion::exact(30), vec![event("Lone", 99)])
        .await;
    assert!(
        matches!(stale, Err(Error::VersionConflict { .. })),
        "{stale:?}"
    );

    let store = Arc::try_unwrap(store).expect("the only handle");
    shut(store).await;
    let store = open(&path).await;
    let all = read_all(&store).await;
    assert_eq!(to_u64(all.len()), total);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(
            e.position.commit(),
            to_u64(i) + 1,
            "positions are contiguous"
        );
    }
    assert_eq!(read_stream(&store, &lone).await.len(), 31);
    assert!(store.verify().await.expect("verify").is_clean());
    shut(store).await;
}
