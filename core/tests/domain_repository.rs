//! The repository: loading, executing, the cache and its version checks, conflicts.

mod support;

use annals::{CommandContext, Error, EventStore, ExecuteError, InMemoryStore, Repository, Version};
use support::{add, Tally, TallyCommand, TallyError};

fn repo(store: &InMemoryStore) -> Repository<Tally, InMemoryStore> {
    Repository::new(store.clone())
}

#[tokio::test]
async fn a_new_aggregate_loads_empty_and_commands_build_it() {
    let store = InMemoryStore::new();
    let tallies = repo(&store);
    let empty = tallies.load("1").await.unwrap();
    assert_eq!(
        (empty.state, empty.version, empty.replayed),
        (Tally::default(), Version::EMPTY, 0)
    );

    let first = tallies
        .execute("1", add(1, 5), CommandContext::new())
        .await
        .unwrap();
    assert_eq!(
        (first.version, first.state.total, first.retries),
        (Version::new(1), 5, 0)
    );
    assert!(!first.repeated);
    let appended = first.appended.unwrap();
    assert_eq!(appended.first_version, Version::new(1));

    let many = tallies
        .execute(
            "1",
            TallyCommand::AddMany { count: 3 },
            CommandContext::new(),
        )
        .await
        .unwrap();
    assert_eq!(
        (many.version, many.state.total, many.events.len()),
        (Version::new(4), 8, 3)
    );

    // Cached: nothing replayed. Cold: everything.
    let warm = tallies.load("1").await.unwrap();
    assert!(warm.cached);
    assert_eq!((warm.replayed, warm.state.total), (0, 8));
    let cold = repo(&store).load("1").await.unwrap();
    assert!(!cold.cached);
    assert_eq!((cold.replayed, cold.state), (4, warm.state));
}

#[tokio::test]
async fn rejections_and_no_ops_record_nothing() {
    let store = InMemoryStore::new();
    let tallies = repo(&store);
    let rejected = tallies
        .execute("1", add(1, 0), CommandContext::new())
        .await
        .unwrap_err();
    assert!(matches!(rejected, ExecuteError::Rejected(TallyError::Zero)));
    assert!(!rejected.is_conflict());
    assert_eq!(rejected.to_string(), "command rejected: cannot add zero");

    let nothing = tallies
        .execute("1", TallyCommand::Nothing, CommandContext::new())
        .await
        .unwrap();
    assert!(nothing.events.is_empty() && nothing.appended.is_none());
    assert!(store.is_empty());
}

#[tokio::test]
async fn a_stale_cache_is_caught_up_after_a_conflict() {
    let store = InMemoryStore::new();
    // Two repositories over one store: two processes with their own caches.
    let a = repo(&store);
    let b = repo(&store);
    a.execute("1", add(1, 1), CommandContext::new())
        .await
        .unwrap();
    b.execute("1", add(2, 10), CommandContext::new())
        .await
        .unwrap();

    // `a` still caches version 1: its append conflicts, it catches up and tries again.
    let outcome = a
        .execute("1", add(3, 100), CommandContext::new())
        .await
        .unwrap();
    assert_eq!(outcome.retries, 1);
    assert_eq!(
        (outcome.version, outcome.state.total),
        (Version::new(3), 111)
    );
    assert_eq!(outcome.state.folded, 3, "every event folded once");
    let cached = a.load("1").await.unwrap();
    assert!(cached.cached);
    assert_eq!(
        (cached.version, cached.replayed, cached.state.total),
        (Version::new(3), 0, 111)
    );
}

#[tokio::test]
async fn a_rejection_on_a_stale_cache_is_checked_against_the_store() {
    let store = InMemoryStore::new();
    let a = repo(&store);
    let b = repo(&store);
    a.execute("1", add(1, 1), CommandContext::new())
        .await
        .unwrap();
    b.execute("1", add(2, 50), CommandContext::new())
        .await
        .unwrap();
    // On `a`'s cached state (total 1) taking 40 is refused; on the real one (51) it is not.
    let outcome = a
        .execute("1", TallyCommand::Take { n: 40 }, CommandContext::new())
        .await
        .unwrap();
    assert_eq!(
        (outcome.version, outcome.state.total),
        (Version::new(3), 11)
    );
    // And a real refusal is still one.
    let refused = a
        .execute("1", TallyCommand::Take { n: 12 }, CommandContext::new())
        .await
        .unwrap_err();
    assert_eq!(
        refused.into_rejection(),
        Some(TallyError::NotEnough { total: 11, n: 12 })
    );
}

