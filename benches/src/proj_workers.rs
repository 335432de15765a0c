//! The workers across processes (issue 15):
//!
//! - `proj.failover`: two worker processes share the 8 partitions of a projection on
//!   PostgreSQL, with the default lease (renewed every second, taken over 5 s after the last
//!   renewal) and the default rebalancing round (1 s); a writer appends to every partition all
//!   along. One worker is killed with SIGKILL; the figure is the time from the kill to the
//!   first batch the other worker commits on a partition the killed one owned (its handler
//!   sends a notification inside the batch's transaction, delivered at commit). Median and
//!   maximum over the rounds, against 10 s; the killed worker is started again between
//!   rounds and the partitions spread out again first.
//! - `proj.pg.partitions.4_vs_1`: catching a projection up from zero on a filled store with 4
//!   worker processes against 1, its handler doing 1 ms of **blocking** I/O per batch (a
//!   synchronous client's call: it holds one of the process's runtime threads) in batches of
//!   10 events, 8 partitions. The clock runs from the start of the workers to every
//!   partition's checkpoint at the head. Against 3×. With non-blocking I/O one process already
//!   runs its 8 partitions concurrently, so more processes only add CPU, which a 2-core
//!   machine does not have: the line measures what a process adds when handlers block.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use annals::{BoxError, EventStore, ExpectedVersion, Leases, RecordedEvent, StreamId};
use annals_postgres::PgEventStore;
use annals_projections::{PgModel, PgTx, Projection, ProjectionName, ProjectionWorkers};
use anyhow::Context as _;
use futures::StreamExt as _;
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::payload::batch;
use crate::pg_scenarios::{drop_schema, fresh_store, raw_client, server};
use crate::proj_scenarios::{upsert_sql, PgCounts};
use crate::{median, Line, Scenario, Settings};

type Run<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Line>> + Send + 'a>>;

/// The projection's name and partition count.
const NAME: &str = "failover";
const PARTITIONS: u32 = 8;
/// The budget of `proj.failover`, in seconds.
const BUDGET_SECS: f64 = 10.0;

/// The per-stream counter, and a notification `<worker> <partition>` per committed batch;
/// `blocking_io` of blocking work per batch.
struct Announced {
    counts: PgCounts,
    channel: String,
    worker: String,
    blocking_io: Duration,
}

impl Projection<PgModel> for Announced {
    fn name(&self) -> &ProjectionName {
        &self.counts.name
    }

    async fn handle(&self, tx: &mut PgTx, events: &[RecordedEvent]) -> Result<(), BoxError> {
        self.counts.apply(tx, events).await?;
        let partition = tx
            .fence()
            .and_then(|f| f.lease.rsplit('/').next().map(str::to_owned))
            .unwrap_or_default();
        let text = format!("{} {partition}", self.worker);
        tx.client()
            .execute("SELECT pg_notify($1, $2)", &[&self.channel, &text])
            .await?;
        if !self.blocking_io.is_zero() {
            std::thread::sleep(self.blocking_io);
        }
        Ok(())
    }
}

fn channel(schema: &str) -> String {
    format!("{schema}_failover")
}

/// What a worker process runs: the projection `name`, `blocking_io_ms` of blocking work per
/// batch, batches of `batch` events (0: the default), rebalancing every `rebalance_ms` (0: the
/// default).
#[derive(Debug, Clone)]
pub struct WorkerJob {
    /// The projection's name.
    pub name: String,
    /// Blocking work per batch, in ms.
    pub blocking_io_ms: u64,
    /// Events per batch (0: the runner's default).
    pub batch: usize,
    /// The rebalancing round, in ms (0: the default).
    pub rebalance_ms: u64,
}

impl WorkerJob {
    /// The job as command-line arguments.
    fn args(&self) -> [String; 4] {
        [
            self.name.clone(),
            self.blocking_io_ms.to_string(),
            self.batch.to_string(),
            self.rebalance_ms.to_string(),
        ]
    }

    /// Reads the arguments a worker process is started with (name, blocking I/O in ms, batch
    /// size, rebalancing round in ms).
    ///
    /// # Errors
    ///
    /// A missing or unreadable argument.
    pub fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<WorkerJob> {
        let mut next = || args.next().context("a worker job argument");
        Ok(WorkerJob {
            name: next()?,
            blocking_io_ms: next()?.parse()?,
            batch: next()?.parse()?,
            rebalance_ms: next()?.parse()?,
        })
    }

    fn failover() -> WorkerJob {
        WorkerJob {
            name: NAME.to_owned(),
            blocking_io_ms: 0,
            batch: 0,
            rebalance_ms: 0,
        }
    }
}

