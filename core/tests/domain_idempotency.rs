//! Idempotent commands: a command id executed twice records one set of events.

mod support;

use annals::{CommandContext, EventId, EventStore, InMemoryStore, ReadStream, Repository, Version};
use futures::TryStreamExt;
use support::{add, Tally, TallyCommand, TallyEvent};
use uuid::Uuid;

async fn stored(store: &InMemoryStore, tallies: &Repository<Tally, InMemoryStore>) -> usize {
    let stream = tallies.stream_id("1").unwrap();
    let events: Vec<_> = store
        .read_stream(&stream, ReadStream::forward())
        .try_collect()
        .await
        .unwrap();
    events.len()
}

#[tokio::test]
async fn the_same_command_id_twice_records_one_set_of_events() {
    let store = InMemoryStore::new();
    let tallies: Repository<Tally, _> = Repository::new(store.clone());
    let id = Uuid::now_v7();
    let first = tallies
        .execute(
            "1",
            TallyCommand::AddMany { count: 3 },
            CommandContext::command(id),
        )
        .await
        .unwrap();
    let again = tallies
        .execute(
            "1",
            TallyCommand::AddMany { count: 3 },
            CommandContext::command(id),
        )
        .await
        .unwrap();
    assert!(!first.repeated);
    assert!(again.repeated);
    assert_eq!(again.events, first.events);
    assert_eq!(again.appended, first.appended);
    assert_eq!(again.state, first.state, "not applied twice");
    assert_eq!(stored(&store, &tallies).await, 3);
    assert_eq!(
        EventId::derived(id, 2),
        store
            .read_stream(
                &tallies.stream_id("1").unwrap(),
                ReadStream::backward().limit(1)
            )
            .try_collect::<Vec<_>>()
            .await
            .unwrap()[0]
            .id
    );
}

#[tokio::test]
async fn a_retry_after_the_stream_moved_on_returns_the_first_result() {
    let store = InMemoryStore::new();
    let tallies: Repository<Tally, _> = Repository::new(store.clone());
    let id = Uuid::now_v7();
    let first = tallies
        .execute("1", add(7, 5), CommandContext::command(id))
        .await
        .unwrap();
    tallies
        .execute("1", add(8, 1), CommandContext::new())
        .await
        .unwrap();
    tallies
        .execute("1", add(9, 1), CommandContext::new())
        .await
        .unwrap();

    // Handled again on the newer state, the command emits the same ids: the store answers
    // with the first append; nothing is written and the state is not folded twice.
    for cold in [false, true] {
        let repository = if cold {
            Repository::new(store.clone())
        } else {
            tallies.clone()
        };
        let again = repository
            .execute("1", add(7, 5), CommandContext::command(id))
            .await
            .unwrap();
        assert!(again.repeated);
        assert_eq!(again.events, first.events);
        assert_eq!(again.appended, first.appended);
        assert_eq!(again.version, Version::new(3));
        assert_eq!((again.state.total, again.state.folded), (7, 3));
        assert_eq!(again.state.tags.get(&7), Some(&1));
    }
    assert_eq!(stored(&store, &tallies).await, 3);
}

#[tokio::test]
async fn a_retry_the_new_state_would_refuse_still_returns_the_first_result() {
    let store = InMemoryStore::new();
    let tallies: Repository<Tally, _> = Repository::new(store.clone());
    tallies
        .execute("1", add(1, 10), CommandContext::new())
        .await
        .unwrap();
    let id = Uuid::now_v7();
    let first = tallies
        .execute(
            "1",
            TallyCommand::Take { n: 8 },
            CommandContext::command(id),
        )
        .await
        .unwrap();
    assert_eq!(first.events, [TallyEvent::Taken { n: 8 }]);
    // Now only 2 are left: handled again, the command would be refused; it already ran.
    let again = tallies
        .execute(
            "1",
            TallyCommand::Take { n: 8 },
            CommandContext::command(id),
        )
        .await
        .unwrap();
    assert!(again.repeated);
    assert_eq!(again.events, first.events);
    assert_eq!(again.state.total, 2);
    assert_eq!(stored(&store, &tallies).await, 2);

    // A new command id is a new command, and refused.
    let refused = tallies
        .execute(
            "1",
            TallyCommand::Take { n: 8 },
            CommandContext::command(Uuid::now_v7()),
        )
        .await
        .unwrap_err();
    assert!(refused.rejection().is_some());
}

#[tokio::test]
async fn a_retry_that_now_decides_otherwise_still_returns_the_first_result() {
    let store = InMemoryStore::new();
    let tallies: Repository<Tally, _> = Repository::new(store.clone());
    let id = Uuid::now_v7();
    // Emits one event the first time...
    tallies
        .execute("1", add(1, 1), CommandContext::command(id))
        .await
        .unwrap();
    // ...and three if handled again: the ids only partly match, which the store refuses;
    // the repository finds the first execution instead.
    let again = tallies
        .execute(
            "1",
            TallyCommand::AddMany { count: 3 },
            CommandContext::command(id),
        )
        .await
        .unwrap();
    assert!(again.repeated);
    assert_eq!(again.events, [TallyEvent::Added { tag: 1, n: 1 }]);
    assert_eq!(stored(&store, &tallies).await, 1);
}

#[tokio::test]
async fn the_context_reaches_every_event() {
    let store = InMemoryStore::new();
    let tallies: Repository<Tally, _> = Repository::new(store.clone());
    let (command, correlation) = (Uuid::now_v7(), Uuid::now_v7());
    tallies
        .execute(
            "1",
            TallyCommand::AddMany { count: 2 },
            CommandContext::command(command)
                .with_correlation_id(correlation)
                .with_header("tenant", "acme"),
        )
        .await
        .unwrap();
    let only_command = Uuid::now_v7();
    tallies
        .execute("1", add(5, 5), CommandContext::command(only_command))
        .await
        .unwrap();
    let events: Vec<_> = store
        .read_stream(&tallies.stream_id("1").unwrap(), ReadStream::forward())
        .try_collect()
        .await
        .unwrap();
    for (i, event) in (0u32..).zip(&events[..2]) {
        assert_eq!(event.id, EventId::derived(command, i));
        assert_eq!(event.metadata.causation_id, Some(command));
        assert_eq!(event.metadata.correlation_id, Some(correlation));
        assert_eq!(event.metadata.headers["tenant"], "acme");
    }
    // Without a correlation id, the command starts its own conversation.
    assert_eq!(events[2].metadata.correlation_id, Some(only_command));
    assert_eq!(events[2].metadata.causation_id, Some(only_command));
    assert!(events[2].metadata.headers.is_empty());
}
