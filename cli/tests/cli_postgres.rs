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
    for stream in ["account-1", "order-1"] {
        let strip = |lines: Vec<serde_json::Value>| {
            lines
                .into_iter()
                .map(|mut e| {
                    let e2 = e.as_object_mut().unwrap();
                    e2.remove("recorded_at");
                    e2.remove("position");
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
