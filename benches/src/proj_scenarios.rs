//! The projections' scenarios (issue 13) and their raw baselines.
//!
//! - `proj.sled.catchup`: a projection keeping a per-stream counter (a big-endian `u64` per
//!   stream id in the tree `counts-<round>`) catches up a filled sled store into a
//!   [`SledModel`] in batches of 1,000, one partition; the raw loop reads the same log in
//!   `read_all` pages of 1,000 and writes the same counters to a tree of the same database
//!   with plain sled inserts, plus one checkpoint key per batch.
//! - `proj.pg.catchup`: the same counters in a PostgreSQL table through [`PgModel`], one
//!   multi-row upsert per batch (the batch's counts summed per stream, `unnest` of two arrays,
//!   `ON CONFLICT … DO UPDATE`) with the checkpoint in the batch's transaction; the raw loop
//!   reads `read_all` pages of 1,000 and runs the same upsert (prepared once) and a checkpoint
//!   row update in one transaction per page. The runner reads the next page while a batch
//!   commits (reader and partition are separate tasks); the raw loop does not, which is why
//!   this ratio can exceed 1.
//! - `proj.live.lag.*`: appends paced at 1,000 events/s while the projection is live (the
//!   runner's defaults); per event, the time from the append's answer to the moment
//!   [`RunningProjection::caught_up_to`] of its position returns; the p99 against a budget
//!   (2 ms for sled, 20 ms for PostgreSQL with the worker in the appending process). The line
//!   `proj.live.lag.sled.max_wait_0ms` is information: the same with `max_wait(0)`, to show how
//!   much of the lag is the runner's default 5 ms wait for a batch to fill.
//! - `proj.memory`: the peak resident set of a child process catching up a filled store into a
//!   [`SledModel`], against 256 MiB.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::{BoxError, EventStore, ExpectedVersion, Position, ReadAll, RecordedEvent, StreamId};
use annals_projections::{
    PgModel, PgTx, Projection, ProjectionName, ProjectionRunner, ReadModel, RunningProjection,
    SledModel, SledTx,
};
use annals_sled::{Durability, SledEventStore};
use anyhow::Context as _;
use futures::TryStreamExt;

use crate::payload::batch;
use crate::pg_scenarios::{drop_schema, fresh_store, raw_client, server};
use crate::sled_scenarios::open_store;
use crate::{alternate, median, rate, Line, Scenario, Settings};

type Run<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Line>> + Send + 'a>>;

/// Events per batch on both sides (the runner's batch size, the raw loop's page).
const BATCH: usize = 1_000;

/// The budget of `proj.memory`, in MiB.
pub const MEMORY_BUDGET_MIB: f64 = 256.0;

/// The projections' scenarios, in report order.
pub fn scenarios() -> Vec<Box<dyn Scenario>> {
    vec![
        Box::new(SledCatchup),
        Box::new(PgCatchup),
        Box::new(LiveLagSled { max_wait: None }),
        Box::new(LiveLagSled {
            max_wait: Some(Duration::ZERO),
        }),
        Box::new(LiveLagPg),
        Box::new(Memory),
    ]
}

/// Fills `store` with `count` events from 4 tasks: appends of `per_append` events, the
/// `k`-th append to the stream `proj-<k mod streams>`.
async fn fill<S>(store: &S, count: u64, per_append: u64, streams: u64) -> anyhow::Result<()>
where
    S: EventStore + Clone + 'static,
{
    const TASKS: u64 = 4;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = t * per_append;
            while n < count {
                let id = StreamId::new(format!("proj-{}", (n / per_append) % streams))?;
                let size = per_append.min(count - n);
                store
                    .append(&id, ExpectedVersion::Any, batch(n, size))
                    .await?;
                n += TASKS * per_append;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// The sled fill: appends of 10 events over 10,000 streams (a batch of 1,000 events touches
/// about 100 streams).
async fn fill_sled(store: &SledEventStore, count: u64) -> anyhow::Result<()> {
    fill(store, count, 10, 10_000).await?;
    store.flush().await?;
    Ok(())
}

/// The per-stream counter of the sled side: a big-endian `u64` per stream id in `tree`.
struct SledCounts {
    name: ProjectionName,
    tree: String,
}

impl Projection<SledModel> for SledCounts {
    fn name(&self) -> &ProjectionName {
        &self.name
    }

    async fn handle(&self, tx: &mut SledTx, events: &[RecordedEvent]) -> Result<(), BoxError> {
        for e in events {
            let key = e.stream_id.as_str();
            let n = match tx.get(&self.tree, key)? {
                Some(v) => u64::from_be_bytes(v.as_slice().try_into()?),
                None => 0,
            };
            tx.insert(&self.tree, key, (n + 1).to_be_bytes())?;
        }
        Ok(())
    }
}

/// A position as 16 bytes (the raw loops' checkpoint).
fn position_bytes(p: Position) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&p.commit().to_be_bytes());
    out[8..].copy_from_slice(&p.prepare().to_be_bytes());
    out
}

