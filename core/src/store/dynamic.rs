use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::FutureExt;

use super::{
    CheckpointStore, CommitWatch, EventStore, ReadAll, ReadStream, RestoreResult, RestoredEvent,
    Snapshot, SnapshotStore, StreamInfo, VerifyReport,
};
use crate::lease::{Lease, LeaseInfo, Leases};
use crate::{
    AppendResult, EventData, ExpectedVersion, Limits, Position, RecordedEvent, Result, StreamId,
    Version,
};

/// The `dyn`-compatible twin of [`EventStore`] + [`SnapshotStore`] + [`CheckpointStore`] +
/// [`Leases`], for choosing a store at run time (the CLI, the projection runtime).
///
/// Every type implementing the four traits implements this one; [`AnyStore`] (an
/// `Arc<dyn DynStore>`) implements the four traits again, so code generic over them takes a
/// store chosen at run time as well.
///
/// ```
/// use annals::{AnyStore, EventStore, InMemoryStore, IntoAnyStore, StreamId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> annals::Result<()> {
/// let store: AnyStore = InMemoryStore::new().into_any();
/// let version = store.stream_version(&StreamId::new("account-1")?).await?;
/// assert!(version.is_empty());
/// # Ok(())
/// # }
/// ```
pub trait DynStore: Send + Sync {
    /// [`EventStore::append`].
    fn dyn_append<'a>(
        &'a self,
        stream: &'a StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> BoxFuture<'a, Result<AppendResult>>;
    /// [`EventStore::read_stream`].
    fn dyn_read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> BoxStream<'static, Result<RecordedEvent>>;
    /// [`EventStore::read_all`].
    fn dyn_read_all(&self, options: ReadAll) -> BoxStream<'static, Result<RecordedEvent>>;
    /// [`EventStore::stream_version`].
    fn dyn_stream_version<'a>(&'a self, stream: &'a StreamId) -> BoxFuture<'a, Result<Version>>;
    /// [`EventStore::last_position`].
    fn dyn_last_position(&self) -> BoxFuture<'_, Result<Option<Position>>>;
    /// [`EventStore::streams`].
    fn dyn_streams(&self) -> BoxStream<'static, Result<StreamInfo>>;
    /// [`EventStore::watch_commits`].
    fn dyn_watch_commits(&self) -> CommitWatch;
    /// [`EventStore::limits`].
    fn dyn_limits(&self) -> Limits;
    /// [`EventStore::restore`].
    fn dyn_restore(&self, events: Vec<RestoredEvent>) -> BoxFuture<'_, Result<RestoreResult>>;
    /// [`EventStore::close`].
    fn dyn_close(&self) -> BoxFuture<'_, Result<()>>;
    /// [`EventStore::verify`].
    fn dyn_verify(&self) -> BoxFuture<'_, Result<VerifyReport>>;
    /// [`SnapshotStore::save_snapshot`].
    fn dyn_save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<()>>;
    /// [`SnapshotStore::load_snapshot`].
    fn dyn_load_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> BoxFuture<'a, Result<Option<Snapshot>>>;
    /// [`CheckpointStore::save_checkpoint`].
    fn dyn_save_checkpoint<'a>(
        &'a self,
        name: &'a str,
        position: Position,
    ) -> BoxFuture<'a, Result<()>>;
    /// [`CheckpointStore::load_checkpoint`].
    fn dyn_load_checkpoint<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Position>>>;
    /// [`Leases::try_lease`].
    fn dyn_try_lease<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Lease>>>;
    /// [`Leases::leases`].
    fn dyn_leases<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<LeaseInfo>>>;
}

/// A store chosen at run time.
pub type AnyStore = Arc<dyn DynStore>;

/// Turns a store into an [`AnyStore`].
pub trait IntoAnyStore {
    /// Boxes this store behind the `dyn` twin.
    fn into_any(self) -> AnyStore;
}

impl<T> IntoAnyStore for T
where
    T: EventStore + SnapshotStore + CheckpointStore + Leases + 'static,
{
    fn into_any(self) -> AnyStore {
        Arc::new(self)
    }
}

