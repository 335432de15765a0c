//! Workers across processes on PostgreSQL: 8 partitions shared by worker processes through
//! leases, while a writer appends.
//!
//! - Kill: two workers; one of them is killed with SIGKILL at a random moment, 10 rounds (the
//!   killed one restarted each round); its partitions move to the other; at the end the read
//!   model is exactly the fold of the log, every event applied once.
//! - Pause: an owner is stopped with SIGSTOP for longer than the lease time; the other takes
//!   its partitions over and commits; the first is resumed with SIGCONT: every row it wrote
//!   carries the epoch it held the partition in, and no row of an older epoch follows a row of
//!   a newer one in a partition (a fenced owner commits nothing), nothing is applied twice.
//! - Outages: every session is terminated, then the server is stopped for longer than the
//!   lease time and started again, while a writer appends: ownership recovers, nothing is
//!   skipped or applied twice.
//! - Join and leave: 1 worker, then 3 more: each owns 2 of the 8 partitions; two stop cleanly:
//!   the other two own 4 each.
//!
//! The workers are this test binary, re-run with `ANNALS_WORKER_CHILD` set and
//! `--exact worker_child`; leases renew every 100 ms and expire after 1 s.

#![cfg(feature = "postgres")]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use annals::{
    BoxError, EventData, EventStore, ExpectedVersion, Filter, Leases, Position, ReadAll,
    RecordedEvent, StreamId,
};
use annals_postgres::PgEventStore;
use annals_projections::{
    partition_of, PartitionKey, PgModel, PgTx, Projection, ProjectionName, ProjectionWorkers,
    ReadModel,
};
use annals_testkit::postgres::PgServer;
use futures::TryStreamExt;
use support::pg::{read_tallies, tallies_ddl, tallies_upsert};
use support::{n_of, Tally, HANG_GUARD};

const CHILD_ENV: &str = "ANNALS_WORKER_CHILD";
const PARTITIONS: u32 = 8;
const NAME: &str = "shared-tallies";

/// Per-stream tallies (refusing any event out of order), and a row per applied event with the
/// worker and the lease epoch it was applied under.
struct Tallies {
    name: ProjectionName,
    schema: String,
    worker: String,
}

impl Projection<PgModel> for Tallies {
    fn name(&self) -> &ProjectionName {
        &self.name
    }

    fn filter(&self) -> Filter {
        Filter::all().category("account")
    }

    async fn handle(&self, tx: &mut PgTx, events: &[RecordedEvent]) -> Result<(), BoxError> {
        let s = &self.schema;
        let epoch = i64::try_from(tx.fence().map_or(0, |f| f.epoch))?;
        let upsert = tx
            .client()
            .prepare(&tallies_upsert(&format!("\"{s}\".tallies")))
            .await?;
        let applied = tx
            .client()
            .prepare(&format!(
                "INSERT INTO \"{s}\".applied (event_id, partition, commit_pos, worker, epoch)
                 VALUES ($1, $2, $3, $4, $5)"
            ))
            .await?;
        for event in events {
            let version = i64::try_from(event.version.get())?;
            let n = i64::try_from(n_of(event))?;
            let changed = tx
                .client()
                .execute(&upsert, &[&event.stream_id.as_str(), &version, &n])
                .await?;
            if changed != 1 {
                return Err(
                    format!("order violated on {} at version {version}", event.stream_id).into(),
                );
            }
            let partition = i32::try_from(partition_of(&event.stream_id, PARTITIONS))?;
            let commit = i64::try_from(event.position.commit())?;
            tx.client()
                .execute(
                    &applied,
                    &[
                        &event.id.to_string(),
                        &partition,
                        &commit,
                        &self.worker,
                        &epoch,
                    ],
                )
                .await?;
        }
        // Some work per batch, so kills and pauses land inside batches.
        tokio::time::sleep(Duration::from_millis(3)).await;
        Ok(())
    }
}

fn builder(connection: &str, schema: &str, holder: &str) -> annals_postgres::PgEventStoreBuilder {
    PgEventStore::builder()
        .connection_string(connection)
        .schema(schema)
        .pool_size(4)
        .lease_heartbeat(Duration::from_millis(100))
        .lease_ttl(Duration::from_secs(1))
        .lease_holder(holder)
}

