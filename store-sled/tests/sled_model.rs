//! Model-based test: random sequences of appends, retries, restores, reads and reopens against a
//! model of what the store must hold (`annals_testkit::model`), with both durabilities.

mod support;

use annals::EventStore;
use annals_sled::{Durability, SledEventStore};
use annals_testkit::model::{self, ModelTarget, Positions};
use proptest::prelude::*;
use support::{open_with, shut};

/// A store in its own temporary directory; reopening closes it and opens the same files.
struct Sled {
    dir: tempfile::TempDir,
    durability: Durability,
}

impl ModelTarget for Sled {
    type Store = SledEventStore;
    const POSITIONS: Positions = Positions::Sequence;

    async fn open(&mut self) -> SledEventStore {
        open_with(&self.dir.path().join("store"), self.durability).await
    }

    async fn reopen(&mut self, old: SledEventStore) -> SledEventStore {
        shut(old).await;
        self.open().await
    }

    async fn finish(&mut self, store: SledEventStore, events: u64) {
        let report = store.verify().await.expect("verify");
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.events, events);
        shut(store).await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]
    #[test]
    fn the_store_behaves_like_the_model(ops in model::ops(), flush in any::<bool>()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let durability = if flush { Durability::Flush } else { Durability::Buffered };
        let dir = tempfile::tempdir().expect("tempdir");
        runtime.block_on(model::run(Sled { dir, durability }, ops));
    }
}