/// A worker process of `proj.failover` and `proj.pg.partitions.*`: a [`ProjectionWorkers`]
/// running `job` until its stdin closes or it is killed.
///
/// # Errors
///
/// Store or projection failures.
pub async fn worker_child(
    connection: &str,
    schema: &str,
    table: &str,
    id: &str,
    job: WorkerJob,
) -> anyhow::Result<()> {
    let store = PgEventStore::builder()
        .connection_string(connection)
        .schema(schema)
        .pool_size(4)
        .lease_holder(id)
        .open()
        .await?;
    let projection = Announced {
        counts: PgCounts {
            name: ProjectionName::new(job.name.as_str())?,
            upsert: upsert_sql(table),
        },
        channel: channel(schema),
        worker: id.to_owned(),
        blocking_io: Duration::from_millis(job.blocking_io_ms),
    };
    let mut workers = ProjectionWorkers::builder(store.clone(), PgModel::new(&store), projection)
        .partitions(PARTITIONS)
        .worker_id(id);
    if job.rebalance_ms > 0 {
        workers = workers.rebalance_every(Duration::from_millis(job.rebalance_ms));
    }
    if job.batch > 0 {
        let batch = job.batch;
        workers = workers.configure(move |runner| runner.batch_size(batch));
    }
    let running = workers.start().await?;
    let mut rest = Vec::new();
    tokio::io::stdin().read_to_end(&mut rest).await?;
    running.shutdown().await;
    store.close().await?;
    Ok(())
}

/// Who owns each partition now.
async fn owners(store: &PgEventStore) -> anyhow::Result<BTreeMap<u32, String>> {
    Ok(store
        .leases(&format!("{NAME}/partitions/"))
        .await?
        .into_iter()
        .filter_map(|l| Some((l.name.rsplit('/').next()?.parse().ok()?, l.holder)))
        .collect())
}

/// Waits until `a` and `b` own 4 partitions each.
async fn spread(store: &PgEventStore) -> anyhow::Result<BTreeMap<u32, String>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = owners(store).await?;
        let a = now.values().filter(|w| *w == "a").count();
        let b = now.values().filter(|w| *w == "b").count();
        if a == 4 && b == 4 {
            return Ok(now);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the partitions never spread: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spawn(
    connection: &str,
    schema: &str,
    table: &str,
    id: &str,
    job: &WorkerJob,
) -> anyhow::Result<tokio::process::Child> {
    tokio::process::Command::new(std::env::current_exe()?)
        .arg("--proj-worker-child")
        .args([connection, schema, table, id])
        .args(job.args())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting a worker process")
}

/// `proj.failover`: see the module docs.
#[derive(Debug)]
pub(crate) struct Failover;

impl Scenario for Failover {
    fn name(&self, s: &Settings) -> String {
        s.pick("proj.failover.3 (quick)", "proj.failover.5").into()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            let rounds: usize = s.pick(3, 5);
            let server = server()?;
            let store = fresh_store(&server, 4).await?;
            let schema = store.schema().to_owned();
            PgModel::new(&store).init().await?;
            let table = format!("\"{schema}\".failover_counts");
            raw_client(&server)
                .await?
                .batch_execute(&format!(
                    "CREATE TABLE {table} (stream text PRIMARY KEY, n bigint NOT NULL)"
                ))
                .await?;
            // The notifications: (worker, partition, when received).
            let (client, mut connection) =
                tokio_postgres::connect(&server.connection_string(), NoTls).await?;
            let (tx, mut commits) = mpsc::unbounded_channel::<(String, u32, Instant)>();
            let listener = tokio::spawn(async move {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(message) = messages.next().await {
                    if let AsyncMessage::Notification(n) = message? {
                        let mut parts = n.payload().split(' ');
                        if let (Some(worker), Some(Ok(partition))) =
                            (parts.next(), parts.next().map(str::parse::<u32>))
                        {
                            let _ = tx.send((worker.to_owned(), partition, Instant::now()));
                        }
                    }
                }
                anyhow::Ok(())
            });
            client
                .batch_execute(&format!("LISTEN \"{}\"", channel(&schema)))
                .await?;
            let connection = server.connection_string();
            let mut workers = BTreeMap::new();
            for id in ["a", "b"] {
                workers.insert(
                    id,
                    spawn(&connection, &schema, &table, id, &WorkerJob::failover())?,
                );
            }
            // A writer touching every partition all along: 100 streams, an event every 2 ms.
            let writer = {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut n = 0u64;
                    loop {
                        let id = StreamId::new(format!("fo-{}", n % 100))?;
                        store.append(&id, ExpectedVersion::Any, batch(n, 1)).await?;
                        n += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    #[allow(unreachable_code)]
                    anyhow::Ok(())
                })
            };
            let mut times = Vec::new();
            for round in 0..rounds {
                let owned = spread(&store).await?;
                let victim = if round % 2 == 0 { "a" } else { "b" };
                let survivor = if victim == "a" { "b" } else { "a" };
                let theirs: Vec<u32> = owned
                    .iter()
                    .filter(|(_, w)| *w == victim)
                    .map(|(p, _)| *p)
                    .collect();
                let mut child = workers.remove(victim).context("the victim")?;
                while commits.try_recv().is_ok() {}
                child.start_kill()?;
                let killed = Instant::now();
                child.wait().await?;
                let taken = tokio::time::timeout(Duration::from_secs(120), async {
                    while let Some((worker, partition, at)) = commits.recv().await {
                        if worker == survivor && theirs.contains(&partition) {
                            return Some(at);
                        }
                    }
                    None
                })
                .await
                .context("no takeover within 120 s")?
                .context("the listener ended")?;
                times.push(taken.duration_since(killed).as_secs_f64());
                workers.insert(
                    victim,
                    spawn(&connection, &schema, &table, victim, &WorkerJob::failover())?,
                );
            }
            writer.abort();
            for (_, mut child) in workers {
                drop(child.stdin.take());
                let _ = child.wait().await;
            }
            listener.abort();
            drop(client);
            drop(store);
            drop_schema(&server, &schema).await?;
            let max = times.iter().copied().fold(0.0, f64::max);
            let median = median(&mut times);
            eprintln!("proj.failover: median {median:.2} s, max {max:.2} s, lease ttl 5 s, heartbeat 1 s, rebalance 1 s");
            Ok(Line {
                scenario: self.name(s),
                unit: "s (max; lease 5 s)",
                annals: max,
                baseline: BUDGET_SECS,
                ratio: BUDGET_SECS / max,
                target: 1.0,
                floor: None,
                rounds,
            })
        })
    }
}

