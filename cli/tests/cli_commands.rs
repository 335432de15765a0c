//! Every command of the real binary against a sled store the test fills.

mod support;

use support::{annals, fill_sled, json_lines, outcome};

fn sled_url(dir: &std::path::Path) -> String {
    format!("sled:{}", dir.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_show_stats_and_tail() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store");
    fill_sled(&db).await;
    let url = sled_url(&db);

    let out = annals(&url, &["--json", "streams"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", outcome(&out));
    let streams = json_lines(&out);
    let summary: Vec<(String, u64)> = streams
        .iter()
        .map(|s| {
            (
                s["stream_id"].as_str().unwrap().to_owned(),
                s["version"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("account-1".into(), 4),
            ("account-2".into(), 2),
            ("account-3".into(), 3),
            ("order-1".into(), 2)
        ]
    );
    let out = annals(&url, &["--json", "streams", "--category", "order"]);
    assert_eq!(json_lines(&out).len(), 1);

    let out = annals(
        &url,
        &["--json", "show", "account-1", "--from", "2", "--to", "3"],
    );
    let events = json_lines(&out);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["version"], 2);
    assert_eq!(events[0]["event_type"], "Deposited");
    assert_eq!(events[0]["payload"]["amount"], 10);
    assert_eq!(events[0]["headers"]["user"], "tester");
    assert_eq!(events[0]["payload_encoding"], "json");
    let out = annals(&url, &["--json", "show", "order-1"]);
    let events = json_lines(&out);
    assert_eq!(
        events[0]["payload_encoding"], "base64",
        "raw bytes are shown as base64"
    );
    assert_eq!(events[0]["payload"], "AAEC/w==");
    let text = annals(&url, &["show", "account-2"]);
    let (code, stdout, _) = outcome(&text);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("account-2 v1") && stdout.contains("Opened"),
        "{stdout}"
    );

    let out = annals(&url, &["--json", "stats"]);
    let stats = &json_lines(&out)[0];
    assert_eq!(stats["streams"], 4);
    assert_eq!(stats["events"], 11);
    assert_eq!(stats["categories"], 2);
    assert_eq!(stats["per_category"]["account"]["events"], 9);

    let out = annals(
        &url,
        &[
            "--json",
            "tail",
            "--from",
            "0",
            "--category",
            "order",
            "--count",
            "2",
        ],
    );
    let tailed = json_lines(&out);
    assert_eq!(
        tailed
            .iter()
            .map(|e| e["event_type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["Placed", "Shipped"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_things_and_bad_input_give_clear_errors_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store");
    fill_sled(&db).await;
    let url = sled_url(&db);

    let (code, _, err) = outcome(&annals(&url, &["show", "account-404"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("account-404") && err.contains("does not exist"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    let (code, _, err) = outcome(&annals("mongodb://x", &["streams"]));
    assert_eq!(code, 2);
    assert!(err.contains("unknown store URL scheme `mongodb`"), "{err}");

    let missing = dir.path().join("nope");
    let (code, _, err) = outcome(&annals(&sled_url(&missing), &["streams"]));
    assert_eq!(code, 2);
    assert!(err.contains("no sled store"), "{err}");

    let (code, _, err) = outcome(&annals(&url, &["replay", "account-1"]));
    assert_eq!(code, 2);
    assert!(
        err.contains("no aggregate type is registered for category `account`"),
        "{err}"
    );

    let (code, _, err) = outcome(&annals(&url, &["show", ""]));
    assert_eq!(code, 2, "{err}");

    let (code, _, err) = outcome(&annals("postgres://annals@127.0.0.1:1/none", &["streams"]));
    assert_eq!(
        code, 2,
        "an unreachable server is a connection error: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_is_clean_then_catches_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store");
    fill_sled(&db).await;
    let url = sled_url(&db);
    let out = annals(&url, &["--json", "verify"]);
    let lines = json_lines(&out);
    assert_eq!(out.status.code(), Some(0), "{:?}", outcome(&out));
    assert_eq!(lines.last().unwrap()["ok"], true);
    assert_eq!(lines.last().unwrap()["events"], 11);

    support::corrupt_record_containing(&db, b"MARKER-TO-CORRUPT");
    let out = annals(&url, &["--json", "verify"]);
    let (code, _, err) = outcome(&out);
    assert_eq!(code, 1, "verify must fail: {err}");
    let lines = json_lines(&out);
    let problems: Vec<_> = lines
        .iter()
        .filter(|l| l.get("problem").is_some())
        .collect();
    assert!(!problems.is_empty());
    assert!(
        problems.iter().any(|p| p["problem"]["stream"] == "order-1"
            && p["problem"]["version"] == 2
            && p["problem"]["position"] == "11"),
        "a problem names the record (order-1 v2 at 11): {problems:?}"
    );
    let (_, stdout, _) = outcome(&annals(&url, &["verify"]));
    assert!(
        stdout.contains("PROBLEM stream order-1, version 2"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_gives_identical_show_output_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store");
    fill_sled(&db).await;
    let url = sled_url(&db);
    let file = dir.path().join("export.jsonl");
    let out = annals(&url, &["--json", "export", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{:?}", outcome(&out));
    assert_eq!(json_lines(&out)[0]["exported"], 11);

    let copy = sled_url(&dir.path().join("copy"));
    let out = annals(&copy, &["--json", "import", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{:?}", outcome(&out));
    assert_eq!(json_lines(&out)[0]["imported"], 11);
    for stream in ["account-1", "account-2", "account-3", "order-1"] {
        let a = json_lines(&annals(&url, &["--json", "show", stream]));
        let b = json_lines(&annals(&copy, &["--json", "show", stream]));
        // The same history: ids, versions, payloads, metadata and recording times.
        assert_eq!(a, b, "{stream} differs after import");
    }
    // Again: nothing changes.
    let out = annals(&copy, &["--json", "import", file.to_str().unwrap()]);
    let result = &json_lines(&out)[0];
    assert_eq!(
        (
            result["imported"].as_u64(),
            result["already_present"].as_u64()
        ),
        (Some(0), Some(11))
    );
    let stats = &json_lines(&annals(&copy, &["--json", "stats"]))[0];
    assert_eq!(stats["events"], 11);

    // A corrupt file is refused whole, before anything is written.
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[9] = lines[9].replacen("Deposited", "Depositex", 1);
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    let fresh = sled_url(&dir.path().join("fresh"));
    let (code, _, err) = outcome(&annals(&fresh, &["import", bad.to_str().unwrap()]));
    assert_eq!(code, 1);
    assert!(
        err.contains("corrupt export file") && err.contains("line 10"),
        "{err}"
    );
    assert!(
        !dir.path().join("fresh").exists(),
        "nothing written from a corrupt file, not even an empty store"
    );
    // A truncated file too.
    let cut = dir.path().join("cut.jsonl");
    std::fs::write(&cut, lines[..5].join("\n") + "\n").unwrap();
    let (code, _, err) = outcome(&annals(&fresh, &["import", cut.to_str().unwrap()]));
    assert_eq!(code, 1);
    assert!(err.contains("trailer"), "{err}");
}