#[tokio::test]
async fn a_conflict_outlasting_the_retries_is_returned_as_a_conflict() {
    let store = InMemoryStore::new();
    let a: Repository<Tally, _> = Repository::builder(store.clone())
        .max_conflict_retries(0)
        .build()
        .unwrap();
    let b = repo(&store);
    a.execute("1", add(1, 1), CommandContext::new())
        .await
        .unwrap();
    b.execute("1", add(2, 1), CommandContext::new())
        .await
        .unwrap();
    let error = a
        .execute("1", add(3, 1), CommandContext::new())
        .await
        .unwrap_err();
    assert!(error.is_conflict(), "{error}");
    match error.store_error() {
        Some(Error::VersionConflict {
            expected, actual, ..
        }) => {
            assert_eq!(*expected, annals::ExpectedVersion::exact(1));
            assert_eq!(*actual, Version::new(2));
        }
        other => panic!("{other:?}"),
    }
    // The stale state was evicted: the next command succeeds at once.
    let next = a
        .execute("1", add(4, 1), CommandContext::new())
        .await
        .unwrap();
    assert_eq!((next.retries, next.version), (0, Version::new(3)));
    assert_eq!(
        store
            .stream_version(&a.stream_id("1").unwrap())
            .await
            .unwrap(),
        Version::new(3)
    );
}

#[tokio::test]
async fn the_cache_is_bounded_and_optional() {
    let store = InMemoryStore::new();
    let small: Repository<Tally, _> = Repository::builder(store.clone())
        .cache_capacity(4)
        .build()
        .unwrap();
    for id in 0..20 {
        small
            .execute(id, add(id, 1), CommandContext::new())
            .await
            .unwrap();
    }
    let mut cached = 0;
    for id in 0..20 {
        let loaded = small.load(id).await.unwrap();
        assert_eq!(loaded.state.total, 1);
        cached += usize::from(loaded.cached);
    }
    assert!(cached <= 4, "{cached} of 20 came from a cache of 4");

    let uncached: Repository<Tally, _> = Repository::builder(store.clone())
        .cache_capacity(0)
        .build()
        .unwrap();
    uncached
        .execute(0, add(99, 1), CommandContext::new())
        .await
        .unwrap();
    let loaded = uncached.load(0).await.unwrap();
    assert!(!loaded.cached);
    assert_eq!((loaded.replayed, loaded.state.total), (2, 2));
}

#[tokio::test]
async fn bad_ids_are_clear_errors() {
    let tallies = repo(&InMemoryStore::new());
    match tallies.load("a\u{7}b").await {
        Err(Error::InvalidStreamId { id, .. }) => assert_eq!(id, "tally-a\u{7}b"),
        other => panic!("{other:?}"),
    }
    let long = "x".repeat(300);
    assert!(matches!(
        tallies
            .execute(&long, add(1, 1), CommandContext::new())
            .await,
        Err(ExecuteError::Store(Error::InvalidStreamId { .. }))
    ));
}

fn is_send<T: Send>(_: &T) {}
fn is_send_sync<T: Send + Sync>() {}

#[test]
fn repositories_and_their_futures_are_send() {
    is_send_sync::<Repository<Tally, InMemoryStore>>();
    is_send_sync::<Repository<Tally, annals::AnyStore, annals::codec::Bincode>>();
    is_send_sync::<ExecuteError<TallyError>>();
    let tallies = repo(&InMemoryStore::new());
    is_send(&tallies.load("1"));
    is_send(&tallies.execute("1", add(1, 1), CommandContext::new()));
    is_send(&tallies.load_at("1", Version::new(1)));
    is_send(&tallies.load_as_of("1", annals::Timestamp::now()));
    is_send(&tallies.changes("1", Version::EMPTY, Version::new(1)));
    is_send(&tallies.snapshot("1"));
}
