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
use crate::proj_scenarios::{sums, upsert_sql};
use crate::{median, Line, Scenario, Settings};

type Run<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Line>> + Send + 'a>>;

/// The projection's name and partition count.
const NAME: &str = "failover";
const PARTITIONS: u32 = 8;
/// The budget of `proj.failover`, in seconds.
const BUDGET_SECS: f64 = 10.0;

/// The per-stream counter, and a notification `<worker> <partition>` per committed batch.
struct Announced {
    name: ProjectionName,
    upsert: String,
    channel: String,
    worker: String,
}

impl Projection<PgModel> for Announced {
    fn name(&self) -> &ProjectionName {
        &self.name
    }

    async fn handle(&self, tx: &mut PgTx, events: &[RecordedEvent]) -> Result<(), BoxError> {
        let (streams, ns) = sums(events)?;
        tx.client()
            .execute(self.upsert.as_str(), &[&streams, &ns])
            .await?;
        let partition = tx
            .fence()
            .and_then(|f| f.lease.rsplit('/').next().map(str::to_owned))
            .unwrap_or_default();
        let text = format!("{} {partition}", self.worker);
        tx.client()
            .execute("SELECT pg_notify($1, $2)", &[&self.channel, &text])
            .await?;
        Ok(())
    }
}

fn channel(schema: &str) -> String {
    format!("{schema}_failover")
}

/// A worker process of `proj.failover`: a [`ProjectionWorkers`] with the defaults until its
/// stdin closes or it is killed.
///
/// # Errors
///
/// Store or projection failures.
pub async fn worker_child(
    connection: &str,
    schema: &str,
    table: &str,
    id: &str,
) -> anyhow::Result<()> {
    let store = PgEventStore::builder()
        .connection_string(connection)
        .schema(schema)
        .pool_size(4)
        .lease_holder(id)
        .open()
        .await?;
    let projection = Announced {
        name: ProjectionName::new(NAME)?,
        upsert: upsert_sql(table),
        channel: channel(schema),
        worker: id.to_owned(),
    };
    let running = ProjectionWorkers::builder(store.clone(), PgModel::new(&store), projection)
        .partitions(PARTITIONS)
        .worker_id(id)
        .start()
        .await?;
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
) -> anyhow::Result<tokio::process::Child> {
    tokio::process::Command::new(std::env::current_exe()?)
        .arg("--proj-worker-child")
        .args([connection, schema, table, id])
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
                workers.insert(id, spawn(&connection, &schema, &table, id)?);
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
                workers.insert(victim, spawn(&connection, &schema, &table, victim)?);
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
