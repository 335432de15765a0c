//! The quickstart: a bank on the embedded sled store, step by step.
//!
//! ```sh
//! cargo run --example quickstart            # data in ./annals-data
//! cargo run --example quickstart -- /tmp/x  # data elsewhere
//! ```
//!
//! Each run opens two new accounts beside those of earlier runs, so running it again continues
//! from the stored data: positions go on, the read model sees every run's accounts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use annals::{CommandContext, EventStore, Position, Repository, SnapshotPolicy, Version};
use annals_examples::balances::Balances;
use annals_examples::bank_account::{AccountCommand, BankAccount};
use annals_projections::{PartitionKey, ProjectionRunner, ReadModel as _, SledModel};
use annals_sled::SledEventStore;
use futures::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("annals-data"), PathBuf::from);
    run(&path).await?;
    println!("\ndone: run it again to continue from the stored data, or inspect it with");
    println!(
        "  cargo run -p annals-cli -- --store sled:{} streams",
        path.display()
    );
    Ok(())
}

/// What a run did, for the test at the end of this file.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Debug)]
struct Summary {
    run: u64,
    retries: u32,
    refused: String,
    snapshot: Option<Version>,
    balances: BTreeMap<String, i64>,
}

async fn run(path: &Path) -> anyhow::Result<Summary> {
    let store = SledEventStore::builder().path(path).open().await?;
    let before = store.last_position().await?;
    let run = run_number(&store).await?;
    println!("# Annals quickstart, run {run}");
    println!(
        "store: sled at {} ({})",
        path.display(),
        match before {
            None => "new and empty".to_owned(),
            Some(p) => format!("already holds events up to position {p}"),
        }
    );

    // The repository: load (cache, or snapshot + later events), decide, append with the
    // expected version, retry on conflict. Snapshots every 5 events.
    let accounts: Repository<BankAccount, SledEventStore> = Repository::builder(store.clone())
        .snapshot_policy(SnapshotPolicy::Every(5))
        .build()?;
    let ada = format!("ada{run}");
    let bob = format!("bob{run}");
    let context = || CommandContext::new().with_header("user", "quickstart");

    println!("\n## Commands become events");
    for (id, owner) in [(&ada, "Ada"), (&bob, "Bob")] {
        let done = accounts
            .execute(id, AccountCommand::open(owner), context())
            .await?;
        println!(
            "open {id:<6} -> {:?} (stream account-{id}, version {})",
            done.events, done.version
        );
    }
    for (id, amount) in [(&ada, 100), (&bob, 50), (&ada, 25)] {
        let done = accounts
            .execute(id, AccountCommand::Deposit { amount }, context())
            .await?;
        println!(
            "deposit {amount:>3} into {id:<6} -> balance {} at version {}",
            done.state.balance(),
            done.version
        );
    }
    let done = accounts
        .execute(&ada, AccountCommand::Withdraw { amount: 30 }, context())
        .await?;
    println!(
        "withdraw  30 from {ada:<6} -> balance {}",
        done.state.balance()
    );

    println!("\n## A command the aggregate refuses writes nothing");
    let refused = match accounts
        .execute(&bob, AccountCommand::Withdraw { amount: 80 }, context())
        .await
    {
        Err(error) => match error.into_rejection() {
            Some(reason) => reason.to_string(),
            None => anyhow::bail!("the store failed instead of the account refusing"),
        },
        Ok(done) => anyhow::bail!("the overdraft was accepted: {:?}", done.events),
    };
    println!("withdraw  80 from {bob:<6} -> refused: {refused}");

    println!("\n## Two writers race; the loser reloads and retries");
    // A second repository stands for another process: its cached state of Ada goes stale
    // when the first repository writes.
    let elsewhere: Repository<BankAccount, SledEventStore> = Repository::new(store.clone());
    let seen = elsewhere.load(&ada).await?;
    accounts
        .execute(&ada, AccountCommand::Deposit { amount: 10 }, context())
        .await?;
    let raced = elsewhere
        .execute(&ada, AccountCommand::Withdraw { amount: 5 }, context())
        .await?;
    println!(
        "the other writer decided at version {}, the stream had moved on: {} conflict retried, balance {} at version {}",
        seen.version, raced.retries, raced.state.balance(), raced.version
    );
    anyhow::ensure!(raced.retries >= 1, "the race should have been retried");

    println!("\n## Snapshots and replay");
    let snapshot = accounts.take_snapshot(&ada).await?;
    println!(
        "snapshot of {ada} taken at version {}",
        snapshot.map_or("-".into(), |v| v.to_string())
    );
    let fresh: Repository<BankAccount, SledEventStore> = Repository::new(store.clone());
    let loaded = fresh.load(&ada).await?;
    println!(
        "a fresh load starts from the snapshot at version {} and replays {} events: balance {}",
        loaded.snapshot.map_or("-".into(), |v| v.to_string()),
        loaded.replayed,
        loaded.state.balance()
    );
    let then = fresh.load_at(&ada, Version::new(2)).await?;
    println!(
        "{ada} as it was at version 2: balance {} (audit: folded from the log, {} events)",
        then.state.balance(),
        then.replayed
    );
    let changes = fresh.changes(&ada, Version::new(3), loaded.version).await?;
    println!(
        "from version 3 to {}: balance {} -> {}, {} events",
        changes.to,
        changes.before.balance(),
        changes.after.balance(),
        changes.events.len()
    );

    println!("\n## A projection builds a read model");
    // Balances per account in a sled tree beside the events, committed with the projection's
    // checkpoint: a later run (or a restart after a crash) goes on from there, never applying
    // an event twice. It catches up, then follows live until shut down.
    let model = SledModel::open(&store).await?;
    let resumed = model
        .checkpoint(&PartitionKey::new(Balances::projection_name(), 0))
        .await?;
    let end = store.last_position().await?.unwrap_or(Position::START);
    let running = ProjectionRunner::new(store.clone(), model.clone(), Balances::new(&store))
        .start()
        .await?;
    running.caught_up_to(end).await?;
    println!(
        "{} (checkpoint {}, head {end})",
        match resumed {
            None => "caught up from the start of the log".to_owned(),
            Some(p) => format!("resumed after position {p}"),
        },
        running
            .status()
            .checkpoint
            .map_or("-".into(), |p| p.to_string()),
    );
    // Live: a new event reaches the read model on the store's commit signal.
    let done = accounts
        .execute(&bob, AccountCommand::Deposit { amount: 5 }, context())
        .await?;
    let appended = done.appended.context("a deposit appends an event")?;
    running.caught_up_to(appended.last_position).await?;
    let status = running.status();
    println!(
        "a live deposit into {bob} is in the read model: state {:?}, lag {} events",
        status.state,
        status.lag_events.unwrap_or(0)
    );
    running.shutdown().await?; // finishes the batch in hand, commits, flushes
    let balances = Balances::read(&model).map_err(|e| anyhow::anyhow!(e))?;
    println!("balances of every run so far:");
    for (id, balance) in &balances {
        println!("  {id:<8} {balance:>5}");
    }
    let ours = accounts.load(&ada).await?.state.balance();
    anyhow::ensure!(
        balances.get(&ada).copied() == Some(i64::try_from(ours)?),
        "the read model disagrees with the aggregate"
    );
    drop(model);

    store.close().await?;
    Ok(Summary {
        run,
        retries: raced.retries,
        refused,
        snapshot,
        balances,
    })
}

/// This run's number: one more than the runs that already opened accounts.
async fn run_number(store: &SledEventStore) -> anyhow::Result<u64> {
    let mut streams = store.streams();
    let mut accounts = 0;
    while let Some(info) = streams.next().await {
        if info?.stream_id.category() == "account" {
            accounts += 1;
        }
    }
    Ok(accounts / 2 + 1)
}

#[cfg(test)]
mod tests {
    /// The quickstart's main path, twice on the same data: the second run continues.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quickstart_runs_and_continues_from_stored_data() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = super::run(dir.path()).await.expect("first run");
        assert_eq!(first.run, 1);
        assert!(
            first.refused.contains("insufficient funds"),
            "{}",
            first.refused
        );
        assert!(first.retries >= 1, "the race was retried");
        assert_eq!(first.snapshot.map(|v| v.get()), Some(6));
        assert_eq!(first.balances.get("ada1"), Some(&100));
        assert_eq!(
            first.balances.get("bob1"),
            Some(&55),
            "with the live deposit"
        );
        let second = super::run(dir.path()).await.expect("second run");
        assert_eq!(second.run, 2);
        assert_eq!(
            second.balances.len(),
            4,
            "the read model sees both runs: {:?}",
            second.balances
        );
    }
}
