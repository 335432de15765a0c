//! The projection runtime on the in-memory store and read model: exactly once, in order, live
//! without polling, every error policy, never silently stuck.

mod support;

use std::time::Duration;

use annals::{EventData, EventStore, ExpectedVersion, InMemoryStore, StreamId};
use annals_projections::{
    DeadLetterKind, ErrorPolicy, MemoryModel, ProjectionError, ProjectionName, ProjectionRunner,
    Retry, State,
};
use support::{fill, fold, Fail, Tallies, HANG_GUARD};

fn quick_retry() -> Retry {
    Retry {
        attempts: 1,
        first_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

async fn guard<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_model_equals_the_fold_of_the_log_with_1_4_and_16_partitions() {
    let store = InMemoryStore::new();
    let head = fill(&store, "account", 50, 200, 7).await;
    let expected = fold(&store, None).await;
    assert_eq!(expected.len(), 50);
    for partitions in [1, 4, 16] {
        let model = MemoryModel::new();
        let running = ProjectionRunner::new(
            store.clone(),
            model.clone(),
            Tallies::new(&format!("tallies-{partitions}")),
        )
        .partitions(partitions)
        .batch_size(64)
        .start()
        .await
        .unwrap();
        guard("catching up", running.caught_up_to(head))
            .await
            .unwrap();
        assert_eq!(model.to_map(), expected, "{partitions} partitions");
        let status = running.status();
        assert_eq!(status.checkpoint.map(|p| p <= head), Some(true));
        // Partitions without a pending event count as done up to what was scanned.
        assert_eq!(status.lag_events, Some(0), "{partitions} partitions");
        assert_eq!(
            status.partitions.len(),
            usize::try_from(partitions).unwrap()
        );
        running.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_checkpoints_without_applying_anything_twice() {
    let store = InMemoryStore::new();
    let model = MemoryModel::new();
    let first_head = fill(&store, "account", 10, 30, 5).await;
    let running = ProjectionRunner::new(store.clone(), model.clone(), Tallies::new("restart"))
        .partitions(4)
        .start()
        .await
        .unwrap();
    guard("first run", running.caught_up_to(first_head))
        .await
        .unwrap();
    running.shutdown().await.unwrap();
    // More events while it is down, then a new runner on the same model.
    let mut head = first_head;
    for s in 0..10 {
        let stream = StreamId::new(format!("account-{s}")).unwrap();
        head = store
            .append(
                &stream,
                ExpectedVersion::exact(30),
                vec![EventData::json("Counted", &serde_json::json!({ "n": 1 })).unwrap()],
            )
            .await
            .unwrap()
            .last_position;
    }
    let tallies = Tallies::new("restart");
    let calls = tallies.calls.clone();
    let running = ProjectionRunner::new(store.clone(), model.clone(), tallies)
        .partitions(4)
        .start()
        .await
        .unwrap();
    guard("second run", running.caught_up_to(head))
        .await
        .unwrap();
    assert_eq!(model.to_map(), fold(&store, None).await);
    assert!(
        calls.load(std::sync::atomic::Ordering::Relaxed) <= 10,
        "the second run handles only the new events"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn live_events_reach_the_model_on_the_commit_signal_not_a_timer() {
    // With the clock paused, time moves only when every task waits on a timer: a worker that
    // found new events by polling would let the clock run to its next poll. Woken by the
    // commit signal, it commits within its batch wait (1 ms) of virtual time.
    let store = InMemoryStore::new();
    let model = MemoryModel::new();
    let running = ProjectionRunner::new(store.clone(), model.clone(), Tallies::new("live"))
        .max_wait(Duration::from_millis(1))
        .stall_after(Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    let seeded = fill(&store, "account", 1, 1, 1).await;
    running.caught_up_to(seeded).await.unwrap();
    for round in 1..=5u64 {
        // Let the worker settle into waiting for the next commit.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let before = tokio::time::Instant::now();
        let done = store
            .append(
                &StreamId::new("account-0").unwrap(),
                ExpectedVersion::exact(round),
                vec![EventData::json("Counted", &serde_json::json!({ "n": 0 })).unwrap()],
            )
            .await
            .unwrap();
        running.caught_up_to(done.last_position).await.unwrap();
        let waited = before.elapsed();
        assert!(
            waited <= Duration::from_millis(1),
            "round {round}: the event waited {waited:?} of virtual time: woken by a timer"
        );
        assert_eq!(model.get(&"account-0".to_owned()).unwrap().count, round + 1);
    }
    assert_eq!(running.status().state, State::Live);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stop_policy_stops_naming_the_event_and_commits_what_came_before() {
    let store = InMemoryStore::new();
    let head = fill(&store, "account", 3, 10, 10).await;
    let model = MemoryModel::new();
    let poison = |e: &annals::RecordedEvent| {
        (e.stream_id.as_str() == "account-1" && e.version.get() == 4).then_some(Fail::Error)
    };
    let running = ProjectionRunner::new(
        store.clone(),
        model.clone(),
        Tallies::new("stops").failing(poison),
    )
    .retry(quick_retry())
    .start()
    .await
    .unwrap();
    let error = guard("the stop", running.caught_up_to(head))
        .await
        .unwrap_err();
    let failure = error.handler_failure().expect("a handler failure");
    assert_eq!(failure.projection.as_str(), "stops");
    assert_eq!(
        failure.place.stream.as_ref().map(StreamId::as_str),
        Some("account-1")
    );
    assert_eq!(failure.place.version.map(|v| v.get()), Some(4));
    assert!(failure.place.position.is_some());
    assert_eq!(failure.event_type, "Counted");
    let text = error.to_string();
    assert!(text.contains("cannot tally"), "the handler's error: {text}");
    // Everything of account-1 before the poison event is committed; nothing at or after it.
    let tally = model.get(&"account-1".to_owned()).unwrap();
    assert_eq!(tally.last_version, 3);
    assert!(matches!(running.status().state, State::Stopped(_)));
    let shut = running.shutdown().await;
    assert!(
        shut.as_ref()
            .err()
            .and_then(ProjectionError::handler_failure)
            .is_some(),
        "shutdown returns the error it stopped with: {shut:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_that_projections_error_and_the_process_lives_on() {
    let store = InMemoryStore::new();
    let head = fill(&store, "account", 2, 3, 3).await;
    let poison = |e: &annals::RecordedEvent| (e.version.get() == 2).then_some(Fail::Panic);
    let running = ProjectionRunner::new(
        store.clone(),
        MemoryModel::new(),
        Tallies::new("panics").failing(poison),
    )
    .retry(quick_retry())
    .start()
    .await
    .unwrap();
    let error = guard("the stop", running.caught_up_to(head))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("panicked"), "{error}");
    assert!(error.to_string().contains("blew up"), "{error}");
    assert!(running.shutdown().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_skip_policy_records_and_counts_the_event_and_goes_on() {
    let store = InMemoryStore::new();
    let head = fill(&store, "account", 3, 5, 5).await;
    let model = MemoryModel::new();
    let poison = |e: &annals::RecordedEvent| {
        (e.stream_id.as_str() == "account-2" && e.version.get() == 1).then_some(Fail::Error)
    };
    let running = ProjectionRunner::new(
        store.clone(),
        model.clone(),
        Tallies::new("skips").failing(poison),
    )
    .retry(quick_retry())
    .error_policy(ErrorPolicy::Skip)
    .start()
    .await;
    let running = running.unwrap();
    guard("catching up", running.caught_up_to(head))
        .await
        .unwrap();
    // The tally handler refuses a gap, so account-2 stops counting after its skipped event;
    // the other streams are whole.
    assert_eq!(model.get(&"account-0".to_owned()).unwrap().count, 5);
    assert_eq!(model.get(&"account-1".to_owned()).unwrap().count, 5);
    let status = running.status();
    assert!(status.skipped >= 1, "{status:?}");
    let letters = running.dead_letters().await.unwrap();
    let first = &letters[0];
    assert_eq!(first.kind, DeadLetterKind::Skipped);
    assert_eq!(first.event.stream_id.as_str(), "account-2");
    assert_eq!(first.event.version.get(), 1);
    assert!(first.reason.contains("cannot tally"), "{}", first.reason);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_park_policy_holds_back_the_stream_lets_others_go_on_and_retries_in_order() {
    let store = InMemoryStore::new();
    let head = fill(&store, "account", 3, 6, 6).await;
    let model = MemoryModel::new();
    let healed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poison = {
        let healed = healed.clone();
        move |e: &annals::RecordedEvent| {
            let broken = !healed.load(std::sync::atomic::Ordering::Relaxed);
            (broken && e.stream_id.as_str() == "account-1" && e.version.get() == 3)
                .then_some(Fail::Error)
        }
    };
    let running = ProjectionRunner::new(
        store.clone(),
        model.clone(),
        Tallies::new("parks").failing(poison),
    )
    .partitions(2)
    .retry(quick_retry())
    .error_policy(ErrorPolicy::Park)
    .start()
    .await
    .unwrap();
    guard("catching up", running.caught_up_to(head))
        .await
        .unwrap();
    assert_eq!(model.get(&"account-0".to_owned()).unwrap().count, 6);
    assert_eq!(model.get(&"account-2".to_owned()).unwrap().count, 6);
    assert_eq!(
        model.get(&"account-1".to_owned()).unwrap().last_version,
        2,
        "the parked stream stops before its poison event"
    );
    // Events appended to the parked stream later wait behind it too.
    let late = store
        .append(
            &StreamId::new("account-1").unwrap(),
            ExpectedVersion::exact(6),
            vec![EventData::json("Counted", &serde_json::json!({ "n": 7 })).unwrap()],
        )
        .await
        .unwrap();
    guard("the late event", running.caught_up_to(late.last_position))
        .await
        .unwrap();
    let letters = running.dead_letters().await.unwrap();
    let versions: Vec<u64> = letters.iter().map(|l| l.event.version.get()).collect();
    assert_eq!(versions, [3, 4, 5, 6, 7]);
    assert!(letters.iter().all(|l| l.kind == DeadLetterKind::Parked));
    assert_eq!(running.status().parked, 5);

    // Still broken: the retry fails and they stay parked.
    let account_1 = StreamId::new("account-1").unwrap();
    assert!(running.retry_parked(&account_1).await.is_err());
    assert_eq!(running.dead_letters().await.unwrap().len(), 5);
    // Fixed: the retry applies them in order and the stream goes on live.
    healed.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(running.retry_parked(&account_1).await.unwrap(), 5);
    assert!(running.dead_letters().await.unwrap().is_empty());
    assert_eq!(running.status().parked, 0);
    assert_eq!(model.get(&"account-1".to_owned()).unwrap().count, 7);
    let after = store
        .append(
            &account_1,
            ExpectedVersion::exact(7),
            vec![EventData::json("Counted", &serde_json::json!({ "n": 8 })).unwrap()],
        )
        .await
        .unwrap();
    guard("after the retry", running.caught_up_to(after.last_position))
        .await
        .unwrap();
    assert_eq!(model.to_map(), fold(&store, None).await);
    let nothing = running.drop_parked(&account_1).await;
    assert!(
        matches!(nothing, Err(ProjectionError::NotParked { .. })),
        "{nothing:?}"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handler_is_reported_as_stalled() {
    let store = InMemoryStore::new();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    struct Stuck(ProjectionName, std::sync::Arc<tokio::sync::Semaphore>);
    impl annals_projections::Projection<MemoryModel<String, u64>> for Stuck {
        fn name(&self) -> &ProjectionName {
            &self.0
        }
        async fn handle(
            &self,
            _tx: &mut annals_projections::MemoryTx<String, u64>,
            _events: &[annals::RecordedEvent],
        ) -> Result<(), annals::BoxError> {
            let _permit = self.1.acquire().await?;
            Ok(())
        }
    }
    let running = ProjectionRunner::new(
        store.clone(),
        MemoryModel::new(),
        Stuck(ProjectionName::new("stuck").unwrap(), gate.clone()),
    )
    .stall_after(Duration::from_millis(50))
    .start()
    .await
    .unwrap();
    let head = fill(&store, "account", 1, 1, 1).await;
    guard("the stall report", async {
        while running.status().state != State::Stalled {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let status = running.status();
    assert_eq!(status.partitions[0].pending, 1);
    assert!(status.lag > Duration::ZERO);
    gate.add_permits(1);
    guard("after the stall", running.caught_up_to(head))
        .await
        .unwrap();
    assert_ne!(running.status().state, State::Stalled);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_and_names_are_clear_errors_and_a_filter_matching_nothing_still_moves() {
    assert!(matches!(
        ProjectionName::new("bad\nname"),
        Err(ProjectionError::InvalidName { .. })
    ));
    let store = InMemoryStore::new();
    let refused = ProjectionRunner::new(store.clone(), MemoryModel::new(), Tallies::new("zero"))
        .partitions(0)
        .start()
        .await;
    assert!(
        matches!(
            refused,
            Err(ProjectionError::Configuration {
                setting: "partitions",
                ..
            })
        ),
        "{refused:?}"
    );
    let head = fill(&store, "account", 2, 2, 2).await;
    let mut nothing = Tallies::new("nothing");
    nothing.category = Some("no-such-category".into());
    let model = MemoryModel::new();
    let running = ProjectionRunner::new(store.clone(), model.clone(), nothing)
        .start()
        .await
        .unwrap();
    guard("a filter that matches nothing", running.caught_up_to(head))
        .await
        .unwrap();
    assert!(model.is_empty());
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_projection_moves_its_checkpoints_past_events_it_never_received() {
    let store = InMemoryStore::new();
    fill(&store, "other", 20, 60, 20).await;
    fill(&store, "rare", 3, 5, 5).await;
    // More than a page of events after the last one the filter keeps.
    let head = fill(&store, "more", 20, 60, 20).await;
    let expected = fold(&store, Some("rare")).await;
    assert_eq!(expected.len(), 3);
    let model = MemoryModel::new();
    let rare = || {
        let mut tallies = Tallies::new("rare");
        tallies.category = Some("rare".into());
        tallies
    };
    let running = ProjectionRunner::new(store.clone(), model.clone(), rare())
        .partitions(4)
        .start()
        .await
        .unwrap();
    guard("catching up", running.caught_up_to(head))
        .await
        .unwrap();
    assert_eq!(model.to_map(), expected);
    running.shutdown().await.unwrap();
    // Every partition's checkpoint is at the head, though none received its last event.
    let again = rare();
    let calls = again.calls.clone();
    let running = ProjectionRunner::new(store.clone(), model.clone(), again)
        .partitions(4)
        .start()
        .await
        .unwrap();
    let status = running.status();
    assert_eq!(status.checkpoint, Some(head), "{status:?}");
    assert!(status.partitions.iter().all(|p| p.checkpoint == Some(head)));
    guard("resuming", running.caught_up_to(head)).await.unwrap();
    assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(model.to_map(), expected);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_model_ahead_of_the_log_is_refused_not_run() {
    let store = InMemoryStore::new();
    let head = fill(&store, "account", 3, 4, 2).await;
    let model = MemoryModel::new();
    let running = ProjectionRunner::new(store.clone(), model.clone(), Tallies::new("ahead"))
        .start()
        .await
        .unwrap();
    guard("catching up", running.caught_up_to(head))
        .await
        .unwrap();
    running.shutdown().await.unwrap();
    // The same read model over a log that lost its last events (here: a shorter one).
    let shorter = InMemoryStore::new();
    fill(&shorter, "account", 1, 2, 2).await;
    let refused = ProjectionRunner::new(shorter, model.clone(), Tallies::new("ahead"))
        .start()
        .await;
    assert!(
        matches!(
            &refused,
            Err(ProjectionError::AheadOfLog { checkpoint, .. }) if *checkpoint == head
        ),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_no_worker_can_start_is_reported_unowned_and_the_others_run() {
    // A read model whose partition checkpoints are ahead of this log: those partitions cannot
    // start anywhere; a worker keeps the others running and reports the rest.
    let bigger = InMemoryStore::new();
    let far = fill(&bigger, "account", 20, 10, 5).await;
    let model = MemoryModel::new();
    let running = ProjectionRunner::new(bigger, model.clone(), Tallies::new("orphans"))
        .partitions(4)
        .start()
        .await
        .unwrap();
    guard("catching up", running.caught_up_to(far))
        .await
        .unwrap();
    running.shutdown().await.unwrap();
    let store = InMemoryStore::new();
    fill(&store, "account", 2, 2, 2).await;
    let workers = annals_projections::ProjectionWorkers::builder(
        store.clone(),
        model.clone(),
        Tallies::new("orphans"),
    )
    .partitions(4)
    .worker_id("w1")
    .rebalance_every(Duration::from_millis(10))
    .report_unowned_after(Duration::from_millis(50))
    .start()
    .await
    .unwrap();
    let status = guard("the report of unowned partitions", async {
        loop {
            let status = workers.status().await.unwrap();
            if status
                .partitions
                .iter()
                .filter(|p| p.owner.is_none())
                .all(|p| p.unowned_for >= Some(Duration::from_millis(50)))
                && !status.unowned().is_empty()
            {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let failures = workers.failures();
    for partition in status.unowned() {
        assert!(
            failures
                .iter()
                .any(|(p, why)| *p == partition && why.contains("beyond the end of the log")),
            "partition {partition}: {failures:?}"
        );
    }
    workers.shutdown().await;
}
