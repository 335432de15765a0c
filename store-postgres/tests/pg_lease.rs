//! Leases: one holder at a time, epochs that grow with every grant, takeover after the time to
//! live when the holder stops renewing (the holder learning it lost first), a taken lease
//! noticed at the next heartbeat, and the fence checked inside a transaction.

mod support;

use std::time::Duration;

use annals::{EventStore, Leases};
use support::{builder_with_schema, init, raw_client, server, HANG_GUARD};

async fn guard<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_at_a_time_with_growing_epochs() {
    let store = support::fresh_store("lease").await;
    let other = init(builder_with_schema(server(), store.schema()).lease_holder("worker-b")).await;
    let lease = store
        .try_lease("partition-1")
        .await
        .expect("try")
        .expect("free");
    assert!(!lease.is_lost());
    assert!(
        other.try_lease("partition-1").await.expect("try").is_none(),
        "held by another store"
    );
    let second = other
        .try_lease("partition-2")
        .await
        .expect("try")
        .expect("names are independent");
    let listed = store.leases("partition-").await.expect("list");
    assert_eq!(
        listed
            .iter()
            .map(|l| (l.name.as_str(), l.holder.as_str(), l.epoch))
            .collect::<Vec<_>>(),
        vec![
            ("partition-1", store.lease_holder(), lease.epoch()),
            ("partition-2", "worker-b", second.epoch()),
        ]
    );
    let first_epoch = lease.epoch();
    lease.release().await.expect("release");
    let again = other
        .try_lease("partition-1")
        .await
        .expect("try")
        .expect("released");
    assert!(
        again.epoch() > first_epoch,
        "every grant gets a higher epoch"
    );
    drop(again);
    // A dropped lease is freed in the background.
    guard("a dropped lease to be freed", async {
        loop {
            if let Some(l) = store.try_lease("partition-1").await.expect("try") {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_stops_renewing_loses_the_lease_first_then_it_is_taken_over_and_fenced() {
    let schema = support::fresh_schema("ttl");
    let short = |holder: &str| {
        builder_with_schema(server(), &schema)
            .lease_heartbeat(Duration::from_millis(50))
            .lease_ttl(Duration::from_millis(400))
            .lease_holder(holder)
    };
    let a = init(short("a")).await;
    let b = init(short("b")).await;
    let lease = a.try_lease("relay").await.expect("try").expect("free");
    // Renewed: still held well past the time to live.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!lease.is_lost());
    assert!(b.try_lease("relay").await.expect("try").is_none());
    // `a` can no longer reach the server (closed, as if cut off): it stops renewing.
    a.close().await.expect("close");
    guard("the holder to notice", lease.lost()).await;
    let taken = guard("the takeover", async {
        loop {
            if let Some(l) = b.try_lease("relay").await.expect("try") {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(taken.epoch() > lease.epoch());
    let admin = raw_client(server()).await;
    assert!(!b.check_fence(&admin, "relay", lease.epoch()).await.unwrap());
    assert!(b.check_fence(&admin, "relay", taken.epoch()).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_by_someone_else_is_noticed_at_the_next_heartbeat() {
    let store = support::fresh_store("taken").await;
    let lease = store.try_lease("relay").await.expect("try").expect("free");
    let admin = raw_client(server()).await;
    let moved = admin
        .execute(
            &format!(
                "UPDATE \"{}\".leases SET holder = 'intruder', epoch = epoch + 1 WHERE name = 'relay'",
                store.schema()
            ),
            &[],
        )
        .await
        .expect("take it away");
    assert_eq!(moved, 1);
    guard("the loss to be noticed", lease.lost()).await;
    assert!(lease.is_lost());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_holds_back_a_takeover_until_the_checking_transaction_ends() {
    let schema = support::fresh_schema("fence");
    let quick = || {
        builder_with_schema(server(), &schema)
            .lease_heartbeat(Duration::from_millis(50))
            .lease_ttl(Duration::from_millis(300))
    };
    let a = init(quick()).await;
    let b = init(quick().lease_holder("b")).await;
    let lease = a.try_lease("p").await.expect("try").expect("free");
    let mut client = raw_client(server()).await;
    let tx = client.transaction().await.expect("begin");
    assert!(a.check_fence(&tx, "p", lease.epoch()).await.expect("check"));
    // The holder dies (its lease expires) while the transaction holds the row.
    a.close().await.expect("close");
    guard("the loss", lease.lost()).await;
    let takeover = tokio::spawn(async move {
        loop {
            if let Some(l) = b.try_lease("p").await.expect("try") {
                return l.epoch();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // The takeover waits on the row lock: it cannot finish while the transaction is open.
    let admin = raw_client(server()).await;
    guard("the takeover to wait on the fenced row", async {
        loop {
            let waiting: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE wait_event_type = 'Lock' AND query LIKE '%leases%'",
                    &[],
                )
                .await
                .expect("activity")
                .get(0);
            if waiting > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        !takeover.is_finished(),
        "a takeover committed inside a fenced transaction"
    );
    tx.commit().await.expect("commit");
    let epoch = guard("the takeover after the commit", takeover)
        .await
        .expect("task");
    assert!(epoch > lease.epoch());
}
