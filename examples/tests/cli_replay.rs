//! `replay` through a CLI built with the bank-account aggregate registered (`annals-bank`).

use std::process::Command;

use annals::{CommandContext, EventStore, Repository, StreamId, Timestamp, Version};
use annals_examples::bank_account::{AccountCommand, BankAccount};
use annals_sled::SledEventStore;
use serde_json::Value;

fn bank(store: &str, args: &[&str]) -> (i32, Vec<Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_annals-bank"))
        .arg("--store")
        .arg(store)
        .arg("--json")
        .args(args)
        .output()
        .expect("run annals-bank");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_at_a_version_at_a_time_and_between_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank");
    let store = SledEventStore::builder().path(&path).open().await.unwrap();
    let accounts: Repository<BankAccount, SledEventStore> = Repository::new(store.clone());
    accounts
        .execute("7", AccountCommand::open("ada"), CommandContext::new())
        .await
        .unwrap();
    accounts
        .execute(
            "7",
            AccountCommand::Deposit { amount: 100 },
            CommandContext::new(),
        )
        .await
        .unwrap();
    accounts
        .execute(
            "7",
            AccountCommand::Deposit { amount: 50 },
            CommandContext::new(),
        )
        .await
        .unwrap();
    // A moment between version 3 and version 4, taken from the store's own clock.
    let v3_at = {
        use futures::TryStreamExt;
        let stream = StreamId::new("account-7").unwrap();
        let events: Vec<_> = store
            .read_stream(&stream, annals::ReadStream::forward())
            .try_collect()
            .await
            .unwrap();
        events[2].recorded_at
    };
    while Timestamp::now() <= v3_at {
        tokio::task::yield_now().await;
    }
    accounts
        .execute(
            "7",
            AccountCommand::Withdraw { amount: 30 },
            CommandContext::new(),
        )
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(accounts);
    drop(store);
    let url = format!("sled:{}", path.display());

    let (code, lines, err) = bank(&url, &["replay", "account-7"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines[0]["version"], 4);
    assert_eq!(lines[0]["state"]["balance"], 120);
    assert_eq!(lines[0]["state"]["owner"], "ada");

    let (code, lines, err) = bank(&url, &["replay", "account-7", "--at-version", "2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (
            lines[0]["version"].as_u64(),
            lines[0]["state"]["balance"].as_u64()
        ),
        (Some(2), Some(100))
    );

    let (code, lines, err) = bank(
        &url,
        &["replay", "account-7", "--as-of", &v3_at.to_string()],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        (
            lines[0]["version"].as_u64(),
            lines[0]["state"]["balance"].as_u64()
        ),
        (Some(3), Some(150))
    );

    // Before the stream's first event there was nothing to replay: an error, not version 0.
    let (code, _, err) = bank(
        &url,
        &["replay", "account-7", "--as-of", "2000-01-01T00:00:00Z"],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("had no events yet"), "{err}");

    let (code, lines, err) = bank(&url, &["replay", "account-7", "--diff", "2..4"]);
    assert_eq!(code, 0, "{err}");
    let diff = &lines[0];
    assert_eq!(diff["before"]["balance"], 100);
    assert_eq!(diff["after"]["balance"], 120);
    let types: Vec<_> = diff["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, ["Deposited", "Withdrawn"]);
    assert!(diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["path"] == "/balance"));

    // `show` decodes the registered events.
    let (code, lines, _) = bank(&url, &["show", "account-7", "--from", "4"]);
    assert_eq!(code, 0);
    assert_eq!(lines[0]["payload"]["amount"], 30);

    // Past the end, and a category nobody registered.
    let (code, _, err) = bank(&url, &["replay", "account-7", "--at-version", "9"]);
    assert_eq!(code, 1);
    assert!(err.contains("no version 9"), "{err}");
    let (code, _, err) = bank(&url, &["replay", "order-1"]);
    assert_eq!(code, 2);
    assert!(err.contains("registered: account"), "{err}");
    let _ = Version::FIRST;
}
