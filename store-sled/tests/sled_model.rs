//! Model-based test: random sequences of appends, restores, reads and reopens against a
//! `BTreeMap` model of what the store must hold.

mod support;

use std::collections::BTreeMap;

use annals::{
    AppendResult, Direction, Error, EventData, EventStore, ExpectedVersion, Position, ReadAll,
    ReadStream, Version,
};
use annals_sled::Durability;
use futures::TryStreamExt;
use proptest::prelude::*;
use support::{event, open_with, shut, sid, to_u64, to_usize};

#[derive(Clone, Debug)]
enum Expect {
    Any,
    NoStream,
    StreamExists,
    Current,
    Off(u64),
}

#[derive(Clone, Debug)]
enum Op {
    Append {
        stream: u8,
        count: u8,
        expect: Expect,
    },
    RetryLast,
    /// Restores `count` new events taking turns among the streams from `first` (up to `spread`
    /// of them), each following its stream's head.
    Restore {
        first: u8,
        spread: u8,
        count: u8,
    },
    ReadStream {
        stream: u8,
        backward: bool,
        from: u8,
        limit: u8,
    },
    ReadAll {
        from: u8,
        limit: u8,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let expect = prop_oneof![
        Just(Expect::Any),
        Just(Expect::NoStream),
        Just(Expect::StreamExists),
        Just(Expect::Current),
        (1..3u64).prop_map(Expect::Off),
    ];
    prop_oneof![
        6 => (0..4u8, 1..4u8, expect).prop_map(|(stream, count, expect)| Op::Append { stream, count, expect }),
        1 => Just(Op::RetryLast),
        2 => (0..4u8, 1..4u8, 1..40u8).prop_map(|(first, spread, count)| Op::Restore { first, spread, count }),
        3 => (0..4u8, any::<bool>(), 0..12u8, 0..8u8)
            .prop_map(|(stream, backward, from, limit)| Op::ReadStream { stream, backward, from, limit }),
        2 => (0..40u8, 0..10u8).prop_map(|(from, limit)| Op::ReadAll { from, limit }),
        1 => Just(Op::Reopen),
    ]
}

/// What the store must hold: each stream's event ids, and the global log as (stream, version).
#[derive(Default)]
struct Model {
    streams: BTreeMap<String, Vec<annals::EventId>>,
    log: Vec<(String, u64)>,
}

async fn run(ops: Vec<Op>, durability: Durability) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let mut store = open_with(&path, durability).await;
    let mut model = Model::default();
    let mut last: Option<(String, Vec<EventData>, AppendResult)> = None;
    let mut restored = 0i64;
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Append {
                stream,
                count,
                expect,
            } => {
                let name = format!("model-{stream}");
                let current = to_u64(model.streams.get(&name).map_or(0, Vec::len));
                let expected = match expect {
                    Expect::Any => ExpectedVersion::Any,
                    Expect::NoStream => ExpectedVersion::NoStream,
                    Expect::StreamExists => ExpectedVersion::StreamExists,
                    Expect::Current => ExpectedVersion::exact(current),
                    Expect::Off(d) => ExpectedVersion::exact(current + d),
                };
                let events: Vec<_> = (0..count).map(|i| event("M", u64::from(i))).collect();
                let outcome = store.append(&sid(&name), expected, events.clone()).await;
                if expected.is_satisfied_by(Version::new(current)) {
                    let r = outcome.unwrap_or_else(|e| panic!("step {step}: {e}"));
                    assert_eq!(r.first_version.get(), current + 1, "step {step}");
                    assert_eq!(r.last_version.get(), current + u64::from(count));
                    assert_eq!(
                        r.first_position,
                        Position::sequence(to_u64(model.log.len()) + 1)
                    );
                    for (i, e) in events.iter().enumerate() {
                        model.streams.entry(name.clone()).or_default().push(e.id);
                        model.log.push((name.clone(), current + 1 + to_u64(i)));
                    }
                    last = Some((name, events, r));
                } else {
                    match outcome {
                        Err(Error::VersionConflict { actual, .. }) => {
                            assert_eq!(actual.get(), current, "step {step}")
                        }
                        other => panic!("step {step}: expected a conflict, got {other:?}"),
                    }
                }
            }
            Op::RetryLast => {
                if let Some((name, events, first)) = &last {
                    let again = store
                        .append(&sid(name), ExpectedVersion::NoStream, events.clone())
                        .await
                        .unwrap_or_else(|e| panic!("step {step}: retry failed: {e}"));
                    assert_eq!(
                        &again, first,
                        "step {step}: a retry returns the first result"
                    );
                }
            }
            Op::Restore {
                first,
                spread,
                count,
            } => {
                let mut batch = Vec::new();
                let mut next: BTreeMap<String, u64> = BTreeMap::new();
                for i in 0..count {
                    let name = format!("model-{}", (first + i % spread) % 4);
                    let version = next
                        .entry(name.clone())
                        .or_insert_with(|| to_u64(model.streams.get(&name).map_or(0, Vec::len)));
                    *version += 1;
                    restored += 1;
                    batch.push(annals::RestoredEvent::new(
                        sid(&name),
                        Version::new(*version),
                        // After every time the store records (appends record the clock's).
                        annals::Timestamp::from_unix_micros(4_000_000_000_000_000 + restored),
                        event("R", u64::from(i)),
                    ));
                }
                let result = store
                    .restore(batch.clone())
                    .await
                    .unwrap_or_else(|e| panic!("step {step}: restore failed: {e}"));
                assert_eq!(result.written, u64::from(count), "step {step}");
                for e in batch {
                    let name = e.stream_id.to_string();
                    model
                        .streams
                        .entry(name.clone())
                        .or_default()
                        .push(e.event.id);
                    model.log.push((name, e.version.get()));
                }
                assert_eq!(
                    result.last_position,
                    Some(Position::sequence(to_u64(model.log.len()))),
                    "step {step}"
                );
            }
            Op::ReadStream {
                stream,
                backward,
                from,
                limit,
            } => {
                let name = format!("model-{stream}");
                let ids = model.streams.get(&name).cloned().unwrap_or_default();
                let mut options = if backward {
                    ReadStream::backward()
                } else {
                    ReadStream::forward()
                };
                options = options
                    .from(Version::new(u64::from(from)))
                    .limit(usize::from(limit));
                let want: Vec<(u64, annals::EventId)> =
                    match options.range(Version::new(to_u64(ids.len()))) {
                        None => Vec::new(),
                        Some((a, b)) => {
                            let versions: Vec<u64> = if options.direction == Direction::Forward {
                                (a.get()..=b.get()).collect()
                            } else {
                                (b.get()..=a.get()).rev().collect()
                            };
                            versions
                                .into_iter()
                                .map(|v| (v, ids[to_usize(v) - 1]))
                                .collect()
                        }
                    };
                let got: Vec<(u64, annals::EventId)> = store
                    .read_stream(&sid(&name), options)
                    .map_ok(|e| (e.version.get(), e.id))
                    .try_collect()
                    .await
                    .expect("read_stream");
                assert_eq!(got, want, "step {step}: {options:?}");
            }
            Op::ReadAll { from, limit } => {
                let from = u64::from(from);
                let got: Vec<(String, u64, u64)> = store
                    .read_all(ReadAll::from(Position::sequence(from)).limit(usize::from(limit)))
                    .map_ok(|e| {
                        (
                            e.stream_id.to_string(),
                            e.version.get(),
                            e.position.commit(),
                        )
                    })
                    .try_collect()
                    .await
                    .expect("read_all");
                let want: Vec<(String, u64, u64)> = model
                    .log
                    .iter()
                    .enumerate()
                    .map(|(i, (s, v))| (s.clone(), *v, to_u64(i) + 1))
                    .filter(|(_, _, p)| *p >= from)
                    .take(usize::from(limit))
                    .collect();
                assert_eq!(got, want, "step {step}");
            }
            Op::Reopen => {
                shut(store).await;
                store = open_with(&path, durability).await;
                let last_position = store.last_position().await.expect("last position");
                assert_eq!(
                    last_position.map_or(0, |p| p.commit()),
                    to_u64(model.log.len()),
                    "step {step}: positions after reopen"
                );
            }
        }
    }
    let report = store.verify().await.expect("verify");
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.events, to_u64(model.log.len()));
    shut(store).await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]
    #[test]
    fn the_store_behaves_like_the_model(ops in proptest::collection::vec(op(), 1..40), flush in any::<bool>()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let durability = if flush { Durability::Flush } else { Durability::Buffered };
        runtime.block_on(run(ops, durability));
    }
}
