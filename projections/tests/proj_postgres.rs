//! The PostgreSQL read model: the handler's rows and the checkpoint commit together. A child
//! process running a projection is killed with SIGKILL at random moments; after every restart
//! each partition's rows are exactly the fold of the events its checkpoint covers, and the
//! final run equals the fold of the whole log.
//!
//! The second test does the same with an at-least-once handler: besides its rows it writes an
//! outside effect per event on another connection, outside the batch's transaction (idempotent:
//! keyed by the event id), and records every delivery. After every kill each event the
//! checkpoints cover has its effect; at the end every event has exactly one, whatever was
//! delivered twice.
//!
//! The child is this test binary, re-run with `ANNALS_PROJ_CHILD` set to the connection string,
//! schema and handler, and `--exact projection_child`.

#![cfg(feature = "postgres")]

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use annals::{BoxError, EventStore, Filter, Position, ReadAll, RecordedEvent};
use annals_postgres::PgEventStore;
use annals_projections::{
    partition_of, PartitionKey, PgModel, PgTx, Projection, ProjectionName, ProjectionRunner,
    ReadModel,
};
use annals_testkit::postgres::PgServer;
use futures::TryStreamExt;
use support::pg::{read_tallies, tallies_ddl, tallies_upsert};
use support::{fill, n_of, Tally, HANG_GUARD};

const CHILD_ENV: &str = "ANNALS_PROJ_CHILD";
const PARTITIONS: u32 = 4;

/// Per-stream tallies in a table of the store's schema; refuses any event out of order. With
/// `outside`, also an effect per event outside the transaction, before the batch commits.
struct PgTallies {
    name: ProjectionName,
    table: String,
    outside: Option<(PgEventStore, String)>,
}

impl PgTallies {
    fn new(schema: &str, handler: &str, store: &PgEventStore) -> Self {
        PgTallies {
            name: ProjectionName::new("pg-tallies").unwrap(),
            table: format!("\"{schema}\".tallies"),
            outside: (handler == "effects").then(|| (store.clone(), format!("\"{schema}\""))),
        }
    }

    /// The at-least-once effects: `n` by event id (idempotent), and a row per delivery.
    async fn effects(&self, events: &[RecordedEvent]) -> Result<(), BoxError> {
        let Some((store, schema)) = &self.outside else {
            return Ok(());
        };
        let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
        let ns = events
            .iter()
            .map(|e| i64::try_from(n_of(e)))
            .collect::<Result<Vec<i64>, _>>()?;
        let client = store.pool().get().await?;
        client
            .execute(
                &format!(
                    "INSERT INTO {schema}.effects (id, n) SELECT * FROM unnest($1::text[], $2::bigint[])
                     ON CONFLICT (id) DO NOTHING"
                ),
                &[&ids, &ns],
            )
            .await?;
        client
            .execute(
                &format!("INSERT INTO {schema}.deliveries (id) SELECT * FROM unnest($1::text[])"),
                &[&ids],
            )
            .await?;
        Ok(())
    }
}

impl Projection<PgModel> for PgTallies {
    fn name(&self) -> &ProjectionName {
        &self.name
    }

    fn filter(&self) -> Filter {
        Filter::all().category("account")
    }

    async fn handle(&self, tx: &mut PgTx, events: &[RecordedEvent]) -> Result<(), BoxError> {
        self.effects(events).await?;
        let statement = tx.client().prepare(&tallies_upsert(&self.table)).await?;
        for event in events {
            let version = i64::try_from(event.version.get())?;
            let n = i64::try_from(n_of(event))?;
            let changed = tx
                .client()
                .execute(&statement, &[&event.stream_id.as_str(), &version, &n])
                .await?;
            if changed != 1 {
                return Err(
                    format!("order violated on {} at version {version}", event.stream_id).into(),
                );
            }
        }
        Ok(())
    }
}

async fn open(connection: &str, schema: &str) -> (PgEventStore, PgModel) {
    let store = PgEventStore::builder()
        .connection_string(connection)
        .schema(schema)
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
             CREATE TABLE IF NOT EXISTS \"{schema}\".effects (id text PRIMARY KEY, n bigint NOT NULL);
             CREATE TABLE IF NOT EXISTS \"{schema}\".deliveries (id text NOT NULL)",
            tallies_ddl(schema)
        ))
        .await
        .expect("tallies table");
    (store, model)
}

async fn rows(model: &PgModel, schema: &str) -> HashMap<String, Tally> {
    let client = model.pool().get().await.unwrap();
    read_tallies(&client, schema).await
}

/// The fold of the `account` events each partition's checkpoint covers.
fn fold_until(log: &[RecordedEvent], checkpoints: &[Option<Position>]) -> HashMap<String, Tally> {
    let mut tallies: HashMap<String, Tally> = HashMap::new();
    for event in log.iter().filter(|e| e.category() == "account") {
        let p = partition_of(&event.stream_id, PARTITIONS);
        if checkpoints[usize::try_from(p).unwrap()].is_some_and(|c| event.position <= c) {
            let tally = tallies.entry(event.stream_id.to_string()).or_default();
            tally.count += 1;
            tally.last_version = event.version.get();
            tally.sum += n_of(event);
        }
    }
    tallies
}

