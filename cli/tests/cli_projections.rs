//! `projections …` and `dlq …` of a CLI with projections registered (see `support/app.rs`),
//! on a sled store the test fills and projects.

mod support;

use std::path::Path;

use annals::{EventData, EventStore, ExpectedVersion, StreamId};
use annals_projections::{ProjectionRunner, SledModel};
use annals_sled::SledEventStore;
use serde_json::Value;
use support::app::{deposits, fragile, run};
use support::{fill_sled, json_lines, outcome};

/// The test store: `fill_sled`'s 11 events, then a `Poison` event and a deposit behind it in
/// `account-2`, and a `Poison` event in `account-3` (14 events); both projections caught up
/// in-process (`fragile` parked the three), then the store closed.
async fn projected_store(dir: &Path) -> String {
    fill_sled(dir).await;
    let store = SledEventStore::builder().path(dir).open().await.unwrap();
    let poison = || EventData::json("Poison", &serde_json::json!({})).unwrap();
    let deposit = EventData::json("Deposited", &serde_json::json!({ "amount": 7 })).unwrap();
    let two = StreamId::new("account-2").unwrap();
    store
        .append(&two, ExpectedVersion::Any, vec![poison(), deposit])
        .await
        .unwrap();
    let three = StreamId::new("account-3").unwrap();
    let last = store
        .append(&three, ExpectedVersion::Any, vec![poison()])
        .await
        .unwrap()
        .last_position;
    let model = SledModel::open(&store).await.unwrap();
    let running = ProjectionRunner::new(store.clone(), model.clone(), deposits())
        .start()
        .await
        .unwrap();
    running.caught_up_to(last).await.unwrap();
    running.shutdown().await.unwrap();
    let running = ProjectionRunner::new(store.clone(), model.clone(), fragile())
        .error_policy(annals_projections::ErrorPolicy::Park)
        .retry(annals_projections::Retry {
            attempts: 0,
            ..annals_projections::Retry::default()
        })
        .start()
        .await
        .unwrap();
    running.caught_up_to(last).await.unwrap();
    assert_eq!(running.status().parked, 3);
    running.shutdown().await.unwrap();
    drop(model);
    store.close().await.unwrap();
    drop(store);
    format!("sled:{}", dir.display())
}

