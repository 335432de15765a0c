//! The quickstart: append events, lose a race, read them back and follow the global log.
//!
//! Run it with `cargo run --example quickstart`.

use annals::{
    subscribe_all, EventData, EventStore, ExpectedVersion, Filter, InMemoryStore, Position,
    ReadStream, StreamId,
};
use futures::{StreamExt, TryStreamExt};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let store = InMemoryStore::new();
    let account = StreamId::new("account-42")?;

    // A live reader of the global log, started before anything is written.
    let mut live = subscribe_all(
        store.clone(),
        Position::START,
        Filter::all().category("account"),
    );

    let opened = store
        .append(
            &account,
            ExpectedVersion::NoStream,
            vec![
                EventData::json("Opened", &json!({ "owner": "ada" }))?,
                EventData::json("Deposited", &json!({ "amount": 100 }))?,
            ],
        )
        .await?;
    println!(
        "appended versions {}..={} of {account}",
        opened.first_version, opened.last_version
    );

    // A writer that still believes the stream is at version 1 loses the race.
    let stale = store
        .append(
            &account,
            ExpectedVersion::exact(1),
            vec![EventData::json("Withdrawn", &json!({ "amount": 30 }))?],
        )
        .await;
    println!("stale writer: {}", stale.expect_err("the stream moved on"));

    for event in store
        .read_stream(&account, ReadStream::forward())
        .try_collect::<Vec<_>>()
        .await?
    {
        println!(
            "  v{} {} {}",
            event.version,
            event.event_type,
            String::from_utf8_lossy(&event.payload)
        );
    }
    for _ in 0..2 {
        let event = live.next().await.expect("the subscription is live")?;
        println!(
            "subscriber saw {} at position {}",
            event.event_type, event.position
        );
    }
    Ok(())
}
