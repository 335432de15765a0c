//! [`PgEventStore`]: the store traits on PostgreSQL.
//!
//! - `mod.rs` (here): the store value, how it opens and closes, and the [`EventStore`] impl,
//!   which hands each operation to the file that does it;
//! - [`append`]: the append path (the statement, its retries, the idempotency lookup);
//! - [`params`]: an append's statement parameters and the checks of what PostgreSQL can store;
//! - [`read`]: paged reads of one stream and of the global log, and the small reads;
//! - [`restore`]: restoring a copy, many streams in one transaction and one binary `COPY`;
//! - [`rows`]: every row the store reads back, decoded and checked;
//! - [`snapshots`], [`checkpoints`]: the other two store traits;
//! - [`verify`]: the store's own check, in SQL.

mod append;
mod checkpoints;
mod params;
mod read;
mod restore;
mod rows;
mod snapshots;
mod verify;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use annals::store::kit::{instrument_append, instrument_read, CommitNotifier};
use annals::{
    AppendResult, CommitWatch, Error, EventData, EventStore, ExpectedVersion, Limits, Position,
    ReadAll, ReadStream, RecordedEvent, RestoreResult, RestoredEvent, Result, StreamId, StreamInfo,
    VerifyReport, Version,
};
use deadpool_postgres::Pool;
use futures::stream::BoxStream;
use tokio_postgres::Config;

use crate::error::{map_pool, BACKEND};
use crate::heads::KnownHeads;
use crate::schema::{self, Sql};
use crate::watcher::{self, Background, LocalCommits};

/// What the [builder](crate::PgEventStoreBuilder) settled on: everything [`PgEventStore::open`]
/// needs, checked.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) pool: Pool,
    /// Whether the store made the pool (and so closes it on [`close`](EventStore::close)).
    pub(crate) owns_pool: bool,
    /// Where the pool connects (`host:port`…, never the password), for the errors of
    /// connections that fail; unknown for a pool given to the builder.
    pub(crate) tried: Option<Arc<str>>,
    /// Where the LISTEN connection connects (none: the store polls).
    pub(crate) listen_config: Option<Config>,
    /// The LISTEN/NOTIFY channel.
    pub(crate) channel: String,
    pub(crate) schema: String,
    pub(crate) limits: Limits,
    pub(crate) page_size: usize,
    pub(crate) poll_interval: Duration,
    pub(crate) fallback_poll_interval: Duration,
    pub(crate) notify_interval: Duration,
    pub(crate) lease_heartbeat: Duration,
    pub(crate) lease_ttl: Duration,
    pub(crate) lease_holder: String,
}

/// An event store on PostgreSQL. Clones share one pool and one background task.
///
/// See the [crate docs](crate) for the schema, the global order and the wake-ups, and
/// [`Leases`](annals::Leases) for its leases.
#[derive(Clone, Debug)]
pub struct PgEventStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Pool,
    owns_pool: bool,
    /// Where the pool connects, for errors (see [`Settings::tried`]).
    tried: Option<Arc<str>>,
    schema: String,
    sql: Sql,
    limits: Limits,
    page_size: usize,
    notifier: CommitNotifier,
    /// Tells the background task that this process committed an append.
    local: Arc<LocalCommits>,
    /// The stream heads this store has seen, which spare exact appends their probe.
    heads: KnownHeads,
    lease_heartbeat: Duration,
    lease_ttl: Duration,
    lease_holder: String,
    /// Set by `close`: every operation that needs the server fails with `Error::Closed`.
    closed: AtomicBool,
    /// The background task; dropped with the last clone (which stops it), taken by `close`.
    background: tokio::sync::Mutex<Option<Background>>,
}

