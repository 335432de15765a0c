//! Rebuild jobs on PostgreSQL: the new generation in its own schema (its table made by the
//! projection's `setup`), swapped in while a writer appends, a live runner writes and readers
//! query the active schema; effects written to an outbox in the batch's transaction happen
//! exactly once per event across the rebuild and the swap; two projections, one rebuilt while
//! the other stays live.

#![cfg(feature = "postgres")]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use annals::{BoxError, EventData, EventStore, ExpectedVersion, RecordedEvent, StreamId};
use annals_postgres::PgEventStore;
use annals_projections::{
    PgModel, PgTx, Projection, ProjectionName, ProjectionRunner, ReadModel, Rebuild,
};
use annals_testkit::postgres::PgServer;
use support::pg::{read_tallies, tallies_upsert};
use support::{fill, fold, n_of, HANG_GUARD};

async fn guard<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

/// Tallies in the unqualified table `tallies` of the generation's schema (made by `setup`);
/// each event also writes an outbox row as its effect.
struct Tallies {
    name: ProjectionName,
}

impl Projection<PgModel> for Tallies {
    fn name(&self) -> &ProjectionName {
        &self.name
    }

    async fn setup(&self, tx: &mut PgTx) -> Result<(), BoxError> {
        tx.client()
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS tallies (
                     stream text PRIMARY KEY, count bigint NOT NULL,
                     last_version bigint NOT NULL, sum bigint NOT NULL)",
            )
            .await?;
        Ok(())
    }

    async fn handle(&self, tx: &mut PgTx, events: &[RecordedEvent]) -> Result<(), BoxError> {
        let upsert = tallies_upsert("tallies");
        for event in events {
            let version = i64::try_from(event.version.get())?;
            let n = i64::try_from(n_of(event))?;
            let changed = tx
                .client()
                .execute(upsert.as_str(), &[&event.stream_id.as_str(), &version, &n])
                .await?;
            if changed != 1 {
                return Err(format!("order violated on {} at {version}", event.stream_id).into());
            }
        }
        Ok(())
    }

    fn has_effects(&self) -> bool {
        true
    }

    async fn effects(&self, tx: &mut PgTx, events: &[RecordedEvent]) -> Result<(), BoxError> {
        // The outbox is the application's, outside every generation: qualified.
        let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
        tx.client()
            .execute(
                "INSERT INTO rebuild_outbox.sent (id) SELECT * FROM unnest($1::text[])",
                &[&ids],
            )
            .await?;
        Ok(())
    }
}

