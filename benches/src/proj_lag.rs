//! The live lag of projections: appends paced at 1,000 events/s while a projection is live
//! (the runner's defaults); per event, the time from the append's answer to the moment the
//! read model has committed it; the p99 against a budget:
//!
//! - `proj.live.lag.sled`: into a [`SledModel`], against 2 ms;
//! - `proj.live.lag.pg.inprocess`: into a [`PgModel`], the worker in the appending process
//!   (the moment [`RunningProjection::caught_up_to`] returns), against 20 ms;
//! - `proj.live.lag.pg.process`: the same with the worker in **another process**, woken by the
//!   store's LISTEN/NOTIFY; the moment is when the appending process receives a notification
//!   the handler sends inside the batch's transaction (PostgreSQL delivers it at commit), so
//!   the figure is append → read model committed and seen by another client. Against 20 ms.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::{BoxError, EventStore, ExpectedVersion, Position, RecordedEvent, StreamId};
use annals_postgres::PgEventStore;
use annals_projections::{
    PgModel, PgTx, Projection, ProjectionName, ProjectionRunner, ReadModel, RunningProjection,
    SledModel,
};
use annals_sled::Durability;
use anyhow::Context as _;
use futures::StreamExt as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::payload::batch;
use crate::pg_scenarios::{drop_schema, fresh_store, raw_client, server};
use crate::proj_scenarios::{upsert_sql, PgCounts, SledCounts};
use crate::sled_scenarios::open_store;
use crate::{median, Line, Scenario, Settings};

type Run<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Line>> + Send + 'a>>;

/// Waits until the read model has committed an event's position.
type Committed =
    Arc<dyn Fn(Position) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send + Sync>;

/// The wait of an in-process worker: [`RunningProjection::caught_up_to`].
fn caught_up<M: ReadModel>(running: &Arc<RunningProjection<M>>) -> Committed {
    let running = running.clone();
    Arc::new(move |position| {
        let running = running.clone();
        Box::pin(async move { Ok(running.caught_up_to(position).await?) })
    })
}

/// The wait of a worker in another process: the highest position its notifications named.
fn notified(seen: &watch::Receiver<Option<Position>>) -> Committed {
    let seen = seen.clone();
    Arc::new(move |position| {
        let mut seen = seen.clone();
        Box::pin(async move {
            seen.wait_for(|p| *p >= Some(position))
                .await
                .map_err(|_| anyhow::anyhow!("the notification listener ended"))?;
            Ok(())
        })
    })
}