impl PgEventStore {
    /// Opens the store on `settings` and starts its background task (on the current Tokio
    /// runtime). Connects lazily.
    pub(crate) fn open(settings: Settings) -> PgEventStore {
        let local = Arc::new(LocalCommits::default());
        let notifier = CommitNotifier::new();
        let sql = Sql::new(&settings.schema);
        let background = watcher::spawn(watcher::Watcher {
            pool: settings.pool.clone(),
            tried: settings.tried.clone(),
            listen_config: settings.listen_config,
            channel: settings.channel,
            token: uuid::Uuid::now_v7().simple().to_string(),
            horizon_sql: sql.horizon.clone(),
            schema: settings.schema.clone(),
            notifier: notifier.clone(),
            local: local.clone(),
            poll_interval: settings.poll_interval,
            fallback_poll_interval: settings.fallback_poll_interval,
            notify_interval: settings.notify_interval,
        });
        PgEventStore {
            inner: Arc::new(Inner {
                pool: settings.pool,
                owns_pool: settings.owns_pool,
                tried: settings.tried,
                schema: settings.schema,
                sql,
                limits: settings.limits,
                page_size: settings.page_size,
                notifier,
                local,
                heads: KnownHeads::default(),
                lease_heartbeat: settings.lease_heartbeat,
                lease_ttl: settings.lease_ttl,
                lease_holder: settings.lease_holder,
                closed: AtomicBool::new(false),
                background: tokio::sync::Mutex::new(Some(background)),
            }),
        }
    }

    /// Creates the schema, or migrates it to this version of the crate; safe to call every time
    /// the application starts, from several processes at once. Returns the schema version.
    ///
    /// # Errors
    ///
    /// [`Error::Format`] when the schema is newer than this crate; [`Error::Unavailable`] when
    /// the server cannot be reached; [`Error::Backend`] when a migration fails;
    /// [`Error::Closed`] after [`close`](EventStore::close).
    pub async fn init(&self) -> Result<i32> {
        let mut client = self.client().await?;
        let client: &mut tokio_postgres::Client = &mut client;
        schema::migrate(client, &self.inner.schema).await
    }

    /// The schema version recorded in the database, or `None` when [`init`](Self::init) has
    /// not run.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the server cannot be reached; [`Error::Closed`] after
    /// [`close`](EventStore::close).
    pub async fn schema_version(&self) -> Result<Option<i32>> {
        let client = self.client().await?;
        schema::version(&client, &self.inner.schema).await
    }

    /// The schema holding the store's tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The connection pool (for running your own statements, e.g. a read model in the same
    /// database). A pool the store made is closed by [`close`](EventStore::close); one given
    /// to [`PgEventStoreBuilder::pool`](crate::PgEventStoreBuilder::pool) is left open.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// A pooled connection, or [`Error::Closed`] once the store is closed.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Client> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        self.inner
            .pool
            .get()
            .await
            .map_err(|e| map_pool(e, self.inner.tried.as_ref()))
    }

    /// How often a held lease is renewed.
    pub(crate) fn lease_heartbeat(&self) -> Duration {
        self.inner.lease_heartbeat
    }

    /// How long after its last renewal a lease may be taken by another holder (see
    /// [`lease_ttl`](crate::PgEventStoreBuilder::lease_ttl)).
    pub fn lease_ttl(&self) -> Duration {
        self.inner.lease_ttl
    }

    /// Who this store's leases say holds them.
    pub fn lease_holder(&self) -> &str {
        &self.inner.lease_holder
    }
}

