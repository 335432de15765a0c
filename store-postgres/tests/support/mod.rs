//! Shared helpers of the PostgreSQL store's tests: one throwaway server per test binary, one
//! fresh schema per store.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use annals::{EventData, Metadata};
use annals_postgres::{PgEventStore, PgEventStoreBuilder};
use annals_testkit::postgres::PgServer;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;

/// A guard against hangs, never a speed assertion.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

/// The server of this test binary.
pub fn server() -> &'static PgServer {
    PgServer::shared()
}

/// A schema name no other store of this binary uses.
pub fn fresh_schema(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}_{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A builder on `server` with a fresh schema and a short poll interval.
pub fn builder_on(server: &PgServer, prefix: &str) -> PgEventStoreBuilder {
    builder_with_schema(server, &fresh_schema(prefix))
}

/// A builder on `server` and `schema` with a short poll interval.
pub fn builder_with_schema(server: &PgServer, schema: &str) -> PgEventStoreBuilder {
    PgEventStore::builder()
        .connection_string(server.connection_string())
        .schema(schema)
        .poll_interval(Duration::from_millis(20))
        .lease_heartbeat(Duration::from_millis(100))
}

/// A store on the shared server, on a fresh schema, initialised.
pub async fn fresh_store(prefix: &str) -> PgEventStore {
    init(builder_on(server(), prefix)).await
}

/// Another store on `schema` of the shared server (as another process would open), initialised.
pub async fn store_on(schema: &str) -> PgEventStore {
    init(builder_with_schema(server(), schema)).await
}

/// Opens and initialises.
pub async fn init(builder: PgEventStoreBuilder) -> PgEventStore {
    let store = builder.open().await.expect("open the store");
    store.init().await.expect("init the schema");
    store
}

/// A raw client on `server`, its connection driven by a task.
pub async fn raw_client(server: &PgServer) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&server.connection_string(), tokio_postgres::NoTls)
            .await
            .expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// An event with a JSON payload `{"n": n}`.
pub fn event(event_type: &str, n: u64) -> EventData {
    EventData::json(event_type, &serde_json::json!({ "n": n }))
        .expect("json")
        .with_metadata(Metadata::now())
}

/// A small deterministic pseudo-random generator (xorshift), so runs can be replayed by seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Waits until global readers of `store` can see `position` (every older transaction, of any
/// test sharing the server, has ended).
pub async fn wait_visible<S: annals::EventStore>(store: &S, position: annals::Position) {
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            if store.last_position().await.expect("last position") >= Some(position) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the position never became visible");
}

/// A LISTEN connection of our own on `channel` of the shared server: how many notifications
/// arrived on it. Keep the client: dropping it ends the connection.
pub async fn count_notifications(
    channel: &str,
) -> (tokio_postgres::Client, watch::Receiver<usize>) {
    let (client, mut connection) =
        tokio_postgres::connect(&server().connection_string(), tokio_postgres::NoTls)
            .await
            .expect("connect");
    let (tx, count) = watch::channel(0);
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(_) = message {
                tx.send_modify(|n| *n += 1);
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .await
        .expect("listen");
    (client, count)
}

/// Waits until `count` reaches `n` (panics with `what` past the hang guard).
pub async fn wait_for_count(count: &mut watch::Receiver<usize>, n: usize, what: &str) {
    tokio::time::timeout(HANG_GUARD, count.wait_for(|seen| *seen >= n))
        .await
        .unwrap_or_else(|_| panic!("{what}"))
        .expect("listener");
}

/// Waits until `store`'s commit signal has reached `position` (its background task has woken
/// subscribers for everything up to it). A subscription made after this has no wake-up for
/// those events still to come: only something new can wake it once it has read them, so a
/// test can tell what woke it.
pub async fn wait_signalled<S: annals::EventStore>(store: &S, position: annals::Position) {
    let watch = store.watch_commits();
    tokio::time::timeout(HANG_GUARD, async {
        while watch.latest() < position {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the store never signalled the position");
}

/// Held by the tests of a binary that must not run beside each other: tests about what wakes a
/// subscriber, which another test could wake by accident (cutting every LISTEN connection of
/// the server, or holding the readers' horizon back, which makes stores poll).
pub async fn alone() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}
