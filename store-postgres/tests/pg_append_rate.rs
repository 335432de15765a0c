//! Append and read rates of the store next to raw `tokio-postgres` doing the same inserts on
//! the same server in the same run. Ignored by default (a measurement, not a test; the
//! benchmark `report` binary holds the targets):
//!
//! ```text
//! cargo test --release -p annals-postgres --test pg_append_rate -- --ignored --nocapture
//! ```

mod support;

use std::time::{Duration, Instant};

use annals::{EventStore, ExpectedVersion, Position, ReadAll, StreamId};
use futures::TryStreamExt;
use support::{event, raw_client, server};
use tokio_postgres::types::ToSql;

const SINGLE: u64 = 2_000;
const CONCURRENT: u64 = 8;
const PER_CONNECTION: u64 = 500;
const BATCHES: u64 = 60;
const BATCH: u64 = 100;

/// The raw baseline's table: the same columns and unique keys as the store's, without the
/// transaction id.
const RAW_DDL: &str = "CREATE TABLE raw_events (
    seq bigserial PRIMARY KEY, stream_id text NOT NULL, version bigint NOT NULL,
    event_id uuid NOT NULL UNIQUE, event_type text NOT NULL, schema_version integer NOT NULL,
    content_type text NOT NULL, payload bytea NOT NULL, correlation_id uuid, causation_id uuid,
    event_timestamp timestamptz NOT NULL, headers jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(), UNIQUE (stream_id, version))";
const RAW_INSERT: &str = "INSERT INTO raw_events (stream_id, version, event_id, event_type,
    schema_version, content_type, payload, correlation_id, causation_id, event_timestamp, headers)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now(), $10)";
const RAW_BATCH: &str = "INSERT INTO raw_events (stream_id, version, event_id, event_type,
    schema_version, content_type, payload, correlation_id, causation_id, event_timestamp, headers)
    SELECT $1, v, id, t, 1, 'application/json', p, NULL, NULL, now(), h
    FROM unnest($2::bigint[], $3::uuid[], $4::text[], $5::bytea[], $6::jsonb[]) AS u(v, id, t, p, h)";
const RAW_PAGE: &str = "SELECT seq, stream_id, version, event_id, event_type, schema_version,
    content_type, payload, correlation_id, causation_id, event_timestamp::text, headers, recorded_at::text
    FROM raw_events WHERE seq > $1 ORDER BY seq LIMIT 1000";

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