fn by_projection(lines: &[Value], name: &str) -> Value {
    lines
        .iter()
        .find(|l| l["projection"] == name)
        .unwrap_or_else(|| panic!("no line for {name}: {lines:?}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_caught_up_projections_with_their_checkpoint_lag_and_parked_events() {
    let dir = tempfile::tempdir().unwrap();
    let url = projected_store(&dir.path().join("store")).await;

    let out = run(&url, &["--json", "projections", "list"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", outcome(&out));
    let lines = json_lines(&out);
    assert_eq!(
        lines.len(),
        2,
        "one line per registered projection: {lines:?}"
    );
    let deposits = by_projection(&lines, "deposits");
    assert_eq!(deposits["generation"], 1);
    assert_eq!(deposits["state"], "idle");
    assert_eq!(
        deposits["checkpoint"], "14",
        "caught up to the head: {deposits}"
    );
    assert_eq!(deposits["head"], "14");
    assert_eq!(deposits["lag_events"], 0);
    assert_eq!(deposits["parked"], 0);
    let fragile = by_projection(&lines, "fragile");
    assert_eq!(fragile["checkpoint"], "14");
    assert_eq!(fragile["parked"], 3, "{fragile}");

    let (code, text, _) = outcome(&run(&url, &["projections", "list"]));
    assert_eq!(code, 0);
    assert!(
        text.lines()
            .any(|l| l.starts_with("fragile") && l.contains(" 14 ")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_lists_parked_events_then_retry_and_drop_release_them() {
    let dir = tempfile::tempdir().unwrap();
    let url = projected_store(&dir.path().join("store")).await;

    let out = run(&url, &["--json", "dlq", "list", "fragile"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", outcome(&out));
    let letters = json_lines(&out);
    let seen: Vec<(&str, &str, u64, &str, &str)> = letters
        .iter()
        .map(|l| {
            (
                l["position"].as_str().unwrap(),
                l["stream"].as_str().unwrap(),
                l["version"].as_u64().unwrap(),
                l["event_type"].as_str().unwrap(),
                l["kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("12", "account-2", 3, "Poison", "parked"),
            ("13", "account-2", 4, "Deposited", "parked"),
            ("14", "account-3", 4, "Poison", "parked"),
        ]
    );
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .contains("poisoned event in account-2"),
        "the handler's error is the reason: {}",
        letters[0]
    );
    assert!(letters[0]["at"].as_str().is_some_and(|t| !t.is_empty()));
    let one = json_lines(&run(
        &url,
        &["--json", "dlq", "list", "fragile", "account-3"],
    ));
    assert_eq!(one.len(), 1);

    // Still poisoned: the retry fails, says why, and the events stay parked.
    let (code, _, err) = outcome(&run(&url, &["dlq", "retry", "fragile", "account-2"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("poisoned event in account-2"), "{err}");
    assert_eq!(
        json_lines(&run(&url, &["--json", "dlq", "list", "fragile"])).len(),
        3
    );

    // Healed: both events of account-2 are applied, in order.
    let mut healed = support::app::child(&url, &["--json", "dlq", "retry", "fragile", "account-2"]);
    let out = healed.env("FRAGILE_HEALED", "1").output().unwrap();
    let stdout = support::app::cli_stdout(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["retried"], 2);

    let out = run(&url, &["--json", "dlq", "drop", "fragile", "account-3"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", outcome(&out));
    assert_eq!(json_lines(&out)[0]["dropped"], 1);
    let out = run(&url, &["--json", "dlq", "list", "fragile"]);
    assert!(json_lines(&out).is_empty(), "{:?}", outcome(&out));
    let (code, _, err) = outcome(&run(&url, &["dlq", "drop", "fragile", "account-3"]));
    assert_eq!(code, 1, "nothing parked any more: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_projection_exits_1_with_the_registered_names() {
    let dir = tempfile::tempdir().unwrap();
    let url = projected_store(&dir.path().join("store")).await;
    for args in [
        &["projections", "status", "balance"][..],
        &["projections", "rebuild", "balance"],
        &["dlq", "list", "balance"],
        &["projections", "run", "deposits", "balance"],
    ] {
        let (code, _, err) = outcome(&run(&url, args));
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains("no projection `balance`") && err.contains("deposits, fragile"),
            "{args:?}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_store_held_by_another_process_is_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let url = projected_store(&path).await;
    // This process holds the store: the child cannot open it.
    let held = SledEventStore::builder().path(&path).open().await.unwrap();
    let (code, _, err) = outcome(&run(&url, &["projections", "list"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "the sled store at {} is in use by another process",
            path.display()
        )) && err.contains("annals_projections::Rebuild"),
        "{err}"
    );
    held.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_without_yes_says_what_it_would_do_and_exits_2_with_yes_moves_the_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let url = projected_store(&dir.path().join("store")).await;
    let (code, _, err) = outcome(&run(
        &url,
        &["projections", "reset", "deposits", "--to", "10"],
    ));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("would move the checkpoints of `deposits`")
            && err.contains(
                "partition 0 from 14 back to 10: the 4 events after 10 will be applied again"
            )
            && err.contains("--yes"),
        "{err}"
    );
    let (code, _, err) = outcome(&run(
        &url,
        &["projections", "reset", "deposits", "--to", "15"],
    ));
    assert_eq!(code, 2, "beyond the head: {err}");
    assert!(err.contains("beyond the end of the log (14)"), "{err}");
    let list = json_lines(&run(&url, &["--json", "projections", "list"]));
    assert_eq!(
        by_projection(&list, "deposits")["checkpoint"],
        "14",
        "nothing moved"
    );
}