/// Runs a projection from scratch until it has committed `last`: events/s for `count`
/// events. The clock stops when `caught_up_to` returns; the shutdown (a flush) is not timed.
async fn catch_up<S, M, P>(
    store: S,
    model: M,
    projection: P,
    last: Position,
    count: u64,
) -> anyhow::Result<f64>
where
    S: EventStore + Clone + 'static,
    M: ReadModel + Clone,
    P: Projection<M>,
{
    let started = Instant::now();
    let running = ProjectionRunner::new(store, model, projection)
        .batch_size(BATCH)
        .partitions(1)
        .start()
        .await?;
    running.caught_up_to(last).await?;
    let elapsed = started.elapsed();
    running.shutdown().await?;
    Ok(rate(count, elapsed))
}

/// One page of the log from `from`, `BATCH` events at most.
async fn page<S: EventStore>(store: &S, from: Position) -> anyhow::Result<Vec<RecordedEvent>> {
    Ok(store
        .read_all(ReadAll::from(from).limit(BATCH))
        .try_collect()
        .await?)
}

/// The raw sled loop: `read_all` pages of `BATCH`, each page's counters read (from the page's
/// own counts first, then the tree) and written with plain inserts, then the checkpoint key.
async fn raw_sled_catchup(store: &SledEventStore, round: usize, count: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let tree = store.open_tree(&format!("raw/counts-{round}"))?;
    let checkpoints = store.open_tree("raw/checkpoints")?;
    let name = format!("raw-{round}");
    let mut from = Position::START;
    let mut read = 0u64;
    loop {
        let events = page(store, from).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            break;
        };
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for e in &events {
            let key = e.stream_id.as_str();
            let n = match counts.get(key) {
                Some(n) => *n,
                None => match tree.get(key)? {
                    Some(v) => u64::from_be_bytes(v.as_ref().try_into()?),
                    None => 0,
                },
            };
            counts.insert(key, n + 1);
        }
        for (key, n) in counts {
            tree.insert(key, &n.to_be_bytes())?;
        }
        checkpoints.insert(name.as_bytes(), &position_bytes(last))?;
        read += u64::try_from(events.len())?;
        from = last.next();
    }
    let elapsed = started.elapsed();
    anyhow::ensure!(read == count, "the raw loop read {read} of {count} events");
    Ok(rate(count, elapsed))
}

/// Catching up 1,000,000 events (quick: 100,000) into a [`SledModel`] against the raw loop.
#[derive(Debug)]
struct SledCatchup;

impl Scenario for SledCatchup {
    fn name(&self, s: &Settings) -> String {
        s.pick("proj.sled.catchup.100k (quick)", "proj.sled.catchup.1m")
            .into()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            let count: u64 = s.pick(100_000, 1_000_000);
            let dir = tempfile::tempdir()?;
            let store = open_store(dir.path(), Durability::Buffered).await?;
            fill_sled(&store, count).await?;
            // Reopened: the stream index is complete at open, so the store's background
            // indexer does not run beside the rounds.
            store.close().await?;
            drop(store);
            let store = open_store(dir.path(), Durability::Buffered).await?;
            let last = store.last_position().await?.context("an empty log")?;
            let model = SledModel::open(&store).await?;
            let (store_ref, model_ref) = (&store, &model);
            let medians = alternate(
                s.rounds,
                |round| async move {
                    let projection = SledCounts {
                        name: ProjectionName::new(format!("counts-{round}"))?,
                        tree: format!("counts-{round}"),
                    };
                    let measured = catch_up(
                        store_ref.clone(),
                        model_ref.clone(),
                        projection,
                        last,
                        count,
                    )
                    .await?;
                    let counted: u64 = model_ref
                        .tree(&format!("counts-{round}"))?
                        .iter()
                        .values()
                        .map(|v| Ok(u64::from_be_bytes(v?.as_ref().try_into()?)))
                        .sum::<anyhow::Result<u64>>()?;
                    anyhow::ensure!(counted == count, "counted {counted} of {count}");
                    Ok(measured)
                },
                |round| raw_sled_catchup(store_ref, round, count),
            )
            .await?;
            drop(model);
            store.close().await?;
            Ok(Line::new(self.name(s), "events/s", medians, 0.80, s.rounds))
        })
    }
}

