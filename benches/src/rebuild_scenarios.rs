//! The rebuild jobs' scenarios (issue 16) and their raw baselines.
//!
//! - `rebuild.sled`: 1,000,000 events (quick: 100,000) over 10,000 streams rebuilt into a new
//!   generation of a [`SledModel`] (a big-endian `u64` counter per stream), swap included; the
//!   raw loop reads the same log in pages of 10,000 and writes each page's counters with plain
//!   sled inserts and a checkpoint key.
//! - `rebuild.pg`: the same events into a new generation of a [`PgModel`] (its own schema, the
//!   table made by the projection's `setup`), one multi-row upsert per batch of 10,000, swap
//!   included; the raw loop reads the log in pages of 10,000, folds it in memory and `COPY`s the
//!   final rows into a table — the least work that ends with the same table.
//!
//! - `rebuild.pg.memory`: the peak resident set of a child process running that PostgreSQL
//!   rebuild of 1,000,000 events, against 256 MiB.
//!
//! The Annals side is timed by the rebuild's own report: from its start to the swap (readers
//! are on the new generation from then on; the old generation is dropped a second later).
//!
//! Both rates must reach 100,000 events/s, and ratios of 0.6 (sled) and 0.5 (PostgreSQL).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use annals::{BoxError, EventStore, Filter, Position, ReadAll, RecordedEvent};
use annals_projections::{PgModel, PgTx, Projection, ProjectionName, Rebuild, SledModel, SledTx};
use annals_sled::Durability;
use anyhow::Context as _;
use futures::{SinkExt, TryStreamExt};

use crate::pg_scenarios::{fresh_store, raw_client, server};
use crate::proj_scenarios::{fill, upsert_sql};
use crate::sled_scenarios::open_store;
use crate::{alternate, rate, Line, Scenario, Settings};

type Run<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Line>> + Send + 'a>>;

/// Events per page and per batch on both sides.
const PAGE: usize = 10_000;
/// The floor of both lines, in events/s.
const FLOOR: f64 = 100_000.0;

/// The rebuild scenarios, in report order.
pub fn scenarios() -> Vec<Box<dyn Scenario>> {
    vec![
        Box::new(SledRebuild),
        Box::new(PgRebuild),
        Box::new(PgRebuildMemory),
    ]
}

fn judged(name: String, medians: (f64, f64), target: f64, rounds: usize) -> Line {
    let mut line = Line::new(name, "events/s", medians, target, rounds);
    line.floor = Some(FLOOR);
    line
}

async fn page<S: EventStore>(store: &S, from: Position) -> anyhow::Result<Vec<RecordedEvent>> {
    Ok(store
        .read_all(ReadAll::from(from).limit(PAGE).filter(Filter::all()))
        .try_collect()
        .await?)
}

/// Rebuilding 1,000,000 events into a sled model's new generation against the raw loop.
#[derive(Debug)]
struct SledRebuild;

impl Scenario for SledRebuild {
    fn name(&self, s: &Settings) -> String {
        s.pick("rebuild.sled.100k (quick)", "rebuild.sled.1m")
            .into()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            let count: u64 = s.pick(100_000, 1_000_000);
            let dir = tempfile::tempdir()?;
            let store = open_store(dir.path(), Durability::Buffered).await?;
            fill(&store, count, 10, 10_000).await?;
            store.close().await?;
            drop(store);
            let store = open_store(dir.path(), Durability::Buffered).await?;
            let model = SledModel::open(&store).await?;
            let (store_ref, model_ref) = (&store, &model);
            let medians = alternate(
                s.rounds,
                |round| async move {
                    let projection = SledRebuilt {
                        name: ProjectionName::new(format!("rebuilt-{round}"))?,
                        tree: format!("rebuilt-{round}"),
                    };
                    let report = Rebuild::new(store_ref.clone(), model_ref.clone(), projection)
                        .batch_size(PAGE)
                        .run()
                        .await?;
                    let elapsed = report.elapsed;
                    let counted: u64 = model_ref
                        .tree(&format!("rebuilt-{round}"))?
                        .iter()
                        .values()
                        .map(|v| Ok(u64::from_be_bytes(v?.as_ref().try_into()?)))
                        .sum::<anyhow::Result<u64>>()?;
                    anyhow::ensure!(counted == count, "counted {counted} of {count}");
                    anyhow::ensure!(report.generation == 2, "generation {}", report.generation);
                    Ok(rate(count, elapsed))
                },
                |round| async move {
                    let started = Instant::now();
                    let tree = store_ref.open_tree(&format!("raw/rebuilt-{round}"))?;
                    let checkpoints = store_ref.open_tree("raw/checkpoints")?;
                    let mut from = Position::START;
                    let mut read = 0u64;
                    loop {
                        let events = page(store_ref, from).await?;
                        let Some(last) = events.last().map(|e| e.position) else {
                            break;
                        };
                        let mut counts: HashMap<&str, u64> = HashMap::new();
                        for e in &events {
                            *counts.entry(e.stream_id.as_str()).or_default() += 1;
                        }
                        for (stream, n) in counts {
                            let before = match tree.get(stream)? {
                                Some(v) => u64::from_be_bytes(v.as_ref().try_into()?),
                                None => 0,
                            };
                            tree.insert(stream, &(before + n).to_be_bytes())?;
                        }
                        checkpoints.insert(format!("raw-{round}"), &last.commit().to_be_bytes())?;
                        read += u64::try_from(events.len())?;
                        from = last.next();
                    }
                    store_ref.flush().await?;
                    anyhow::ensure!(read == count, "read {read} of {count}");
                    Ok(rate(count, started.elapsed()))
                },
            )
            .await?;
            drop(model);
            store.close().await?;
            Ok(judged(self.name(s), medians, 0.6, s.rounds))
        })
    }
}