impl<T> DynStore for T
where
    T: EventStore + SnapshotStore + CheckpointStore + Leases,
{
    fn dyn_append<'a>(
        &'a self,
        stream: &'a StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> BoxFuture<'a, Result<AppendResult>> {
        self.append(stream, expected, events).boxed()
    }
    fn dyn_read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> BoxStream<'static, Result<RecordedEvent>> {
        self.read_stream(stream, options)
    }
    fn dyn_read_all(&self, options: ReadAll) -> BoxStream<'static, Result<RecordedEvent>> {
        self.read_all(options)
    }
    fn dyn_stream_version<'a>(&'a self, stream: &'a StreamId) -> BoxFuture<'a, Result<Version>> {
        self.stream_version(stream).boxed()
    }
    fn dyn_last_position(&self) -> BoxFuture<'_, Result<Option<Position>>> {
        self.last_position().boxed()
    }
    fn dyn_streams(&self) -> BoxStream<'static, Result<StreamInfo>> {
        self.streams()
    }
    fn dyn_watch_commits(&self) -> CommitWatch {
        self.watch_commits()
    }
    fn dyn_limits(&self) -> Limits {
        self.limits()
    }
    fn dyn_restore(&self, events: Vec<RestoredEvent>) -> BoxFuture<'_, Result<RestoreResult>> {
        self.restore(events).boxed()
    }
    fn dyn_close(&self) -> BoxFuture<'_, Result<()>> {
        self.close().boxed()
    }
    fn dyn_verify(&self) -> BoxFuture<'_, Result<VerifyReport>> {
        self.verify().boxed()
    }
    fn dyn_save_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'_, Result<()>> {
        self.save_snapshot(snapshot).boxed()
    }
    fn dyn_load_snapshot<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> BoxFuture<'a, Result<Option<Snapshot>>> {
        self.load_snapshot(stream).boxed()
    }
    fn dyn_save_checkpoint<'a>(
        &'a self,
        name: &'a str,
        position: Position,
    ) -> BoxFuture<'a, Result<()>> {
        self.save_checkpoint(name, position).boxed()
    }
    fn dyn_load_checkpoint<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Position>>> {
        self.load_checkpoint(name).boxed()
    }
    fn dyn_try_lease<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Lease>>> {
        self.try_lease(name).boxed()
    }
    fn dyn_leases<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<LeaseInfo>>> {
        self.leases(prefix).boxed()
    }
}

impl EventStore for AnyStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        (**self).dyn_append(stream, expected, events).await
    }
    fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> BoxStream<'static, Result<RecordedEvent>> {
        (**self).dyn_read_stream(stream, options)
    }
    fn read_all(&self, options: ReadAll) -> BoxStream<'static, Result<RecordedEvent>> {
        (**self).dyn_read_all(options)
    }
    async fn stream_version(&self, stream: &StreamId) -> Result<Version> {
        (**self).dyn_stream_version(stream).await
    }
    async fn last_position(&self) -> Result<Option<Position>> {
        (**self).dyn_last_position().await
    }
    fn streams(&self) -> BoxStream<'static, Result<StreamInfo>> {
        (**self).dyn_streams()
    }
    fn watch_commits(&self) -> CommitWatch {
        (**self).dyn_watch_commits()
    }
    fn limits(&self) -> Limits {
        (**self).dyn_limits()
    }
    async fn restore(&self, events: Vec<RestoredEvent>) -> Result<RestoreResult> {
        (**self).dyn_restore(events).await
    }
    async fn close(&self) -> Result<()> {
        (**self).dyn_close().await
    }
    async fn verify(&self) -> Result<VerifyReport> {
        (**self).dyn_verify().await
    }
}

impl SnapshotStore for AnyStore {
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        (**self).dyn_save_snapshot(snapshot).await
    }
    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        (**self).dyn_load_snapshot(stream).await
    }
}

impl CheckpointStore for AnyStore {
    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<()> {
        (**self).dyn_save_checkpoint(name, position).await
    }
    async fn load_checkpoint(&self, name: &str) -> Result<Option<Position>> {
        (**self).dyn_load_checkpoint(name).await
    }
}

impl Leases for AnyStore {
    async fn try_lease(&self, name: &str) -> Result<Option<Lease>> {
        (**self).dyn_try_lease(name).await
    }
    async fn leases(&self, prefix: &str) -> Result<Vec<LeaseInfo>> {
        (**self).dyn_leases(prefix).await
    }
}
