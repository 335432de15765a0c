//! Public types and futures are `Send + Sync` where users need them to be (spawned tasks,
//! shared state).

use annals::{
    AnyStore, EventStore, ExpectedVersion, InMemoryBus, InMemoryStore, Leases, ReadAll, StreamId,
};

fn is_send<T: Send>(_: &T) {}
fn is_send_sync<T: Send + Sync>() {}

#[test]
fn public_types_are_send_and_sync() {
    is_send_sync::<InMemoryStore>();
    is_send_sync::<InMemoryBus<InMemoryStore>>();
    is_send_sync::<AnyStore>();
    is_send_sync::<annals::Error>();
    is_send_sync::<annals::RecordedEvent>();
    is_send_sync::<annals::CommitWatch>();
    is_send_sync::<annals::Lease>();
    is_send_sync::<annals::LocalLeases>();
    is_send_sync::<annals::VerifyReport>();
    is_send_sync::<annals::RecordPlace>();
}

#[test]
fn store_futures_and_streams_are_send() {
    let store = InMemoryStore::new();
    let any: AnyStore = annals::IntoAnyStore::into_any(store.clone());
    let stream = StreamId::new("a-1").unwrap();
    is_send(&store.append(&stream, ExpectedVersion::Any, vec![]));
    is_send(&store.read_all(ReadAll::all()));
    is_send(&any.append(&stream, ExpectedVersion::Any, vec![]));
    is_send(&any.stream_version(&stream));
    is_send(&any.verify());
    is_send(&any.close());
    is_send(&any.try_lease("relay"));
    is_send(&store.try_lease("relay"));
    is_send(&annals::subscribe_all(
        any.clone(),
        annals::Position::START,
        annals::Filter::all(),
    ));
}
