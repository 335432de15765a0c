//! Copying a store (issue 12 §5): `annals import` of an export file into a new sled store, and
//! `annals migrate` of a sled store to PostgreSQL — the CLI's own code, run in-process — each
//! against a raw bulk insert of the same events into the same backend, in the same run.
//!
//! Both are judged by their rate: at least 100,000 events/s. The ratio to the raw bulk insert
//! is shown for information: the copy also parses and checks its input (the whole export file
//! twice; every stream compared after a migration), which the raw insert does not.

use std::ffi::OsString;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Instant;

use annals::{EventData, EventStore, ExpectedVersion, ReadAll, RecordedEvent, StreamId};
use annals_sled::Durability;
use futures::TryStreamExt;

use crate::payload::event;
use crate::pg_scenarios::RawColumns;
use crate::sled_scenarios::{open_raw, open_store};
use crate::{alternate, rate, Line, Scenario, Settings};

type Run<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Line>> + Send + 'a>>;

/// The rate both copies must reach.
const FLOOR: f64 = 100_000.0;

/// The streams the copied events are spread over, interleaved.
const STREAMS: u64 = 1_000;

/// The copy scenarios, in report order.
pub fn scenarios() -> Vec<Box<dyn Scenario>> {
    vec![Box::new(ImportSled), Box::new(MigrateSledToPg)]
}

fn count(s: &Settings) -> u64 {
    s.pick(30_000, 300_000)
}

/// Runs the `annals` CLI in-process on a thread of its own (it starts its own runtime).
fn annals(args: Vec<OsString>) -> anyhow::Result<()> {
    let code = std::thread::spawn(move || {
        let mut all = vec![OsString::from("annals")];
        all.extend(args);
        annals_cli::App::new().run_from(all)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the CLI panicked"))?;
    anyhow::ensure!(code == ExitCode::SUCCESS, "the CLI failed: {code:?}");
    Ok(())
}

/// A source sled store of `count` events over [`STREAMS`] streams, interleaved, and its log.
async fn source(dir: &Path, count: u64) -> anyhow::Result<Vec<RecordedEvent>> {
    let store = open_store(dir, Durability::Buffered).await?;
    let per_stream = count / STREAMS;
    const CHUNK: u64 = 10;
    let mut version = 0;
    while version < per_stream {
        for s in 0..STREAMS {
            let stream = StreamId::new(format!("copy-{s}"))?;
            let events = (version..version + CHUNK)
                .map(|v| event(s * per_stream + v))
                .collect();
            store
                .append(&stream, ExpectedVersion::exact(version), events)
                .await?;
        }
        version += CHUNK;
    }
    let log: Vec<RecordedEvent> = store.read_all(ReadAll::all()).try_collect().await?;
    store.close().await?;
    Ok(log)
}

fn sled_url(path: &Path) -> String {
    format!("sled:{}", path.display())
}

/// Raw sled: every event's payload under its position, in batches of 5,000 with a flush each.
fn raw_sled_bulk(dir: &Path, log: &[RecordedEvent]) -> anyhow::Result<f64> {
    let db = open_raw(dir)?;
    let started = Instant::now();
    for chunk in log.chunks(5_000) {
        let mut batch = sled::Batch::default();
        for e in chunk {
            batch.insert(&e.position.commit().to_be_bytes(), e.payload.as_ref());
        }
        db.apply_batch(batch)?;
        db.flush()?;
    }
    Ok(rate(u64::try_from(log.len())?, started.elapsed()))
}

/// `annals import` of an export of [`count`] events into a new sled store.
#[derive(Debug)]
struct ImportSled;

impl Scenario for ImportSled {
    fn name(&self, s: &Settings) -> String {
        s.pick("copy.import.sled (quick)", "copy.import.sled")
            .to_owned()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            let n = count(s);
            let work = tempfile::tempdir()?;
            let log = source(&work.path().join("source"), n).await?;
            let file = work.path().join("export.jsonl");
            let source_url = sled_url(&work.path().join("source").join("annals"));
            annals(vec![
                "--store".into(),
                source_url.into(),
                "export".into(),
                file.clone().into(),
            ])?;
            let medians = alternate(
                s.rounds,
                |round| {
                    let file = file.clone();
                    let target = work.path().join(format!("import-{round}"));
                    async move {
                        let started = Instant::now();
                        tokio::task::block_in_place(|| {
                            annals(vec![
                                "--store".into(),
                                sled_url(&target).into(),
                                "import".into(),
                                file.into(),
                            ])
                        })?;
                        Ok(rate(n, started.elapsed()))
                    }
                },
                |round| {
                    let dir = work.path().join(format!("raw-{round}"));
                    let log = &log;
                    async move { tokio::task::block_in_place(|| raw_sled_bulk(&dir, log)) }
                },
            )
            .await?;
            Ok(Line::with_floor(
                self.name(s),
                "events/s",
                medians,
                FLOOR,
                s.rounds,
            ))
        })
    }
}

