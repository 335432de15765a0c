//! The PostgreSQL store's scenarios (issue 5) and their raw `tokio-postgres` baselines.
//!
//! One throwaway server ([`PgServer::start`], on `127.0.0.1`) serves every PostgreSQL scenario
//! of a report run: [`server`] starts it the first time a scenario asks, [`stop_server`] stops
//! it at the end of the run. Every append round writes into a fresh schema on both sides (the
//! Annals store's own schema, and a raw schema holding [`RAW_DDL`]), dropped after the round.
//!
//! The raw table is the plain event table a user would write by hand: the same columns as the
//! store's `events` table minus `transaction_id` (the store's never-skip ordering column), a
//! `bigserial` primary key, and the same two unique keys, `(stream_id, version)` and
//! `event_id`. The raw inserts know their versions (no expected-version check) and send the
//! same values the store sends, as prepared statements, one transaction per insert.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use annals::{EventData, EventStore, ExpectedVersion, Position, ReadAll, ReadStream, StreamId};
use annals_postgres::PgEventStore;
use annals_testkit::postgres::PgServer;
use anyhow::Context as _;
use futures::TryStreamExt;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

use crate::payload::batch;
use crate::{alternate, rate, Line, Scenario, Settings};

type Run<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Line>> + Send + 'a>>;

/// The report's server, started by the first PostgreSQL scenario.
static SERVER: Mutex<Option<Arc<PgServer>>> = Mutex::new(None);

/// The PostgreSQL scenarios, in report order.
pub fn scenarios() -> Vec<Box<dyn Scenario>> {
    vec![
        Box::new(Single1),
        Box::new(Single8),
        Box::new(Batch100),
        Box::new(ReadAllPaged),
        Box::new(Load10k),
    ]
}

/// The report's PostgreSQL server, started on first use (`initdb` and `pg_ctl start`, a few
/// seconds).
///
/// # Errors
///
/// When the server cannot start (no PostgreSQL binaries, see `annals_testkit::postgres`).
pub fn server() -> anyhow::Result<Arc<PgServer>> {
    let mut slot = SERVER
        .lock()
        .map_err(|_| anyhow::anyhow!("server lock poisoned"))?;
    if let Some(server) = slot.as_ref() {
        return Ok(server.clone());
    }
    let started = tokio::task::block_in_place(PgServer::start)
        .context("starting the benchmark PostgreSQL server")?;
    let server = Arc::new(started);
    *slot = Some(server.clone());
    Ok(server)
}

/// Stops the report's server, if one was started (call outside the runtime: stopping waits for
/// `pg_ctl`).
pub fn stop_server() {
    let server = SERVER.lock().ok().and_then(|mut slot| slot.take());
    drop(server);
}

/// A schema name no other round of this run uses.
pub fn fresh_schema(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}_{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A fresh Annals store (its own schema, initialised) with a pool of `pool` connections, all
/// of them open: the pool opens connections on first use, and the raw side connects before its
/// timings too.
///
/// # Errors
///
/// Connection or `init` failures.
pub async fn fresh_store(server: &PgServer, pool: usize) -> anyhow::Result<PgEventStore> {
    let store = PgEventStore::builder()
        .connection_string(server.connection_string())
        .schema(fresh_schema("annals"))
        .pool_size(pool)
        .open()
        .await?;
    store.init().await?;
    let open = futures::future::try_join_all((0..pool).map(|_| store.pool().get())).await?;
    drop(open);
    Ok(store)
}

/// A raw `tokio-postgres` connection.
///
/// # Errors
///
/// Connection failures.
pub async fn raw_client(server: &PgServer) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(&server.connection_string(), NoTls).await?;
    tokio::spawn(async move {
        // Ends when the client is dropped.
        let _ = connection.await;
    });
    Ok(client)
}

/// Drops a schema and everything in it (between rounds, outside the timings).
///
/// # Errors
///
/// Statement failures.
pub async fn drop_schema(server: &PgServer, schema: &str) -> anyhow::Result<()> {
    let client = raw_client(server).await?;
    client
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await?;
    Ok(())
}

/// The raw baseline's table; `__S__` is the schema.
pub const RAW_DDL: &str = "CREATE SCHEMA __S__;
CREATE TABLE __S__.events (
    seq             bigserial   PRIMARY KEY,
    stream_id       text        NOT NULL,
    version         bigint      NOT NULL CHECK (version >= 1),
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    content_type    text        NOT NULL,
    payload         bytea       NOT NULL,
    correlation_id  uuid,
    causation_id    uuid,
    event_timestamp timestamptz NOT NULL,
    headers         jsonb       NOT NULL DEFAULT '{}',
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream_id, version),
    UNIQUE (event_id)
)";