/// Catches projection `name` up from zero with `workers` worker processes; seconds until every
/// partition's checkpoint is at `head`.
async fn catch_up_with(
    store: &PgEventStore,
    connection: &str,
    table: &str,
    name: &str,
    workers: usize,
    head: annals::Position,
) -> anyhow::Result<f64> {
    use annals_projections::{PartitionKey, ReadModel as _};
    let schema = store.schema().to_owned();
    let job = WorkerJob {
        name: name.to_owned(),
        blocking_io_ms: 1,
        batch: 10,
        rebalance_ms: 100,
    };
    let started = Instant::now();
    let mut children = Vec::new();
    for w in 0..workers {
        children.push(spawn(
            connection,
            &schema,
            table,
            &format!("{name}-w{w}"),
            &job,
        )?);
    }
    let model = PgModel::new(store);
    let projection = ProjectionName::new(name)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut done = true;
        for p in 0..PARTITIONS {
            let key = PartitionKey::new(projection.clone(), p);
            done &= model.checkpoint(&key).await? >= Some(head);
        }
        if done {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{workers} workers never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    for mut child in children {
        drop(child.stdin.take());
        let _ = child.wait().await;
    }
    Ok(elapsed)
}

/// `proj.pg.partitions.4_vs_1`: see the module docs.
#[derive(Debug)]
pub(crate) struct Partitions4Vs1;

impl Scenario for Partitions4Vs1 {
    fn name(&self, s: &Settings) -> String {
        s.pick(
            "proj.pg.partitions.4_vs_1.20k (quick)",
            "proj.pg.partitions.4_vs_1.100k",
        )
        .into()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            let count: u64 = s.pick(20_000, 100_000);
            let server = server()?;
            let store = fresh_store(&server, 4).await?;
            let schema = store.schema().to_owned();
            PgModel::new(&store).init().await?;
            let table = format!("\"{schema}\".scale_counts");
            raw_client(&server)
                .await?
                .batch_execute(&format!(
                    "CREATE TABLE {table} (stream text PRIMARY KEY, n bigint NOT NULL)"
                ))
                .await?;
            crate::proj_scenarios::fill(&store, count, 10, 1_000).await?;
            let head = store.last_position().await?.context("an empty log")?;
            let connection = server.connection_string();
            let (store_ref, connection_ref, table_ref) = (&store, &connection, &table);
            // Rates (events/s), so that higher is better as in every ratio line.
            let medians = crate::alternate(
                s.rounds,
                |round| async move {
                    let name = format!("scale-4-{round}");
                    let secs =
                        catch_up_with(store_ref, connection_ref, table_ref, &name, 4, head).await?;
                    Ok(count as f64 / secs)
                },
                |round| async move {
                    let name = format!("scale-1-{round}");
                    let secs =
                        catch_up_with(store_ref, connection_ref, table_ref, &name, 1, head).await?;
                    Ok(count as f64 / secs)
                },
            )
            .await?;
            drop(store);
            drop_schema(&server, &schema).await?;
            Ok(Line::new(self.name(s), "events/s", medians, 3.0, s.rounds))
        })
    }
}