/// The per-stream counter of the PostgreSQL side: one multi-row upsert per batch into
/// `table` (schema-qualified), the batch's counts summed per stream.
struct PgCounts {
    name: ProjectionName,
    upsert: String,
}

/// The upsert of both PostgreSQL sides.
fn upsert_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} (stream, n) SELECT * FROM unnest($1::text[], $2::bigint[]) \
         ON CONFLICT (stream) DO UPDATE SET n = {table}.n + EXCLUDED.n"
    )
}

/// A batch's counts per stream, as the upsert's two arrays.
fn sums(events: &[RecordedEvent]) -> anyhow::Result<(Vec<&str>, Vec<i64>)> {
    let mut order: Vec<&str> = Vec::new();
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for e in events {
        let key = e.stream_id.as_str();
        let n = counts.entry(key).or_insert_with(|| {
            order.push(key);
            0
        });
        *n += 1;
    }
    let ns = order
        .iter()
        .map(|k| counts.get(k).copied().context("a counted stream"))
        .collect::<anyhow::Result<Vec<i64>>>()?;
    Ok((order, ns))
}

impl Projection<PgModel> for PgCounts {
    fn name(&self) -> &ProjectionName {
        &self.name
    }

    async fn handle(&self, tx: &mut PgTx, events: &[RecordedEvent]) -> Result<(), BoxError> {
        let (streams, ns) = sums(events)?;
        tx.client()
            .execute(self.upsert.as_str(), &[&streams, &ns])
            .await?;
        Ok(())
    }
}

/// Catching up 200,000 events (quick: 20,000) into a [`PgModel`] against the raw loop.
#[derive(Debug)]
struct PgCatchup;

impl Scenario for PgCatchup {
    fn name(&self, s: &Settings) -> String {
        s.pick("proj.pg.catchup.20k (quick)", "proj.pg.catchup.200k")
            .into()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            let count: u64 = s.pick(20_000, 200_000);
            let server = server()?;
            let store = fresh_store(&server, 4).await?;
            // Appends of 50 events over 1,000 streams: a batch touches about 20 streams.
            fill(&store, count, 50, 1_000).await?;
            let last = store.last_position().await?.context("an empty log")?;
            let schema = store.schema().to_owned();
            let model = PgModel::new(&store);
            model.init().await?;
            let client = raw_client(&server).await?;
            client
                .batch_execute(&format!(
                    "ANALYZE \"{schema}\".events;
                     CREATE TABLE \"{schema}\".raw_checkpoints (
                         projection text PRIMARY KEY, commit_part bigint NOT NULL,
                         prepare_part bigint NOT NULL)"
                ))
                .await?;
            let (store_ref, model_ref, client_ref, schema_ref) = (&store, &model, &client, &schema);
            let make_table = |table: String| async move {
                client_ref
                    .batch_execute(&format!(
                        "CREATE TABLE {table} (stream text PRIMARY KEY, n bigint NOT NULL)"
                    ))
                    .await?;
                anyhow::Ok(table)
            };
            let medians = alternate(
                s.rounds,
                |round| async move {
                    let table = make_table(format!("\"{schema_ref}\".counts_{round}")).await?;
                    let projection = PgCounts {
                        name: ProjectionName::new(format!("counts-{round}"))?,
                        upsert: upsert_sql(&table),
                    };
                    let measured = catch_up(
                        store_ref.clone(),
                        model_ref.clone(),
                        projection,
                        last,
                        count,
                    )
                    .await?;
                    let row = client_ref
                        .query_one(&format!("SELECT sum(n)::bigint FROM {table}"), &[])
                        .await?;
                    let counted: i64 = row.try_get(0)?;
                    anyhow::ensure!(
                        u64::try_from(counted)? == count,
                        "counted {counted} of {count}"
                    );
                    Ok(measured)
                },
                |round| async move {
                    let table = make_table(format!("\"{schema_ref}\".raw_counts_{round}")).await?;
                    let name = format!("raw-{round}");
                    client_ref
                        .execute(
                            &format!(
                                "INSERT INTO \"{schema_ref}\".raw_checkpoints VALUES ($1, 0, 0)"
                            ),
                            &[&name],
                        )
                        .await?;
                    let upsert = client_ref.prepare(&upsert_sql(&table)).await?;
                    let checkpoint = client_ref
                        .prepare(&format!(
                            "UPDATE \"{schema_ref}\".raw_checkpoints SET commit_part = $2, \
                             prepare_part = $3 WHERE projection = $1"
                        ))
                        .await?;
                    let started = Instant::now();
                    let mut from = Position::START;
                    let mut read = 0u64;
                    loop {
                        let events = page(store_ref, from).await?;
                        let Some(last) = events.last().map(|e| e.position) else {
                            break;
                        };
                        let (streams, ns) = sums(&events)?;
                        let commit = i64::try_from(last.commit())?;
                        let prepare = i64::try_from(last.prepare())?;
                        client_ref.batch_execute("BEGIN").await?;
                        client_ref.execute(&upsert, &[&streams, &ns]).await?;
                        client_ref
                            .execute(&checkpoint, &[&name, &commit, &prepare])
                            .await?;
                        client_ref.batch_execute("COMMIT").await?;
                        read += u64::try_from(events.len())?;
                        from = last.next();
                    }
                    let elapsed = started.elapsed();
                    anyhow::ensure!(read == count, "the raw loop read {read} of {count}");
                    Ok(rate(count, elapsed))
                },
            )
            .await?;
            drop(client);
            drop(model);
            drop(store);
            drop_schema(&server, &schema).await?;
            Ok(Line::new(self.name(s), "events/s", medians, 0.70, s.rounds))
        })
    }
}

