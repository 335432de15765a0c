//! Property tests: random sequences of appends with random expectations against a model of the
//! versioning rules, and the model-based test every store runs (`annals_testkit::model`: appends,
//! retries, restores, reads and reopens).

use std::collections::BTreeMap;

use annals::{
    Error, EventData, EventStore, ExpectedVersion, InMemoryStore, ReadAll, StreamId, Version,
};
use annals_testkit::model::{self, ModelTarget, Positions};
use futures::TryStreamExt;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Expect {
    Any,
    NoStream,
    StreamExists,
    Exact(u64),
}

fn op() -> impl Strategy<Value = (u8, Expect, usize)> {
    let expect = prop_oneof![
        Just(Expect::Any),
        Just(Expect::NoStream),
        Just(Expect::StreamExists),
        (0u64..6).prop_map(Expect::Exact),
    ];
    (0u8..3, expect, 1usize..4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn appends_follow_the_versioning_rules(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let store = InMemoryStore::new();
            let mut model: BTreeMap<u8, u64> = BTreeMap::new();
            let mut log_len = 0usize;
            for (stream_no, expect, count) in ops {
                let stream = StreamId::new(format!("s-{stream_no}")).unwrap();
                let current = model.get(&stream_no).copied().unwrap_or(0);
                let (expected, ok) = match expect {
                    Expect::Any => (ExpectedVersion::Any, true),
                    Expect::NoStream => (ExpectedVersion::NoStream, current == 0),
                    Expect::StreamExists => (ExpectedVersion::StreamExists, current > 0),
                    Expect::Exact(n) => (ExpectedVersion::exact(n), n == current),
                };
                let events = (0..count).map(|i| EventData::json("E", &i).unwrap()).collect();
                match store.append(&stream, expected, events).await {
                    Ok(r) => {
                        prop_assert!(ok, "{expected:?} at {current} should conflict");
                        prop_assert_eq!(r.first_version, Version::new(current + 1));
                        prop_assert_eq!(r.last_version, Version::new(current + count as u64));
                        model.insert(stream_no, current + count as u64);
                        log_len += count;
                    }
                    Err(Error::VersionConflict { actual, .. }) => {
                        prop_assert!(!ok, "{expected:?} at {current} should succeed");
                        prop_assert_eq!(actual, Version::new(current));
                    }
                    Err(e) => prop_assert!(false, "unexpected error {e}"),
                }
            }
            for (stream_no, version) in &model {
                let stream = StreamId::new(format!("s-{stream_no}")).unwrap();
                prop_assert_eq!(store.stream_version(&stream).await.unwrap(), Version::new(*version));
            }
            let all: Vec<_> = store.read_all(ReadAll::all()).try_collect().await.unwrap();
            prop_assert_eq!(all.len(), log_len);
            Ok(())
        })?;
    }
}

/// The in-memory store's data lives in the store value, shared by its clones: reopening hands
/// out another clone of the same store.
struct Memory(InMemoryStore);

impl ModelTarget for Memory {
    type Store = InMemoryStore;
    const POSITIONS: Positions = Positions::Sequence;

    async fn open(&mut self) -> InMemoryStore {
        self.0.clone()
    }

    async fn reopen(&mut self, old: InMemoryStore) -> InMemoryStore {
        drop(old);
        self.0.clone()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn the_store_behaves_like_the_model(ops in model::ops()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(model::run(Memory(InMemoryStore::new()), ops));
    }
}
