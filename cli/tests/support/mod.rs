//! Helpers for running the real `annals` binary against stores the tests fill.

#![allow(dead_code, unreachable_pub)]

pub mod app;

use std::path::Path;
use std::process::{Command, Output};

use annals::{EventData, EventStore, ExpectedVersion, StreamId};
use annals_sled::SledEventStore;
use serde_json::Value;

/// Runs `annals --store <store> <args…>`.
pub fn annals(store: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_annals"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("ANNALS_STORE")
        .output()
        .expect("run the annals binary")
}

/// The exit code, stdout and stderr of a run, for assertions.
pub fn outcome(output: &Output) -> (i32, String, String) {
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Every stdout line parsed as JSON.
pub fn json_lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

/// A sled store at `dir` with three accounts, an order and a snapshot: 12 events.
pub async fn fill_sled(dir: &Path) {
    let store = SledEventStore::builder()
        .path(dir)
        .open()
        .await
        .expect("open sled");
    for (stream, amounts) in [
        ("account-1", vec![10, 20, 30]),
        ("account-2", vec![5]),
        ("account-3", vec![1, 2]),
    ] {
        let stream = StreamId::new(stream).unwrap();
        let mut events =
            vec![
                EventData::json("Opened", &serde_json::json!({ "owner": stream.as_str() }))
                    .unwrap(),
            ];
        for amount in amounts {
            events.push(
                EventData::json("Deposited", &serde_json::json!({ "amount": amount }))
                    .unwrap()
                    .with_header("user", "tester"),
            );
        }
        store
            .append(&stream, ExpectedVersion::NoStream, events)
            .await
            .expect("append");
    }
    let order = StreamId::new("order-1").unwrap();
    store
        .append(
            &order,
            ExpectedVersion::NoStream,
            vec![
                EventData::new("Placed", "application/octet-stream", vec![0u8, 1, 2, 255]),
                EventData::json(
                    "Shipped",
                    &serde_json::json!({ "carrier": "MARKER-TO-CORRUPT" }),
                )
                .unwrap(),
            ],
        )
        .await
        .expect("append");
    store.close().await.expect("close");
}

/// Flips one byte of the stored record holding `marker`, wherever the store's layout keeps it:
/// through raw sled, or in the log's segment files (format 5). The store must be closed.
pub fn corrupt_record_containing(dir: &Path, marker: &[u8]) {
    let db = sled::open(dir).expect("open raw sled");
    let mut hit = false;
    for name in db.tree_names() {
        let tree = db.open_tree(&name).expect("tree");
        for entry in tree.iter() {
            let (key, value) = entry.expect("entry");
            if let Some(at) = value.windows(marker.len()).position(|w| w == marker) {
                let mut damaged = value.to_vec();
                damaged[at] ^= 0x20;
                tree.insert(key, damaged).expect("insert");
                hit = true;
            }
        }
    }
    db.flush().expect("flush");
    // Since format 5 the commit records are in the log's segment files, beside sled's.
    if let Ok(entries) = std::fs::read_dir(dir.join("annals-log")) {
        for entry in entries {
            let path = entry.expect("entry").path();
            let mut bytes = std::fs::read(&path).expect("read a segment");
            if let Some(at) = bytes.windows(marker.len()).position(|w| w == marker) {
                bytes[at] ^= 0x20;
                std::fs::write(&path, bytes).expect("write a segment");
                hit = true;
            }
        }
    }
    assert!(hit, "no record holds the marker");
}