async fn raw_single(client: &tokio_postgres::Client, stream: &str, n: u64) {
    let statement = client.prepare(RAW_INSERT).await.expect("prepare");
    for v in 1..=n {
        let e = event("Raw", v);
        let params: [&(dyn ToSql + Sync); 10] = [
            &stream,
            &(v as i64),
            e.id.as_uuid(),
            &e.event_type,
            &1i32,
            &e.content_type,
            &e.payload.as_ref(),
            &e.metadata.correlation_id,
            &e.metadata.causation_id,
            &serde_json::json!({}),
        ];
        client
            .execute(&statement, &params)
            .await
            .expect("raw insert");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn append_rates() {
    let store = support::init(support::builder_on(server(), "rate").pool_size(16)).await;
    let setup = raw_client(server()).await;
    setup
        .batch_execute(&format!(
            "CREATE SCHEMA raw; SET search_path = raw; {RAW_DDL}"
        ))
        .await
        .expect("raw ddl");
    let raw = |_: ()| async {
        let c = raw_client(server()).await;
        c.batch_execute("SET search_path = raw")
            .await
            .expect("path");
        c
    };
    let mut lines = Vec::new();

    // 1. Single-event appends, one connection.
    let c = raw(()).await;
    let t = Instant::now();
    raw_single(&c, "raw-single", SINGLE).await;
    let raw_rate = rate(SINGLE, t.elapsed());
    let single_store = support::init(support::builder_on(server(), "rate1").pool_size(1)).await;
    let stream = StreamId::new("single-1").expect("id");
    let t = Instant::now();
    for v in 0..SINGLE {
        single_store
            .append(&stream, ExpectedVersion::exact(v), vec![event("S", v)])
            .await
            .expect("append");
    }
    let store_rate = rate(SINGLE, t.elapsed());
    lines.push(format!(
        "single, 1 connection: store {store_rate:.0}/s, raw {raw_rate:.0}/s, {:.0}%",
        100.0 * store_rate / raw_rate
    ));

    // 2. Single-event appends, 8 connections to distinct streams.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..CONCURRENT {
        let c = raw(()).await;
        tasks.push(tokio::spawn(async move {
            raw_single(&c, &format!("raw-conc-{i}"), PER_CONNECTION).await
        }));
    }
    for task in tasks {
        task.await.expect("raw task");
    }
    let raw_rate = rate(CONCURRENT * PER_CONNECTION, t.elapsed());
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..CONCURRENT {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let stream = StreamId::new(format!("conc-{i}")).expect("id");
            for v in 0..PER_CONNECTION {
                store
                    .append(&stream, ExpectedVersion::exact(v), vec![event("C", v)])
                    .await
                    .expect("append");
            }
        }));
    }
    for task in tasks {
        task.await.expect("store task");
    }
    let store_rate = rate(CONCURRENT * PER_CONNECTION, t.elapsed());
    lines.push(format!(
        "single, 8 connections: store {store_rate:.0}/s, raw {raw_rate:.0}/s, {:.0}%",
        100.0 * store_rate / raw_rate
    ));

    // 3. 100-event batches, one connection.
    let statement = c.prepare(RAW_BATCH).await.expect("prepare");
    let t = Instant::now();
    for b in 0..BATCHES {
        let events: Vec<_> = (0..BATCH).map(|i| event("B", i)).collect();
        let versions: Vec<i64> = (0..BATCH).map(|i| (b * BATCH + i + 1) as i64).collect();
        let ids: Vec<_> = events.iter().map(|e| *e.id.as_uuid()).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload.as_ref()).collect();
        let headers: Vec<serde_json::Value> =
            events.iter().map(|_| serde_json::json!({})).collect();
        c.execute(
            &statement,
            &[&"raw-batch", &versions, &ids, &types, &payloads, &headers],
        )
        .await
        .expect("raw batch");
    }
    let raw_rate = rate(BATCHES * BATCH, t.elapsed());
    let stream = StreamId::new("batch-1").expect("id");
    let t = Instant::now();
    for b in 0..BATCHES {
        let events: Vec<_> = (0..BATCH).map(|i| event("B", i)).collect();
        single_store
            .append(&stream, ExpectedVersion::exact(b * BATCH), events)
            .await
            .expect("append");
    }
    let store_rate = rate(BATCHES * BATCH, t.elapsed());
    lines.push(format!(
        "100-event batches: store {store_rate:.0} events/s, raw {raw_rate:.0} events/s, {:.0}%",
        100.0 * store_rate / raw_rate
    ));

    // 4. Reading the whole log from the start in pages of 1,000.
    let total: i64 = c
        .query_one("SELECT count(*) FROM raw_events", &[])
        .await
        .expect("count")
        .get(0);
    let page = c.prepare(RAW_PAGE).await.expect("prepare");
    let t = Instant::now();
    let mut last = 0i64;
    let mut read = 0;
    loop {
        let rows = c.query(&page, &[&last]).await.expect("page");
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let _: (i64, &str, i64, uuid::Uuid, &str, i32, &str, &[u8]) = (
                row.get(0),
                row.get(1),
                row.get(2),
                row.get(3),
                row.get(4),
                row.get(5),
                row.get(6),
                row.get(7),
            );
            let _: serde_json::Value = row.get(11);
        }
        last = rows.last().map(|r| r.get(0)).unwrap_or(last);
        read += rows.len();
    }
    let raw_rate = rate(read as u64, t.elapsed());
    assert_eq!(read as i64, total);
    let reader = support::init(
        support::builder_on(server(), "rate")
            .pool_size(2)
            .schema(single_store.schema()),
    )
    .await;
    let t = Instant::now();
    let mut from = Position::START;
    let mut read = 0u64;
    loop {
        let events: Vec<_> = reader
            .read_all(ReadAll::from(from).limit(1000))
            .try_collect()
            .await
            .expect("read");
        let Some(last) = events.last() else { break };
        from = last.position.next();
        read += events.len() as u64;
    }
    let store_rate = rate(read, t.elapsed());
    lines.push(format!("read_all in pages of 1,000: store {store_rate:.0} events/s ({read} events), raw {raw_rate:.0} events/s ({total} rows), {:.0}%", 100.0 * store_rate / raw_rate));

    for line in lines {
        eprintln!("{line}");
    }
}