const RAW_INSERT: &str = "INSERT INTO __S__.events (stream_id, version, event_id, event_type, \
    schema_version, content_type, payload, correlation_id, causation_id, event_timestamp, headers) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now(), $10)";

const RAW_BATCH: &str = "INSERT INTO __S__.events (stream_id, version, event_id, event_type, \
    schema_version, content_type, payload, correlation_id, causation_id, event_timestamp, headers) \
    SELECT $1, u.v, u.id, u.t, u.sv, u.ct, u.p, u.co, u.ca, now(), u.h \
    FROM unnest($2::int8[], $3::uuid[], $4::text[], $5::int4[], $6::text[], $7::bytea[], \
      $8::uuid[], $9::uuid[], $10::jsonb[]) AS u(v, id, t, sv, ct, p, co, ca, h)";

const RAW_PAGE: &str = "SELECT seq, stream_id, version, event_id, event_type, schema_version, \
    content_type, payload, correlation_id, causation_id, event_timestamp, headers, recorded_at \
    FROM __S__.events WHERE seq > $1 ORDER BY seq LIMIT $2";

const RAW_STREAM_PAGE: &str = "SELECT seq, stream_id, version, event_id, event_type, \
    schema_version, content_type, payload, correlation_id, causation_id, event_timestamp, headers, \
    recorded_at FROM __S__.events WHERE stream_id = $1 AND version > $2 ORDER BY version LIMIT $3";

fn sql(template: &str, schema: &str) -> String {
    template.replace("__S__", &format!("\"{schema}\""))
}

/// A fresh raw schema with the baseline's table.
///
/// # Errors
///
/// Statement failures.
pub async fn fresh_raw(server: &PgServer) -> anyhow::Result<String> {
    let schema = fresh_schema("raw");
    let client = raw_client(server).await?;
    client.batch_execute(&sql(RAW_DDL, &schema)).await?;
    Ok(schema)
}

fn headers_json(e: &EventData) -> serde_json::Value {
    serde_json::Value::Object(
        e.metadata
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    )
}

/// Raw single-row inserts of `events` to `stream` at versions `first..`, one transaction each,
/// through one prepared statement.
///
/// # Errors
///
/// Statement failures.
pub async fn raw_singles(
    client: &Client,
    schema: &str,
    stream: &str,
    first: i64,
    events: &[EventData],
) -> anyhow::Result<()> {
    let statement = client.prepare(&sql(RAW_INSERT, schema)).await?;
    for (version, e) in (first..).zip(events) {
        let schema_version = i32::from(e.schema_version);
        let headers = headers_json(e);
        let params: [&(dyn ToSql + Sync); 10] = [
            &stream,
            &version,
            e.id.as_uuid(),
            &e.event_type,
            &schema_version,
            &e.content_type,
            &e.payload.as_ref(),
            &e.metadata.correlation_id,
            &e.metadata.causation_id,
            &headers,
        ];
        client.execute(&statement, &params).await?;
    }
    Ok(())
}

/// The columns of `events` as the arrays a raw multi-row insert sends.
#[derive(Debug)]
pub struct RawColumns<'a> {
    /// Event ids.
    pub ids: Vec<Uuid>,
    /// Event types.
    pub types: Vec<&'a str>,
    /// Schema versions.
    pub schema_versions: Vec<i32>,
    /// Content types.
    pub content_types: Vec<&'a str>,
    /// Payloads.
    pub payloads: Vec<&'a [u8]>,
    /// Correlation ids.
    pub correlations: Vec<Option<Uuid>>,
    /// Causation ids.
    pub causations: Vec<Option<Uuid>>,
    /// Headers as JSON objects.
    pub headers: Vec<serde_json::Value>,
}

impl<'a> RawColumns<'a> {
    /// The columns of `events`.
    pub fn of(events: &'a [EventData]) -> Self {
        RawColumns {
            ids: events.iter().map(|e| *e.id.as_uuid()).collect(),
            types: events.iter().map(|e| e.event_type.as_str()).collect(),
            schema_versions: events.iter().map(|e| i32::from(e.schema_version)).collect(),
            content_types: events.iter().map(|e| e.content_type.as_str()).collect(),
            payloads: events.iter().map(|e| e.payload.as_ref()).collect(),
            correlations: events.iter().map(|e| e.metadata.correlation_id).collect(),
            causations: events.iter().map(|e| e.metadata.causation_id).collect(),
            headers: events.iter().map(headers_json).collect(),
        }
    }
}

