//! A projection of per-stream tallies, and stores filled for it.

#![allow(dead_code, unreachable_pub)]

#[cfg(feature = "postgres")]
pub mod pg;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use annals::{
    BoxError, EventData, EventStore, ExpectedVersion, Filter, Position, RecordedEvent, StreamId,
};
use annals_projections::{MemoryModel, MemoryTx, Projection, ProjectionName};

/// A stream's tally: events seen, their last version, the sum of their `n`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    pub last_version: u64,
    pub sum: u64,
}

impl Tally {
    /// The tally as 24 bytes (three u64, big-endian), as the sled handler stores it.
    pub fn to_bytes(self) -> Vec<u8> {
        [self.count, self.last_version, self.sum]
            .iter()
            .flat_map(|n| n.to_be_bytes())
            .collect()
    }

    /// Reads what [`to_bytes`](Self::to_bytes) wrote.
    pub fn from_bytes(bytes: &[u8]) -> Tally {
        let n = |i: usize| u64::from_be_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
        Tally {
            count: n(0),
            last_version: n(1),
            sum: n(2),
        }
    }

    /// Adds `event`, which must be the next of its stream.
    fn add(mut self, event: &RecordedEvent) -> Result<Tally, BoxError> {
        if event.version.get() != self.last_version + 1 {
            return Err(format!(
                "order violated on {}: version {} after {}",
                event.stream_id, event.version, self.last_version
            )
            .into());
        }
        self.count += 1;
        self.last_version = event.version.get();
        self.sum += n_of(event);
        Ok(self)
    }
}

/// What a test wants the handler to do with one event.
pub type Fault = dyn Fn(&RecordedEvent) -> Option<Fail> + Send + Sync;

/// A fault a test injects.
#[derive(Clone, Copy, Debug)]
pub enum Fail {
    Error,
    Panic,
}

/// Tallies every stream of `category` (all when empty); fails where `fault` says; refuses any
/// event out of its stream's order (so a violation stops the projection loudly).
pub struct Tallies {
    pub name: ProjectionName,
    pub category: Option<String>,
    pub fault: Arc<Fault>,
    /// Handler calls, committed or not.
    pub calls: Arc<AtomicU64>,
    /// The longest a handler call sleeps (a random part of it per batch).
    pub latency: Duration,
}

impl Tallies {
    pub fn new(name: &str) -> Self {
        Tallies {
            name: ProjectionName::new(name).unwrap(),
            category: None,
            fault: Arc::new(|_| None),
            calls: Arc::new(AtomicU64::new(0)),
            latency: Duration::ZERO,
        }
    }

    pub fn failing(
        mut self,
        fault: impl Fn(&RecordedEvent) -> Option<Fail> + Send + Sync + 'static,
    ) -> Self {
        self.fault = Arc::new(fault);
        self
    }
}

pub fn n_of(event: &RecordedEvent) -> u64 {
    let value: serde_json::Value = serde_json::from_slice(&event.payload).unwrap_or_default();
    value["n"].as_u64().unwrap_or(0)
}

impl Projection<MemoryModel<String, Tally>> for Tallies {
    fn name(&self) -> &ProjectionName {
        &self.name
    }

    fn filter(&self) -> Filter {
        match &self.category {
            Some(c) => Filter::all().category(c.clone()),
            None => Filter::all(),
        }
    }

    async fn handle(
        &self,
        tx: &mut MemoryTx<String, Tally>,
        events: &[RecordedEvent],
    ) -> Result<(), BoxError> {
        self.pause().await;
        for event in events {
            self.check(event)?;
            let key = event.stream_id.to_string();
            let tally = tx.get(&key).unwrap_or_default().add(event)?;
            tx.insert(key, tally);
        }
        Ok(())
    }
}

impl Tallies {
    /// Counts the call and sleeps its pseudo-random part of `latency`.
    async fn pause(&self) {
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        if !self.latency.is_zero() {
            // A pseudo-random latency per call, up to `latency`.
            let nanos = u64::try_from(self.latency.as_nanos()).unwrap_or(u64::MAX);
            let pick = call.wrapping_mul(0x9E37_79B9_7F4A_7C15) % nanos.max(1);
            tokio::time::sleep(Duration::from_nanos(pick)).await;
        }
    }

    /// Fails where `fault` says.
    fn check(&self, event: &RecordedEvent) -> Result<(), BoxError> {
        match (self.fault)(event) {
            Some(Fail::Error) => Err(format!("cannot tally {}", event.id).into()),
            Some(Fail::Panic) => panic!("tally handler blew up on {}", event.id),
            None => Ok(()),
        }
    }
}

/// On sled: the tallies live in the model's tree named after the projection, keyed by stream.
#[cfg(feature = "sled")]
impl Projection<annals_projections::SledModel> for Tallies {
    fn name(&self) -> &ProjectionName {
        &self.name
    }

    fn filter(&self) -> Filter {
        Projection::<MemoryModel<String, Tally>>::filter(self)
    }

    async fn handle(
        &self,
        tx: &mut annals_projections::SledTx,
        events: &[RecordedEvent],
    ) -> Result<(), BoxError> {
        self.pause().await;
        let tree = self.name.as_str();
        for event in events {
            self.check(event)?;
            let key = event.stream_id.as_str();
            let tally = tx
                .get(tree, key)?
                .map_or_else(Tally::default, |b| Tally::from_bytes(&b))
                .add(event)?;
            tx.insert(tree, key, tally.to_bytes())?;
        }
        Ok(())
    }
}

/// The tallies a sled model holds in `tree`.
#[cfg(feature = "sled")]
pub fn sled_tallies(model: &annals_projections::SledModel, tree: &str) -> HashMap<String, Tally> {
    model
        .to_map(tree)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (String::from_utf8(k).unwrap(), Tally::from_bytes(&v)))
        .collect()
}

/// Appends `per_stream` events to each of `streams` streams of `category`, interleaved, in
/// batches of up to `batch`; returns the last position.
pub async fn fill<S: EventStore>(
    store: &S,
    category: &str,
    streams: u64,
    per_stream: u64,
    batch: u64,
) -> Position {
    let mut last = Position::START;
    let mut version = 0;
    while version < per_stream {
        let take = batch.min(per_stream - version);
        for s in 0..streams {
            let stream = StreamId::new(format!("{category}-{s}")).unwrap();
            let events = (version..version + take)
                .map(|v| {
                    EventData::json("Counted", &serde_json::json!({ "n": s * 1000 + v })).unwrap()
                })
                .collect();
            let done = store
                .append(&stream, ExpectedVersion::exact(version), events)
                .await
                .unwrap();
            last = done.last_position;
        }
        version += take;
    }
    last
}

/// The tallies computed straight from the log: what the read model must equal.
pub async fn fold<S: EventStore>(store: &S, category: Option<&str>) -> HashMap<String, Tally> {
    use futures::TryStreamExt;
    let events: Vec<RecordedEvent> = store
        .read_all(annals::ReadAll::all())
        .try_collect()
        .await
        .unwrap();
    let mut tallies: HashMap<String, Tally> = HashMap::new();
    for event in events {
        if category.is_some_and(|c| event.category() != c) {
            continue;
        }
        let tally = tallies.entry(event.stream_id.to_string()).or_default();
        tally.count += 1;
        tally.last_version = event.version.get();
        tally.sum += n_of(&event);
    }
    tallies
}

/// The longest any wait in these tests may take before it is called a hang (a guard, never a
/// speed assertion).
pub const HANG_GUARD: Duration = Duration::from_secs(60);
