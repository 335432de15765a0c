//! The sled read model across crashes: a child process running a projection is killed with
//! SIGKILL at random moments (at least 20 times per test); after every restart each
//! partition's tallies are exactly the fold of the events its checkpoint covers (no double
//! count, no gap), and a final run catches up to exactly the fold of the whole log. A second
//! test does the same with an at-least-once handler, which also records an outside effect keyed
//! by event id (in a sled tree outside the model, and a line in a file) before its batch
//! commits: the effects are redone after a kill, and being keyed they end up exactly one per
//! event.
//!
//! The child is this test binary, re-run with `ANNALS_PROJ_SLED_CHILD` set to the store's path
//! and the handler, and `--exact sled_projection_child`; the parent appends the events first.

#![cfg(feature = "sled")]

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use annals::{BoxError, EventStore, Filter, Position, ReadAll, RecordedEvent};
use annals_projections::{
    partition_of, PartitionKey, Projection, ProjectionName, ProjectionRunner, ReadModel, SledModel,
    SledTx,
};
use annals_sled::{Durability, SledEventStore};
use futures::TryStreamExt;
use support::{fill, n_of, sled_tallies, Tallies, Tally, HANG_GUARD};

const CHILD_ENV: &str = "ANNALS_PROJ_SLED_CHILD";
const PARTITIONS: u32 = 4;
/// Small batches: many commits, so the kills land in all their phases.
const BATCH: usize = 23;
const NAME: &str = "sled-tallies";
/// The tree of the outside effects (not the model's).
const EFFECTS: &str = "test/effects";
/// The model's tree of the events applied.
const SEEN: &str = "seen";
/// The longest pause of a batch's handler.
const LATENCY_MS: u64 = 6;
/// How often the child's model flushes.
const FLUSH_MS: u64 = 15;
/// The longest a child runs before it is killed.
const MAX_DELAY_MS: u64 = 300;

/// The tallies, plus every event's position under its id in the model's tree `seen` (so a
/// double or missing event shows event by event), and with `outside` an outside effect per
/// event before its batch commits: the event's `n` under its id in a tree outside the model
/// (idempotent: keyed by the id), and a line with the id in a file (counting every delivery).
struct Counted {
    tallies: Tallies,
    outside: Option<Outside>,
}

struct Outside {
    effects: sled::Tree,
    deliveries: Mutex<std::fs::File>,
}

impl Counted {
    fn new(store: &SledEventStore, dir: &Path, handler: &str) -> Self {
        let mut tallies = Tallies::new(NAME);
        tallies.category = Some("account".to_owned());
        // A pause per batch, up to this: spreads the work over the kills.
        tallies.latency = Duration::from_millis(LATENCY_MS);
        let outside = (handler == "effects").then(|| Outside {
            effects: store.open_tree(EFFECTS).unwrap(),
            deliveries: Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("deliveries"))
                    .unwrap(),
            ),
        });
        Counted { tallies, outside }
    }
}

impl Projection<SledModel> for Counted {
    fn name(&self) -> &ProjectionName {
        &self.tallies.name
    }

    fn filter(&self) -> Filter {
        Filter::all().category("account")
    }

    async fn handle(&self, tx: &mut SledTx, events: &[RecordedEvent]) -> Result<(), BoxError> {
        if let Some(outside) = &self.outside {
            let mut lines = String::new();
            for event in events {
                outside
                    .effects
                    .insert(event.id.as_uuid().as_bytes(), &n_of(event).to_be_bytes())?;
                lines.push_str(&format!("{}\n", event.id));
            }
            outside
                .deliveries
                .lock()
                .unwrap()
                .write_all(lines.as_bytes())?;
        }
        for event in events {
            tx.insert(
                SEEN,
                event.id.as_uuid().as_bytes(),
                event.position.commit().to_be_bytes(),
            )?;
        }
        Projection::<SledModel>::handle(&self.tallies, tx, events).await
    }
}

async fn open(path: &Path, durability: Durability) -> SledEventStore {
    SledEventStore::builder()
        .path(path)
        .durability(durability)
        .open()
        .await
        .expect("open the store")
}

