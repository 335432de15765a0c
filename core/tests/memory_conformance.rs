//! The in-memory store passes the whole conformance suite, directly and through `AnyStore`.

use annals::InMemoryStore;
use annals_testkit::conformance;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_store_conforms() {
    conformance::run_all(&|| async { InMemoryStore::new() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_store_conforms_through_the_dyn_twin() {
    conformance::run_all(&conformance::dynamic(|| async { InMemoryStore::new() })).await;
}
