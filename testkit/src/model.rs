//! The model-based test every store runs: random sequences of appends, retries, restores, reads
//! and reopens, checked against a `BTreeMap` model of what the store must hold.
//!
//! The conformance suite checks each behaviour on its own; this test checks that they hold
//! together, in any order, and across reopening the store on the same data. Every operation's
//! result is compared with the model as it happens, and at the end the store's whole contents
//! (the global log, every stream, the stream listing, the last position) are.
//!
//! A store's test gives a [`ModelTarget`] (how to open the store and open it again on the same
//! data) and lets proptest generate the operations with [`ops`]. The example runs the cases at
//! once; a store's test does the same in a `#[test]` of a `proptest!` block, as in
//! `store-sled/tests/sled_model.rs`:
//!
//! ```
//! use annals::InMemoryStore;
//! use annals_testkit::model::{self, ModelTarget, Positions};
//! use proptest::prelude::*;
//!
//! /// The in-memory store's data lives in the store value: reopening is taking a clone.
//! struct Memory(InMemoryStore);
//!
//! impl ModelTarget for Memory {
//!     type Store = InMemoryStore;
//!     const POSITIONS: Positions = Positions::Sequence;
//!     async fn open(&mut self) -> InMemoryStore {
//!         self.0.clone()
//!     }
//!     async fn reopen(&mut self, old: InMemoryStore) -> InMemoryStore {
//!         drop(old);
//!         self.0.clone()
//!     }
//! }
//!
//! proptest!(ProptestConfig::with_cases(8), |(ops in model::ops())| {
//!     let runtime = tokio::runtime::Builder::new_current_thread()
//!         .enable_all()
//!         .build()
//!         .expect("runtime");
//!     runtime.block_on(model::run(Memory(InMemoryStore::new()), ops));
//! });
//! ```
//!
//! A failing check panics with the step it failed at; proptest then shrinks the sequence to a
//! short one that still fails, and saves its seed next to the test.

use std::collections::BTreeMap;
use std::future::Future;

use annals::{
    AppendResult, Direction, Error, EventData, EventId, EventStore, ExpectedVersion, Position,
    ReadAll, ReadStream, RestoredEvent, StreamId, Timestamp, Version,
};
use futures::TryStreamExt;
use proptest::prelude::*;

/// The expected version of an [`Op::Append`], relative to the stream's version in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// [`ExpectedVersion::Any`]: always satisfied.
    Any,
    /// [`ExpectedVersion::NoStream`]: satisfied while the stream has no events.
    NoStream,
    /// [`ExpectedVersion::StreamExists`]: satisfied once the stream has events.
    StreamExists,
    /// Exactly the stream's current version: always satisfied.
    Current,
    /// Exactly the stream's current version plus this much (1 or 2): never satisfied.
    Off(u64),
}

/// One step of a model run. Streams are `model-0` to `model-3`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Appends `count` new events to stream `model-{stream}` with the expected version
    /// `expect`: a satisfied expectation must append them at the next versions and positions,
    /// an unsatisfied one must fail with a version conflict naming the stream's version.
    Append {
        /// The stream's number (0 to 3).
        stream: u8,
        /// How many events (1 to 3).
        count: u8,
        /// The expected version.
        expect: Expect,
    },
    /// Appends the events of the last successful append again, to the same stream, expecting
    /// no stream: the retry must return the first append's result and write nothing.
    /// (Nothing happens before the first successful append.)
    RetryLast,
    /// Restores ([`EventStore::restore`]) one batch of `count` new events taking turns among
    /// `spread` streams from `model-{first}` on (`model-{first}`, `model-{first + 1}`, … modulo
    /// 4), each event following its stream's head, recorded at times that increase along the
    /// run and come after every time the store records itself. The restore must write them
    /// all (none present) at the next positions, in batch order, keeping their versions and
    /// recording times (checked at the end).
    Restore {
        /// The first stream's number (0 to 3).
        first: u8,
        /// How many streams take turns (1 to 3).
        spread: u8,
        /// How many events (1 to 39).
        count: u8,
    },
    /// Reads stream `model-{stream}` from version `from`, at most `limit` events, forward or
    /// backward; the events must be the model's, with their versions, ids and positions.
    ReadStream {
        /// The stream's number (0 to 3).
        stream: u8,
        /// Backward instead of forward.
        backward: bool,
        /// The version to start at (0 to 11).
        from: u8,
        /// The most events to read (0 to 7).
        limit: u8,
    },
    /// Reads the global log from the `from`-th event, at most `limit` events; the events must
    /// be the model's, in order, with their streams, versions, ids and positions.
    ///
    /// Under [`Positions::Sequence`] the read starts at [`Position::sequence`]`(from)`, also
    /// beyond the last event. Under [`Positions::Increasing`] it starts at
    /// [`Position::START`] for 0, at the position of the `from`-th event when there is one, and
    /// just after the last event otherwise.
    ReadAll {
        /// Where to start (0 to 39).
        from: u8,
        /// The most events to read (0 to 9).
        limit: u8,
    },
    /// Closes the store and opens it again on the same data ([`ModelTarget::reopen`]); its
    /// last position must be the model's last event's.
    Reopen,
}