/// Appends single events at a steady 1,000 per second for `secs` seconds (a task per append,
/// paced by `tokio::time::interval`, 100 streams); per event, the time from the append's
/// answer to the return of `committed` of its position, in that order (a late return only
/// lengthens the figure). Returns the p99 in ms.
async fn lag_round<S>(
    store: &S,
    committed: &Committed,
    round: usize,
    secs: u64,
) -> anyhow::Result<f64>
where
    S: EventStore + Clone + 'static,
{
    let events = secs * 1_000;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Position, Instant)>();
    let waiter = {
        let committed = committed.clone();
        tokio::spawn(async move {
            let mut lags = Vec::new();
            while let Some((position, acked)) = rx.recv().await {
                committed(position).await?;
                lags.push(acked.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(lags)
        })
    };
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    let mut appends = Vec::new();
    for i in 0..events {
        ticks.tick().await;
        let store = store.clone();
        let tx = tx.clone();
        let base = 100_000_000 + u64::try_from(round)? * events;
        appends.push(tokio::spawn(async move {
            let id = StreamId::new(format!("live-{}", i % 100))?;
            let done = store
                .append(&id, ExpectedVersion::Any, batch(base + i, 1))
                .await?;
            let acked = Instant::now();
            tx.send((done.last_position, acked))
                .map_err(|_| anyhow::anyhow!("the waiter ended"))?;
            anyhow::Ok(())
        }));
    }
    drop(tx);
    for a in appends {
        a.await??;
    }
    let mut lags = waiter.await??;
    anyhow::ensure!(
        lags.len() == usize::try_from(events)?,
        "measured {} of {events} events",
        lags.len()
    );
    lags.sort_by(f64::total_cmp);
    let at = (lags.len() * 99).div_ceil(100).saturating_sub(1);
    lags.get(at).copied().context("no lag measured")
}

/// Runs `s.rounds` lag rounds (after one first event was committed) and returns the median
/// p99 in ms.
async fn lag_rounds<S>(s: &Settings, store: &S, committed: &Committed) -> anyhow::Result<f64>
where
    S: EventStore + Clone + 'static,
{
    let secs: u64 = s.pick(1, 3);
    let first = store
        .append(
            &StreamId::new("live-warmup")?,
            ExpectedVersion::Any,
            batch(0, 1),
        )
        .await?;
    committed(first.last_position).await?;
    let mut p99s = Vec::new();
    for round in 0..s.rounds {
        p99s.push(lag_round(store, committed, round, secs).await?);
    }
    Ok(median(&mut p99s))
}

/// Runs the lag rounds on a projection started in this process.
async fn in_process<S, M, P>(s: &Settings, store: S, model: M, projection: P) -> anyhow::Result<f64>
where
    S: EventStore + Clone + 'static,
    M: ReadModel + Clone,
    P: Projection<M>,
{
    let running = Arc::new(
        ProjectionRunner::new(store.clone(), model, projection)
            .start()
            .await?,
    );
    let p99 = lag_rounds(s, &store, &caught_up(&running)).await?;
    let running = Arc::try_unwrap(running)
        .map_err(|_| anyhow::anyhow!("the running projection is still shared"))?;
    running.shutdown().await?;
    Ok(p99)
}

fn lag_line(scenario: String, p99: f64, budget: f64, rounds: usize) -> Line {
    Line {
        scenario,
        unit: "ms p99",
        annals: p99,
        baseline: budget,
        ratio: budget / p99,
        target: 1.0,
        floor: None,
        rounds,
    }
}

/// Live lag into a [`SledModel`] (Buffered store), against 2 ms.
#[derive(Debug)]
pub(crate) struct LiveLagSled;

impl Scenario for LiveLagSled {
    fn name(&self, s: &Settings) -> String {
        s.pick("proj.live.lag.sled.1s (quick)", "proj.live.lag.sled.3s")
            .into()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            let dir = tempfile::tempdir()?;
            let store = open_store(dir.path(), Durability::Buffered).await?;
            let model = SledModel::open(&store).await?;
            let projection = SledCounts {
                name: ProjectionName::new("lag")?,
                tree: "lag".into(),
                filter: annals::Filter::all(),
            };
            let p99 = in_process(s, store.clone(), model.clone(), projection).await?;
            drop(model);
            store.close().await?;
            Ok(lag_line(self.name(s), p99, 2.0, s.rounds))
        })
    }
}

/// A fresh store with the lag table `lag_counts` and the read model's tables.
async fn pg_setup() -> anyhow::Result<(
    Arc<annals_testkit::postgres::PgServer>,
    PgEventStore,
    String,
)> {
    let server = server()?;
    let store = fresh_store(&server, 8).await?;
    PgModel::new(&store).init().await?;
    let table = format!("\"{}\".lag_counts", store.schema());
    raw_client(&server)
        .await?
        .batch_execute(&format!(
            "CREATE TABLE {table} (stream text PRIMARY KEY, n bigint NOT NULL)"
        ))
        .await?;
    Ok((server, store, table))
}

/// Live lag into a [`PgModel`], the worker in the appending process, against 20 ms.
#[derive(Debug)]
pub(crate) struct LiveLagPg;

impl Scenario for LiveLagPg {
    fn name(&self, s: &Settings) -> String {
        s.pick(
            "proj.live.lag.pg.inprocess.1s (quick)",
            "proj.live.lag.pg.inprocess.3s",
        )
        .into()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            let (server, store, table) = pg_setup().await?;
            let schema = store.schema().to_owned();
            let projection = PgCounts {
                name: ProjectionName::new("lag")?,
                upsert: upsert_sql(&table),
            };
            let p99 = in_process(s, store.clone(), PgModel::new(&store), projection).await?;
            drop(store);
            drop_schema(&server, &schema).await?;
            Ok(lag_line(self.name(s), p99, 20.0, s.rounds))
        })
    }
}

