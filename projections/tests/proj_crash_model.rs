//! Property: whatever the partition count, the handler latencies and the moments the runner is
//! stopped and restarted, every partition's checkpoint covers exactly what its read model holds
//! (never an uncommitted event, never a gap), each stream is applied in order, and the final
//! model is the fold of the log.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use annals::{EventStore, InMemoryStore, RecordedEvent};
use annals_projections::{
    partition_of, MemoryModel, PartitionKey, ProjectionName, ProjectionRunner, ReadModel,
};
use futures::TryStreamExt;
use proptest::prelude::*;
use support::{fill, fold, n_of, Tallies, Tally, HANG_GUARD};

/// The fold of the events of `partition` up to its checkpoint: what the model must hold for
/// that partition's streams after a stop.
fn fold_until(
    log: &[RecordedEvent],
    partitions: u32,
    checkpoints: &[Option<annals::Position>],
) -> HashMap<String, Tally> {
    let mut tallies: HashMap<String, Tally> = HashMap::new();
    for event in log {
        let p = partition_of(&event.stream_id, partitions);
        let done = checkpoints[usize::try_from(p).unwrap()];
        if done.is_some_and(|c| event.position <= c) {
            let tally = tallies.entry(event.stream_id.to_string()).or_default();
            tally.count += 1;
            tally.last_version = event.version.get();
            tally.sum += n_of(event);
        }
    }
    tallies
}

async fn run(partitions: u32, latency_us: u64, stops: Vec<u64>, batch: usize) {
    let store = InMemoryStore::new();
    let head = fill(&store, "account", 12, 40, 3).await;
    let log: Vec<RecordedEvent> = store
        .read_all(annals::ReadAll::all())
        .try_collect()
        .await
        .unwrap();
    let model: MemoryModel<String, Tally> = MemoryModel::new();
    let name = ProjectionName::new("crashes").unwrap();
    for stop_after_us in stops {
        let mut tallies = Tallies::new("crashes");
        tallies.latency = Duration::from_micros(latency_us);
        let running = ProjectionRunner::new(store.clone(), model.clone(), tallies)
            .partitions(partitions)
            .batch_size(batch)
            .start()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_micros(stop_after_us)).await;
        running.shutdown().await.unwrap();
        let mut checkpoints = Vec::new();
        for p in 0..partitions {
            checkpoints.push(
                model
                    .checkpoint(&PartitionKey::new(name.clone(), p))
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(
            model.to_map(),
            fold_until(&log, partitions, &checkpoints),
            "after a stop, each partition holds exactly what its checkpoint covers"
        );
    }
    let running = ProjectionRunner::new(store.clone(), model.clone(), Tallies::new("crashes"))
        .partitions(partitions)
        .batch_size(batch)
        .start()
        .await
        .unwrap();
    tokio::time::timeout(HANG_GUARD, running.caught_up_to(head))
        .await
        .expect("no hang")
        .unwrap();
    running.shutdown().await.unwrap();
    assert_eq!(model.to_map(), fold(&store, None).await);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
    #[test]
    fn checkpoints_never_pass_an_uncommitted_event(
        partitions in prop_oneof![Just(1u32), Just(4), Just(16)],
        latency_us in 0..400u64,
        stops in proptest::collection::vec(0..20_000u64, 1..4),
        batch in 1..50usize,
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run(partitions, latency_us, stops, batch));
    }
}