/// One [`Op`], weighted: appends most often, then stream reads, restores and global reads, and
/// now and then a retry or a reopen.
pub fn op() -> impl Strategy<Value = Op> {
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
        2 => (0..4u8, 1..4u8, 1..40u8)
            .prop_map(|(first, spread, count)| Op::Restore { first, spread, count }),
        3 => (0..4u8, any::<bool>(), 0..12u8, 0..8u8)
            .prop_map(|(stream, backward, from, limit)| Op::ReadStream { stream, backward, from, limit }),
        2 => (0..40u8, 0..10u8).prop_map(|(from, limit)| Op::ReadAll { from, limit }),
        1 => Just(Op::Reopen),
    ]
}

/// A sequence of 1 to 39 [`op`]s: the input of [`run`].
pub fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..40)
}

/// How a store numbers its global log, which decides the positions the model expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Positions {
    /// Events are numbered `1, 2, 3…` with no gaps, as [`Position::sequence`] (the embedded
    /// stores): every position is known in advance and checked exactly.
    Sequence,
    /// Positions only increase along the log, possibly with gaps (the PostgreSQL store's
    /// `(transaction id, seq)`): each append's or restore's positions must come after every
    /// earlier event's; the model learns them from the result and by reading the new events
    /// back (an append's from its stream, a restore's from the global log), and checks every
    /// later read against them.
    Increasing,
}

/// A store under the model test: opens it on fresh, empty data, and opens it again on the same
/// data. One target serves one [`run`]; make a new one (new data) for each.
pub trait ModelTarget: Send {
    /// The store type.
    type Store: EventStore;

    /// How the store numbers its global log.
    const POSITIONS: Positions;

    /// The store, on fresh and empty data. Called once, before the first op.
    fn open(&mut self) -> impl Future<Output = Self::Store> + Send;

    /// The store again on the data of `old`, as after a restart of the process: close `old`
    /// and open a new store on the same files (sled), build a new store on the same schema
    /// (PostgreSQL), or hand out the same data again (the in-memory store, whose data lives in
    /// the store value).
    fn reopen(&mut self, old: Self::Store) -> impl Future<Output = Self::Store> + Send;

    /// Ends the run, after the final comparison with the model: the store's own extra checks
    /// (sled: `verify` is clean and counts `events`), then closing it. `events` is the number
    /// of events the model holds. By default, drops the store.
    fn finish(&mut self, store: Self::Store, events: u64) -> impl Future<Output = ()> + Send {
        let _ = events;
        async move { drop(store) }
    }
}

/// One event of the model's global log.
#[derive(Clone, Debug)]
struct Logged {
    stream: String,
    version: u64,
    id: EventId,
    position: Position,
    /// When it was recorded, for a restored event (an appended one has the store's time).
    recorded_at: Option<Timestamp>,
}

/// What the store must hold: each stream's events (indexes into the log), and the global log.
#[derive(Default)]
struct Model {
    streams: BTreeMap<String, Vec<usize>>,
    log: Vec<Logged>,
}

impl Model {
    fn version(&self, stream: &str) -> u64 {
        self.streams.get(stream).map_or(0, Vec::len) as u64
    }

    fn last_position(&self) -> Option<Position> {
        self.log.last().map(|e| e.position)
    }

