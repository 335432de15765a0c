//! Model-based test: random sequences of appends, retries, reads and reopens against a model of
//! what the store must hold (`annals_testkit::model`), each case on a fresh schema; reopening
//! closes the store and opens a new one on the same schema, as a restarted process would, and
//! each case ends with the store's own `verify`.

mod support;

use annals::EventStore;
use annals_postgres::PgEventStore;
use annals_testkit::model::{self, ModelTarget, Positions};
use proptest::prelude::*;

/// A fresh schema on the binary's server.
struct Pg {
    schema: String,
}

impl Pg {
    async fn store(&self) -> PgEventStore {
        support::init(support::builder_with_schema(
            support::server(),
            &self.schema,
        ))
        .await
    }
}

impl ModelTarget for Pg {
    type Store = PgEventStore;
    const POSITIONS: Positions = Positions::Increasing;

    async fn open(&mut self) -> PgEventStore {
        self.store().await
    }

    async fn reopen(&mut self, old: PgEventStore) -> PgEventStore {
        old.close().await.expect("close");
        self.store().await
    }

    async fn finish(&mut self, store: PgEventStore, events: u64) {
        let report = store.verify().await.expect("verify");
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.events, events);
        store.close().await.expect("close");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn the_store_behaves_like_the_model(ops in model::ops()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let schema = support::fresh_schema("model");
        runtime.block_on(model::run(Pg { schema }, ops));
    }
}
