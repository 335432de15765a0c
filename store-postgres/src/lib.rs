//! # annals-postgres
//!
//! The PostgreSQL event store of [Annals](annals), for applications that outgrow one machine:
//! [`PgEventStore`] implements [`EventStore`](annals::EventStore),
//! [`SnapshotStore`](annals::SnapshotStore) and [`CheckpointStore`](annals::CheckpointStore) on
//! `tokio-postgres` with a `deadpool-postgres` pool, for PostgreSQL 13 and later, and
//! [`Leases`](annals::Leases) on advisory locks.
//!
//! # Usage
//!
//! ```no_run
//! use annals::{EventData, EventStore, ExpectedVersion, StreamId};
//! use annals_postgres::PgEventStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> annals::Result<()> {
//! let store = PgEventStore::builder()
//!     .connection_string("host=127.0.0.1 user=postgres dbname=app")
//!     .schema("billing")
//!     .open()
//!     .await?;
//! store.init().await?; // creates or migrates the schema; safe on every start
//!
//! let account = StreamId::new("account-42")?;
//! store
//!     .append(&account, ExpectedVersion::NoStream, vec![EventData::json("Opened", &())?])
//!     .await?;
//! store.close().await?; // before the process exits: announces the last appends
//! # Ok(())
//! # }
//! ```
//!
//! # Schema
//!
//! [`init`](PgEventStore::init) runs the migrations in `store-postgres/migrations/` (see
//! [`0001_init.sql`](https://github.com/annals-rs/annals/blob/main/store-postgres/migrations/0001_init.sql)
//! and the later, smaller steps beside it)
//! in the store's schema (`annals` unless [set](PgEventStoreBuilder::schema)), and records the
//! version in `schema_version`. A store used on a database where `init` never ran fails with
//! [`Error::NotInitialized`](annals::Error::NotInitialized); `init` on a schema newer than this
//! crate fails with [`Error::Format`](annals::Error::Format) naming the version found.
//!
//! - `events`: one row per event — `transaction_id xid8`, `seq bigserial`, stream id, version
//!   (unique with the stream id), event id (unique: the idempotency key), type, schema version,
//!   content type, `payload bytea`, correlation and causation ids, the writer's timestamp,
//!   `headers jsonb`, `recorded_at`; primary key `(transaction_id, seq)`, the global order.
//! - `snapshots` and `checkpoints`.
//!
//! # Appends
//!
//! An append is **one statement** (one round trip, one transaction): an `INSERT … SELECT` that
//! reads the stream's head (`max(version)`, from the unique index), checks the expected version
//! against it and writes the batch after it — one multi-row insert from `unnest` of arrays, in
//! batch order. An append at an exact version (`Exact(n)`, `NoStream`) skips reading the head:
//! it is inserted at `n + 1…` when the row at `n` exists (one index probe), and the unique key
//! refuses it when the stream is already past `n`. The probe is skipped too when the store has
//! already seen the row at `n` stored — written by its own append, returned by a read, reported
//! by a conflict — because events are never deleted: the aggregate's usual load-then-append
//! costs one plain `INSERT … VALUES`. (The store remembers up to 65,536 streams' heads; past
//! that it starts afresh, which costs probes, never correctness.) A concurrent writer that
//! wrote at the same version collides on the unique
//! `(stream_id, version)` key and waits for the first to commit, so two appends at `Exact(5)`
//! can never both succeed; the loser's unique violation is turned into
//! [`Error::VersionConflict`](annals::Error::VersionConflict) (or, for
//! [`ExpectedVersion::Any`](annals::ExpectedVersion::Any), into another try), never returned.
//!
//! Idempotency costs nothing on the happy path: only when the statement writes nothing (a
//! failed check, or a unique violation on an event id) does the store look the ids up; a
//! complete earlier append answers with its first result through
//! [`resolve_retry`](annals::store::kit::resolve_retry), a partial match is an
//! [`Error::IdempotencyConflict`](annals::Error::IdempotencyConflict). Nothing is ever
//! silently dropped (`ON CONFLICT DO NOTHING` is not used).
//!
//! # Restores
//!
//! [`restore`](annals::EventStore::restore) (how `import` and `migrate` copy a store, keeping
//! versions and recording times) writes a batch of many streams' events in **one
//! transaction**: it reads the heads of the batch's streams (each one's version and its last
//! event's `recorded_at`, one index probe per stream) and where the batch's ids are stored,
//! [`plan_restore`](annals::store::kit::plan_restore) checks the batch, and the events to write
//! go in with **one binary `COPY … FROM STDIN`**, rows in batch order, `recorded_at` given.
//! `transaction_id` and `seq` take their defaults as for an append, so positions are
//! `(transaction id, seq)` increasing in batch order and everything below about the global
//! order holds for restored events alike; the commit is announced as an append's.
//!
//! As appends skip the probe of a head they know, a restore skips reading heads this store
//! remembers with their recording time (it wrote or read those rows: a copy going on batch
//! after batch), and looks up only the ids at versions the streams already hold (what a
//! re-run finds present). Nothing is locked: each stream's first new event takes the version
//! after the head the plan took, so a concurrent writer to that stream, or a head that moved
//! on since, collides on the unique `(stream_id, version)` key, and an id stored already
//! collides on `event_id`; the transaction rolls back, nothing written, and the restore reads
//! everything again and plans again — refusing the batch with the contract's error
//! ([`VersionConflict`](annals::Error::VersionConflict),
//! [`IdempotencyConflict`](annals::Error::IdempotencyConflict)), or counting its own events
//! present (the same restore twice at once). A refusal is always planned on what the server
//! holds, never on what the store remembered.
//!
//! # The global order never skips
//!
//! A position is `(transaction id, seq)`: [`Position::new(xid, seq)`](annals::Position::new).
//! `seq` is drawn when a row is inserted, but transactions commit in another order, so sequence
//! numbers alone would let a reader pass position 100 and never see 99 commit later. Readers of
//! the global log therefore only read rows whose transaction id is below
//! `pg_snapshot_xmin(pg_current_snapshot())` — the oldest transaction still running — in
//! `(transaction_id, seq)` order, in pages, each starting after the last event of the one
//! before (the next page's query starts as soon as that page has arrived, and runs while the
//! reader consumes it: a later query, with a snapshot taken later). Why that never skips:
//!
//! 1. Transaction ids below the snapshot's `xmin` belong to transactions that have ended
//!    (committed or rolled back), and every id handed out from now on is at least `xmin`. So
//!    the set of committed rows below `xmin` is final: no row ever joins it.
//! 2. The read's own snapshot (the same one `pg_current_snapshot()` describes) sees every
//!    committed row below its `xmin`.
//! 3. A reader moves forward only over rows it was given, all below the `xmin` of their
//!    read; a later read's `xmin` is never smaller. Any row that appears later has a
//!    transaction id at least that `xmin`, hence a position past everything already read.
//! 4. A stream's versions are in global order too: an append that writes after version `v`
//!    either read `v` in its statement's snapshot, or knew before it started that `v` was
//!    stored (its store saw it committed); either way the append that wrote `v` had committed
//!    first, and this append's transaction id, assigned later still (at its first insert), is
//!    larger. An append that read or knew an older head collides on the unique key and writes
//!    nothing. A restore likewise: it read each head it follows in its transaction, or knew
//!    it, before its first row took the transaction's id.
//!
//! Positions stay below `i64::MAX` in both parts (`xid8` counts transactions, `seq` rows).
//!
//! ## What a long transaction does to subscriptions
//!
//! The horizon is the oldest running transaction *that has a transaction id*, in the whole
//! cluster — whatever it touches. While one stays open, readers of the global log see nothing
//! committed after it started: subscriptions stall (they lose nothing and resume at once when
//! it ends). Writers are never slowed. Keep transactions short on a database that hosts an
//! event store; read-only transactions have no transaction id and hold nothing back. Reading
//! single streams ([`read_stream`](annals::EventStore::read_stream)) is not affected.
//!
//! # Wake-ups
//!
//! Subscribers ([`annals::subscribe_all`]) sleep on the store's commit signal. An append wakes
//! this process's subscribers as soon as it commits. For other processes, the store's
//! background task sends `pg_notify` after the commit (one for any number of commits that
//! arrived meanwhile) and listens on a dedicated connection. Notifying *after* the commit
//! rather than inside the append's transaction is deliberate: PostgreSQL serialises the commits
//! of all notifying transactions behind one cluster-wide lock held through the commit's WAL
//! flush, which would turn concurrent appends into one-at-a-time commits.
//!
//! Notifications for this process's commits are sent at most every 5 ms
//! ([`notify_interval`](PgEventStoreBuilder::notify_interval); commits meanwhile share one), so
//! the background work stays small however fast appends come. They, and the checks of
//! the readers' horizon, run on the LISTEN connection (while it is up), never on the pool, so
//! they never make an append wait for a connection.
//!
//! An append's wake-up lets local subscribers read its events at once, unless an older
//! transaction is still open: its events are then above the readers' horizon, and nothing
//! notifies when that transaction ends. So after local commits the background task checks the
//! horizon, once per notification gap for any number of commits, and polls while events are
//! held back. (An earlier version proved inside each append's statement that nothing older was
//! open, to skip the check; measured, that cost every append more server time than one check
//! per gap.)
//!
//! Polling (every [`poll_interval`](PgEventStoreBuilder::poll_interval), 100 ms) takes over
//! while the LISTEN connection is down, until it is back, and while committed events are held
//! back by an open transaction (whose end notifies nobody).
//!
//! Subscribers never depend on a notification alone. While the store listens, its background
//! task still checks the log's visible head at least every
//! [`fallback_poll_interval`](PgEventStoreBuilder::fallback_poll_interval) (1 s) — one cheap
//! query on the LISTEN connection, never a read of events — and wakes subscribers when it
//! moved. So a notification that never comes (its writer was killed between its commit and
//! its `pg_notify`, or it was lost with a connection) delays subscribers by at most that
//! interval, plus the query: once readers can see an event, every process's subscribers
//! receive it within the interval whatever happened to its writer.
//!
//! [`close`](annals::EventStore::close) sends the notification still owed for the last gap's
//! commits and waits until it is sent: a process that closes its store before it exits wakes
//! other processes' subscribers at once, without them waiting for their fallback poll.
//! (Dropping the store's last clone sends it too, without waiting, if the runtime lets the
//! task run.)
//!
//! # Closing
//!
//! After [`close`](annals::EventStore::close) (of any clone), every operation that needs the
//! server fails with [`Error::Closed`](annals::Error::Closed); a pool the store made is closed,
//! one given to [`pool`](PgEventStoreBuilder::pool) is left open; held leases can no longer be
//! renewed and are lost after their time to live. Closing twice is harmless.
//!
//! # Verifying
//!
//! [`verify`](annals::EventStore::verify) checks the store in a few SQL statements, in bounded
//! memory: the counts, every stream's versions running 1..n, snapshots not ahead of their
//! stream, and event rows the store can read back.
//!
//! # Errors
//!
//! | failure | error |
//! | --- | --- |
//! | server down, connection refused | [`Error::Unavailable`](annals::Error::Unavailable) (nothing written); its message names the `host:port` tried, never the password |
//! | connection lost while an append was in flight | [`Error::AppendOutcomeUnknown`](annals::Error::AppendOutcomeUnknown): retry with the same event ids |
//! | [statement timeout](PgEventStoreBuilder::statement_timeout) (SQLSTATE 57014) | [`Error::Timeout`](annals::Error::Timeout) (nothing written) |
//! | schema missing | [`Error::NotInitialized`](annals::Error::NotInitialized): call `init()` |
//! | schema newer than this crate (`init`) | [`Error::Format`](annals::Error::Format), with the version found |
//! | bad builder setting | [`Error::Configuration`](annals::Error::Configuration), naming the setting |
//! | store closed | [`Error::Closed`](annals::Error::Closed) |
//! | what PostgreSQL cannot store (U+0000 in a header or content type, a time before 4714 BC) | [`Error::InvalidEvent`](annals::Error::InvalidEvent) (nothing written) |
//! | anything else | [`Error::Backend`](annals::Error::Backend) |
//!
//! An append whose connection dies is tried again on a fresh connection (appends are
//! idempotent, so this is safe): the caller learns its fate whenever the server is reachable.
//!
//! A connection that cannot be opened is an [`Error::Unavailable`](annals::Error::Unavailable)
//! whose message says where the store tried — every host of the configuration with its port
//! (`tried 127.0.0.1:5432: error connecting to server: Connection refused`), the socket file for
//! a Unix socket — and nothing else of the configuration: never the user nor the password. (With
//! a [pool of your own](PgEventStoreBuilder::pool) the store does not know where the pool
//! connects, and the error is `tokio-postgres`'s alone.)
//!
//! # Leases
//!
//! [`PgEventStore`] implements [`Leases`](annals::Leases): a lease is "one holder at a time"
//! across every process on the same schema (projection partitions, relays), a row of the table
//! `leases` renewed by a heartbeat (1 s), taken over by others when it has not been renewed for
//! its time to live (5 s) — a killed or paused holder — and carrying an epoch that fences former
//! holders inside their transactions ([`PgEventStore::check_fence`]). See
//! [the `Leases` impl](PgEventStore#impl-Leases-for-PgEventStore).
//!
//! # Supported Rust versions
//!
//! The minimum supported Rust version is 1.89.

mod builder;
mod error;
mod heads;
mod lease;
mod schema;
mod store;
mod types;
mod watcher;

pub use builder::PgEventStoreBuilder;
pub use schema::SCHEMA_VERSION;
pub use store::PgEventStore;

/// The pool type [`PgEventStoreBuilder::pool`] takes (re-exported `deadpool-postgres`).
pub use deadpool_postgres;
/// The PostgreSQL client (re-exported `tokio-postgres`).
pub use tokio_postgres;