    /// Adds an event at the end of the log and of its stream.
    fn push(&mut self, event: Logged) {
        self.streams
            .entry(event.stream.clone())
            .or_default()
            .push(self.log.len());
        self.log.push(event);
    }

    /// The stream's events at `versions` (each between 1 and the stream's version), in that
    /// order, as (version, id, position).
    fn stream_events(&self, stream: &str, versions: &[u64]) -> Vec<(u64, EventId, Position)> {
        let indexes = self.streams.get(stream).map_or(&[][..], Vec::as_slice);
        versions
            .iter()
            .map(|&v| {
                let index = usize::try_from(v - 1).expect("a version of the model fits an index");
                let e = &self.log[indexes[index]];
                (e.version, e.id, e.position)
            })
            .collect()
    }
}

fn sid(s: &str) -> StreamId {
    StreamId::new(s).expect("valid stream id")
}

/// A JSON event `{"n": n}` of type `kind`.
fn event(kind: &str, n: u64) -> EventData {
    EventData::json(kind, &serde_json::json!({ "n": n })).expect("json")
}

/// The recording time of the `n`-th restored event of a run: about the year 2096, after every
/// time a store records itself, and increasing along the run (so along every stream).
fn restored_at(n: u64) -> Timestamp {
    let n = i64::try_from(n).expect("a run restores fewer than 2^63 events");
    Timestamp::from_unix_micros(4_000_000_000_000_000 + n)
}

/// Runs `ops` on the store of `target` and checks every result, then the whole contents,
/// against the model. Panics, naming the step, at the first difference.
pub async fn run<T: ModelTarget>(mut target: T, ops: Vec<Op>) {
    let mut store = target.open().await;
    let mut model = Model::default();
    let mut last: Option<(String, Vec<EventData>, AppendResult)> = None;
    let mut restored = 0u64;
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Append {
                stream,
                count,
                expect,
            } => {
                let name = format!("model-{stream}");
                let current = model.version(&name);
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
                    let count = u64::from(count);
                    assert_eq!(r.first_version.get(), current + 1, "step {step}");
                    assert_eq!(r.last_version.get(), current + count, "step {step}");
                    let positions = match T::POSITIONS {
                        Positions::Sequence => {
                            let next = model.log.len() as u64 + 1;
                            assert_eq!(r.first_position, Position::sequence(next), "step {step}");
                            assert_eq!(
                                r.last_position,
                                Position::sequence(next + count - 1),
                                "step {step}"
                            );
                            (next..next + count).map(Position::sequence).collect()
                        }
                        Positions::Increasing => {
                            learn_positions(&store, &name, &events, &r, &model, step).await
                        }
                    };
                    for (i, (e, position)) in events.iter().zip(positions).enumerate() {
                        model.push(Logged {
                            stream: name.clone(),
                            version: current + 1 + i as u64,
                            id: e.id,
                            position,
                            recorded_at: None,
                        });
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
                        .or_insert_with(|| model.version(&name));
                    *version += 1;
                    restored += 1;
                    batch.push(RestoredEvent::new(
                        sid(&name),
                        Version::new(*version),
                        restored_at(restored),
                        event("R", u64::from(i)),
                    ));
                }
                let r = store
                    .restore(batch.clone())
                    .await
                    .unwrap_or_else(|e| panic!("step {step}: restore failed: {e}"));
                assert_eq!(r.written, u64::from(count), "step {step}: restored");
                assert_eq!(r.present, 0, "step {step}: found present");
                let positions = match T::POSITIONS {
                    Positions::Sequence => {
                        let next = model.log.len() as u64 + 1;
                        assert_eq!(
                            r.last_position,
                            Some(Position::sequence(next + u64::from(count) - 1)),
                            "step {step}: the restore's last position"
                        );
                        (next..next + u64::from(count))
                            .map(Position::sequence)
                            .collect()
                    }
                    Positions::Increasing => {
                        learn_restored_positions(&store, &batch, &r, &model, step).await
                    }
                };
                for (e, position) in batch.into_iter().zip(positions) {
                    model.push(Logged {
                        stream: e.stream_id.to_string(),
                        version: e.version.get(),
                        id: e.event.id,
                        position,
                        recorded_at: Some(e.recorded_at),
                    });
                }
            }
            Op::ReadStream {
                stream,
                backward,
                from,
                limit,
            } => {
                let name = format!("model-{stream}");
                let mut options = if backward {
                    ReadStream::backward()
                } else {
                    ReadStream::forward()
                };
                options = options
                    .from(Version::new(u64::from(from)))
                    .limit(usize::from(limit));
                let versions: Vec<u64> = match options.range(Version::new(model.version(&name))) {
                    None => Vec::new(),
                    Some((a, b)) if options.direction == Direction::Forward => {
                        (a.get()..=b.get()).collect()
                    }
                    Some((a, b)) => (b.get()..=a.get()).rev().collect(),
                };
                let want = model.stream_events(&name, &versions);
                let got: Vec<(u64, EventId, Position)> = store
                    .read_stream(&sid(&name), options)
                    .map_ok(|e| (e.version.get(), e.id, e.position))
                    .try_collect()
                    .await
                    .expect("read_stream");
                assert_eq!(got, want, "step {step}: {options:?}");
            }
            Op::ReadAll { from, limit } => {
                let from = usize::from(from);
                let start = match T::POSITIONS {
                    Positions::Sequence => Position::sequence(from as u64),
                    Positions::Increasing => match from.checked_sub(1) {
                        None => Position::START,
                        Some(i) => model.log.get(i).map_or_else(
                            || {
                                model
                                    .last_position()
                                    .map_or(Position::START, Position::next)
                            },
                            |e| e.position,
                        ),
                    },
                };
                let got: Vec<(String, u64, EventId, Position)> = store
                    .read_all(ReadAll::from(start).limit(usize::from(limit)))
                    .map_ok(|e| (e.stream_id.to_string(), e.version.get(), e.id, e.position))
                    .try_collect()
                    .await
                    .expect("read_all");
                let want: Vec<(String, u64, EventId, Position)> = model
                    .log
                    .iter()
                    .skip(from.saturating_sub(1))
                    .take(usize::from(limit))
                    .map(|e| (e.stream.clone(), e.version, e.id, e.position))
                    .collect();
                assert_eq!(got, want, "step {step}: read_all from {start}");
            }
            Op::Reopen => {
                store = target.reopen(store).await;
                let last_position = store.last_position().await.expect("last position");
                assert_eq!(
                    last_position,
                    model.last_position(),
                    "step {step}: positions after reopen"
                );
            }
        }
    }
    check_contents(&store, &model).await;
    target.finish(store, model.log.len() as u64).await;
}

