//! Snapshots: bounded loads, schema changes, equality with a full replay, and failures that
//! never fail a command.

mod support;

use annals::{
    codec::Bincode, CommandContext, InMemoryStore, Repository, Snapshot, SnapshotPolicy,
    SnapshotStore, Version,
};
use support::{add, BrokenSnapshots, Tally, TallyCommand, TallyV2};

fn every_100(store: &InMemoryStore) -> Repository<Tally, InMemoryStore> {
    Repository::builder(store.clone())
        .snapshot_policy(SnapshotPolicy::Every(100))
        .build()
        .unwrap()
}

async fn write(tallies: &Repository<Tally, InMemoryStore>, events: u64) {
    for i in 0..events {
        tallies
            .execute("1", add(i % 10, i % 10 + 1), CommandContext::new())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn ten_thousand_events_load_by_reading_at_most_a_hundred() {
    let store = InMemoryStore::new();
    write(&every_100(&store), 10_037).await;

    let loaded = every_100(&store).load("1").await.unwrap();
    assert!(!loaded.cached);
    assert_eq!(loaded.snapshot, Some(Version::new(10_000)));
    assert_eq!(loaded.replayed, 37);
    assert!(loaded.replayed <= 100);
    assert_eq!(loaded.version, Version::new(10_037));

    let full = every_100(&store)
        .load_at("1", Version::new(10_037))
        .await
        .unwrap();
    assert_eq!(full.replayed, 10_037);
    assert_eq!(loaded.state, full.state);
    assert_eq!(loaded.state.folded, 10_037);
}

#[tokio::test]
async fn a_snapshot_equals_the_full_fold_of_its_stream_at_its_version() {
    let store = InMemoryStore::new();
    let tallies = every_100(&store);
    let mut checked = 0;
    // Batches of uneven sizes, so snapshots land at many versions, not only at multiples.
    for count in [1, 99, 3, 150, 7, 64, 230, 1, 45] {
        tallies
            .execute("1", TallyCommand::AddMany { count }, CommandContext::new())
            .await
            .unwrap();
        tallies
            .execute("1", add(9_999, 2), CommandContext::new())
            .await
            .unwrap();
        if let Some((version, state)) = tallies.snapshot("1").await.unwrap() {
            let replayed = tallies.load_at("1", version).await.unwrap();
            assert_eq!(replayed.version, version);
            assert_eq!(
                state, replayed.state,
                "snapshot at {version} differs from the replay"
            );
            assert_eq!(
                state.folded,
                version.get(),
                "each event folded exactly once"
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} snapshots checked");
}

#[tokio::test]
async fn a_snapshot_of_another_state_schema_is_ignored_and_the_stream_replayed() {
    let store = InMemoryStore::new();
    write(&every_100(&store), 250).await;
    let v1 = every_100(&store).load("1").await.unwrap();
    assert_eq!(v1.snapshot, Some(Version::new(200)));

    let v2: Repository<TallyV2, _> = Repository::builder(store.clone())
        .snapshot_policy(SnapshotPolicy::Never)
        .build()
        .unwrap();
    let loaded = v2.load("1").await.unwrap();
    assert_eq!(loaded.snapshot, None);
    assert_eq!(loaded.replayed, 250);
    assert_eq!(loaded.state.0, v1.state);
    assert_eq!(v2.snapshot("1").await.unwrap(), None);
}

#[tokio::test]
async fn a_long_replay_leaves_a_snapshot_behind() {
    let store = InMemoryStore::new();
    // Written without snapshots...
    let plain: Repository<Tally, _> = Repository::new(store.clone());
    for _ in 0..3 {
        plain
            .execute(
                "1",
                TallyCommand::AddMany { count: 50 },
                CommandContext::new(),
            )
            .await
            .unwrap();
    }
    // ...then loaded with them on: the first load replays everything and saves one.
    let first = every_100(&store).load("1").await.unwrap();
    assert_eq!((first.replayed, first.snapshot), (150, None));
    let second = every_100(&store).load("1").await.unwrap();
    assert_eq!(
        (second.replayed, second.snapshot),
        (0, Some(Version::new(150)))
    );
    assert_eq!(second.state, first.state);
}

#[tokio::test]
async fn an_undecodable_snapshot_is_ignored() {
    let store = InMemoryStore::new();
    let tallies = every_100(&store);
    write(&tallies, 120).await;
    store
        .save_snapshot(Snapshot::new(
            tallies.stream_id("1").unwrap(),
            Version::new(100),
            "application/json",
            b"{ not json".to_vec(),
        ))
        .await
        .unwrap();
    assert!(tallies.snapshot("1").await.is_err(), "a check reports it");
    let loaded = every_100(&store).load("1").await.unwrap();
    assert_eq!((loaded.snapshot, loaded.replayed), (None, 120));
    // The replay was long enough to leave a good snapshot in its place.
    let (version, state) = tallies.snapshot("1").await.unwrap().unwrap();
    assert_eq!((version, state), (Version::new(120), loaded.state));
}

#[tokio::test]
async fn failed_snapshot_writes_never_fail_a_command() {
    let store = BrokenSnapshots::default();
    let tallies: Repository<Tally, _> = Repository::builder(store.clone())
        .snapshot_policy(SnapshotPolicy::Every(2))
        .build()
        .unwrap();
    for i in 0..5 {
        tallies
            .execute("1", add(i, 1), CommandContext::new())
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .0
            .load_snapshot(&tallies.stream_id("1").unwrap())
            .await
            .unwrap(),
        None
    );
    let loaded = tallies.load("1").await.unwrap();
    assert_eq!((loaded.version, loaded.state.total), (Version::new(5), 5));
}

#[tokio::test]
async fn bincode_snapshots_are_read_by_a_json_repository() {
    let store = InMemoryStore::new();
    let compact: Repository<Tally, _, _> = Repository::builder(store.clone())
        .codec(Bincode)
        .snapshot_policy(SnapshotPolicy::Every(10))
        .build()
        .unwrap();
    for i in 0..25 {
        compact
            .execute("1", add(i, 3), CommandContext::new())
            .await
            .unwrap();
    }
    let json = every_100(&store).load("1").await.unwrap();
    assert_eq!((json.snapshot, json.replayed), (Some(Version::new(20)), 5));
    assert_eq!(json.state.total, 75);
}

#[tokio::test]
async fn take_snapshot_saves_the_current_state_whatever_the_policy() {
    let store = InMemoryStore::new();
    let tallies: Repository<Tally, InMemoryStore> = Repository::new(store.clone());
    assert_eq!(
        tallies.take_snapshot("1").await.unwrap(),
        None,
        "nothing to snapshot yet"
    );
    write(&tallies, 7).await;
    assert_eq!(
        tallies.snapshot("1").await.unwrap(),
        None,
        "the policy is Never"
    );
    assert_eq!(
        tallies.take_snapshot("1").await.unwrap(),
        Some(Version::new(7))
    );
    let (version, state) = tallies.snapshot("1").await.unwrap().expect("a snapshot");
    assert_eq!(version, Version::new(7));
    let full = tallies.load_at("1", Version::new(7)).await.unwrap();
    assert_eq!(state, full.state, "the snapshot is the fold of its stream");
    let loaded = Repository::<Tally, InMemoryStore>::new(store)
        .load("1")
        .await
        .unwrap();
    assert_eq!(
        (loaded.snapshot, loaded.replayed),
        (Some(Version::new(7)), 0)
    );
}