async fn open(connection: &str, schema: &str, holder: &str) -> (PgEventStore, PgModel) {
    let store = builder(connection, schema, holder)
        .open()
        .await
        .expect("open");
    store.init().await.expect("init");
    let model = PgModel::new(&store);
    model.init().await.expect("model init");
    store
        .pool()
        .get()
        .await
        .expect("client")
        .batch_execute(&format!(
            "{};
             CREATE TABLE IF NOT EXISTS \"{schema}\".applied (
                 event_id text NOT NULL, partition int NOT NULL, commit_pos bigint NOT NULL,
                 worker text NOT NULL, epoch bigint NOT NULL)",
            tallies_ddl(schema)
        ))
        .await
        .expect("tables");
    (store, model)
}

/// The child: a worker until killed, or until its stdin closes (a clean stop).
#[test]
fn worker_child() {
    let Ok(target) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = target.split('|');
    let (Some(connection), Some(schema), Some(worker)) = (parts.next(), parts.next(), parts.next())
    else {
        panic!("connection|schema|worker");
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // The worker's log goes to its stderr (a file per worker, see `spawn_worker`).
    let _ = tracing_subscriber::fmt()
        .with_env_filter("annals_projections=info,annals_postgres=info")
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    runtime.block_on(async move {
        let (store, model) = open(connection, schema, worker).await;
        let projection = Tallies {
            name: ProjectionName::new(NAME).unwrap(),
            schema: schema.to_owned(),
            worker: worker.to_owned(),
        };
        let running = ProjectionWorkers::builder(store, model, projection)
            .partitions(PARTITIONS)
            .worker_id(worker)
            .rebalance_every(Duration::from_millis(100))
            .configure(|runner| runner.batch_size(25))
            .start()
            .await
            .expect("start");
        println!("STARTED");
        // A clean stop when the parent closes our stdin.
        let mut rest = String::new();
        let _ = tokio::task::spawn_blocking(move || {
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut rest)
        })
        .await;
        running.shutdown().await;
    });
}

/// Starts a worker process; its log is appended to `annals-workers-<schema>-<worker>.log` in
/// the temporary directory (read it when a test fails).
fn spawn_worker(connection: &str, schema: &str, worker: &str) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(std::env::temp_dir().join(format!("annals-workers-{schema}-{worker}.log")))
        .expect("a log file");
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "worker_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{connection}|{schema}|{worker}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn a worker")
}

/// Who owns each partition now, by the leases.
async fn owners(store: &PgEventStore) -> BTreeMap<u32, String> {
    store
        .leases(&format!("{NAME}/partitions/"))
        .await
        .expect("leases")
        .into_iter()
        .filter_map(|l| {
            let partition = l.name.rsplit('/').next()?.parse().ok()?;
            Some((partition, l.holder))
        })
        .collect()
}

/// How many partitions each worker owns.
fn counts(owners: &BTreeMap<u32, String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for owner in owners.values() {
        *counts.entry(owner.clone()).or_default() += 1;
    }
    counts
}