/// Under [`Positions::Increasing`]: checks the positions of a successful append's result and
/// reads the new events back from their stream for the positions between the first and last.
async fn learn_positions<S: EventStore>(
    store: &S,
    stream: &str,
    events: &[EventData],
    r: &AppendResult,
    model: &Model,
    step: usize,
) -> Vec<Position> {
    if let Some(before) = model.last_position() {
        assert!(
            r.first_position > before,
            "step {step}: appended at {} after {before}",
            r.first_position
        );
    }
    let read: Vec<(u64, EventId, Position)> = store
        .read_stream(
            &sid(stream),
            ReadStream::forward()
                .from(r.first_version)
                .limit(events.len()),
        )
        .map_ok(|e| (e.version.get(), e.id, e.position))
        .try_collect()
        .await
        .expect("read_stream");
    let want: Vec<(u64, EventId)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (r.first_version.get() + i as u64, e.id))
        .collect();
    let got: Vec<(u64, EventId)> = read.iter().map(|&(v, id, _)| (v, id)).collect();
    assert_eq!(got, want, "step {step}: the appended events read back");
    let positions: Vec<Position> = read.into_iter().map(|(_, _, p)| p).collect();
    assert_eq!(positions.first(), Some(&r.first_position), "step {step}");
    assert_eq!(positions.last(), Some(&r.last_position), "step {step}");
    for pair in positions.windows(2) {
        assert!(
            pair[0] < pair[1],
            "step {step}: positions {} then {} in one append",
            pair[0],
            pair[1]
        );
    }
    positions
}