/// The notification channel of a lag run in `schema`.
fn channel(schema: &str) -> String {
    format!("{schema}_lag")
}

/// The per-stream counter of the worker process: [`PgCounts`]'s upsert, then a notification
/// naming the batch's last event, sent inside the batch's transaction.
struct NotifyingCounts {
    counts: PgCounts,
    channel: String,
}

impl Projection<PgModel> for NotifyingCounts {
    fn name(&self) -> &ProjectionName {
        &self.counts.name
    }

    async fn handle(&self, tx: &mut PgTx, events: &[RecordedEvent]) -> Result<(), BoxError> {
        self.counts.apply(tx, events).await?;
        if let Some(last) = events.last() {
            let p = last.position;
            let text = format!("{} {}", p.commit(), p.prepare());
            tx.client()
                .execute("SELECT pg_notify($1, $2)", &[&self.channel, &text])
                .await?;
        }
        Ok(())
    }
}

/// Live lag into a [`PgModel`] with the worker in a child process, against 20 ms.
#[derive(Debug)]
pub(crate) struct LiveLagPgProcess;

impl Scenario for LiveLagPgProcess {
    fn name(&self, s: &Settings) -> String {
        s.pick(
            "proj.live.lag.pg.process.1s (quick)",
            "proj.live.lag.pg.process.3s",
        )
        .into()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            let (server, store, table) = pg_setup().await?;
            let schema = store.schema().to_owned();
            // The listener: the highest position a notification named.
            let (client, mut connection) =
                tokio_postgres::connect(&server.connection_string(), NoTls).await?;
            let (seen_tx, seen) = watch::channel(None::<Position>);
            let listener = tokio::spawn(async move {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(message) = messages.next().await {
                    if let AsyncMessage::Notification(n) = message? {
                        let mut parts = n.payload().split(' ').map(str::parse::<u64>);
                        if let (Some(Ok(commit)), Some(Ok(prepare))) = (parts.next(), parts.next())
                        {
                            let p = Position::new(commit, prepare);
                            seen_tx.send_modify(|s| *s = (*s).max(Some(p)));
                        }
                    }
                }
                anyhow::Ok(())
            });
            client
                .batch_execute(&format!("LISTEN \"{}\"", channel(&schema)))
                .await?;
            // The worker: this binary in child mode, ended by closing its stdin.
            let mut child = tokio::process::Command::new(std::env::current_exe()?)
                .arg("--proj-lag-child")
                .arg(server.connection_string())
                .arg(&schema)
                .arg(&table)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("starting the lag worker process")?;
            let stdout = child.stdout.take().context("the worker's stdout")?;
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let ready = lines.next_line().await?;
            anyhow::ensure!(
                ready.as_deref() == Some("READY"),
                "the lag worker did not start: {ready:?}"
            );
            let p99 = lag_rounds(s, &store, &notified(&seen)).await?;
            drop(child.stdin.take());
            let status = child.wait().await?;
            anyhow::ensure!(status.success(), "the lag worker failed: {status}");
            drop(client);
            listener.abort();
            drop(store);
            drop_schema(&server, &schema).await?;
            Ok(lag_line(self.name(s), p99, 20.0, s.rounds))
        })
    }
}

/// The worker process of `proj.live.lag.pg.process`: opens the store of `schema`, runs the
/// notifying counter projection into `table` until its stdin closes (the parent ended or is
/// done), then shuts it down. Prints `READY` once the projection runs.
///
/// # Errors
///
/// Store or projection failures.
pub async fn lag_child(connection: &str, schema: &str, table: &str) -> anyhow::Result<()> {
    let store = PgEventStore::builder()
        .connection_string(connection)
        .schema(schema)
        .pool_size(4)
        .open()
        .await?;
    let projection = NotifyingCounts {
        counts: PgCounts {
            name: ProjectionName::new("lag")?,
            upsert: upsert_sql(table),
        },
        channel: channel(schema),
    };
    let running = ProjectionRunner::new(store.clone(), PgModel::new(&store), projection)
        .start()
        .await?;
    println!("READY");
    let mut rest = Vec::new();
    tokio::io::stdin().read_to_end(&mut rest).await?;
    running.shutdown().await?;
    store.close().await?;
    Ok(())
}