impl EventStore for PgEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        let count = events.len();
        instrument_append(
            BACKEND,
            stream,
            count,
            self.append_now(stream, expected, events),
        )
        .await
    }

    fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> BoxStream<'static, Result<RecordedEvent>> {
        let read = self.read_stream_pages(stream, options);
        instrument_read(BACKEND, "read_stream", Some(stream), options.from, read)
    }

    fn read_all(&self, options: ReadAll) -> BoxStream<'static, Result<RecordedEvent>> {
        let from = options.from;
        let read = self.read_all_pages(options);
        instrument_read(BACKEND, "read_all", None, from, read)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version> {
        let client = self.client().await?;
        let version = self.version_on(&client, stream).await?;
        self.inner.heads.saw(stream, version.get());
        Ok(version)
    }

    async fn last_position(&self) -> Result<Option<Position>> {
        self.last_visible().await
    }

    fn streams(&self) -> BoxStream<'static, Result<StreamInfo>> {
        self.list_streams()
    }

    fn watch_commits(&self) -> CommitWatch {
        self.inner.notifier.watch()
    }

    fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Restores a batch in one transaction: the heads of its streams (those the store does not
    /// remember from its own restores and reads) and the ids it may already hold are read,
    /// [`plan_restore`](annals::store::kit::plan_restore) checks it, and the events to write go
    /// in with one binary `COPY`, in batch order, with their recording times. Positions are
    /// `(transaction id, seq)` as for appends, so the global order's guarantees hold alike; a
    /// concurrent writer to the same streams collides on the unique keys and the restore reads
    /// everything again and plans again, refusing the batch (nothing written) or counting its
    /// own events present. The commit is announced as an append's. See the
    /// [crate docs](crate#restores).
    ///
    /// # Errors
    ///
    /// As [`EventStore::restore`] documents, and as an append fails (`Unavailable`, `Timeout`,
    /// `Closed`…); [`Error::AppendOutcomeUnknown`] when every connection died while committing:
    /// restore the same batch again, what was written is counted present.
    async fn restore(&self, events: Vec<RestoredEvent>) -> Result<RestoreResult> {
        self.restore_now(events).await
    }

    /// Closes the store, for every clone: stops the background task and, before returning,
    /// sends the commit notification still owed to other processes for this store's appends
    /// (those of the last [notification gap](crate::PgEventStoreBuilder::notify_interval)) and
    /// waits until it is sent, so a process that appends, closes and exits never leaves
    /// subscribers in other processes waiting. Then it closes the pool, if the store made it.
    ///
    /// Every append acknowledged before `close` was called is announced; one still in flight
    /// completes, but other processes only learn of it at their next wake-up — at the latest
    /// at their [fallback poll](crate::PgEventStoreBuilder::fallback_poll_interval), as for a
    /// process that dies without closing its store.
    ///
    /// After `close`, every operation that needs the server (appends, reads, `init`,
    /// [`try_lease`](annals::Leases::try_lease), `verify`, snapshots, checkpoints) fails with
    /// [`Error::Closed`]; [`watch_commits`](EventStore::watch_commits) still answers but
    /// nothing signals it any more. Leases taken before stay held until released or dropped.
    /// Closing again returns `Ok(())` at once (or once the first close has finished).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] or [`Error::Timeout`] when the notification could not be sent
    /// (the store is closed anyway; other processes see the events at their fallback poll).
    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        let mut background = self.inner.background.lock().await;
        let Some(task) = background.take() else {
            return Ok(());
        };
        let sent = task.stop().await;
        if self.inner.owns_pool {
            self.inner.pool.close();
        }
        sent
    }

    /// The store's own check, in four SQL statements in one read-only `REPEATABLE READ`
    /// transaction, in bounded memory (each statement answers at most
    /// [`VerifyReport::MAX_PROBLEMS`] rows and the count of all):
    ///
    /// - the counts of events, streams, snapshots and checkpoints, and the last position of
    ///   every committed event (readers' horizon or not);
    /// - [`VersionGap`](annals::ProblemKind::VersionGap): a stream whose versions are not
    ///   1..n without gaps, one problem per stream, at its first missing version;
    /// - [`SnapshotAhead`](annals::ProblemKind::SnapshotAhead): a snapshot of a version its
    ///   stream has not reached;
    /// - [`Corrupt`](annals::ProblemKind::Corrupt): an event row the store cannot read back
    ///   (a negative `seq`, a schema version out of range, headers that are not an object of
    ///   strings).
    ///
    /// The schema keeps no stream head rows (a stream's head is its highest version), so there
    /// is no head to disagree with its events.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the server cannot be reached, [`Error::NotInitialized`]
    /// without a schema, [`Error::Closed`] after `close`.
    async fn verify(&self) -> Result<VerifyReport> {
        self.check().await
    }
}