/// Under [`Positions::Increasing`]: checks the positions of a restore's result and reads the
/// restored events back from the global log (after the model's last event) for their positions.
async fn learn_restored_positions<S: EventStore>(
    store: &S,
    batch: &[RestoredEvent],
    r: &annals::RestoreResult,
    model: &Model,
    step: usize,
) -> Vec<Position> {
    let from = model
        .last_position()
        .map_or(Position::START, Position::next);
    let read: Vec<(String, u64, EventId, Position)> = store
        .read_all(ReadAll::from(from).limit(batch.len() + 1))
        .map_ok(|e| (e.stream_id.to_string(), e.version.get(), e.id, e.position))
        .try_collect()
        .await
        .expect("read_all");
    let got: Vec<(String, u64, EventId)> = read
        .iter()
        .map(|(s, v, id, _)| (s.clone(), *v, *id))
        .collect();
    let want: Vec<(String, u64, EventId)> = batch
        .iter()
        .map(|e| (e.stream_id.to_string(), e.version.get(), e.event.id))
        .collect();
    assert_eq!(
        got, want,
        "step {step}: the restored events read back, in batch order"
    );
    let positions: Vec<Position> = read.into_iter().map(|(_, _, _, p)| p).collect();
    if let (Some(before), Some(first)) = (model.last_position(), positions.first()) {
        assert!(
            *first > before,
            "step {step}: restored at {first} after {before}"
        );
    }
    assert_eq!(
        r.last_position,
        positions.last().copied(),
        "step {step}: the restore's last position"
    );
    for pair in positions.windows(2) {
        assert!(
            pair[0] < pair[1],
            "step {step}: positions {} then {} in one restore",
            pair[0],
            pair[1]
        );
    }
    positions
}

/// The store's whole contents against the model: the global log, every stream and its
/// version, the stream listing, the last position, and the recording times of the restored
/// events.
async fn check_contents<S: EventStore>(store: &S, model: &Model) {
    let all: Vec<annals::RecordedEvent> = store
        .read_all(ReadAll::all())
        .try_collect()
        .await
        .expect("read_all");
    let got: Vec<(String, u64, EventId, Position)> = all
        .iter()
        .map(|e| (e.stream_id.to_string(), e.version.get(), e.id, e.position))
        .collect();
    let want: Vec<(String, u64, EventId, Position)> = model
        .log
        .iter()
        .map(|e| (e.stream.clone(), e.version, e.id, e.position))
        .collect();
    assert_eq!(got, want, "at the end: the global log");
    let got: Vec<(Position, Timestamp)> = all
        .iter()
        .zip(&model.log)
        .filter(|(_, e)| e.recorded_at.is_some())
        .map(|(stored, _)| (stored.position, stored.recorded_at))
        .collect();
    let want: Vec<(Position, Timestamp)> = model
        .log
        .iter()
        .filter_map(|e| e.recorded_at.map(|at| (e.position, at)))
        .collect();
    assert_eq!(
        got, want,
        "at the end: the recording times of the restored events"
    );
    for name in model.streams.keys() {
        let got: Vec<(u64, EventId, Position)> = store
            .read_stream(&sid(name), ReadStream::forward())
            .map_ok(|e| (e.version.get(), e.id, e.position))
            .try_collect()
            .await
            .expect("read_stream");
        let versions: Vec<u64> = (1..=model.version(name)).collect();
        assert_eq!(
            got,
            model.stream_events(name, &versions),
            "at the end: stream {name}"
        );
        assert_eq!(
            store.stream_version(&sid(name)).await.expect("version"),
            Version::new(model.version(name)),
            "at the end: the version of {name}"
        );
    }
    let listed: Vec<(String, u64, Position)> = store
        .streams()
        .map_ok(|s| (s.stream_id.to_string(), s.version.get(), s.last_position))
        .try_collect()
        .await
        .expect("streams");
    let want: Vec<(String, u64, Position)> = model
        .streams
        .iter()
        .map(|(name, indexes)| {
            let last = &model.log[*indexes.last().expect("a listed stream has events")];
            (name.clone(), last.version, last.position)
        })
        .collect();
    assert_eq!(listed, want, "at the end: the stream listing");
    assert_eq!(
        store.last_position().await.expect("last position"),
        model.last_position(),
        "at the end: the last position"
    );
}
