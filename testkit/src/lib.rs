//! # annals-testkit
//!
//! Test support for [Annals](annals):
//!
//! - [`conformance`]: the store conformance suite. One public async function per behaviour,
//!   each taking a [`StoreFactory`](conformance::StoreFactory) that makes fresh stores, and
//!   [`run_all`](conformance::run_all), which every store's tests call — once with the concrete
//!   type and once through the `dyn` twin ([`conformance::dynamic`]).
//! - [`model`]: the model-based test: random sequences of appends, retries, restores, reads and
//!   reopens checked against a model of what the store must hold, run by every store through a
//!   [`ModelTarget`](model::ModelTarget) that opens it and opens it again on the same data.
//! - [`harness`]: given/when/then tests of aggregates, without a store.
//! - `postgres` (feature `postgres`): `PgServer`, a throwaway PostgreSQL server on 127.0.0.1
//!   and a free port, stopped and removed when it is dropped or when the test process ends.
//!
//! ```
//! use annals::InMemoryStore;
//! use annals_testkit::conformance;
//!
//! # #[tokio::main]
//! # async fn main() {
//! conformance::run_all(&|| async { InMemoryStore::new() }).await;
//! # }
//! ```

pub mod conformance;
pub mod harness;
pub mod model;
#[cfg(feature = "postgres")]
pub mod postgres;
