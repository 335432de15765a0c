use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use annals::{
    subscribe_all, Error, EventStore, ExpectedVersion, Filter, Position, RecordedEvent, Version,
};
use futures::StreamExt;
use tokio::sync::Barrier;

use super::{event, read_stream, sid, StoreFactory, HANG_GUARD};

/// 8 tasks race to append to one stream at the same `Exact` version, round after round: each
/// version is won exactly once, there are no gaps, and every loser gets the conflict error with
/// the winner's version as the actual one.
pub async fn concurrent_exact_appends<F: StoreFactory>(factory: &F) {
    const TASKS: usize = 8;
    const ROUNDS: u64 = 20;
    let store = factory.new_store().await;
    let stream = sid("race-1");
    let barrier = Arc::new(Barrier::new(TASKS));
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        let stream = stream.clone();
        let barrier = barrier.clone();
        handles.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for round in 0..ROUNDS {
                barrier.wait().await;
                let result = store
                    .append(
                        &stream,
                        ExpectedVersion::exact(round),
                        vec![event(&format!("Task{task}"), round)],
                    )
                    .await;
                match result {
                    Ok(r) => {
                        assert_eq!(r.last_version, Version::new(round + 1));
                        won.push(round + 1);
                    }
                    Err(Error::VersionConflict {
                        actual, expected, ..
                    }) => {
                        assert_eq!(expected, ExpectedVersion::exact(round));
                        assert_eq!(actual, Version::new(round + 1), "loser sees the winner");
                    }
                    Err(other) => panic!("task {task} round {round}: {other:?}"),
                }
                // Everyone has finished this round before the next starts.
                barrier.wait().await;
            }
            won
        }));
    }
    let mut won: Vec<u64> = Vec::new();
    for handle in handles {
        won.extend(handle.await.expect("task panicked"));
    }
    won.sort_unstable();
    assert_eq!(
        won,
        (1..=ROUNDS).collect::<Vec<_>>(),
        "each version won exactly once"
    );
    let events = read_stream(&store, &stream).await;
    let versions: Vec<u64> = events.iter().map(|e| e.version.get()).collect();
    assert_eq!(versions, (1..=ROUNDS).collect::<Vec<_>>(), "no gaps");
}

/// 8 tasks append to 8 streams while readers tail [`subscribe_all`]: each reader receives every
/// event exactly once, in position order, with each stream's versions in order; a reader
/// starting mid-log gets exactly the rest, and one starting past the end gets only what comes.
pub async fn subscribe_while_appending<F: StoreFactory>(factory: &F) {
    const TASKS: u64 = 8;
    const PER_TASK: u64 = 60;
    let total = usize::try_from(TASKS * PER_TASK).expect("480 fits");
    let store = factory.new_store().await;
    // Some events before the subscription, so it catches up first and then goes live.
    let seed = sid("seed-0");
    store
        .append(
            &seed,
            ExpectedVersion::NoStream,
            (0..10).map(|i| event("Seed", i)).collect(),
        )
        .await
        .expect("seed");

    let reader = |from: Position, filter: Filter, count: usize| {
        let stream = subscribe_all(store.clone(), from, filter);
        tokio::spawn(async move {
            let events: Vec<RecordedEvent> = tokio::time::timeout(
                HANG_GUARD,
                stream
                    .take(count)
                    .map(|e| e.expect("subscription error"))
                    .collect(),
            )
            .await
            .expect("subscription hung: events were lost");
            events
        })
    };
    let everything = reader(Position::START, Filter::all(), total + 10);
    let only_writes = reader(Position::START, Filter::all().category("writer"), total);

    let mut writers = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let stream = sid(&format!("writer-{task}"));
            let mut written = 0;
            while written < PER_TASK {
                // Batches of 1 to 3 events.
                let n = (1 + (written + task) % 3).min(PER_TASK - written);
                let batch = (written..written + n).map(|i| event("Wrote", i)).collect();
                store
                    .append(&stream, ExpectedVersion::exact(written), batch)
                    .await
                    .expect("append");
                written += n;
            }
        }));
    }
    for w in writers {
        w.await.expect("writer panicked");
    }

    let all = everything.await.expect("reader panicked");
    check_subscription(&all, total + 10, "subscriber from the start");
    let writes = only_writes.await.expect("reader panicked");
    check_subscription(&writes, total, "filtered subscriber");
    assert!(writes.iter().all(|e| e.stream_id.category() == "writer"));

    // From the middle: exactly the rest.
    let middle = all[all.len() / 2].position;
    let rest = reader(middle, Filter::all(), all.len() - all.len() / 2)
        .await
        .expect("reader panicked");
    assert_eq!(rest.as_slice(), &all[all.len() / 2..]);

    // From after the end: nothing old, then exactly what is appended next.
    let after = all.last().expect("events").position.next();
    let late = reader(after, Filter::all(), 1);
    store
        .append(
            &sid("late-1"),
            ExpectedVersion::NoStream,
            vec![event("Late", 0)],
        )
        .await
        .expect("append");
    let late = late.await.expect("reader panicked");
    assert_eq!(
        late[0].event_type, "Late",
        "a reader past the end sees only new events"
    );
}

fn check_subscription(events: &[RecordedEvent], expected: usize, what: &str) {
    assert_eq!(events.len(), expected, "{what}: event count");
    let ids: HashSet<_> = events.iter().map(|e| e.id).collect();
    assert_eq!(
        ids.len(),
        events.len(),
        "{what}: an event was delivered twice"
    );
    super::assert_positions_increase(events, what);
    let mut versions: HashMap<_, u64> = HashMap::new();
    for e in events {
        let last = versions.entry(e.stream_id.clone()).or_default();
        assert_eq!(
            e.version.get(),
            *last + 1,
            "{what}: {} skipped a version",
            e.stream_id
        );
        *last = e.version.get();
    }
}