/// One raw multi-row insert of `events` to `stream` at versions `first..` (one transaction).
///
/// # Errors
///
/// Statement failures.
pub async fn raw_batch(
    client: &Client,
    statement: &tokio_postgres::Statement,
    stream: &str,
    first: i64,
    events: &[EventData],
) -> anyhow::Result<()> {
    let versions: Vec<i64> = (first..).take(events.len()).collect();
    let c = RawColumns::of(events);
    client
        .execute(
            statement,
            &[
                &stream,
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
    Ok(())
}

fn stream(name: String) -> anyhow::Result<StreamId> {
    Ok(StreamId::new(name)?)
}

fn line(scenario: String, medians: (f64, f64), target: f64, rounds: usize) -> Line {
    Line::new(scenario, "events/s", medians, target, rounds)
}

/// `tasks` concurrent appenders, each appending `per_task` single events to its own stream
/// with `Exact` versions, on a fresh store with a pool of `tasks` connections: events/s.
async fn store_singles(server: &PgServer, tasks: u64, per_task: u64) -> anyhow::Result<f64> {
    let store = fresh_store(server, usize::try_from(tasks)?).await?;
    let events: Vec<Vec<EventData>> = (0..tasks).map(|t| batch(t * per_task, per_task)).collect();
    let started = Instant::now();
    let mut handles = Vec::new();
    for (t, events) in events.into_iter().enumerate() {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let id = stream(format!("bench-{t}"))?;
            for (v, e) in events.into_iter().enumerate() {
                store
                    .append(&id, ExpectedVersion::exact(v as u64), vec![e])
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let measured = rate(tasks * per_task, started.elapsed());
    let schema = store.schema().to_owned();
    drop(store);
    drop_schema(server, &schema).await?;
    Ok(measured)
}

/// The raw side of [`store_singles`]: `tasks` connections, single-row insert transactions.
async fn raw_singles_round(server: &PgServer, tasks: u64, per_task: u64) -> anyhow::Result<f64> {
    let schema = fresh_raw(server).await?;
    let mut clients = Vec::new();
    for _ in 0..tasks {
        clients.push(raw_client(server).await?);
    }
    let events: Vec<Vec<EventData>> = (0..tasks).map(|t| batch(t * per_task, per_task)).collect();
    let started = Instant::now();
    let mut handles = Vec::new();
    for (t, (client, events)) in clients.into_iter().zip(events).enumerate() {
        let schema = schema.clone();
        handles.push(tokio::spawn(async move {
            raw_singles(&client, &schema, &format!("bench-{t}"), 1, &events).await
        }));
    }
    for h in handles {
        h.await??;
    }
    let measured = rate(tasks * per_task, started.elapsed());
    drop_schema(server, &schema).await?;
    Ok(measured)
}

/// Single-event appends from one task on a one-connection store, against raw single-row insert
/// transactions on one connection.
#[derive(Debug)]
struct Single1;

impl Scenario for Single1 {
    fn name(&self, s: &Settings) -> String {
        s.pick("pg.append.single.1conn (quick)", "pg.append.single.1conn")
            .into()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            let server = server()?;
            let count: u64 = s.pick(1_000, 5_000);
            let medians = alternate(
                s.rounds,
                |_| store_singles(&server, 1, count),
                |_| raw_singles_round(&server, 1, count),
            )
            .await?;
            Ok(line(self.name(s), medians, 0.80, s.rounds))
        })
    }
}

/// Single-event appends from 8 tasks to 8 streams on an 8-connection store, against raw
/// single-row insert transactions on 8 connections.
#[derive(Debug)]
struct Single8;

impl Scenario for Single8 {
    fn name(&self, s: &Settings) -> String {
        s.pick("pg.append.single.8conn (quick)", "pg.append.single.8conn")
            .into()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            let server = server()?;
            let per_task: u64 = s.pick(250, 1_500);
            let medians = alternate(
                s.rounds,
                |_| store_singles(&server, 8, per_task),
                |_| raw_singles_round(&server, 8, per_task),
            )
            .await?;
            Ok(line(self.name(s), medians, 0.80, s.rounds))
        })
    }
}

/// 100-event appends to one stream with `Exact` versions, against a raw 100-row multi-row
/// insert (`INSERT … SELECT … FROM unnest(…)`), one connection each.
#[derive(Debug)]
struct Batch100;