/// The child: runs the projection until killed. Does nothing in a normal test run.
#[test]
fn sled_projection_child() {
    let Ok(target) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (path, handler) = target.split_once('|').expect("path|handler");
    let path = PathBuf::from(path);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let store = open(&path.join("store"), Durability::Flush).await;
        // Flushed often: many durable points, each a state a kill can leave.
        let model = SledModel::builder(&store)
            .flush_every(Duration::from_millis(FLUSH_MS))
            .open()
            .await
            .expect("the model");
        let counted = Counted::new(&store, &path, handler);
        let running = ProjectionRunner::new(store, model, counted)
            .partitions(PARTITIONS)
            .batch_size(BATCH)
            .start()
            .await
            .expect("start");
        announce();
        let error = running.stopped().await;
        panic!("the projection stopped: {error:?}");
    });
}

fn announce() {
    let mut out = std::io::stdout();
    writeln!(out, "STARTED").unwrap();
    out.flush().unwrap();
}

/// The fold of the `account` events each partition's checkpoint covers.
fn fold_until(log: &[RecordedEvent], checkpoints: &[Option<Position>]) -> HashMap<String, Tally> {
    let mut tallies: HashMap<String, Tally> = HashMap::new();
    for event in covered(log, checkpoints) {
        let tally = tallies.entry(event.stream_id.to_string()).or_default();
        tally.count += 1;
        tally.last_version = event.version.get();
        tally.sum += n_of(event);
    }
    tallies
}

/// The `account` events each partition's checkpoint covers.
fn covered<'a>(
    log: &'a [RecordedEvent],
    checkpoints: &'a [Option<Position>],
) -> impl Iterator<Item = &'a RecordedEvent> {
    log.iter()
        .filter(|e| e.category() == "account")
        .filter(|e| {
            let p = partition_of(&e.stream_id, PARTITIONS);
            checkpoints[usize::try_from(p).unwrap()].is_some_and(|c| e.position <= c)
        })
}

/// The outside effects: `n` by event id.
fn effects(store: &SledEventStore) -> HashMap<Vec<u8>, u64> {
    store
        .open_tree(EFFECTS)
        .unwrap()
        .iter()
        .map(|entry| {
            let (k, v) = entry.unwrap();
            (
                k.to_vec(),
                u64::from_be_bytes(v.as_ref().try_into().unwrap()),
            )
        })
        .collect()
}

/// The checkpoints of every partition.
async fn checkpoints(model: &SledModel) -> Vec<Option<Position>> {
    let name = ProjectionName::new(NAME).unwrap();
    let mut checkpoints = Vec::new();
    for p in 0..PARTITIONS {
        checkpoints.push(
            model
                .checkpoint(&PartitionKey::new(name.clone(), p))
                .await
                .unwrap(),
        );
    }
    checkpoints
}

/// Checks the model's `seen` tree: exactly the events the checkpoints cover, with their
/// positions.
fn check_seen(
    model: &SledModel,
    log: &[RecordedEvent],
    checkpoints: &[Option<Position>],
    round: &str,
) {
    let seen: HashMap<Vec<u8>, Vec<u8>> = model.to_map(SEEN).unwrap().into_iter().collect();
    let want: HashMap<Vec<u8>, Vec<u8>> = covered(log, checkpoints)
        .map(|e| {
            (
                e.id.as_uuid().as_bytes().to_vec(),
                e.position.commit().to_be_bytes().to_vec(),
            )
        })
        .collect();
    assert!(
        seen == want,
        "{round}: {} events seen, {} covered",
        seen.len(),
        want.len()
    );
}

/// Checks the outside effects against what the checkpoints cover: every covered event has its
/// effect, and every effect is an event's, with its `n`.
fn check_effects(
    found: &HashMap<Vec<u8>, u64>,
    log: &[RecordedEvent],
    checkpoints: &[Option<Position>],
    round: &str,
) {
    let by_id: HashMap<Vec<u8>, u64> = log
        .iter()
        .filter(|e| e.category() == "account")
        .map(|e| (e.id.as_uuid().as_bytes().to_vec(), n_of(e)))
        .collect();
    for (id, n) in found {
        assert_eq!(by_id.get(id), Some(n), "{round}: an effect of no event");
    }
    for event in covered(log, checkpoints) {
        assert_eq!(
            found.get(event.id.as_uuid().as_bytes().as_slice()),
            Some(&n_of(event)),
            "{round}: committed event {} has no effect",
            event.id
        );
    }
}

