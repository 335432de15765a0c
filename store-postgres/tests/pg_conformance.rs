//! The PostgreSQL store passes the whole conformance suite, each behaviour on a fresh schema of
//! a real server. (The `dyn` run is in its own binary, so its own server: no transaction of one
//! run can hold back the other's readers.)

mod support;

use annals_testkit::conformance;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_conforms() {
    conformance::run_all(&|| support::fresh_store("conf")).await;
}