async fn open(connection: &str, schema: &str) -> (PgEventStore, PgModel) {
    let store = PgEventStore::builder()
        .connection_string(connection)
        .schema(schema)
        .open()
        .await
        .unwrap();
    store.init().await.unwrap();
    let model = PgModel::new(&store);
    model.init().await.unwrap();
    (store, model)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_swaps_in_a_new_schema_with_effects_once_while_another_projection_stays_live() {
    let server = PgServer::shared();
    let connection = server.connection_string();
    let (store, model) = open(&connection, "rebuild_pg").await;
    let client = store.pool().get().await.unwrap();
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS rebuild_outbox;
             CREATE TABLE IF NOT EXISTS rebuild_outbox.sent (id text NOT NULL)",
        )
        .await
        .unwrap();
    fill(&store, "account", 30, 40, 10).await;
    let name = ProjectionName::new("tallies").unwrap();
    let other = ProjectionName::new("other-tallies").unwrap();
    let live = ProjectionRunner::new(store.clone(), model.clone(), Tallies { name: name.clone() })
        .partitions(2)
        .start()
        .await
        .unwrap();
    // A second projection (in its own schema: it was rebuilt once, before the test's work)
    // stays live throughout.
    Rebuild::new(
        store.clone(),
        model.clone(),
        Tallies {
            name: other.clone(),
        },
    )
    .partitions(2)
    .run()
    .await
    .unwrap();
    let bystander = ProjectionRunner::new(
        store.clone(),
        model.clone(),
        Tallies {
            name: other.clone(),
        },
    )
    .partitions(2)
    .start()
    .await
    .unwrap();
    let head = store.last_position().await.unwrap().unwrap();
    guard("live", live.caught_up_to(head)).await.unwrap();
    let schema1 = model.schema_of(&name).await.unwrap();
    assert_eq!(schema1, "rebuild_pg", "generation 1 is the store's schema");
    let before = read_tallies(&client, &schema1).await;

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (model, stop, reads, name) = (model.clone(), stop.clone(), reads.clone(), name.clone());
        let client = store.pool().get().await.unwrap();
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let schema = model.schema_of(&name).await.unwrap();
                let seen = read_tallies(&client, &schema).await;
                assert_eq!(
                    seen.len(),
                    before.len(),
                    "a read of {schema} saw a partial model"
                );
                for (stream, tally) in &before {
                    assert!(
                        seen[stream].count >= tally.count,
                        "{schema}: {stream} behind"
                    );
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut round = 0u64;
            // A bounded writer: the rebuild catches up with it, whatever their speeds.
            while !stop.load(Ordering::Acquire) && round < 3_000 {
                let stream = StreamId::new(format!("account-{}", round % 30)).unwrap();
                let data = EventData::json("Counted", &serde_json::json!({ "n": round })).unwrap();
                store
                    .append(&stream, ExpectedVersion::Any, vec![data])
                    .await
                    .unwrap();
                round += 1;
            }
        })
    };
    let report = guard(
        "the rebuild",
        Rebuild::new(store.clone(), model.clone(), Tallies { name: name.clone() })
            .partitions(2)
            .batch_size(100)
            .run(),
    )
    .await
    .unwrap();
    assert_eq!((report.previous, report.generation), (1, 2));
    stop.store(true, Ordering::Release);
    writer.await.unwrap();
    reader.await.unwrap();
    assert!(reads.load(Ordering::Relaxed) > 0);
    // An event after the swap: the live runner moves to the new generation at its next batch
    // and writes it there.
    store
        .append(
            &StreamId::new("account-0").unwrap(),
            ExpectedVersion::Any,
            vec![EventData::json("Counted", &serde_json::json!({ "n": 1 })).unwrap()],
        )
        .await
        .unwrap();
    let head = store.last_position().await.unwrap().unwrap();
    guard("live after the swap", live.caught_up_to(head))
        .await
        .unwrap();
    guard("the bystander", bystander.caught_up_to(head))
        .await
        .unwrap();
    assert_eq!(live.status().generation, 2);
    let schema2 = model.schema_of(&name).await.unwrap();
    assert_ne!(schema2, schema1);
    let expected = fold(&store, None).await;
    assert_eq!(read_tallies(&client, &schema2).await, expected);
    let other_schema = model.schema_of(&other).await.unwrap();
    assert_eq!(read_tallies(&client, &other_schema).await, expected);

    // Effects: both projections write the outbox, each event's effect once per projection.
    let rows = client
        .query(
            "SELECT id, count(*) FROM rebuild_outbox.sent GROUP BY id",
            &[],
        )
        .await
        .unwrap();
    let sent: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let events = expected.values().map(|t| t.count).sum::<u64>();
    assert_eq!(sent.len() as u64, events, "every event had its effects");
    let wrong: Vec<_> = sent.iter().filter(|(_, n)| **n != 2).collect();
    assert!(
        wrong.is_empty(),
        "effects not once per projection: {wrong:?}"
    );

    // Rebuilt again, keeping the old generation: both schemas are there until it is dropped.
    live.shutdown().await.unwrap();
    bystander.shutdown().await.unwrap();
    let again = Rebuild::new(store.clone(), model.clone(), Tallies { name: name.clone() })
        .partitions(2)
        .keep_old(true)
        .run()
        .await
        .unwrap();
    assert_eq!((again.previous, again.generation), (2, 3));
    let generations = model.generations(&name).await.unwrap();
    assert_eq!((generations.active, generations.kept.clone()), (3, vec![2]));
    assert_eq!(read_tallies(&client, &schema2).await, expected, "kept");
    model.drop_generation(&name, 2).await.unwrap();
    let gone = client
        .query_opt(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = $1",
            &[&schema2],
        )
        .await
        .unwrap();
    assert!(gone.is_none(), "the dropped generation's schema is gone");
    assert_eq!(
        read_tallies(&client, &model.schema_of(&name).await.unwrap()).await,
        expected
    );
}
