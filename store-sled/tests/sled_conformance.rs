//! The sled store passes the whole conformance suite, directly and through `AnyStore`, in both
//! durability modes.

use annals_sled::{Durability, SledEventStore};
use annals_testkit::conformance;

async fn store(durability: Durability) -> SledEventStore {
    SledEventStore::builder()
        .temporary()
        .durability(durability)
        .open()
        .await
        .expect("open a temporary store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sled_store_conforms() {
    conformance::run_all(&|| store(Durability::Flush)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sled_store_conforms_through_the_dyn_twin() {
    conformance::run_all(&conformance::dynamic(|| store(Durability::Flush))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buffered_sled_store_conforms() {
    conformance::run_all(&|| store(Durability::Buffered)).await;
}

#[tokio::test(flavor = "current_thread")]
async fn sled_store_conforms_on_a_single_threaded_runtime() {
    conformance::run_all(&|| store(Durability::Flush)).await;
}
