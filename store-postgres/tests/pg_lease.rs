//! Leases: one owner at a time, released on drop, and a lost connection is noticed.

mod support;

use annals::Leases;
use annals_postgres::lease_key;
use support::{raw_client, server, HANG_GUARD};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_owner_at_a_time() {
    let store = support::fresh_store("lease").await;
    let other = support::init(
        annals_postgres::PgEventStore::builder()
            .connection_string(server().connection_string())
            .schema(store.schema()),
    )
    .await;
    let lease = store
        .try_lease("partition-1")
        .await
        .expect("try")
        .expect("free");
    assert!(!lease.is_lost());
    assert!(
        other.try_lease("partition-1").await.expect("try").is_none(),
        "held by another session"
    );
    assert!(
        other.try_lease("partition-2").await.expect("try").is_some(),
        "names are independent"
    );
    lease.release().await.expect("release");
    let again = other
        .try_lease("partition-1")
        .await
        .expect("try")
        .expect("released");
    drop(again);
    // Dropping closes the connection, which releases the lock; wait for the server to see it.
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            if let Some(l) = store.try_lease("partition-1").await.expect("try") {
                return l;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a dropped lease was never released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_noticed() {
    let store = support::fresh_store("lost").await;
    let lease = store.try_lease("relay").await.expect("try").expect("free");
    let admin = raw_client(server()).await;
    let killed: bool = admin
        .query_one(
            "SELECT pg_terminate_backend(pid) FROM pg_locks \
             WHERE locktype = 'advisory' AND objsubid = 1 AND granted \
             AND ((classid::bigint << 32) | objid::bigint) = $1",
            &[&lease_key(store.schema(), "relay")],
        )
        .await
        .expect("terminate")
        .get(0);
    assert!(killed, "the lease's session was found by its key");
    tokio::time::timeout(HANG_GUARD, lease.lost())
        .await
        .expect("the loss was not noticed");
    assert!(lease.is_lost());
    // Someone else can take it now.
    assert!(store.try_lease("relay").await.expect("try").is_some());
}
