//! PostgreSQL restarted mid-run (`pg_ctl restart -m fast`): in-flight appends fail with a clear
//! error, later appends succeed, a subscriber resumes from its checkpoint, and nothing
//! acknowledged is lost.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use annals::{
    subscribe_all, CheckpointStore, Error, EventId, EventStore, ExpectedVersion, Filter, Position,
    ReadAll, StreamId,
};
use annals_testkit::postgres::PgServer;
use futures::{StreamExt, TryStreamExt};
use support::{event, HANG_GUARD};
use tokio::sync::watch;

const WRITERS: u64 = 4;
const PER_WRITER: u64 = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_loses_nothing_acknowledged() {
    // Its own server: the restart must not disturb other tests.
    let server = Arc::new(PgServer::start().expect("start PostgreSQL"));
    let store = support::init(support::builder_on(&server, "restart").pool_size(8)).await;

    let acked = Arc::new(Mutex::new(Vec::<EventId>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let (progress_tx, mut progress) = watch::channel(0usize);
    let progress_tx = Arc::new(progress_tx);

    // Writers: each batch is retried with the same ids until it is acknowledged.
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (store, acked, errors, progress_tx) = (
            store.clone(),
            acked.clone(),
            errors.clone(),
            progress_tx.clone(),
        );
        writers.push(tokio::spawn(async move {
            let stream = StreamId::new(format!("restart-{w}")).expect("id");
            let mut version = 0;
            while version < PER_WRITER {
                let batch = vec![event("W", version), event("W", version + 1)];
                let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
                let mut attempts = 0;
                let result = loop {
                    attempts += 1;
                    assert!(attempts < 2_000, "the server never came back");
                    match store
                        .append(&stream, ExpectedVersion::exact(version), batch.clone())
                        .await
                    {
                        Ok(r) => break r,
                        Err(
                            e @ (Error::Unavailable { .. } | Error::AppendOutcomeUnknown { .. }),
                        ) => {
                            errors.lock().expect("lock").push(e.to_string());
                            // Back off while the server is away.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(other) => panic!("an unclear error during the restart: {other:?}"),
                    }
                };
                assert_eq!(
                    result.first_version.get(),
                    version + 1,
                    "a retry answers the first append"
                );
                version += 2;
                let mut acked = acked.lock().expect("lock");
                acked.extend(ids);
                progress_tx.send_replace(acked.len());
            }
        }));
    }

    // A subscriber that saves a checkpoint after each event and, after an error, resumes from
    // the checkpoint it saved.
    let subscriber = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seen = HashSet::new();
            let mut resumed = 0;
            let total = usize::try_from(WRITERS * PER_WRITER).expect("a count");
            'outer: loop {
                let from = loop {
                    match store.load_checkpoint("restart-test").await {
                        Ok(p) => break p.map_or(Position::START, Position::next),
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                };
                let mut live = subscribe_all(store.clone(), from, Filter::all());
                while let Some(item) = live.next().await {
                    let Ok(e) = item else {
                        resumed += 1;
                        continue 'outer;
                    };
                    seen.insert(e.id);
                    if store
                        .save_checkpoint("restart-test", e.position)
                        .await
                        .is_err()
                    {
                        resumed += 1;
                        continue 'outer;
                    }
                    if seen.len() == total {
                        break 'outer;
                    }
                }
            }
            (seen, resumed)
        })
    };

    // Restart once a third of the events is acknowledged.
    tokio::time::timeout(
        HANG_GUARD,
        progress.wait_for(|n| *n >= usize::try_from(WRITERS * PER_WRITER / 3).expect("a count")),
    )
    .await
    .expect("writers made no progress")
    .expect("progress");
    let restarter = server.clone();
    tokio::task::spawn_blocking(move || restarter.restart())
        .await
        .expect("join")
        .expect("pg_ctl restart");

    for w in writers {
        tokio::time::timeout(HANG_GUARD, w)
            .await
            .expect("writer hung")
            .expect("writer");
    }
    let (seen, resumed) = tokio::time::timeout(HANG_GUARD, subscriber)
        .await
        .expect("the subscriber never caught up")
        .expect("subscriber");

    let errors = errors.lock().expect("lock").clone();
    assert!(!errors.is_empty(), "no append saw the restart");
    let acked: HashSet<_> = acked.lock().expect("lock").iter().copied().collect();
    assert_eq!(
        acked.len(),
        usize::try_from(WRITERS * PER_WRITER).expect("a count")
    );
    let stored: Vec<_> = store
        .read_all(ReadAll::all())
        .try_collect()
        .await
        .expect("read");
    let stored_ids: HashSet<_> = stored.iter().map(|e| e.id).collect();
    assert_eq!(stored.len(), stored_ids.len(), "no duplicate");
    assert_eq!(
        stored_ids, acked,
        "every acknowledged event is stored, nothing else"
    );
    assert_eq!(seen, acked, "the subscriber saw every event");
    eprintln!(
        "restart: {} append errors ({} distinct kinds), subscriber resumed {resumed} times",
        errors.len(),
        errors
            .iter()
            .map(|e| e.split(':').next().unwrap_or(""))
            .collect::<HashSet<_>>()
            .len()
    );
}
