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
//! - `proj.live.lag.*`: see [`proj_lag`](crate::proj_lag).
//! - `proj.memory`: the peak resident set of a child process catching up a filled store into a
//!   [`SledModel`], against 256 MiB.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Instant;

use annals::{
    BoxError, EventStore, ExpectedVersion, Filter, Position, ReadAll, RecordedEvent, StreamId,
};
use annals_projections::{
    PgModel, PgTx, Projection, ProjectionName, ProjectionRunner, ReadModel, SledModel, SledTx,
};
use annals_sled::{Durability, SledEventStore};
use anyhow::Context as _;
use futures::TryStreamExt;

use crate::payload::batch;
use crate::pg_scenarios::{drop_schema, fresh_store, raw_client, server};
use crate::sled_scenarios::open_store;
use crate::{alternate, rate, Line, Scenario, Settings};

type Run<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Line>> + Send + 'a>>;

/// Events per batch on both sides (the runner's batch size, the raw loop's page).
const BATCH: usize = 1_000;

/// The budget of `proj.memory`, in MiB.
pub const MEMORY_BUDGET_MIB: f64 = 256.0;

/// The projections' scenarios, in report order.
pub fn scenarios() -> Vec<Box<dyn Scenario>> {
    vec![
        Box::new(SledCatchup { rare: false }),
        Box::new(SledCatchup { rare: true }),
        Box::new(PgCatchup),
        Box::new(crate::proj_lag::LiveLagSled),
        Box::new(crate::proj_lag::LiveLagPg),
        Box::new(crate::proj_lag::LiveLagPgProcess),
        Box::new(crate::proj_workers::Failover),
        Box::new(crate::proj_workers::Partitions4Vs1),
        Box::new(Memory),
    ]
}

/// Fills `store` with `count` events from 4 tasks: appends of `per_append` events, the
/// `k`-th append to the stream `proj-<k mod streams>` (`rare-<…>` for 1 % of them).
pub(crate) async fn fill<S>(
    store: &S,
    count: u64,
    per_append: u64,
    streams: u64,
) -> anyhow::Result<()>
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
                let k = (n / per_append) % streams;
                // 1 % of the streams (and of the events) in the category `rare`.
                let category = if k % 100 == 99 { "rare" } else { "proj" };
                let id = StreamId::new(format!("{category}-{k}"))?;
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
pub(crate) struct SledCounts {
    pub(crate) name: ProjectionName,
    pub(crate) tree: String,
    pub(crate) filter: Filter,
}

impl Projection<SledModel> for SledCounts {
    fn name(&self) -> &ProjectionName {
        &self.name
    }

    fn filter(&self) -> Filter {
        self.filter.clone()
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
async fn page<S: EventStore>(
    store: &S,
    from: Position,
    filter: &Filter,
) -> anyhow::Result<Vec<RecordedEvent>> {
    Ok(store
        .read_all(ReadAll::from(from).limit(BATCH).filter(filter.clone()))
        .try_collect()
        .await?)
}

/// The raw sled loop: `read_all` pages of `BATCH` (with `filter`), each page's counters read
/// (from the page's own counts first, then the tree) and written with plain inserts, then the
/// checkpoint key. `wanted`: the events the filter keeps; the rate is of the `count` events of
/// the whole log.
async fn raw_sled_catchup(
    store: &SledEventStore,
    round: usize,
    filter: &Filter,
    wanted: u64,
    count: u64,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let tree = store.open_tree(&format!("raw/counts-{round}"))?;
    let checkpoints = store.open_tree("raw/checkpoints")?;
    let name = format!("raw-{round}");
    let mut from = Position::START;
    let mut read = 0u64;
    loop {
        let events = page(store, from, filter).await?;
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
    anyhow::ensure!(
        read == wanted,
        "the raw loop read {read} of {wanted} events"
    );
    Ok(rate(count, elapsed))
}

/// Catching up 1,000,000 events (quick: 100,000) into a [`SledModel`] against the raw loop:
/// every event, or (`rare`) only the 1 % of category `rare`, the filter going to the store on
/// both sides (the rate is of the whole log, scanned).
#[derive(Debug)]
struct SledCatchup {
    rare: bool,
}

impl Scenario for SledCatchup {
    fn name(&self, s: &Settings) -> String {
        let base = if self.rare {
            "proj.sled.catchup.rare_1pct"
        } else {
            "proj.sled.catchup"
        };
        s.pick(format!("{base}.100k (quick)"), format!("{base}.1m"))
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
            let filter = if self.rare {
                Filter::all().category("rare")
            } else {
                Filter::all()
            };
            let wanted = u64::try_from(
                store
                    .read_all(ReadAll::all().filter(filter.clone()))
                    .try_collect::<Vec<_>>()
                    .await?
                    .len(),
            )?;
            let (store_ref, model_ref, filter_ref) = (&store, &model, &filter);
            let medians = alternate(
                s.rounds,
                |round| async move {
                    let projection = SledCounts {
                        name: ProjectionName::new(format!("counts-{round}"))?,
                        tree: format!("counts-{round}"),
                        filter: filter_ref.clone(),
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
                    anyhow::ensure!(counted == wanted, "counted {counted} of {wanted}");
                    Ok(measured)
                },
                |round| raw_sled_catchup(store_ref, round, filter_ref, wanted, count),
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
pub(crate) struct PgCounts {
    pub(crate) name: ProjectionName,
    pub(crate) upsert: String,
}

/// The upsert of both PostgreSQL sides.
pub(crate) fn upsert_sql(table: &str) -> String {
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

impl PgCounts {
    /// The batch's counts, upserted in its transaction.
    pub(crate) async fn apply(&self, tx: &PgTx, events: &[RecordedEvent]) -> Result<(), BoxError> {
        let (streams, ns) = sums(events)?;
        tx.client()
            .execute(self.upsert.as_str(), &[&streams, &ns])
            .await?;
        Ok(())
    }
}

impl Projection<PgModel> for PgCounts {
    fn name(&self) -> &ProjectionName {
        &self.name
    }

    async fn handle(&self, tx: &mut PgTx, events: &[RecordedEvent]) -> Result<(), BoxError> {
        self.apply(tx, events).await
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
                        let events = page(store_ref, from, &Filter::all()).await?;
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
            let count_text = count.to_string();
            let mut peak = 0.0;
            for step in ["fill", "catchup"] {
                let args = [
                    "--proj-memory-child".as_ref(),
                    step.as_ref(),
                    count_text.as_ref(),
                    dir.path().as_os_str(),
                ];
                peak = crate::child_peak_mib(args).await?;
            }
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
                filter: Filter::all(),
            };
            catch_up(store.clone(), model.clone(), projection, last, count).await?;
            drop(model);
            store.close().await?;
            crate::peak_kib()
        }
        other => anyhow::bail!("unknown memory child step {other:?}"),
    }
}