impl Scenario for Batch100 {
    fn name(&self, s: &Settings) -> String {
        s.pick("pg.append.batch100 (quick)", "pg.append.batch100")
            .into()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            const BATCH: u64 = 100;
            let server = server()?;
            let batches: u64 = s.pick(50, 200);
            let server = &server;
            let medians = alternate(
                s.rounds,
                |_| async move {
                    let store = fresh_store(server, 1).await?;
                    let id = stream("bench-batch".into())?;
                    let all: Vec<Vec<EventData>> =
                        (0..batches).map(|b| batch(b * BATCH, BATCH)).collect();
                    let started = Instant::now();
                    for (b, events) in all.into_iter().enumerate() {
                        store
                            .append(&id, ExpectedVersion::exact(b as u64 * BATCH), events)
                            .await?;
                    }
                    let measured = rate(batches * BATCH, started.elapsed());
                    let schema = store.schema().to_owned();
                    drop(store);
                    drop_schema(server, &schema).await?;
                    Ok(measured)
                },
                |_| async move {
                    let schema = fresh_raw(server).await?;
                    let client = raw_client(server).await?;
                    let statement = client.prepare(&sql(RAW_BATCH, &schema)).await?;
                    let all: Vec<Vec<EventData>> =
                        (0..batches).map(|b| batch(b * BATCH, BATCH)).collect();
                    let started = Instant::now();
                    for (b, events) in (0i64..).zip(&all) {
                        let first = b * i64::try_from(BATCH)? + 1;
                        raw_batch(&client, &statement, "bench-batch", first, events).await?;
                    }
                    let measured = rate(batches * BATCH, started.elapsed());
                    drop_schema(server, &schema).await?;
                    Ok(measured)
                },
            )
            .await?;
            Ok(line(self.name(s), medians, 0.60, s.rounds))
        })
    }
}

/// One row of the raw page, decoded into owned values as the store decodes its rows.
type RawRow = (
    i64,
    String,
    i64,
    Uuid,
    String,
    i32,
    String,
    Vec<u8>,
    Option<Uuid>,
    Option<Uuid>,
    SystemTime,
    serde_json::Value,
    SystemTime,
);

/// Decodes every column of `rows` into owned values, as the store decodes its rows.
fn decode_raw(rows: &[tokio_postgres::Row]) -> anyhow::Result<Vec<RawRow>> {
    let mut decoded: Vec<RawRow> = Vec::with_capacity(rows.len());
    for row in rows {
        decoded.push((
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
            row.try_get(4)?,
            row.try_get(5)?,
            row.try_get(6)?,
            row.try_get(7)?,
            row.try_get(8)?,
            row.try_get(9)?,
            row.try_get(10)?,
            row.try_get(11)?,
            row.try_get(12)?,
        ));
    }
    Ok(decoded)
}

/// Reading the whole global log from position zero in pages of 1,000 (`read_all` with a
/// limit, then from the next position), against raw keyset paging (`WHERE seq > $1 ORDER BY
/// seq LIMIT 1000`) decoding the same columns into owned values.
#[derive(Debug)]
struct ReadAllPaged;

impl Scenario for ReadAllPaged {
    fn name(&self, s: &Settings) -> String {
        s.pick("pg.read_all.paged.20k (quick)", "pg.read_all.paged.100k")
            .into()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            const PAGE: u64 = 1_000;
            const BATCH: u64 = 100;
            let server = server()?;
            let total: u64 = s.pick(20_000, 100_000);
            // The same events on both sides: batches of 100 over 10 streams.
            let store = fresh_store(&server, 2).await?;
            let raw_schema = fresh_raw(&server).await?;
            let client = raw_client(&server).await?;
            let insert = client.prepare(&sql(RAW_BATCH, &raw_schema)).await?;
            for b in 0..total / BATCH {
                let events = batch(b * BATCH, BATCH);
                let name = format!("bench-{}", b % 10);
                let first = i64::try_from(b / 10 * BATCH + 1)?;
                raw_batch(&client, &insert, &name, first, &events).await?;
                store
                    .append(&stream(name)?, ExpectedVersion::Any, events)
                    .await?;
            }
            client
                .batch_execute(&format!("ANALYZE \"{raw_schema}\".events"))
                .await?;
            client
                .batch_execute(&format!("ANALYZE \"{}\".events", store.schema()))
                .await?;
            let page = client.prepare(&sql(RAW_PAGE, &raw_schema)).await?;
            let (store_ref, client, page) = (&store, &client, &page);
            let medians = alternate(
                s.rounds,
                |_| async move {
                    let started = Instant::now();
                    let mut from = Position::START;
                    let mut read = 0u64;
                    loop {
                        let events: Vec<_> = store_ref
                            .read_all(ReadAll::from(from).limit(usize::try_from(PAGE)?))
                            .try_collect()
                            .await?;
                        let Some(last) = events.last() else { break };
                        from = last.position.next();
                        read += events.len() as u64;
                    }
                    anyhow::ensure!(read == total, "read {read} of {total} events");
                    Ok(rate(read, started.elapsed()))
                },
                |_| async move {
                    let started = Instant::now();
                    let mut after = 0i64;
                    let mut read = 0u64;
                    loop {
                        let rows = client.query(page, &[&after, &i64::try_from(PAGE)?]).await?;
                        let decoded = decode_raw(&rows)?;
                        let Some(last) = decoded.last() else { break };
                        after = last.0;
                        read += decoded.len() as u64;
                    }
                    anyhow::ensure!(read == total, "read {read} of {total} rows");
                    Ok(rate(read, started.elapsed()))
                },
            )
            .await?;
            let schema = store.schema().to_owned();
            drop(store);
            drop_schema(&server, &schema).await?;
            drop_schema(&server, &raw_schema).await?;
            Ok(line(self.name(s), medians, 0.50, s.rounds))
        })
    }
}

