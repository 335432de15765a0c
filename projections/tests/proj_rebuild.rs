//! Rebuild jobs on the in-memory store and read model: a new generation built beside the live
//! one, swapped atomically while a writer appends and readers read, live runners moving to it,
//! effects never repeated, resumable.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use annals::{
    BoxError, EventData, EventId, EventStore, ExpectedVersion, InMemoryStore, RecordedEvent,
    StreamId,
};
use annals_projections::{
    MemoryModel, MemoryTx, Projection, ProjectionError, ProjectionName, ProjectionRunner, Rebuild,
};
use support::{fill, fold, Tallies, Tally, HANG_GUARD};
use tokio_util::sync::CancellationToken;

async fn guard<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

/// Appends one event to each of `streams` streams of `account-*`, `rounds` times, until
/// `stop` is set or the rounds are done.
async fn write(store: InMemoryStore, streams: u64, stop: Arc<AtomicBool>) -> u64 {
    let mut written = 0;
    let mut round = 0u64;
    // Bounded: the rebuild catches up with it, whatever their speeds.
    while !stop.load(Ordering::Acquire) && round < 500 {
        for s in 0..streams {
            let stream = StreamId::new(format!("account-{s}")).unwrap();
            let data = EventData::json("Counted", &serde_json::json!({ "n": round })).unwrap();
            store
                .append(&stream, ExpectedVersion::Any, vec![data])
                .await
                .unwrap();
            written += 1;
        }
        round += 1;
        tokio::task::yield_now().await;
    }
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_swaps_in_a_whole_generation_while_a_writer_appends_and_readers_read() {
    let store = InMemoryStore::new();
    fill(&store, "account", 40, 100, 10).await;
    let model: MemoryModel<String, Tally> = MemoryModel::new();
    let live = ProjectionRunner::new(store.clone(), model.clone(), Tallies::new("tallies"))
        .partitions(4)
        .start()
        .await
        .unwrap();
    let head = store.last_position().await.unwrap().unwrap();
    guard("live catch-up", live.caught_up_to(head))
        .await
        .unwrap();
    let before = model.to_map();
    assert_eq!(before.len(), 40);

    // Readers: each read sees one generation whole — every stream, none behind where it was
    // before the rebuild (a half-built generation would miss streams or counts).
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (model, stop, reads, before) =
            (model.clone(), stop.clone(), reads.clone(), before.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let seen = model.to_map();
                assert_eq!(seen.len(), before.len(), "a read saw a partial model");
                for (stream, tally) in &before {
                    assert!(
                        seen[stream].count >= tally.count,
                        "a read saw {stream} behind"
                    );
                }
                reads.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    let writer = tokio::spawn(write(store.clone(), 40, stop.clone()));

    let progress = Arc::new(Mutex::new(Vec::new()));
    let report = {
        let progress = progress.clone();
        guard(
            "the rebuild",
            Rebuild::new(store.clone(), model.clone(), Tallies::new("tallies"))
                .partitions(4)
                .batch_size(200)
                .on_progress(move |p| progress.lock().unwrap().push((p.done, p.total)))
                .run(),
        )
        .await
        .unwrap()
    };
    assert_eq!((report.previous, report.generation), (1, 2));
    assert!(!report.kept_old);
    stop.store(true, Ordering::Release);
    writer.await.unwrap();
    // With no event to commit, the live runner's partitions still move to the new generation
    // (its status says the generation readers see).
    guard("the idle live runner moving to generation 2", async {
        while live.status().partitions.iter().any(|p| p.generation != 2) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    // Events after the swap land in the new generation.
    let after_swap = store.last_position().await.unwrap().unwrap();
    let more = store
        .append(
            &StreamId::new("account-0").unwrap(),
            ExpectedVersion::Any,
            vec![EventData::json("Counted", &serde_json::json!({ "n": 7 })).unwrap()],
        )
        .await
        .unwrap();
    assert!(more.last_position > after_swap);
    reader.await.unwrap();
    assert!(reads.load(Ordering::Relaxed) > 0);

    let head = store.last_position().await.unwrap().unwrap();
    guard(
        "the live runner in the new generation",
        live.caught_up_to(head),
    )
    .await
    .unwrap();
    let status = live.status();
    assert_eq!(
        status.generation, 2,
        "the live runner moved to the new generation"
    );
    assert_eq!(model.to_map(), fold(&store, None).await);
    let generations = annals_projections::ReadModel::generations(
        &model,
        &ProjectionName::new("tallies").unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(generations.active, 2);
    assert_eq!(generations.building, None);
    assert_eq!(generations.swapped_at, Some(report.swapped_at));
    {
        let progress = progress.lock().unwrap();
        assert!(!progress.is_empty(), "progress was reported");
        assert!(progress
            .iter()
            .all(|(done, total)| *total > 0 && *done <= *total + 100_000));
    }
    live.shutdown().await.unwrap();
}

/// Counts each event's outside effect, by event id.
struct Mailer {
    name: ProjectionName,
    sent: Arc<Mutex<HashMap<EventId, u32>>>,
}

impl Projection<MemoryModel<String, u64>> for Mailer {
    fn name(&self) -> &ProjectionName {
        &self.name
    }
    async fn handle(
        &self,
        tx: &mut MemoryTx<String, u64>,
        events: &[RecordedEvent],
    ) -> Result<(), BoxError> {
        for e in events {
            let n = tx.get(&e.stream_id.to_string()).unwrap_or(0);
            tx.insert(e.stream_id.to_string(), n + 1);
        }
        Ok(())
    }
    fn has_effects(&self) -> bool {
        true
    }
    async fn effects(
        &self,
        _tx: &mut MemoryTx<String, u64>,
        events: &[RecordedEvent],
    ) -> Result<(), BoxError> {
        let mut sent = self.sent.lock().unwrap();
        for e in events {
            *sent.entry(e.id).or_default() += 1;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_a_rebuild_and_its_swap_each_event_has_its_effect_exactly_once() {
    let store = InMemoryStore::new();
    fill(&store, "account", 20, 50, 5).await;
    let model: MemoryModel<String, u64> = MemoryModel::new();
    let sent = Arc::new(Mutex::new(HashMap::new()));
    let mailer = || Mailer {
        name: ProjectionName::new("mailer").unwrap(),
        sent: sent.clone(),
    };
    // The live generation is behind (not running) while the rebuild starts: the rebuild does
    // the effects of the events the live one never handled, and no others.
    let live = ProjectionRunner::new(store.clone(), model.clone(), mailer())
        .partitions(2)
        .start()
        .await
        .unwrap();
    let half = store.last_position().await.unwrap().unwrap();
    guard("live catch-up", live.caught_up_to(half))
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write(store.clone(), 20, stop.clone()));
    let report = guard(
        "the rebuild",
        Rebuild::new(store.clone(), model.clone(), mailer())
            .partitions(2)
            .batch_size(64)
            .run(),
    )
    .await
    .unwrap();
    stop.store(true, Ordering::Release);
    writer.await.unwrap();
    let head = store.last_position().await.unwrap().unwrap();
    guard("live after the swap", live.caught_up_to(head))
        .await
        .unwrap();
    live.shutdown().await.unwrap();
    assert_eq!(report.generation, 2);
    let events = fold(&store, None)
        .await
        .values()
        .map(|t| t.count)
        .sum::<u64>();
    let sent = sent.lock().unwrap();
    assert_eq!(sent.len() as u64, events, "every event had its effect");
    let twice: Vec<_> = sent.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "effects repeated: {twice:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_rebuild_leaves_the_live_generation_and_resumes_where_it_stopped() {
    let store = InMemoryStore::new();
    let head = fill(&store, "account", 50, 200, 20).await;
    let model: MemoryModel<String, Tally> = MemoryModel::new();
    let live = ProjectionRunner::new(store.clone(), model.clone(), Tallies::new("tallies"))
        .start()
        .await
        .unwrap();
    guard("live", live.caught_up_to(head)).await.unwrap();
    live.shutdown().await.unwrap();
    let expected = fold(&store, None).await;

    // Cancel once the new generation is handed an event past 3,000.
    let cancel = CancellationToken::new();
    let first = {
        let trip = cancel.clone();
        let tallies = Tallies::new("tallies").failing(move |event| {
            if event.position.commit() > 3_000 {
                trip.cancel();
            }
            None
        });
        Rebuild::new(store.clone(), model.clone(), tallies)
            .batch_size(100)
            .cancel_on(cancel.clone())
            .run()
    };
    let error = guard("the cancelled rebuild", first).await.unwrap_err();
    assert!(
        matches!(error, ProjectionError::Cancelled { .. }),
        "{error}"
    );
    let name = ProjectionName::new("tallies").unwrap();
    let generations = annals_projections::ReadModel::generations(&model, &name)
        .await
        .unwrap();
    assert_eq!((generations.active, generations.building), (1, Some(2)));
    assert_eq!(
        model.to_map(),
        expected,
        "the live generation serves, untouched"
    );

    let resumed = guard(
        "the resumed rebuild",
        Rebuild::new(store.clone(), model.clone(), Tallies::new("tallies"))
            .batch_size(100)
            .resume(true)
            .run(),
    )
    .await
    .unwrap();
    assert_eq!(resumed.generation, 2, "the same generation, resumed");
    assert!(
        resumed.events < head.commit(),
        "it resumed ({} events this run of {})",
        resumed.events,
        head.commit()
    );
    assert_eq!(model.to_map(), expected);

    // Without resume, an interrupted generation is dropped and a new one begun.
    let again = Rebuild::new(store.clone(), model.clone(), Tallies::new("tallies"))
        .keep_old(true)
        .run()
        .await
        .unwrap();
    assert_eq!((again.previous, again.generation), (2, 3));
    let generations = annals_projections::ReadModel::generations(&model, &name)
        .await
        .unwrap();
    assert_eq!(generations.kept, vec![2]);
    assert_eq!(model.to_map(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_live_runner_moves_to_the_swapped_in_generation_without_an_event() {
    let store = InMemoryStore::new();
    let head = fill(&store, "account", 10, 20, 5).await;
    let model: MemoryModel<String, Tally> = MemoryModel::new();
    let live = ProjectionRunner::new(store.clone(), model.clone(), Tallies::new("tallies"))
        .partitions(2)
        .start()
        .await
        .unwrap();
    guard("live", live.caught_up_to(head)).await.unwrap();
    Rebuild::new(store.clone(), model.clone(), Tallies::new("tallies"))
        .partitions(2)
        .run()
        .await
        .unwrap();
    // Nothing is appended: no batch of the live runner finds out by being refused.
    guard("the live runner following the swap", async {
        while live.status().partitions.iter().any(|p| p.generation != 2) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(model.to_map(), fold(&store, None).await);
    live.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_count_changes_only_through_a_rebuild() {
    let store = InMemoryStore::new();
    let head = fill(&store, "account", 20, 10, 5).await;
    let model: MemoryModel<String, Tally> = MemoryModel::new();
    let live = ProjectionRunner::new(store.clone(), model.clone(), Tallies::new("tallies"))
        .partitions(4)
        .start()
        .await
        .unwrap();
    guard("live", live.caught_up_to(head)).await.unwrap();
    // Another count on the same generation would split streams between checkpoints: refused.
    let refused = ProjectionRunner::new(store.clone(), model.clone(), Tallies::new("tallies"))
        .partitions(2)
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(
            &refused,
            ProjectionError::Configuration {
                setting: "partitions",
                ..
            }
        ),
        "{refused}"
    );
    // A rebuild with 2 partitions is how the count changes; the 4-partition runner stops when
    // it meets the new generation, naming the count.
    Rebuild::new(store.clone(), model.clone(), Tallies::new("tallies"))
        .partitions(2)
        .run()
        .await
        .unwrap();
    let stopped = guard("the old runner stopping", live.stopped())
        .await
        .unwrap();
    assert!(stopped.to_string().contains("2 partitions"), "{stopped}");
    let _ = live.shutdown().await;
    let two = ProjectionRunner::new(store.clone(), model.clone(), Tallies::new("tallies"))
        .partitions(2)
        .start()
        .await
        .unwrap();
    let more = store
        .append(
            &StreamId::new("account-3").unwrap(),
            ExpectedVersion::Any,
            vec![EventData::json("Counted", &serde_json::json!({ "n": 1 })).unwrap()],
        )
        .await
        .unwrap();
    guard(
        "the 2-partition runner",
        two.caught_up_to(more.last_position),
    )
    .await
    .unwrap();
    assert_eq!(model.to_map(), fold(&store, None).await);
    two.shutdown().await.unwrap();
}