/// The sled projection: per-stream counts, summed per batch, then each stream's counter read
/// and written once (as the raw loop does per page).
struct SledRebuilt {
    name: ProjectionName,
    tree: String,
}

impl Projection<SledModel> for SledRebuilt {
    fn name(&self) -> &ProjectionName {
        &self.name
    }

    async fn handle(&self, tx: &mut SledTx, events: &[RecordedEvent]) -> Result<(), BoxError> {
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for e in events {
            *counts.entry(e.stream_id.as_str()).or_default() += 1;
        }
        for (stream, n) in counts {
            let before = match tx.get(&self.tree, stream)? {
                Some(v) => u64::from_be_bytes(v.as_slice().try_into()?),
                None => 0,
            };
            tx.insert(&self.tree, stream, (before + n).to_be_bytes())?;
        }
        Ok(())
    }
}

/// The PostgreSQL projection: per-stream counts, its table made by `setup` in the
/// generation's schema, one multi-row upsert per batch.
struct PgRebuilt {
    name: ProjectionName,
}

impl Projection<PgModel> for PgRebuilt {
    fn name(&self) -> &ProjectionName {
        &self.name
    }

    async fn setup(&self, tx: &mut PgTx) -> Result<(), BoxError> {
        tx.client()
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS counts (stream text PRIMARY KEY, n bigint NOT NULL)",
            )
            .await?;
        Ok(())
    }

    async fn handle(&self, tx: &mut PgTx, events: &[RecordedEvent]) -> Result<(), BoxError> {
        let mut order: Vec<&str> = Vec::new();
        let mut counts: HashMap<&str, i64> = HashMap::new();
        for e in events {
            let n = counts.entry(e.stream_id.as_str()).or_insert_with(|| {
                order.push(e.stream_id.as_str());
                0
            });
            *n += 1;
        }
        let ns: Vec<i64> = order.iter().map(|k| counts[k]).collect();
        tx.client()
            .execute(upsert_sql("counts").as_str(), &[&order, &ns])
            .await?;
        Ok(())
    }
}

/// Rebuilding 1,000,000 events into a PostgreSQL model's new generation against the raw loop.
#[derive(Debug)]
struct PgRebuild;

