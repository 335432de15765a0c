//! The aggregate types a CLI knows, for `replay` and for showing payloads as JSON.

use std::collections::BTreeMap;
use std::sync::Arc;

use annals::{AnyStore, RecordedEvent, StreamId, Timestamp, Version};
use futures::future::BoxFuture;
use serde_json::Value;

use crate::failure::CliResult;

/// When to replay an aggregate to.
#[derive(Debug, Clone, Copy)]
pub enum ReplayPoint {
    /// Its latest state.
    Latest,
    /// The state right after this version.
    Version(Version),
    /// The state as it was at this time.
    AsOf(Timestamp),
}

/// A replayed state as JSON, with the version it is at.
#[derive(Debug, Clone)]
pub struct ReplayedState {
    /// The version folded up to.
    pub version: Version,
    /// The state, as JSON.
    pub state: Value,
}

/// What changed in an aggregate between two versions, as JSON.
#[derive(Debug, Clone)]
pub struct ReplayedChanges {
    /// The state at the earlier version.
    pub before: Value,
    /// The state at the later version.
    pub after: Value,
    /// The events in between: version, event type and when the store recorded it.
    pub events: Vec<(Version, String, Timestamp)>,
}

/// What the CLI needs of one aggregate type, erased of its Rust type. Implemented for every
/// [`annals::Aggregate`] whose state is `Serialize` through [`AggregateReplayer`](crate::AggregateReplayer).
pub trait Replayer: Send + Sync {
    /// The aggregate's stream category (`account` for `account-42`).
    fn category(&self) -> &str;

    /// The state of the aggregate in `stream` at `point`.
    fn replay<'a>(
        &'a self,
        store: &'a AnyStore,
        stream: &'a StreamId,
        point: ReplayPoint,
    ) -> BoxFuture<'a, CliResult<ReplayedState>>;

    /// The states of the aggregate in `stream` at `from` and at `to`, and the events in
    /// between, from one read of the stream.
    fn changes<'a>(
        &'a self,
        store: &'a AnyStore,
        stream: &'a StreamId,
        from: Version,
        to: Version,
    ) -> BoxFuture<'a, CliResult<ReplayedChanges>>;

    /// The event's payload decoded and shown as JSON, when it is one of this aggregate's.
    fn decode_event(&self, event: &RecordedEvent) -> Option<Value>;
}

/// The registered aggregate types, by category.
#[derive(Default, Clone)]
pub struct Registry {
    by_category: BTreeMap<String, Arc<dyn Replayer>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.by_category.keys()).finish()
    }
}

impl Registry {
    /// Adds a replayer; a later one for the same category replaces the earlier.
    pub fn insert(&mut self, replayer: Arc<dyn Replayer>) {
        self.by_category
            .insert(replayer.category().to_owned(), replayer);
    }

    /// The replayer for `stream`'s category.
    pub fn for_stream(&self, stream: &StreamId) -> Option<&Arc<dyn Replayer>> {
        self.by_category.get(stream.category())
    }

    /// The registered categories.
    pub fn categories(&self) -> impl Iterator<Item = &str> {
        self.by_category.keys().map(String::as_str)
    }

    /// `event`'s payload as JSON when its aggregate is registered and can decode it.
    pub fn decode_event(&self, event: &RecordedEvent) -> Option<Value> {
        self.for_stream(&event.stream_id)?.decode_event(event)
    }
}