/// Loading a 10,000-event stream (`read_stream(ReadStream::forward())` to its end, 5 loads a
/// round, in the store's pages of 1,000), against raw keyset paging of the same rows
/// (`WHERE stream_id = $1 AND version > $2 ORDER BY version LIMIT 1000`) decoding every column
/// into owned values.
#[derive(Debug)]
struct Load10k;

impl Scenario for Load10k {
    fn name(&self, _: &Settings) -> String {
        "pg.load.10k".into()
    }

    fn run<'a>(&'a self, s: &'a Settings) -> Run<'a> {
        Box::pin(async move {
            const EVENTS: u64 = 10_000;
            const LOADS: u64 = 5;
            const PAGE: i64 = 1_000;
            const BATCH: u64 = 100;
            const NAME: &str = "bench-load";
            let server = server()?;
            let store = fresh_store(&server, 2).await?;
            let raw_schema = fresh_raw(&server).await?;
            let client = raw_client(&server).await?;
            let insert = client.prepare(&sql(RAW_BATCH, &raw_schema)).await?;
            let id = stream(NAME.into())?;
            for b in 0..EVENTS / BATCH {
                let events = batch(b * BATCH, BATCH);
                let first = i64::try_from(b * BATCH + 1)?;
                raw_batch(&client, &insert, NAME, first, &events).await?;
                store
                    .append(&id, ExpectedVersion::exact(b * BATCH), events)
                    .await?;
            }
            client
                .batch_execute(&format!("ANALYZE \"{raw_schema}\".events"))
                .await?;
            client
                .batch_execute(&format!("ANALYZE \"{}\".events", store.schema()))
                .await?;
            let page = client.prepare(&sql(RAW_STREAM_PAGE, &raw_schema)).await?;
            let (store_ref, client, page, id) = (&store, &client, &page, &id);
            let medians = alternate(
                s.rounds,
                |_| async move {
                    let started = Instant::now();
                    for _ in 0..LOADS {
                        let events: Vec<_> = store_ref
                            .read_stream(id, ReadStream::forward())
                            .try_collect()
                            .await?;
                        anyhow::ensure!(events.len() as u64 == EVENTS, "short load");
                    }
                    Ok(rate(EVENTS * LOADS, started.elapsed()))
                },
                |_| async move {
                    let started = Instant::now();
                    for _ in 0..LOADS {
                        let mut after = 0i64;
                        let mut out: Vec<RawRow> = Vec::new();
                        loop {
                            let rows = client.query(page, &[&NAME, &after, &PAGE]).await?;
                            let decoded = decode_raw(&rows)?;
                            let Some(last) = decoded.last() else { break };
                            after = last.2;
                            let full = i64::try_from(decoded.len())? == PAGE;
                            out.extend(decoded);
                            if !full {
                                break;
                            }
                        }
                        anyhow::ensure!(out.len() as u64 == EVENTS, "short raw load");
                    }
                    Ok(rate(EVENTS * LOADS, started.elapsed()))
                },
            )
            .await?;
            let schema = store.schema().to_owned();
            drop(store);
            drop_schema(&server, &schema).await?;
            drop_schema(&server, &raw_schema).await?;
            Ok(line(self.name(s), medians, 0.80, s.rounds))
        })
    }
}
