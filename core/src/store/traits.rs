use std::future::Future;

use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use super::{CommitWatch, ReadAll, ReadStream, RestoreResult, RestoredEvent, VerifyReport};
use crate::{
    AppendResult, EventData, ExpectedVersion, Limits, Position, RecordedEvent, Result, StreamId,
    Timestamp, Version,
};

/// An append-only event store with optimistic concurrency.
///
/// Every store in Annals implements this trait and passes the conformance suite of
/// `annals-testkit`, which is the executable form of the contract below.
///
/// # Contract
///
/// - [`append`](Self::append) is **atomic** (all events of the call are stored or none),
///   checks the expected version without races, and is **idempotent**: appending events whose
///   ids were all appended before, in the same stream and order, returns the first append's
///   result and writes nothing; a batch whose ids only partly match fails with
///   [`Error::IdempotencyConflict`](crate::Error::IdempotencyConflict).
/// - Limits and stream ids are checked before anything is written.
/// - The global log has one total order. A reader that has passed a position never sees an
///   event appear before it later.
/// - Once `append` returns `Ok`, the events are durable as the store's durability setting
///   promises, and [`watch_commits`](Self::watch_commits) signals them.
///
/// Reads return `'static` streams, so they can be moved into tasks.
///
/// For choosing a store at run time, see [`DynStore`](crate::DynStore) and
/// [`AnyStore`](crate::AnyStore).
pub trait EventStore: Send + Sync {
    /// Appends `events` to `stream` if it is at the `expected` version.
    fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> impl Future<Output = Result<AppendResult>> + Send;

    /// Reads events of one stream. A missing stream reads as empty.
    fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> BoxStream<'static, Result<RecordedEvent>>;

    /// Reads the global log in position order.
    fn read_all(&self, options: ReadAll) -> BoxStream<'static, Result<RecordedEvent>>;

    /// The current version of `stream` ([`Version::EMPTY`] when it has no events).
    fn stream_version(&self, stream: &StreamId) -> impl Future<Output = Result<Version>> + Send;

    /// The position of the last event a reader of the global log can see, if any. A
    /// [`read_all`](Self::read_all) started after this returned sees every event up to it
    /// (the global order never skips), so a filtered reader that got fewer events than it
    /// asked for has scanned at least this far.
    fn last_position(&self) -> impl Future<Output = Result<Option<Position>>> + Send;

    /// Every stream with its version and last write, in stream id order.
    fn streams(&self) -> BoxStream<'static, Result<StreamInfo>>;

    /// A signal that fires after events are committed (see [`subscribe_all`](crate::subscribe_all)).
    fn watch_commits(&self) -> CommitWatch;

    /// The limits appends are checked against.
    fn limits(&self) -> Limits;

    /// Appends events of many streams as one atomic batch, keeping each event's version and
    /// recording time: how a copy of a store (`import`, `migrate`) keeps its history exactly,
    /// so `load_as_of` and audits answer the same on the copy.
    ///
    /// # Contract
    ///
    /// - **All or nothing**, in one commit (one transaction, one flush); new events take
    ///   positions in batch order.
    /// - Within a stream, the batch's events have consecutive versions. Events at versions the
    ///   stream already has must be the stored ones (the same id at the same version: a re-run
    ///   of the same copy); they are counted as present and not written again. The first event
    ///   past the stream's head has the version after it.
    /// - A stream's recording times never run backwards: each written event is recorded no
    ///   earlier than the event before it in its stream.
    /// - The batch is checked against the store's [`Limits`] like an append.
    ///
    /// # Errors
    ///
    /// Nothing is written on any error:
    /// [`VersionConflict`](crate::Error::VersionConflict) when a stream's first new event does
    /// not follow its head; [`IdempotencyConflict`](crate::Error::IdempotencyConflict) when an
    /// event id is stored elsewhere or another event holds a version of the batch;
    /// [`InvalidEvent`](crate::Error::InvalidEvent) for versions that skip within the batch or
    /// a recording time that runs backwards; [`LimitExceeded`](crate::Error::LimitExceeded).
    fn restore(
        &self,
        events: Vec<RestoredEvent>,
    ) -> impl Future<Output = Result<RestoreResult>> + Send;