/// Appends single events at a steady 1,000 per second for `secs` seconds (a task per append,
/// paced by `tokio::time::interval`, 100 streams) while `running` follows the log live; per
/// event, the time from the append's answer to the return of `caught_up_to` of its position,
/// in that order (a late return only lengthens the figure). Returns the p99 in ms.
async fn lag_round<S, M>(
    store: &S,
    running: &Arc<RunningProjection<M>>,
    round: usize,
    secs: u64,
) -> anyhow::Result<f64>
where
    S: EventStore + Clone + 'static,
    M: ReadModel,
{
    let events = secs * 1_000;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Position, Instant)>();
    let waiter = {
        let running = running.clone();
        tokio::spawn(async move {
            let mut lags = Vec::new();
            while let Some((position, acked)) = rx.recv().await {
                running.caught_up_to(position).await?;
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

/// Runs `s.rounds` lag rounds on a live projection (started, and caught up to one first
/// event, before the first round) and returns the median p99 in ms. `max_wait` overrides the
/// runner's default (5 ms) when given.
async fn lag_rounds<S, M, P>(
    s: &Settings,
    store: S,
    model: M,
    projection: P,
    max_wait: Option<Duration>,
) -> anyhow::Result<f64>
where
    S: EventStore + Clone + 'static,
    M: ReadModel + Clone,
    P: Projection<M>,
{
    let secs: u64 = s.pick(1, 3);
    let mut runner = ProjectionRunner::new(store.clone(), model, projection);
    if let Some(wait) = max_wait {
        runner = runner.max_wait(wait);
    }
    let running = Arc::new(runner.start().await?);
    let first = store
        .append(
            &StreamId::new("live-warmup")?,
            ExpectedVersion::Any,
            batch(0, 1),
        )
        .await?;
    running.caught_up_to(first.last_position).await?;
    let mut p99s = Vec::new();
    for round in 0..s.rounds {
        p99s.push(lag_round(&store, &running, round, secs).await?);
    }
    let running = Arc::try_unwrap(running)
        .map_err(|_| anyhow::anyhow!("the running projection is still shared"))?;
    running.shutdown().await?;
    Ok(median(&mut p99s))
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

/// Live lag into a [`SledModel`] (Buffered store), against the 2 ms budget: with the runner's
/// defaults (judged), and for information with `max_wait(0)` (a batch is committed as soon as
/// the partition has no further event queued), which shows how much of the lag is the default
/// 5 ms batching wait.
#[derive(Debug)]
struct LiveLagSled {
    max_wait: Option<Duration>,
}

impl Scenario for LiveLagSled {
    fn name(&self, s: &Settings) -> String {
        let base = match self.max_wait {
            None => "proj.live.lag.sled".to_owned(),
            Some(wait) => format!("proj.live.lag.sled.max_wait_{}ms", wait.as_millis()),
        };
        s.pick(format!("{base}.1s (quick)"), format!("{base}.3s"))
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            let dir = tempfile::tempdir()?;
            let store = open_store(dir.path(), Durability::Buffered).await?;
            let model = SledModel::open(&store).await?;
            let projection = SledCounts {
                name: ProjectionName::new("lag")?,
                tree: "lag".into(),
            };
            let p99 =
                lag_rounds(s, store.clone(), model.clone(), projection, self.max_wait).await?;
            drop(model);
            store.close().await?;
            let mut line = lag_line(self.name(s), p99, 2.0, s.rounds);
            if self.max_wait.is_some() {
                // Information: the judged line runs with the runner's defaults.
                line.target = 0.0;
            }
            Ok(line)
        })
    }
}

/// Live lag into a [`PgModel`], the worker in the appending process, against 20 ms.
#[derive(Debug)]
struct LiveLagPg;

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
            let server = server()?;
            let store = fresh_store(&server, 8).await?;
            let schema = store.schema().to_owned();
            let model = PgModel::new(&store);
            model.init().await?;
            let table = format!("\"{schema}\".lag_counts");
            raw_client(&server)
                .await?
                .batch_execute(&format!(
                    "CREATE TABLE {table} (stream text PRIMARY KEY, n bigint NOT NULL)"
                ))
                .await?;
            let projection = PgCounts {
                name: ProjectionName::new("lag")?,
                upsert: upsert_sql(&table),
            };
            let p99 = lag_rounds(s, store.clone(), model, projection, None).await?;
            drop(store);
            drop_schema(&server, &schema).await?;
            Ok(lag_line(self.name(s), p99, 20.0, s.rounds))
        })
    }
}