/// Waits until the owners satisfy `ok`; returns them.
async fn wait_owners(
    store: &PgEventStore,
    what: &str,
    ok: impl Fn(&BTreeMap<u32, String>) -> bool,
) -> BTreeMap<u32, String> {
    let deadline = std::time::Instant::now() + HANG_GUARD;
    loop {
        let now = owners(store).await;
        if ok(&now) {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: the owners are {:?}",
            counts(&now)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every partition's checkpoint is at `head` (or past it).
async fn wait_caught_up(model: &PgModel, head: Position) {
    let name = ProjectionName::new(NAME).unwrap();
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            let mut done = true;
            for p in 0..PARTITIONS {
                let c = model
                    .checkpoint(&PartitionKey::new(name.clone(), p))
                    .await
                    .expect("checkpoint");
                done &= c >= Some(head);
            }
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the workers never caught up");
}

/// Appends `count` account events over 40 streams, a few at a time.
async fn write(store: &PgEventStore, from: u64, count: u64) -> Position {
    let mut last = Position::START;
    for i in from..from + count {
        let stream = StreamId::new(format!("account-{}", i % 40)).unwrap();
        let event = EventData::json("Counted", &serde_json::json!({ "n": i })).unwrap();
        last = store
            .append(&stream, ExpectedVersion::Any, vec![event])
            .await
            .expect("append")
            .last_position;
    }
    last
}

/// The fold of the whole log's account events.
async fn fold(store: &PgEventStore) -> HashMap<String, Tally> {
    let log: Vec<RecordedEvent> = store.read_all(ReadAll::all()).try_collect().await.unwrap();
    let mut tallies: HashMap<String, Tally> = HashMap::new();
    for event in log.iter().filter(|e| e.category() == "account") {
        let tally = tallies.entry(event.stream_id.to_string()).or_default();
        tally.count += 1;
        tally.last_version = event.version.get();
        tally.sum += n_of(event);
    }
    tallies
}

async fn tallies(store: &PgEventStore, schema: &str) -> HashMap<String, Tally> {
    let client = store.pool().get().await.unwrap();
    read_tallies(&client, schema).await
}

/// Every event applied once: as many rows as distinct events, as many as the log's.
async fn check_applied_once(store: &PgEventStore, schema: &str, total: usize) {
    let client = store.pool().get().await.unwrap();
    let row = client
        .query_one(
            &format!("SELECT count(*), count(DISTINCT event_id) FROM \"{schema}\".applied"),
            &[],
        )
        .await
        .unwrap();
    let (rows, distinct): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(rows, distinct, "an event was applied twice");
    assert_eq!(usize::try_from(rows).unwrap(), total, "every event applied");
}

/// In every partition, rows in log order never go back to an older epoch: no owner committed
/// after a newer owner took the partition.
async fn check_epochs_never_go_back(store: &PgEventStore, schema: &str) -> usize {
    let client = store.pool().get().await.unwrap();
    let rows = client
        .query(
            &format!(
                "SELECT partition, epoch, worker FROM \"{schema}\".applied ORDER BY partition, commit_pos"
            ),
            &[],
        )
        .await
        .unwrap();
    let mut last: HashMap<i32, i64> = HashMap::new();
    let mut epochs = std::collections::HashSet::new();
    for row in rows {
        let (partition, epoch): (i32, i64) = (row.get(0), row.get(1));
        let previous = last.insert(partition, epoch).unwrap_or(0);
        assert!(
            epoch >= previous,
            "partition {partition}: a row of epoch {epoch} after one of epoch {previous}"
        );
        epochs.insert((partition, epoch));
    }
    epochs.len()
}

fn seed() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn next(seed: &mut u128) -> u64 {
    *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    u64::try_from(*seed >> 64 & 0xffff_ffff).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_partitions_move_to_the_other_and_nothing_is_skipped_or_doubled() {
    let server = PgServer::shared();
    let connection = server.connection_string();
    let schema = "workers_kill";
    let (store, model) = open(&connection, schema, "test").await;
    write(&store, 0, 2_000).await;
    let names = ["a", "b"];
    let mut children: Vec<Child> = names
        .iter()
        .map(|w| spawn_worker(&connection, schema, w))
        .collect();
    let mut seed = seed();
    let mut written = 2_000;
    for round in 0..10 {
        wait_owners(&store, "two workers share the partitions", |o| {
            o.len() == 8 && counts(o).values().all(|&n| n == 4)
        })
        .await;
        // The writer goes on; a worker is killed at a random moment.
        let writer = {
            let store = store.clone();
            tokio::spawn(async move { write(&store, written, 300).await })
        };
        written += 300;
        tokio::time::sleep(Duration::from_millis(50 + next(&mut seed) % 400)).await;
        let victim = usize::try_from(next(&mut seed) % 2).unwrap();
        children[victim].kill().expect("SIGKILL");
        children[victim].wait().expect("reap");
        let survivor = names[1 - victim];
        wait_owners(&store, "the survivor takes every partition", |o| {
            o.len() == 8 && o.values().all(|w| w == survivor)
        })
        .await;
        eprintln!(
            "round {round}: killed {}, {survivor} owns all 8",
            names[victim]
        );
        writer.await.unwrap();
        children[victim] = spawn_worker(&connection, schema, names[victim]);
    }
    let head = store.last_position().await.unwrap().unwrap();
    wait_caught_up(&model, head).await;
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    let expected = fold(&store).await;
    assert_eq!(tallies(&store, schema).await, expected);
    let total: u64 = expected.values().map(|t| t.count).sum();
    check_applied_once(&store, schema, usize::try_from(total).unwrap()).await;
    check_epochs_never_go_back(&store, schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_is_fenced_after_the_takeover_and_commits_nothing() {
    let server = PgServer::shared();
    let connection = server.connection_string();
    let schema = "workers_pause";
    let (store, model) = open(&connection, schema, "test").await;
    let mut a = spawn_worker(&connection, schema, "a");
    wait_owners(&store, "a owns every partition", |o| {
        o.len() == 8 && o.values().all(|w| w == "a")
    })
    .await;
    let mut b = spawn_worker(&connection, schema, "b");
    wait_owners(&store, "a and b share", |o| {
        o.len() == 8 && counts(o).values().all(|&n| n == 4)
    })
    .await;
    // Work in flight, then `a` is paused: its session and connections live on.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move { write(&store, 0, 3_000).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = a.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    wait_owners(&store, "b takes the paused owner's partitions", |o| {
        o.len() == 8 && o.values().all(|w| w == "b")
    })
    .await;
    writer.await.unwrap();
    // Resumed: it finds itself fenced, and comes back as a worker with new leases.
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    wait_owners(&store, "a rejoins", |o| {
        o.len() == 8 && counts(o).values().all(|&n| n == 4)
    })
    .await;
    let head = write(&store, 3_000, 200).await;
    wait_caught_up(&model, head).await;
    for child in [&mut a, &mut b] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let expected = fold(&store).await;
    assert_eq!(tallies(&store, schema).await, expected);
    let total: u64 = expected.values().map(|t| t.count).sum();
    check_applied_once(&store, schema, usize::try_from(total).unwrap()).await;
    let tenures = check_epochs_never_go_back(&store, schema).await;
    assert!(tenures > 8, "partitions changed hands ({tenures} tenures)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_that_join_and_leave_share_the_partitions_evenly() {
    let server = PgServer::shared();
    let connection = server.connection_string();
    let schema = "workers_balance";
    let (store, model) = open(&connection, schema, "test").await;
    write(&store, 0, 500).await;
    let mut workers: Vec<(String, Child)> =
        vec![("w0".to_owned(), spawn_worker(&connection, schema, "w0"))];
    wait_owners(&store, "one worker owns all", |o| o.len() == 8).await;
    for i in 1..4 {
        let id = format!("w{i}");
        workers.push((id.clone(), spawn_worker(&connection, schema, &id)));
    }
    let four = wait_owners(&store, "four workers own 2 each", |o| {
        o.len() == 8 && counts(o).len() == 4 && counts(o).values().all(|&n| n == 2)
    })
    .await;
    eprintln!("four workers: {:?}", counts(&four));
    write(&store, 500, 300).await;
    // Two leave cleanly: their stdin closes, they finish their batches and release.
    for (_, mut child) in workers.drain(..2) {
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success(), "a clean stop");
    }
    let two = wait_owners(&store, "the two left own 4 each", |o| {
        o.len() == 8 && counts(o).len() == 2 && counts(o).values().all(|&n| n == 4)
    })
    .await;
    eprintln!("two workers: {:?}", counts(&two));
    let head = write(&store, 800, 200).await;
    wait_caught_up(&model, head).await;
    for (_, mut child) in workers {
        let _ = child.kill();
        let _ = child.wait();
    }
    let expected = fold(&store).await;
    assert_eq!(tallies(&store, schema).await, expected);
    let total: u64 = expected.values().map(|t| t.count).sum();
    check_applied_once(&store, schema, usize::try_from(total).unwrap()).await;
    check_epochs_never_go_back(&store, schema).await;
}

/// Appends `count` account events like [`write`], retrying each append the server refused
/// while it was away (an append whose answer was lost may have been written: its retry, with
/// the same event id, is recognised as the same append).
async fn write_through_outages(store: &PgEventStore, from: u64, count: u64) {
    for i in from..from + count {
        let stream = StreamId::new(format!("account-{}", i % 40)).unwrap();
        let event = EventData::json("Counted", &serde_json::json!({ "n": i })).unwrap();
        loop {
            match store
                .append(&stream, ExpectedVersion::Any, vec![event.clone()])
                .await
            {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_sessions_and_a_server_restart_skip_nothing_and_double_nothing() {
    // A server of its own: it is stopped and started mid-run.
    let server = std::sync::Arc::new(
        tokio::task::spawn_blocking(PgServer::start)
            .await
            .unwrap()
            .expect("a server"),
    );
    let connection = server.connection_string();
    let schema = "workers_outage";
    let (store, model) = open(&connection, schema, "test").await;
    write(&store, 0, 1_000).await;
    let mut children: Vec<Child> = ["a", "b"]
        .iter()
        .map(|w| spawn_worker(&connection, schema, w))
        .collect();
    wait_owners(&store, "two workers share", |o| {
        o.len() == 8 && counts(o).values().all(|&n| n == 4)
    })
    .await;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move { write_through_outages(&store, 1_000, 1_500).await })
    };
    // Every session but this one cut, as a network failure or an operator would.
    let admin = store.pool().get().await.unwrap();
    let cut: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    drop(admin);
    eprintln!("terminated {cut} sessions");
    assert!(cut > 0);
    wait_owners(&store, "ownership after the cut", |o| o.len() == 8).await;
    // The server goes away for longer than the lease time, then comes back.
    tokio::task::spawn_blocking({
        let server = server.clone();
        move || {
            server.stop().expect("stop");
            std::thread::sleep(Duration::from_secs(2));
            server.resume().expect("resume");
        }
    })
    .await
    .unwrap();
    writer.await.unwrap();
    wait_owners(&store, "ownership after the restart", |o| {
        o.len() == 8 && counts(o).values().all(|&n| n == 4)
    })
    .await;
    let head = write(&store, 2_500, 100).await;
    wait_caught_up(&model, head).await;
    for mut child in children.drain(..) {
        let _ = child.kill();
        let _ = child.wait();
    }
    let expected = fold(&store).await;
    assert_eq!(tallies(&store, schema).await, expected);
    let total: u64 = expected.values().map(|t| t.count).sum();
    assert_eq!(total, 2_600);
    check_applied_once(&store, schema, usize::try_from(total).unwrap()).await;
    check_epochs_never_go_back(&store, schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_quick_handovers_never_let_an_old_owner_commit_after_a_new_one() {
    let server = PgServer::shared();
    let connection = server.connection_string();
    let schema = "workers_stress";
    let (store, model) = open(&connection, schema, "test").await;
    let quick = |id: String| {
        let connection = connection.clone();
        async move {
            let store = builder(&connection, schema, &id)
                .lease_heartbeat(Duration::from_millis(20))
                .lease_ttl(Duration::from_millis(200))
                .open()
                .await
                .expect("open");
            let model = PgModel::new(&store);
            let projection = Tallies {
                name: ProjectionName::new(NAME).unwrap(),
                schema: schema.to_owned(),
                worker: id.clone(),
            };
            ProjectionWorkers::builder(store, model, projection)
                .partitions(PARTITIONS)
                .worker_id(id)
                .rebalance_every(Duration::from_millis(10))
                .configure(|runner| runner.batch_size(7))
                .start()
                .await
                .expect("start")
        }
    };
    let writer = {
        let store = store.clone();
        tokio::spawn(async move { write(&store, 0, 1_500).await })
    };
    // Workers join and leave in quick succession: every join and leave moves partitions.
    let mut seed = seed();
    let mut running = vec![quick("s0".into()).await];
    for i in 1..40 {
        if running.len() < 2 || (running.len() < 5 && next(&mut seed).is_multiple_of(2)) {
            running.push(quick(format!("s{i}")).await);
        } else {
            let index = usize::try_from(next(&mut seed)).unwrap() % running.len();
            running.swap_remove(index).shutdown().await;
        }
        tokio::time::sleep(Duration::from_millis(next(&mut seed) % 60)).await;
    }
    writer.await.unwrap();
    let head = store.last_position().await.unwrap().unwrap();
    wait_caught_up(&model, head).await;
    for worker in running {
        worker.shutdown().await;
    }
    let expected = fold(&store).await;
    assert_eq!(tallies(&store, schema).await, expected);
    check_applied_once(&store, schema, 1_500).await;
    let tenures = check_epochs_never_go_back(&store, schema).await;
    eprintln!("{tenures} tenures of the 8 partitions");
    assert!(
        tenures > 16,
        "partitions changed hands often ({tenures} tenures)"
    );
}