impl Scenario for PgRebuild {
    fn name(&self, s: &Settings) -> String {
        s.pick("rebuild.pg.100k (quick)", "rebuild.pg.1m").into()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            let count: u64 = s.pick(100_000, 1_000_000);
            let server = server()?;
            let store = fresh_store(&server, 4).await?;
            fill(&store, count, 10, 10_000).await?;
            let schema = store.schema().to_owned();
            let model = PgModel::new(&store);
            model.init().await?;
            let client = raw_client(&server).await?;
            client
                .batch_execute(&format!("ANALYZE \"{schema}\".events"))
                .await?;
            let (store_ref, model_ref, client_ref, schema_ref) = (&store, &model, &client, &schema);
            let medians = alternate(
                s.rounds,
                |round| async move {
                    let name = ProjectionName::new(format!("rebuilt-{round}"))?;
                    let report = Rebuild::new(
                        store_ref.clone(),
                        model_ref.clone(),
                        PgRebuilt { name: name.clone() },
                    )
                    .batch_size(PAGE)
                    .run()
                    .await?;
                    let elapsed = report.elapsed;
                    let live = model_ref.schema_of(&name).await?;
                    let row = client_ref
                        .query_one(
                            &format!("SELECT sum(n)::bigint FROM \"{live}\".counts"),
                            &[],
                        )
                        .await?;
                    let counted: i64 = row.try_get(0)?;
                    anyhow::ensure!(
                        u64::try_from(counted)? == count,
                        "counted {counted} of {count}"
                    );
                    Ok(rate(count, elapsed))
                },
                |round| async move {
                    let started = Instant::now();
                    let mut from = Position::START;
                    let mut counts: HashMap<String, i64> = HashMap::new();
                    loop {
                        let events = page(store_ref, from).await?;
                        let Some(last) = events.last().map(|e| e.position) else {
                            break;
                        };
                        for e in &events {
                            *counts.entry(e.stream_id.to_string()).or_default() += 1;
                        }
                        from = last.next();
                    }
                    let table = format!("\"{schema_ref}\".raw_rebuilt_{round}");
                    client_ref
                        .batch_execute(&format!(
                            "CREATE TABLE {table} (stream text PRIMARY KEY, n bigint NOT NULL)"
                        ))
                        .await?;
                    let sink = client_ref
                        .copy_in(&format!("COPY {table} (stream, n) FROM STDIN"))
                        .await?;
                    let mut text = String::with_capacity(counts.len() * 24);
                    for (stream, n) in &counts {
                        text.push_str(stream);
                        text.push('\t');
                        text.push_str(&n.to_string());
                        text.push('\n');
                    }
                    futures::pin_mut!(sink);
                    sink.send(bytes::Bytes::from(text)).await?;
                    let copied = sink.finish().await?;
                    anyhow::ensure!(copied == u64::try_from(counts.len())?, "copied {copied}");
                    let total: i64 = counts.values().sum();
                    anyhow::ensure!(u64::try_from(total)? == count, "folded {total} of {count}");
                    Ok(rate(count, started.elapsed()))
                },
            )
            .await
            .context("rebuild.pg")?;
            Ok(judged(self.name(s), medians, 0.5, s.rounds))
        })
    }
}

/// The peak resident set of a rebuild of 1,000,000 events (quick: 100,000) into a PostgreSQL
/// model, in a child process, against [`MEMORY_BUDGET_MIB`](crate::proj_scenarios::MEMORY_BUDGET_MIB).
#[derive(Debug)]
struct PgRebuildMemory;

impl Scenario for PgRebuildMemory {
    fn name(&self, s: &Settings) -> String {
        s.pick("rebuild.pg.memory.100k (quick)", "rebuild.pg.memory.1m")
            .into()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            let count: u64 = s.pick(100_000, 1_000_000);
            let server = server()?;
            let store = fresh_store(&server, 4).await?;
            fill(&store, count, 10, 10_000).await?;
            PgModel::new(&store).init().await?;
            let schema = store.schema().to_owned();
            let count_text = count.to_string();
            let connection = server.connection_string();
            let peak = crate::child_peak_mib([
                "--rebuild-memory-child",
                connection.as_str(),
                schema.as_str(),
                count_text.as_str(),
            ])
            .await?;
            let budget = crate::proj_scenarios::MEMORY_BUDGET_MIB;
            Ok(Line {
                scenario: self.name(s),
                unit: "MiB",
                annals: peak,
                baseline: budget,
                ratio: budget / peak,
                target: 1.0,
                floor: None,
                rounds: 1,
            })
        })
    }
}

/// The memory child: rebuilds the per-stream counts of the store in `schema` into a new
/// generation and returns the process's peak resident set (VmHWM) in KiB.
///
/// # Errors
///
/// Store or rebuild failures, a wrong count, or a `/proc/self/status` without `VmHWM`.
pub async fn memory_child(connection: &str, schema: &str, count: u64) -> anyhow::Result<u64> {
    let store = annals_postgres::PgEventStore::builder()
        .connection_string(connection)
        .schema(schema)
        .pool_size(4)
        .open()
        .await?;
    let model = PgModel::new(&store);
    let name = ProjectionName::new("rebuilt-memory")?;
    Rebuild::new(
        store.clone(),
        model.clone(),
        PgRebuilt { name: name.clone() },
    )
    .batch_size(PAGE)
    .run()
    .await?;
    let live = model.schema_of(&name).await?;
    let client = store.pool().get().await?;
    let row = client
        .query_one(
            &format!("SELECT sum(n)::bigint FROM \"{live}\".counts"),
            &[],
        )
        .await?;
    let counted: i64 = row.try_get(0)?;
    anyhow::ensure!(
        u64::try_from(counted)? == count,
        "counted {counted} of {count}"
    );
    drop(client);
    store.close().await?;
    crate::peak_kib()
}