/// Peak memory (VmHWM) of a child process catching up 1,000,000 events (quick: 100,000) into
/// a [`SledModel`] with the default store settings, against 256 MiB. Another child fills the
/// store first, so the fill's own peak is not counted.
#[derive(Debug)]
struct Memory;

impl Scenario for Memory {
    fn name(&self, s: &Settings) -> String {
        s.pick("proj.memory.catchup.100k (quick)", "proj.memory.catchup.1m")
            .into()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            let count: u64 = s.pick(100_000, 1_000_000);
            let dir = tempfile::tempdir()?;
            let exe = std::env::current_exe()?;
            let mut stdout = String::new();
            for step in ["fill", "catchup"] {
                let output = tokio::process::Command::new(&exe)
                    .arg("--proj-memory-child")
                    .arg(step)
                    .arg(count.to_string())
                    .arg(dir.path())
                    .output()
                    .await
                    .context("running the projection memory child")?;
                anyhow::ensure!(
                    output.status.success(),
                    "projection memory child ({step}) failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            }
            let kib: f64 = stdout
                .lines()
                .find_map(|l| l.strip_prefix("VMHWM_KIB "))
                .context("the child printed no VmHWM")?
                .trim()
                .parse()?;
            let peak = kib / 1024.0;
            Ok(Line {
                scenario: self.name(s),
                unit: "MiB",
                annals: peak,
                baseline: MEMORY_BUDGET_MIB,
                ratio: MEMORY_BUDGET_MIB / peak,
                target: 1.0,
                floor: None,
                rounds: 1,
            })
        })
    }
}

/// The memory children's work. `fill`: fills a store in `dir` with `count` events (as
/// `proj.sled.catchup` does) and returns 0. `catchup`: opens that store with the default
/// settings, catches a per-stream counter projection up into a [`SledModel`] (batches of
/// 1,000), shuts it down, and returns the process's peak resident set (VmHWM) in KiB.
///
/// # Errors
///
/// Store or projection failures, an unknown step, or a `/proc/self/status` without `VmHWM`.
pub async fn memory_child(step: &str, count: u64, dir: &Path) -> anyhow::Result<u64> {
    match step {
        "fill" => {
            let store = open_store(dir, Durability::Buffered).await?;
            fill_sled(&store, count).await?;
            store.close().await?;
            Ok(0)
        }
        "catchup" => {
            let store = SledEventStore::builder()
                .path(dir.join("annals"))
                .open()
                .await?;
            let last = store.last_position().await?.context("an empty log")?;
            let model = SledModel::open(&store).await?;
            let projection = SledCounts {
                name: ProjectionName::new("counts")?,
                tree: "counts".into(),
            };
            catch_up(store.clone(), model.clone(), projection, last, count).await?;
            drop(model);
            store.close().await?;
            let status = std::fs::read_to_string("/proc/self/status")?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .context("no VmHWM in /proc/self/status")
        }
        other => anyhow::bail!("unknown memory child step {other:?}"),
    }
}
