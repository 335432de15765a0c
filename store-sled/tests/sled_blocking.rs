//! Reads never hold an async worker: on a current-thread runtime, whose one thread runs every
//! task, a timer task keeps ticking while a long `read_all` runs beside it.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annals::{EventData, EventStore, ExpectedVersion, ReadAll};
use annals_sled::{Durability, SledEventStore};
use futures::TryStreamExt;
use support::{sid, to_u64};

/// Events in the log read.
const EVENTS: u64 = 200_000;
/// Events per append.
const BATCH: u64 = 1_000;

#[tokio::test(flavor = "current_thread")]
async fn a_long_read_leaves_the_only_worker_free_for_other_tasks() {
    let store = SledEventStore::builder()
        .temporary()
        .durability(Durability::Buffered)
        .open()
        .await
        .expect("open");
    for batch in 0..EVENTS / BATCH {
        let events = (0..BATCH)
            .map(|i| {
                EventData::new(
                    "Tick",
                    "application/octet-stream",
                    (batch * BATCH + i).to_be_bytes().to_vec(),
                )
            })
            .collect();
        store
            .append(
                &sid(&format!("ticks-{}", batch % 16)),
                ExpectedVersion::Any,
                events,
            )
            .await
            .expect("append");
    }

    // A task ticking every millisecond, noting when each tick ran.
    let ticks = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = tokio::spawn({
        let (ticks, stop) = (ticks.clone(), stop.clone());
        async move {
            let mut interval = tokio::time::interval(Duration::from_millis(1));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                interval.tick().await;
                ticks.lock().expect("ticks").push(Instant::now());
            }
        }
    });
    // Let the ticker start before the read does.
    while ticks.lock().expect("ticks").is_empty() {
        tokio::task::yield_now().await;
    }

    let started = Instant::now();
    let read: Vec<_> = store
        .read_all(ReadAll::all())
        .try_collect()
        .await
        .expect("read_all");
    let ended = Instant::now();
    stop.store(true, Ordering::Relaxed);
    ticker.await.expect("ticker");
    assert_eq!(to_u64(read.len()), EVENTS);

    // The longest stretch of the read during which the ticker could not run.
    let mut during: Vec<Instant> = ticks
        .lock()
        .expect("ticks")
        .iter()
        .copied()
        .filter(|t| *t > started && *t < ended)
        .collect();
    during.insert(0, started);
    during.push(ended);
    let longest_gap = during
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .expect("two instants at least");
    let took = ended - started;
    let ticked = during.len() - 2;
    println!(
        "read {EVENTS} events in {took:?}; {ticked} ticks meanwhile, longest gap {longest_gap:?}"
    );
    assert!(
        longest_gap * 4 < took,
        "the ticker stalled for {longest_gap:?} of the read's {took:?} ({ticked} ticks during it): \
         the read held the runtime's only thread"
    );
    assert!(
        ticked >= 10,
        "the ticker ticked only {ticked} times during the read's {took:?}"
    );
    store.close().await.expect("close");
}
