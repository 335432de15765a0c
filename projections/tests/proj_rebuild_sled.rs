//! Rebuild jobs on the sled store and read model: a whole generation swapped in while a writer
//! appends and readers read; a rebuild killed with SIGKILL at random moments resumes from its
//! own checkpoints (never from zero) and ends exactly equal to the fold of the log.
//!
//! The killed child is this test binary, re-run with `ANNALS_REBUILD_SLED_CHILD` set to the
//! store's path and `--exact rebuild_child`.

#![cfg(feature = "sled")]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use annals::{EventData, EventStore, ExpectedVersion, StreamId};
use annals_projections::{
    PartitionKey, ProjectionName, ProjectionRunner, ReadModel, Rebuild, SledModel,
};
use annals_sled::SledEventStore;
use support::{fill, fold, sled_tallies, Tallies, HANG_GUARD};

const CHILD_ENV: &str = "ANNALS_REBUILD_SLED_CHILD";
const NAME: &str = "tallies";
const PARTITIONS: u32 = 4;

async fn guard<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

async fn open(path: &Path) -> (SledEventStore, SledModel) {
    let store = SledEventStore::builder().path(path).open().await.unwrap();
    let model = SledModel::open(&store).await.unwrap();
    (store, model)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_one_whole_generation_across_a_rebuild_while_a_writer_appends() {
    let dir = tempfile::tempdir().unwrap();
    let (store, model) = open(&dir.path().join("data")).await;
    let head = fill(&store, "account", 30, 100, 10).await;
    let live = ProjectionRunner::new(store.clone(), model.clone(), Tallies::new(NAME))
        .partitions(PARTITIONS)
        .start()
        .await
        .unwrap();
    guard("live", live.caught_up_to(head)).await.unwrap();
    let before = sled_tallies(&model, NAME);
    assert_eq!(before.len(), 30);

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (model, stop, reads) = (model.clone(), stop.clone(), reads.clone());
        let before = before.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let seen = sled_tallies(&model, NAME);
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
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut round = 0u64;
            // A bounded writer: the rebuild catches up with it, whatever their speeds.
            while !stop.load(Ordering::Acquire) && round < 20_000 {
                let stream = StreamId::new(format!("account-{}", round % 30)).unwrap();
                let data = EventData::json("Counted", &serde_json::json!({ "n": round })).unwrap();
                store
                    .append(&stream, ExpectedVersion::Any, vec![data])
                    .await
                    .unwrap();
                round += 1;
            }
        })
    };
    let report = guard(
        "the rebuild",
        Rebuild::new(store.clone(), model.clone(), Tallies::new(NAME))
            .partitions(PARTITIONS)
            .batch_size(500)
            .run(),
    )
    .await
    .unwrap_or_else(|e| {
        let names = store.tree_names("projections/").unwrap();
        let sizes: Vec<_> = names
            .iter()
            .map(|n| (n.clone(), store.open_tree(n).unwrap().len()))
            .collect();
        panic!("{e}: {sizes:?}")
    });
    assert_eq!((report.previous, report.generation), (1, 2));
    stop.store(true, Ordering::Release);
    writer.await.unwrap();
    reader.await.unwrap();
    assert!(reads.load(Ordering::Relaxed) > 0);
    // An event after the swap: the live runner moves to the new generation at its next batch
    // and writes it there.
    store
        .append(
            &StreamId::new("account-0").unwrap(),
            ExpectedVersion::Any,
            vec![EventData::json("Counted", &serde_json::json!({ "n": 1 })).unwrap()],
        )
        .await
        .unwrap();
    let head = store.last_position().await.unwrap().unwrap();
    guard("live in the new generation", live.caught_up_to(head))
        .await
        .unwrap_or_else(|e| {
            let names = store.tree_names("projections/").unwrap();
            let sizes: Vec<_> = names
                .iter()
                .map(|n| (n.clone(), store.open_tree(n).unwrap().len()))
                .collect();
            panic!("{e}: {sizes:?} {report:?} {:?}", live.status())
        });
    assert_eq!(live.status().generation, 2);
    assert_eq!(sled_tallies(&model, NAME), fold(&store, None).await);
    live.shutdown().await.unwrap();
    // The old generation's checkpoints are gone with it; the swap is recorded.
    let name = ProjectionName::new(NAME).unwrap();
    for partition in 0..PARTITIONS {
        let old = PartitionKey::in_generation(name.clone(), 1, partition);
        assert_eq!(model.checkpoint(&old).await.unwrap(), None);
    }
    let generations = model.generations(&name).await.unwrap();
    assert_eq!(generations.swapped_at, Some(report.swapped_at));

    // After a reopen, readers still see the new generation.
    drop(model);
    store.close().await.unwrap();
    drop(store);
    let (store, model) = open(&dir.path().join("data")).await;
    assert_eq!(sled_tallies(&model, NAME), fold(&store, None).await);
}

