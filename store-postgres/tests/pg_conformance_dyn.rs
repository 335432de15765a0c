//! The PostgreSQL store passes the whole conformance suite through the `dyn` twin (`AnyStore`).

mod support;

use annals_testkit::conformance;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_conforms_through_the_dyn_twin() {
    conformance::run_all(&conformance::dynamic(|| support::fresh_store("dynconf"))).await;
}
