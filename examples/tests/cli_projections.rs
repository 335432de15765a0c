//! `projections rebuild` through the CLI built with the bank's balances projection registered
//! (`annals-bank`), on a bank store whose balances projection is caught up.

use std::collections::BTreeMap;
use std::process::Command;

use annals::{CommandContext, EventStore, Repository};
use annals_examples::balances::Balances;
use annals_examples::bank_account::{AccountCommand, BankAccount};
use annals_projections::{ProjectionRunner, SledModel};
use annals_sled::SledEventStore;
use serde_json::Value;

fn bank(store: &str, args: &[&str]) -> (i32, Vec<Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_annals-bank"))
        .arg("--store")
        .arg(store)
        .arg("--json")
        .args(args)
        .env_remove("ANNALS_STORE")
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
async fn rebuild_prints_progress_and_its_result_then_generation_2_serves_the_same_balances() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank");
    let store = SledEventStore::builder().path(&path).open().await.unwrap();
    let accounts: Repository<BankAccount, SledEventStore> = Repository::new(store.clone());
    let mut expected = BTreeMap::new();
    for n in 0..20u64 {
        let id = format!("c{n}");
        accounts
            .execute(&id, AccountCommand::open("ada"), CommandContext::new())
            .await
            .unwrap();
        for amount in [100, 20 + n, 5] {
            accounts
                .execute(
                    &id,
                    AccountCommand::Deposit { amount },
                    CommandContext::new(),
                )
                .await
                .unwrap();
        }
        accounts
            .execute(
                &id,
                AccountCommand::Withdraw { amount: 30 },
                CommandContext::new(),
            )
            .await
            .unwrap();
        expected.insert(id, i64::try_from(95 + n).unwrap());
    }
    let head = store.last_position().await.unwrap().unwrap();
    let model = SledModel::open(&store).await.unwrap();
    let running = ProjectionRunner::new(store.clone(), model.clone(), Balances::new(&store))
        .start()
        .await
        .unwrap();
    running.caught_up_to(head).await.unwrap();
    running.shutdown().await.unwrap();
    assert_eq!(Balances::read(&model).unwrap(), expected);
    drop((model, accounts));
    store.close().await.unwrap();
    drop(store);
    let url = format!("sled:{}", path.display());

    let (code, lines, err) = bank(&url, &["projections", "rebuild", "balances"]);
    assert_eq!(code, 0, "{err}");
    let (result, progress) = lines.split_last().expect("a result line");
    assert!(
        !progress.is_empty(),
        "progress lines before the result: {lines:?}"
    );
    for line in progress {
        assert_eq!(line["projection"], "balances", "{line}");
        assert_eq!(line["generation"], 2, "{line}");
        assert_eq!(line["total"], 100, "the log's 100 events: {line}");
        assert!(line["done"].as_u64().is_some_and(|d| d <= 100), "{line}");
        assert!(line["per_second"].is_f64(), "{line}");
        assert!(line.get("eta_s").is_some(), "{line}");
    }
    assert_eq!(result["result"], "swapped", "{result}");
    assert_eq!(result["generation"], 2);
    assert_eq!(result["previous"], 1);
    assert_eq!(result["events"], 100);
    assert_eq!(result["swapped_at"], head.to_string());
    assert_eq!(result["kept_old"], false);

    let (code, lines, err) = bank(&url, &["projections", "list"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["projection"], "balances");
    assert_eq!(lines[0]["generation"], 2, "{}", lines[0]);
    assert_eq!(lines[0]["checkpoint"], head.to_string());
    assert_eq!(lines[0]["lag_events"], 0);
    assert_eq!(lines[0]["building"], Value::Null);

    // Readers now see generation 2: built from the log alone, it holds the same balances.
    let store = SledEventStore::builder().path(&path).open().await.unwrap();
    let model = SledModel::open(&store).await.unwrap();
    assert_eq!(Balances::read(&model).unwrap(), expected);
}