/// The child: resumes the rebuild until it is killed (or done).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (store, model) = open(Path::new(&path)).await;
    let mut tallies = Tallies::new(NAME);
    tallies.latency = Duration::from_millis(40);
    Rebuild::new(store, model, tallies)
        .partitions(PARTITIONS)
        .batch_size(50)
        .resume(true)
        .run()
        .await
        .unwrap();
}

async fn building_checkpoints(model: &SledModel, generation: u32) -> Vec<u64> {
    let name = ProjectionName::new(NAME).unwrap();
    let mut found = Vec::new();
    for partition in 0..PARTITIONS {
        let key = PartitionKey::in_generation(name.clone(), generation, partition);
        found.push(
            model
                .checkpoint(&key)
                .await
                .unwrap()
                .map_or(0, |p| p.commit()),
        );
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_killed_ten_times_resumes_from_its_checkpoints_and_ends_exactly_right() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let total = {
        let (store, model) = open(&path).await;
        let head = fill(&store, "account", 40, 300, 30).await;
        let live = ProjectionRunner::new(store.clone(), model.clone(), Tallies::new(NAME))
            .partitions(PARTITIONS)
            .start()
            .await
            .unwrap();
        guard("live", live.caught_up_to(head)).await.unwrap();
        live.shutdown().await.unwrap();
        drop(model);
        store.close().await.unwrap();
        head.commit()
    };
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    let mut last = vec![0; PARTITIONS as usize];
    let mut kills = 0;
    let mut progressed = false;
    while kills < 10 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let delay = Duration::from_millis(120 + (seed >> 33) % 200);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "rebuild_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        if !finished {
            // SIGKILL: no shutdown, no flush.
            child.kill().unwrap();
        }
        child.wait().unwrap();
        let (store, model) = open(&path).await;
        let name = ProjectionName::new(NAME).unwrap();
        let generations = model.generations(&name).await.unwrap();
        if generations.active == 2 {
            // The child finished before a kill: the fold is checked below.
            drop(model);
            store.close().await.unwrap();
            break;
        }
        if generations.building.is_none() {
            // Killed before it began.
            assert_eq!(
                last,
                vec![0; PARTITIONS as usize],
                "a begun rebuild was lost"
            );
            kills += 1;
            drop(model);
            store.close().await.unwrap();
            continue;
        }
        assert_eq!(
            generations.building,
            Some(2),
            "the same generation is resumed"
        );
        let now = building_checkpoints(&model, 2).await;
        for (partition, (before, after)) in last.iter().zip(&now).enumerate() {
            assert!(
                after >= before,
                "partition {partition} went back from {before} to {after}: started over"
            );
        }
        eprintln!("kill {kills}: building checkpoints {now:?}");
        progressed |= now.iter().any(|c| *c > 0);
        last = now;
        kills += 1;
        drop(model);
        store.close().await.unwrap();
    }
    let (store, model) = open(&path).await;
    let name = ProjectionName::new(NAME).unwrap();
    // Unless the last child swapped already, the last run resumes generation 2.
    if model.generations(&name).await.unwrap().building == Some(2) {
        let report = guard(
            "the final resume",
            Rebuild::new(store.clone(), model.clone(), Tallies::new(NAME))
                .partitions(PARTITIONS)
                .resume(true)
                .run(),
        )
        .await
        .unwrap();
        assert_eq!(report.generation, 2);
        if progressed {
            assert!(report.events < total, "the last run started from zero");
        }
    }
    assert_eq!(model.generations(&name).await.unwrap().active, 2);
    assert_eq!(sled_tallies(&model, NAME), fold(&store, None).await);
}
