//! The CLI against a real PostgreSQL server: `migrate` sled → PostgreSQL, then `verify`,
//! `stats` and `show` on the target.

mod support;

use annals_testkit::postgres::PgServer;
use support::{annals, fill_sled, json_lines, outcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_sled_to_postgres_then_verify_and_compare() {
    let server = PgServer::shared();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store");
    fill_sled(&db).await;
    let sled = format!("sled:{}", db.display());
    let pg = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?schema=migrated",
        server.port()
    );

    // Before `migrate` creates it, the schema is missing: a clear error, exit 2.
    let (code, _, err) = outcome(&annals(&pg, &["streams"]));
    assert_eq!(code, 2);
    assert!(err.contains("init"), "the error tells what to do: {err}");

    let out = annals(&sled, &["--json", "migrate", "--to", &pg]);
    assert_eq!(out.status.code(), Some(0), "{:?}", outcome(&out));
    let result = json_lines(&out).pop().unwrap();
    assert_eq!(result["ok"], true);
    assert_eq!(result["copied"], 11);
    assert_eq!(
        (
            result["source_events"].as_u64(),
            result["target_events"].as_u64()
        ),
        (Some(11), Some(11))
    );
    assert_eq!(result["mismatched_streams"], 0);

    let out = annals(&pg, &["--json", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", outcome(&out));
    assert_eq!(json_lines(&out).last().unwrap()["events"], 11);
    let stats = &json_lines(&annals(&pg, &["--json", "stats"]))[0];
    assert_eq!(
        (stats["streams"].as_u64(), stats["events"].as_u64()),
        (Some(4), Some(11))
    );
    for stream in ["account-1", "account-2", "account-3", "order-1"] {
        // The same history, recording times included; only the positions are the target's
        // own (PostgreSQL numbers its log by transaction).
        let strip = |lines: Vec<serde_json::Value>| {
            lines
                .into_iter()
                .map(|mut e| {
                    e.as_object_mut().unwrap().remove("position");
                    e
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            strip(json_lines(&annals(&sled, &["--json", "show", stream]))),
            strip(json_lines(&annals(&pg, &["--json", "show", stream]))),
            "{stream} differs on the target"
        );
    }

    // Resuming (or re-running) copies nothing twice.
    let out = annals(&sled, &["--json", "migrate", "--to", &pg]);
    let again = json_lines(&out).pop().unwrap();
    assert_eq!(
        (again["copied"].as_u64(), again["target_events"].as_u64()),
        (Some(0), Some(11)),
        "{again}"
    );
}

/// `tail` follows the log of another process: a child `annals tail` started at the log's end
/// prints exactly the matching events appended after that point, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_appends_made_by_another_process() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    use annals::{EventData, EventStore, ExpectedVersion, Position, StreamId};

    let server = PgServer::shared();
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?schema=tailed",
        server.port()
    );
    let store = annals_postgres::PgEventStore::builder()
        .connection_string(format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            server.port()
        ))
        .schema("tailed")
        .open()
        .await
        .unwrap();
    store.init().await.unwrap();
    let old = StreamId::new("order-1").unwrap();
    store
        .append(
            &old,
            ExpectedVersion::NoStream,
            vec![EventData::json("Old", &1).unwrap()],
        )
        .await
        .unwrap();
    let end = store
        .last_position()
        .await
        .unwrap()
        .map_or(Position::START, Position::next);

    let mut child = Command::new(env!("CARGO_BIN_EXE_annals"))
        .args([
            "--store",
            &url,
            "--json",
            "tail",
            "--category",
            "order",
            "--from",
            &end.to_string(),
            "--count",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start annals tail");
    let stream = StreamId::new("order-2").unwrap();
    let other = StreamId::new("account-9").unwrap();
    for n in 0..2u64 {
        store
            .append(
                &other,
                ExpectedVersion::Any,
                vec![EventData::json("Skipped", &n).unwrap()],
            )
            .await
            .unwrap();
        store
            .append(
                &stream,
                ExpectedVersion::exact(n),
                vec![EventData::json("New", &n).unwrap()],
            )
            .await
            .unwrap();
    }
    let output = tokio::task::spawn_blocking(move || {
        let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
            .lines()
            .map(|l| l.unwrap())
            .collect();
        (child.wait().unwrap(), lines)
    });
    let (status, lines) = tokio::time::timeout(std::time::Duration::from_secs(60), output)
        .await
        .expect("annals tail never printed two events")
        .unwrap();
    assert!(status.success(), "annals tail failed");
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<(String, u64, String)> = events
        .iter()
        .map(|e| {
            (
                e["stream_id"].as_str().unwrap().to_owned(),
                e["version"].as_u64().unwrap(),
                e["event_type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("order-2".to_owned(), 1, "New".to_owned()),
            ("order-2".to_owned(), 2, "New".to_owned())
        ]
    );
}

/// Waits until `check` holds, for at most a minute.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `projections run` is a worker process: it takes the projection's partitions (its leases
/// name it, as `projections status` shows), catches up, follows new events live, and on
/// SIGTERM commits, releases its leases and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_run_catches_up_follows_live_and_stops_cleanly_on_sigterm() {
    use annals::{EventData, EventStore, ExpectedVersion, Leases, StreamId};
    use std::process::Stdio;
    use support::app::{child, PG_SCHEMA};

    let server = PgServer::shared();
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?schema={PG_SCHEMA}",
        server.port()
    );
    let store = annals_postgres::PgEventStore::builder()
        .connection_string(server.connection_string())
        .schema(PG_SCHEMA)
        .open()
        .await
        .unwrap();
    store.init().await.unwrap();
    let client = store.pool().get().await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE {PG_SCHEMA}.tallies (stream text PRIMARY KEY, n bigint NOT NULL)"
        ))
        .await
        .unwrap();
    let append = |n: u64| {
        let store = store.clone();
        async move {
            let stream = StreamId::new(format!("order-{}", n % 5)).unwrap();
            store
                .append(
                    &stream,
                    ExpectedVersion::Any,
                    vec![EventData::json("Placed", &n).unwrap()],
                )
                .await
                .unwrap();
        }
    };
    for n in 0..20 {
        append(n).await;
    }
    let tallied = || {
        let pool = store.pool().clone();
        async move {
            let row = pool
                .get()
                .await
                .unwrap()
                .query_one(
                    &format!("SELECT coalesce(sum(n), 0)::bigint FROM {PG_SCHEMA}.tallies"),
                    &[],
                )
                .await
                .unwrap();
            row.get::<_, i64>(0)
        }
    };

    let mut worker = child(
        &url,
        &[
            "--json",
            "projections",
            "run",
            "tallies",
            "--worker-id",
            "w1",
            "--every",
            "1",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start projections run");
    // The worker's stdout, as it prints it.
    let printed = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let reader = {
        let printed = printed.clone();
        let mut stdout = worker.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut stdout, &mut buffer) {
                printed.lock().unwrap().extend_from_slice(&buffer[..n]);
            }
        })
    };
    // Its complete lines, parsed.
    let status_lines = move || -> Vec<serde_json::Value> {
        let bytes = printed.lock().unwrap().clone();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let cli = text
            .split_once("--- annals cli child ---\n")
            .map_or("", |(_, cli)| cli);
        // Complete lines only: the last one may be half written.
        cli[..cli.rfind('\n').map_or(0, |end| end + 1)]
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    eventually("the worker owns both partitions and caught up", || async {
        let owners = store.leases("tallies/partitions/").await.unwrap();
        owners.len() == 2 && owners.iter().all(|l| l.holder == "w1") && tallied().await == 20
    })
    .await;

    let out = support::app::run(&url, &["--json", "projections", "status", "tallies"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", outcome(&out));
    let partitions = json_lines(&out);
    assert_eq!(partitions.len(), 2, "{partitions:?}");
    for p in &partitions {
        assert_eq!(p["owner"], "w1", "{p}");
        assert!(p["epoch"].as_u64().is_some(), "{p}");
    }

    for n in 20..30 {
        append(n).await;
    }
    eventually("the live events are tallied", || async {
        tallied().await == 30
    })
    .await;
    eventually(
        "a status line shows both partitions owned, live, no lag",
        || {
            let lines = status_lines();
            async move {
                lines.iter().any(|l| {
                    l["projection"] == "tallies"
                        && l["owned"] == serde_json::json!([0, 1])
                        && l["lag_events"] == 0
                        && l["state"] == "live"
                })
            }
        },
    )
    .await;

    let pid = worker.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::task::spawn_blocking(move || worker.wait_with_output().unwrap()),
    )
    .await
    .expect("the worker stops after SIGTERM")
    .unwrap();
    reader.join().unwrap();
    let lines = status_lines();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{lines:?}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        lines.last().unwrap()["state"],
        "shut down",
        "the last line says it shut down: {lines:?}"
    );
    assert!(
        store
            .leases("tallies/partitions/")
            .await
            .unwrap()
            .is_empty(),
        "a clean stop releases the leases"
    );
    assert_eq!(tallied().await, 30, "nothing applied twice");

    let out = support::app::run(&url, &["--json", "projections", "list"]);
    let list = json_lines(&out);
    assert_eq!(list.len(), 1, "only the PostgreSQL projection: {list:?}");
    assert_eq!(list[0]["state"], "idle");
    assert_eq!(list[0]["lag_events"], 0, "{}", list[0]);
}