async fn kill_at_random_moments(handler: &str, rounds: u32) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    // The events first, fast (buffered), then closed for the children.
    let (log, head) = {
        let store = open(&path, Durability::Buffered).await;
        // Other categories are scanned past, not handled.
        fill(&store, "other", 20, 50, 25).await;
        let head = fill(&store, "account", 60, 1000, 50).await;
        let log: Vec<RecordedEvent> = store.read_all(ReadAll::all()).try_collect().await.unwrap();
        store.close().await.unwrap();
        (log, head)
    };
    let total = u64::try_from(log.iter().filter(|e| e.category() == "account").count()).unwrap();
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    eprintln!("{handler}: seed {seed}");
    let (mut mid_work, mut redone) = (0, 0);
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sled_projection_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                CHILD_ENV,
                format!("{}|{handler}", dir.path().to_str().unwrap()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child");
        let mut started = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        while !started.contains("STARTED") {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap() == 0 {
                panic!(
                    "round {round}: the child ended before starting: {:?}",
                    child.wait()
                );
            }
            started.push_str(&line);
        }
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let delay = u64::try_from(seed >> 64).unwrap() % MAX_DELAY_MS;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");

        let store = open(&path, Durability::Flush).await;
        // A batch record still in the journal: killed between a batch's commit point and the
        // end of its applying; the model's open applies it.
        let pending = store.open_tree("projections/journal").unwrap().len();
        let model = SledModel::open(&store).await.unwrap();
        let checkpoints = checkpoints(&model).await;
        let held = sled_tallies(&model, NAME);
        let name = format!("{handler} round {round} (killed {delay} ms after the start)");
        assert_eq!(
            held,
            fold_until(&log, &checkpoints),
            "{name}: the tallies are exactly what the checkpoints cover"
        );
        check_seen(&model, &log, &checkpoints, &name);
        if handler == "effects" {
            check_effects(&effects(&store), &log, &checkpoints, &name);
        }
        let applied: u64 = held.values().map(|t| t.count).sum();
        eprintln!("{name}: {applied} of {total} applied, {pending} batch record(s) redone");
        if applied > 0 && applied < total {
            mid_work += 1;
        }
        redone += pending;
        drop(model);
        store.close().await.unwrap();
    }
    eprintln!(
        "{handler}: {rounds} kills, {mid_work} mid-work, {redone} with a batch record to redo"
    );
    assert!(
        mid_work * 2 >= rounds,
        "the kills must land mid-work ({mid_work} of {rounds} did)"
    );

    // A final run catches up to exactly the whole fold.
    let store = open(&path, Durability::Flush).await;
    let model = SledModel::open(&store).await.unwrap();
    let running = ProjectionRunner::new(
        store.clone(),
        model.clone(),
        Counted::new(&store, dir.path(), handler),
    )
    .partitions(PARTITIONS)
    .start()
    .await
    .unwrap();
    tokio::time::timeout(HANG_GUARD, running.caught_up_to(head))
        .await
        .expect("no hang")
        .unwrap();
    let running = running.shutdown().await;
    running.unwrap();
    let whole: Vec<Option<Position>> = (0..PARTITIONS).map(|_| Some(head)).collect();
    assert_eq!(sled_tallies(&model, NAME), fold_until(&log, &whole));
    check_seen(&model, &log, &whole, "at the end");
    if handler == "effects" {
        let found = effects(&store);
        check_effects(&found, &log, &whole, "at the end");
        assert_eq!(
            u64::try_from(found.len()).unwrap(),
            total,
            "one effect per event"
        );
        let lines = std::fs::read_to_string(dir.path().join("deliveries")).unwrap();
        let deliveries = lines.lines().count();
        let distinct: HashSet<&str> = lines.lines().collect();
        assert_eq!(u64::try_from(distinct.len()).unwrap(), total);
        eprintln!(
            "effects: {deliveries} deliveries of {total} events ({} again after a kill)",
            deliveries - distinct.len()
        );
    }
    let report = store.verify().await.unwrap();
    assert!(report.is_clean(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_killed_at_random_moments_never_double_counts_or_skips() {
    kill_at_random_moments("plain", 24).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_at_least_once_handler_killed_at_random_moments_ends_with_one_effect_per_event() {
    kill_at_random_moments("effects", 20).await;
}