    /// Makes everything acknowledged durable and announced, then stops the store's background
    /// work: a buffered store flushes, a server store sends the commit notifications it still
    /// owes to subscribers in other processes. Call it before a process exits.
    ///
    /// Operations after `close` fail with [`Error::Closed`](crate::Error::Closed) or reopen
    /// what they need, as each store documents; closing twice is harmless.
    fn close(&self) -> impl Future<Output = Result<()>> + Send;

    /// The store's own integrity check: every record against its checksum and every index
    /// against its target, as far as the store can check. Records in its format are walked in
    /// bounded memory.
    ///
    /// # Errors
    ///
    /// Only when the store cannot be read at all; damaged records are
    /// [problems](VerifyReport::problems) of the report.
    fn verify(&self) -> impl Future<Output = Result<VerifyReport>> + Send;
}

/// A stream's vital statistics, as listed by [`EventStore::streams`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StreamInfo {
    /// The stream.
    pub stream_id: StreamId,
    /// Its current version.
    pub version: Version,
    /// The position of its last event.
    pub last_position: Position,
    /// When its last event was recorded.
    pub last_recorded_at: Timestamp,
}

/// A saved aggregate state: the fold of its stream up to `version`.
///
/// ```
/// use annals::{Snapshot, StreamId, Version};
///
/// let snapshot = Snapshot::new(StreamId::new("account-1")?, Version::new(10), "application/json", "{}")
///     .with_schema_version(2);
/// assert_eq!(snapshot.schema_version, 2);
/// # Ok::<(), annals::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// The stream the state was folded from.
    pub stream_id: StreamId,
    /// The last event folded into the state.
    pub version: Version,
    /// The schema version of the state's type; a snapshot of another schema version is ignored.
    pub schema_version: u16,
    /// The codec that wrote the state.
    pub content_type: String,
    /// The encoded state.
    pub payload: Bytes,
    /// When the snapshot was taken.
    pub taken_at: Timestamp,
}

impl StreamInfo {
    /// A stream at `version` whose last event is at `last_position`, recorded at
    /// `last_recorded_at`.
    pub fn new(
        stream_id: StreamId,
        version: Version,
        last_position: Position,
        last_recorded_at: Timestamp,
    ) -> Self {
        StreamInfo {
            stream_id,
            version,
            last_position,
            last_recorded_at,
        }
    }
}

impl Snapshot {
    /// The state `payload`, written by the codec `content_type`, folded from `stream_id` up to
    /// `version`; schema version 1, taken now.
    pub fn new(
        stream_id: StreamId,
        version: Version,
        content_type: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> Self {
        Snapshot {
            stream_id,
            version,
            schema_version: 1,
            content_type: content_type.into(),
            payload: payload.into(),
            taken_at: Timestamp::now(),
        }
    }

    /// Sets the schema version of the state's type.
    #[must_use]
    pub fn with_schema_version(mut self, schema_version: u16) -> Self {
        self.schema_version = schema_version;
        self
    }

    /// Sets when the snapshot was taken.
    #[must_use]
    pub fn with_taken_at(mut self, taken_at: Timestamp) -> Self {
        self.taken_at = taken_at;
        self
    }
}

/// Where aggregate snapshots are kept: one per stream, the newest overwriting the older.
pub trait SnapshotStore: Send + Sync {
    /// Saves `snapshot`, replacing the stream's previous one.
    fn save_snapshot(&self, snapshot: Snapshot) -> impl Future<Output = Result<()>> + Send;

    /// The stream's snapshot, if any.
    fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<Snapshot>>> + Send;
}

/// Where consumers of the global log (projections, relays) keep their place, by name.
pub trait CheckpointStore: Send + Sync {
    /// Saves `position` as the checkpoint `name`, replacing the previous one.
    fn save_checkpoint(
        &self,
        name: &str,
        position: Position,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The checkpoint `name`, if saved.
    fn load_checkpoint(&self, name: &str) -> impl Future<Output = Result<Option<Position>>> + Send;
}
