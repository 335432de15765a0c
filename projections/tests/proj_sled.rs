//! The sled read model: projections in trees of the sled store's database, each batch committed
//! with its checkpoint as one write-ahead record. Exactly once over 100,000 events with 1 and 4
//! partitions and across a restart, the batch's own writes visible to its handler, parked
//! events kept in order across a reopen, newer formats refused, one model per store. (The
//! SIGKILL test is `proj_sled_crash.rs`.)

#![cfg(feature = "sled")]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::{BoxError, EventData, EventStore, ExpectedVersion, Position, RecordedEvent, StreamId};
use annals_projections::{
    DeadLetterKind, ErrorPolicy, PartitionKey, Projection, ProjectionError, ProjectionName,
    ProjectionRunner, ReadModel, Retry, SledModel, SledTx,
};
use annals_sled::{Durability, SledEventStore};
use support::{fill, fold, sled_tallies, Fail, Tallies, HANG_GUARD};

async fn open(path: &std::path::Path, durability: Durability) -> SledEventStore {
    SledEventStore::builder()
        .path(path)
        .durability(durability)
        .open()
        .await
        .expect("open the store")
}

async fn guard<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

fn quick_retry() -> Retry {
    Retry {
        attempts: 1,
        first_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_model_equals_the_fold_of_100_000_events_with_1_and_4_partitions_and_a_restart_applies_nothing_twice(
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let store = open(&path, Durability::Buffered).await;
    let head = fill(&store, "account", 100, 1000, 50).await;
    assert_eq!(head, Position::sequence(100_000));
    store.flush().await.unwrap();
    let expected = fold(&store, None).await;
    assert_eq!(expected.len(), 100);
    let model = SledModel::open(&store).await.unwrap();
    for partitions in [1, 4] {
        let name = format!("tallies-{partitions}");
        let started = Instant::now();
        let running = ProjectionRunner::new(store.clone(), model.clone(), Tallies::new(&name))
            .partitions(partitions)
            .start()
            .await
            .unwrap();
        guard("catching up", running.caught_up_to(head))
            .await
            .unwrap();
        let took = started.elapsed();
        running.shutdown().await.unwrap();
        eprintln!(
            "{partitions} partition(s): 100,000 events projected in {} ms",
            took.as_millis()
        );
        assert_eq!(
            sled_tallies(&model, &name),
            expected,
            "{partitions} partitions"
        );
    }
    // The store's own check does not see the model's trees, and they do not disturb it.
    let report = store.verify().await.unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.events, 100_000);

    // Reopened (a restart): the checkpoints cover everything, nothing is applied again (the
    // handler refuses an event out of order), and new events are applied once.
    store.close().await.unwrap();
    drop(model);
    drop(store);
    let store = open(&path, Durability::Flush).await;
    let model = SledModel::open(&store).await.unwrap();
    for p in 0..4 {
        let key = PartitionKey::new(ProjectionName::new("tallies-4").unwrap(), p);
        let checkpoint = model.checkpoint(&key).await.unwrap().unwrap();
        assert!(checkpoint <= head, "partition {p} at {checkpoint}");
    }
    let more = store
        .append(
            &StreamId::new("account-7").unwrap(),
            ExpectedVersion::exact(1000),
            vec![EventData::json("Counted", &serde_json::json!({ "n": 5 })).unwrap()],
        )
        .await
        .unwrap();
    let running = ProjectionRunner::new(store.clone(), model.clone(), Tallies::new("tallies-4"))
        .partitions(4)
        .start()
        .await
        .unwrap();
    guard("the new event", running.caught_up_to(more.last_position))
        .await
        .unwrap();
    running.shutdown().await.unwrap();
    assert_eq!(
        sled_tallies(&model, "tallies-4"),
        fold(&store, None).await,
        "after the restart"
    );
}

/// Writes, reads back, removes; fails on demand after writing.
struct Scratch {
    name: ProjectionName,
    fail: Arc<AtomicBool>,
}

impl Projection<SledModel> for Scratch {
    fn name(&self) -> &ProjectionName {
        &self.name
    }

    async fn handle(&self, tx: &mut SledTx, events: &[RecordedEvent]) -> Result<(), BoxError> {
        for event in events {
            let key = event.id.to_string();
            assert_eq!(tx.get("scratch", &key)?, None);
            tx.insert("scratch", key.as_str(), "pending")?;
            assert_eq!(tx.get("scratch", &key)?, Some(b"pending".to_vec()));
            tx.remove("scratch", key.as_str())?;
            assert_eq!(tx.get("scratch", &key)?, None, "a removal is read back");
            tx.insert(
                "seen",
                event.stream_id.as_str(),
                event.version.get().to_be_bytes(),
            )?;
            let seen = tx.get("seen", event.stream_id.as_str())?.unwrap();
            assert_eq!(seen, event.version.get().to_be_bytes());
        }
        assert!(tx.insert("", "k", "v").is_err(), "an empty tree name");
        assert!(
            tx.insert("bad\nname", "k", "v").is_err(),
            "a control character"
        );
        if self.fail.load(Ordering::Relaxed) {
            return Err("told to fail".into());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reads_its_own_writes_and_a_failed_batch_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("store"), Durability::Flush).await;
    let model = SledModel::open(&store).await.unwrap();
    let first = fill(&store, "account", 3, 4, 4).await;
    let fail = Arc::new(AtomicBool::new(false));
    let scratch = || Scratch {
        name: ProjectionName::new("scratch").unwrap(),
        fail: fail.clone(),
    };
    let running = ProjectionRunner::new(store.clone(), model.clone(), scratch())
        .start()
        .await
        .unwrap();
    guard("catching up", running.caught_up_to(first))
        .await
        .unwrap();
    running.shutdown().await.unwrap();
    assert!(model.to_map("scratch").unwrap().is_empty());
    assert_eq!(model.to_map("seen").unwrap().len(), 3);
    assert_eq!(
        model.get("seen", "account-2").unwrap(),
        Some(4u64.to_be_bytes().to_vec())
    );

    // A failing batch (stop policy): none of its writes, and the checkpoint stays.
    fail.store(true, Ordering::Relaxed);
    let failing = store
        .append(
            &StreamId::new("account-9").unwrap(),
            ExpectedVersion::NoStream,
            vec![EventData::json("Counted", &serde_json::json!({ "n": 1 })).unwrap()],
        )
        .await
        .unwrap();
    let running = ProjectionRunner::new(store.clone(), model.clone(), scratch())
        .retry(quick_retry())
        .start()
        .await
        .unwrap();
    let stopped = guard("the stop", running.stopped()).await;
    assert!(
        stopped
            .as_ref()
            .and_then(ProjectionError::handler_failure)
            .is_some(),
        "{stopped:?}"
    );
    assert!(running.shutdown().await.is_err());
    assert_eq!(model.get("seen", "account-9").unwrap(), None);
    let key = PartitionKey::new(ProjectionName::new("scratch").unwrap(), 0);
    assert_eq!(model.checkpoint(&key).await.unwrap(), Some(first));
    assert!(failing.last_position > first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_events_keep_their_order_across_a_reopen_and_are_retried_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let store = open(&path, Durability::Flush).await;
    let head = fill(&store, "account", 3, 6, 6).await;
    let name = ProjectionName::new("parks").unwrap();
    let healed = Arc::new(AtomicBool::new(false));
    let tallies = || {
        let healed = healed.clone();
        Tallies::new("parks").failing(move |e: &RecordedEvent| {
            let broken = !healed.load(Ordering::Relaxed);
            (broken && e.stream_id.as_str() == "account-1" && e.version.get() == 3)
                .then_some(Fail::Error)
        })
    };
    let model = SledModel::open(&store).await.unwrap();
    let running = ProjectionRunner::new(store.clone(), model.clone(), tallies())
        .partitions(2)
        .retry(quick_retry())
        .error_policy(ErrorPolicy::Park)
        .start()
        .await
        .unwrap();
    guard("catching up", running.caught_up_to(head))
        .await
        .unwrap();
    running.shutdown().await.unwrap();
    let letters = model.dead_letters(&name, 1).await.unwrap();
    let versions: Vec<u64> = letters.iter().map(|l| l.event.version.get()).collect();
    assert_eq!(versions, [3, 4, 5, 6]);
    assert!(letters.iter().all(|l| l.kind == DeadLetterKind::Parked));
    assert!(
        letters[0].reason.contains("cannot tally"),
        "{}",
        letters[0].reason
    );

    // Reopened: the same letters, in the same order, with their events whole.
    store.close().await.unwrap();
    drop(model);
    drop(store);
    let store = open(&path, Durability::Flush).await;
    let model = SledModel::open(&store).await.unwrap();
    assert_eq!(model.dead_letters(&name, 1).await.unwrap(), letters);

    healed.store(true, Ordering::Relaxed);
    let running = ProjectionRunner::new(store.clone(), model.clone(), tallies())
        .partitions(2)
        .retry(quick_retry())
        .error_policy(ErrorPolicy::Park)
        .start()
        .await
        .unwrap();
    assert_eq!(running.dead_letters().await.unwrap().len(), 4);
    let account_1 = StreamId::new("account-1").unwrap();
    assert_eq!(running.retry_parked(&account_1).await.unwrap(), 4);
    assert!(running.dead_letters().await.unwrap().is_empty());
    running.shutdown().await.unwrap();
    assert_eq!(sled_tallies(&model, "parks"), fold(&store, None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_a_newer_format_are_refused_and_a_store_has_one_open_model() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("store"), Durability::Flush).await;
    let model = SledModel::open(&store).await.unwrap();
    let second = SledModel::open(&store).await;
    assert!(
        matches!(
            second,
            Err(ProjectionError::Store(annals::Error::Configuration { .. }))
        ),
        "{second:?}"
    );
    let name = ProjectionName::new("later").unwrap();
    // A checkpoint and a dead letter written by a build whose format is 2: the key layout is the
    // model's (projection name, 0, partition or event id), the value starts with its format.
    let mut key = b"later\0".to_vec();
    key.extend_from_slice(&0u32.to_be_bytes());
    let newer = [&2u32.to_be_bytes()[..], &[0; 20][..]].concat();
    store
        .open_tree("projections/checkpoints")
        .unwrap()
        .insert(key.as_slice(), newer.as_slice())
        .unwrap();
    let found = model.checkpoint(&PartitionKey::new(name.clone(), 0)).await;
    assert!(
        matches!(
            &found,
            Err(ProjectionError::NewerFormat { what: "a checkpoint", found: 2, supported: 1, projection })
                if projection == &name
        ),
        "{found:?}"
    );
    let mut letter = b"later\0".to_vec();
    letter.extend_from_slice(annals::EventId::new().as_uuid().as_bytes());
    store
        .open_tree("projections/dead-letters")
        .unwrap()
        .insert(letter.as_slice(), newer.as_slice())
        .unwrap();
    let found = model.dead_letters(&name, 1).await;
    assert!(
        matches!(
            &found,
            Err(ProjectionError::NewerFormat {
                what: "a dead letter",
                found: 2,
                ..
            })
        ),
        "{found:?}"
    );
    // A damaged checkpoint is damage, not a position.
    let mut damaged = key.clone();
    damaged[6 + 3] = 1;
    store
        .open_tree("projections/checkpoints")
        .unwrap()
        .insert(
            damaged.as_slice(),
            [&1u32.to_be_bytes()[..], &[0; 20][..]].concat(),
        )
        .unwrap();
    let found = model.checkpoint(&PartitionKey::new(name, 1)).await;
    assert!(
        matches!(
            &found,
            Err(ProjectionError::Store(annals::Error::Corrupt { .. }))
        ),
        "{found:?}"
    );
    // The model's clones share it; once every clone is gone the store can open another.
    let clone = model.clone();
    drop(model);
    assert!(SledModel::open(&store).await.is_err());
    drop(clone);
    SledModel::open(&store).await.unwrap();
}
