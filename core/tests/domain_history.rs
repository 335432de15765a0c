//! Replay to a point: `load_at`, `load_as_of` and `changes` give the exact historical states.

mod support;

use annals::{
    Aggregate, CommandContext, EventStore, InMemoryStore, ReadStream, Repository, Timestamp,
    Version,
};
use futures::TryStreamExt;
use support::{add, Tally, TallyCommand, TallyEvent};

async fn history() -> (Repository<Tally, InMemoryStore>, Vec<annals::RecordedEvent>) {
    let store = InMemoryStore::new();
    let tallies: Repository<Tally, _> = Repository::builder(store.clone())
        .snapshot_policy(annals::SnapshotPolicy::Every(3))
        .build()
        .unwrap();
    for i in 1..=6 {
        tallies
            .execute("1", add(i, i), CommandContext::new())
            .await
            .unwrap();
        // Commands spread over time, so that recorded_at separates them.
        let before = Timestamp::now();
        while Timestamp::now() == before {
            tokio::task::yield_now().await;
        }
    }
    tallies
        .execute("1", TallyCommand::Take { n: 4 }, CommandContext::new())
        .await
        .unwrap();
    let recorded = store
        .read_stream(&tallies.stream_id("1").unwrap(), ReadStream::forward())
        .try_collect()
        .await
        .unwrap();
    (tallies, recorded)
}

fn expected(n: usize) -> Tally {
    let events: Vec<TallyEvent> = (1..=6u64)
        .map(|i| TallyEvent::Added { tag: i, n: i })
        .chain([TallyEvent::Taken { n: 4 }])
        .take(n)
        .collect();
    Tally::fold(&events)
}

#[tokio::test]
async fn load_at_gives_the_state_at_each_version() {
    let (tallies, _) = history().await;
    for v in 0..=7u64 {
        let loaded = tallies.load_at("1", Version::new(v)).await.unwrap();
        assert_eq!(loaded.version, Version::new(v));
        assert_eq!(
            loaded.state,
            expected(usize::try_from(v).unwrap()),
            "at version {v}"
        );
        assert_eq!(
            (loaded.replayed, loaded.snapshot, loaded.cached),
            (v, None, false)
        );
    }
    let past_the_end = tallies.load_at("1", Version::new(100)).await.unwrap();
    assert_eq!(
        (past_the_end.version, past_the_end.state),
        (Version::new(7), expected(7))
    );
    assert_eq!(
        tallies.load_at("2", Version::new(3)).await.unwrap().state,
        Tally::default()
    );
}

#[tokio::test]
async fn load_as_of_gives_the_state_at_each_moment() {
    let (tallies, recorded) = history().await;
    for (i, event) in recorded.iter().enumerate() {
        let loaded = tallies.load_as_of("1", event.recorded_at).await.unwrap();
        assert_eq!(loaded.version, event.version);
        assert_eq!(loaded.state, expected(i + 1), "as of event {}", i + 1);
        let just_before = Timestamp::from_unix_micros(event.recorded_at.unix_micros() - 1);
        let earlier = tallies.load_as_of("1", just_before).await.unwrap();
        assert_eq!(earlier.state, expected(i), "just before event {}", i + 1);
    }
    let epoch = tallies
        .load_as_of("1", Timestamp::UNIX_EPOCH)
        .await
        .unwrap();
    assert_eq!(
        (epoch.version, epoch.state),
        (Version::EMPTY, Tally::default())
    );
}

#[tokio::test]
async fn changes_show_both_states_and_the_events_between() {
    let (tallies, recorded) = history().await;
    let changes = tallies
        .changes("1", Version::new(2), Version::new(5))
        .await
        .unwrap();
    assert_eq!(
        (changes.from, changes.to),
        (Version::new(2), Version::new(5))
    );
    assert_eq!(changes.before, expected(2));
    assert_eq!(changes.after, expected(5));
    let versions: Vec<u64> = changes.events.iter().map(|e| e.version.get()).collect();
    assert_eq!(versions, [3, 4, 5]);
    assert_eq!(changes.events[0].event, TallyEvent::Added { tag: 3, n: 3 });
    assert_eq!(changes.events[0].id, recorded[2].id);
    assert_eq!(changes.events[0].position, recorded[2].position);

    let swapped = tallies
        .changes("1", Version::new(7), Version::EMPTY)
        .await
        .unwrap();
    assert_eq!(
        (swapped.before, swapped.after),
        (Tally::default(), expected(7))
    );
    assert_eq!(swapped.events.len(), 7);
    let capped = tallies
        .changes("1", Version::new(6), Version::new(99))
        .await
        .unwrap();
    assert_eq!(
        (capped.from, capped.to, capped.events.len()),
        (Version::new(6), Version::new(7), 1)
    );
}
