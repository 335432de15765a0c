//! The store conformance suite: the executable contract of [`EventStore`], [`SnapshotStore`],
//! [`CheckpointStore`] and [`Leases`].
//!
//! Every function takes a [`StoreFactory`] and makes the fresh stores it needs, so behaviours
//! never see each other's data. A failing behaviour panics with a message naming what broke,
//! like any assertion. Closures returning a future are factories:
//!
//! ```
//! # use annals::InMemoryStore;
//! # use annals_testkit::conformance;
//! # #[tokio::main] async fn main() {
//! let factory = || async { InMemoryStore::new() };
//! conformance::idempotent_reappend(&factory).await;
//! conformance::run_all(&conformance::dynamic(factory)).await;
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use annals::{
    AnyStore, CheckpointStore, EventData, EventStore, IntoAnyStore, Leases, Metadata, ReadAll,
    ReadStream, RecordedEvent, SnapshotStore, StreamId,
};
use futures::TryStreamExt;

mod admin;
mod appends;
mod concurrency;
mod limits;
mod reads;
mod restore;
mod snapshots;

pub use admin::{close, leases, verify_a_sound_store};
pub use appends::{
    append_and_read_back, atomic_batch, expected_version_rules, idempotent_reappend,
};
pub use concurrency::{concurrent_exact_appends, subscribe_while_appending};
pub use limits::rejects_bad_input;
pub use reads::{read_all_filters, read_all_paging, read_stream_edges, stream_listing_and_signal};
pub use restore::{restore_is_all_or_nothing, restore_keeps_versions_and_times};
pub use snapshots::{checkpoints, snapshots};

/// Everything a store under test must be.
pub trait TestStore:
    EventStore + SnapshotStore + CheckpointStore + Leases + Clone + 'static
{
}
impl<T: EventStore + SnapshotStore + CheckpointStore + Leases + Clone + 'static> TestStore for T {}

/// Makes a fresh, empty store for each behaviour.
pub trait StoreFactory: Send + Sync {
    /// The store type.
    type Store: TestStore;
    /// A new empty store.
    fn new_store(&self) -> impl Future<Output = Self::Store> + Send;
}

impl<F, Fut, S> StoreFactory for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = S> + Send,
    S: TestStore,
{
    type Store = S;
    fn new_store(&self) -> impl Future<Output = S> + Send {
        self()
    }
}

/// A factory whose stores are those of `inner` behind the `dyn` twin ([`AnyStore`]).
pub fn dynamic<F: StoreFactory>(inner: F) -> DynFactory<F> {
    DynFactory(inner)
}

/// See [`dynamic`].
#[derive(Debug)]
pub struct DynFactory<F>(F);

impl<F: StoreFactory> StoreFactory for DynFactory<F> {
    type Store = AnyStore;
    async fn new_store(&self) -> AnyStore {
        self.0.new_store().await.into_any()
    }
}

/// Runs every behaviour of the suite, in order, each on fresh stores.
pub async fn run_all<F: StoreFactory>(factory: &F) {
    macro_rules! run {
        ($($behaviour:ident),* $(,)?) => {$(
            eprintln!("conformance: {}", stringify!($behaviour));
            $behaviour(factory).await;
        )*};
    }
    run!(
        append_and_read_back,
        expected_version_rules,
        atomic_batch,
        idempotent_reappend,
        concurrent_exact_appends,
        subscribe_while_appending,
        read_stream_edges,
        read_all_filters,
        read_all_paging,
        rejects_bad_input,
        snapshots,
        checkpoints,
        stream_listing_and_signal,
        restore_keeps_versions_and_times,
        restore_is_all_or_nothing,
        leases,
        verify_a_sound_store,
        close,
    );
}

/// The longest any single wait in the suite may take before it is called a hang. This is a
/// guard against a broken store hanging the test run, never a speed assertion.
pub(crate) const HANG_GUARD: Duration = Duration::from_secs(60);

pub(crate) fn sid(s: &str) -> StreamId {
    StreamId::new(s).expect("valid stream id")
}

/// An event with a JSON payload `{"n": n}` and fixed metadata.
pub(crate) fn event(event_type: &str, n: u64) -> EventData {
    EventData::json(event_type, &serde_json::json!({ "n": n }))
        .expect("json")
        .with_metadata(Metadata::now())
}

pub(crate) async fn read_stream<S: EventStore>(store: &S, stream: &StreamId) -> Vec<RecordedEvent> {
    store
        .read_stream(stream, ReadStream::forward())
        .try_collect()
        .await
        .expect("read_stream")
}

pub(crate) async fn read_all<S: EventStore>(store: &S) -> Vec<RecordedEvent> {
    store
        .read_all(ReadAll::all())
        .try_collect()
        .await
        .expect("read_all")
}

/// Asserts that `events` are in strictly increasing position order.
pub(crate) fn assert_positions_increase(events: &[RecordedEvent], what: &str) {
    for pair in events.windows(2) {
        assert!(
            pair[0].position < pair[1].position,
            "{what}: position {} is not after {}",
            pair[1].position,
            pair[0].position
        );
    }
}