/// Every partition's checkpoint.
async fn checkpoints_of(model: &PgModel, name: &ProjectionName) -> Vec<Option<Position>> {
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

/// The child: runs the projection until killed. Does nothing in a normal test run.
#[test]
fn projection_child() {
    let Ok(target) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = target.split('|');
    let (Some(connection), Some(schema), Some(handler)) =
        (parts.next(), parts.next(), parts.next())
    else {
        panic!("connection|schema|handler");
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let (store, model) = open(connection, schema).await;
        let projection = PgTallies::new(schema, handler, &store);
        let running = ProjectionRunner::new(store, model, projection)
            .partitions(PARTITIONS)
            .batch_size(37)
            .start()
            .await
            .expect("start");
        println!("STARTED");
        let error = running.stopped().await;
        panic!("the projection stopped: {error:?}");
    });
}

/// The outside effects: `n` by event id, and the number of deliveries.
async fn effects(model: &PgModel, schema: &str) -> (HashMap<String, u64>, u64) {
    let client = model.pool().get().await.unwrap();
    let found = client
        .query(&format!("SELECT id, n FROM \"{schema}\".effects"), &[])
        .await
        .unwrap()
        .into_iter()
        .map(|row| {
            let n: i64 = row.get(1);
            (row.get::<_, String>(0), u64::try_from(n).unwrap())
        })
        .collect();
    let deliveries: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM \"{schema}\".deliveries"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    (found, u64::try_from(deliveries).unwrap())
}

/// Every effect is an `account` event's, with its `n`, and every event the checkpoints cover
/// has its effect.
fn check_effects(
    found: &HashMap<String, u64>,
    log: &[RecordedEvent],
    checkpoints: &[Option<Position>],
    round: &str,
) {
    let accounts: Vec<&RecordedEvent> = log.iter().filter(|e| e.category() == "account").collect();
    let by_id: HashMap<String, u64> = accounts
        .iter()
        .map(|e| (e.id.to_string(), n_of(e)))
        .collect();
    for (id, n) in found {
        assert_eq!(by_id.get(id), Some(n), "{round}: an effect of no event");
    }
    for event in accounts {
        let p = partition_of(&event.stream_id, PARTITIONS);
        if checkpoints[usize::try_from(p).unwrap()].is_some_and(|c| event.position <= c) {
            assert_eq!(
                found.get(&event.id.to_string()),
                Some(&n_of(event)),
                "{round}: committed event {} has no effect",
                event.id
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_killed_at_random_moments_never_double_counts_or_skips() {
    kill_at_random_moments("proj_sigkill", "tx").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_at_least_once_handler_killed_at_random_moments_ends_with_one_effect_per_event() {
    kill_at_random_moments("proj_sigkill_effects", "effects").await;
}

async fn kill_at_random_moments(schema: &str, handler: &str) {
    let server = PgServer::shared();
    let connection = server.connection_string();
    let (store, model) = open(&connection, schema).await;
    // Other categories are scanned past, not handled.
    fill(&store, "other", 20, 50, 25).await;
    let head = fill(&store, "account", 40, 1000, 50).await;
    let log: Vec<RecordedEvent> = store.read_all(ReadAll::all()).try_collect().await.unwrap();
    let name = ProjectionName::new("pg-tallies").unwrap();
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let total = log.iter().filter(|e| e.category() == "account").count();
    let mut mid_work = 0;
    for round in 0..10 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "projection_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{connection}|{schema}|{handler}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child");
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let delay = 150 + u64::try_from(seed >> 64 & 0x1ff).unwrap();
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        // The server may still be finishing a COMMIT the child sent just before it died: read
        // the checkpoints, the rows and the checkpoints again until no commit landed between.
        let (checkpoints, held) = loop {
            let before = checkpoints_of(&model, &name).await;
            let held = rows(&model, schema).await;
            if checkpoints_of(&model, &name).await == before {
                break (before, held);
            }
        };
        assert_eq!(
            held,
            fold_until(&log, &checkpoints),
            "round {round} (killed after {delay} ms): the rows are exactly what the checkpoints cover"
        );
        if handler == "effects" {
            let (found, _) = effects(&model, schema).await;
            check_effects(&found, &log, &checkpoints, &format!("round {round}"));
        }
        let applied: u64 = held.values().map(|t| t.count).sum();
        eprintln!(
            "round {round}: killed after {delay} ms with {applied} of {total} events applied"
        );
        if applied > 0 && applied < u64::try_from(total).unwrap() {
            mid_work += 1;
        }
    }
    assert!(
        mid_work >= 3,
        "the kills must land mid-work ({mid_work} did)"
    );
    let projection = PgTallies::new(schema, handler, &store);
    let running = ProjectionRunner::new(store.clone(), model.clone(), projection)
        .partitions(PARTITIONS)
        .start()
        .await
        .unwrap();
    tokio::time::timeout(HANG_GUARD, running.caught_up_to(head))
        .await
        .expect("no hang")
        .unwrap();
    running.shutdown().await.unwrap();
    let whole: Vec<Option<Position>> = (0..PARTITIONS).map(|_| Some(head)).collect();
    assert_eq!(rows(&model, schema).await, fold_until(&log, &whole));
    if handler == "effects" {
        let (found, deliveries) = effects(&model, schema).await;
        check_effects(&found, &log, &whole, "the end");
        assert_eq!(found.len(), total, "one effect per event");
        assert!(deliveries >= u64::try_from(total).unwrap());
        eprintln!(
            "{deliveries} deliveries of {total} events: {} redelivered after kills",
            deliveries - u64::try_from(total).unwrap()
        );
    }
}