/// `annals migrate` of a sled store of [`count`] events to a fresh PostgreSQL schema.
#[derive(Debug)]
struct MigrateSledToPg;

const RAW_BULK: &str = "INSERT INTO __S__.events (stream_id, version, event_id, event_type, \
    schema_version, content_type, payload, correlation_id, causation_id, event_timestamp, headers, \
    recorded_at) \
    SELECT u.s, u.v, u.id, u.t, u.sv, u.ct, u.p, u.co, u.ca, now(), u.h, now() \
    FROM unnest($1::text[], $2::int8[], $3::uuid[], $4::text[], $5::int4[], $6::text[], \
      $7::bytea[], $8::uuid[], $9::uuid[], $10::jsonb[]) AS u(s, v, id, t, sv, ct, p, co, ca, h)";

/// Raw PostgreSQL: the same events in multi-row inserts of 5,000, one transaction each.
async fn raw_pg_bulk(
    server: &annals_testkit::postgres::PgServer,
    log: &[RecordedEvent],
) -> anyhow::Result<f64> {
    let schema = crate::pg_scenarios::fresh_raw(server).await?;
    let client = crate::pg_scenarios::raw_client(server).await?;
    let statement = client
        .prepare(&RAW_BULK.replace("__S__", &format!("\"{schema}\"")))
        .await?;
    // Made before the clock starts, as the raw rows a hand-written bulk copy would send.
    let data: Vec<EventData> = log.iter().map(RecordedEvent::to_event_data).collect();
    let started = Instant::now();
    for (chunk, events) in log.chunks(5_000).zip(data.chunks(5_000)) {
        let streams: Vec<&str> = chunk.iter().map(|e| e.stream_id.as_str()).collect();
        let versions: Vec<i64> = chunk
            .iter()
            .map(|e| i64::try_from(e.version.get()))
            .collect::<Result<_, _>>()?;
        let c = RawColumns::of(events);
        client
            .execute(
                &statement,
                &[
                    &streams,
                    &versions,
                    &c.ids,
                    &c.types,
                    &c.schema_versions,
                    &c.content_types,
                    &c.payloads,
                    &c.correlations,
                    &c.causations,
                    &c.headers,
                ],
            )
            .await?;
    }
    let elapsed = started.elapsed();
    crate::pg_scenarios::drop_schema(server, &schema).await?;
    Ok(rate(u64::try_from(log.len())?, elapsed))
}

impl Scenario for MigrateSledToPg {
    fn name(&self, s: &Settings) -> String {
        s.pick("copy.migrate.sled_to_pg (quick)", "copy.migrate.sled_to_pg")
            .to_owned()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            let n = count(s);
            let server = crate::pg_scenarios::server()?;
            let work = tempfile::tempdir()?;
            let log = source(&work.path().join("source"), n).await?;
            let source_url = sled_url(&work.path().join("source").join("annals"));
            let medians = alternate(
                s.rounds,
                |_| {
                    let server = server.clone();
                    let source_url = source_url.clone();
                    async move {
                        let schema = crate::pg_scenarios::fresh_schema("migrated");
                        let target = format!(
                            "postgres://postgres@127.0.0.1:{}/postgres?schema={schema}",
                            server.port()
                        );
                        let started = Instant::now();
                        tokio::task::block_in_place(|| {
                            annals(vec![
                                "--store".into(),
                                source_url.into(),
                                "migrate".into(),
                                "--to".into(),
                                target.into(),
                            ])
                        })?;
                        let elapsed = started.elapsed();
                        crate::pg_scenarios::drop_schema(&server, &schema).await?;
                        Ok(rate(n, elapsed))
                    }
                },
                |_| {
                    let server = server.clone();
                    let log = &log;
                    async move { raw_pg_bulk(&server, log).await }
                },
            )
            .await?;
            Ok(Line::with_floor(
                self.name(s),
                "events/s",
                medians,
                FLOOR,
                s.rounds,
            ))
        })
    }
}
