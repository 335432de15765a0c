//! [`PgEventStoreBuilder`]: where the store connects and how it behaves.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use annals::{Error, Limits, Result};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{Config, NoTls};

use crate::error::{describe_targets, BACKEND};
use crate::schema::validate_schema_name;
use crate::store::{PgEventStore, Settings};
use crate::watcher::{FALLBACK_POLL_INTERVAL, NOTIFY_INTERVAL};

enum Source {
    Text(String),
    Config(Box<Config>),
    Pool(Pool),
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The text may hold a password.
            Source::Text(_) => f.write_str("Text(..)"),
            Source::Config(c) => f.debug_tuple("Config").field(c).finish(),
            Source::Pool(p) => f.debug_tuple("Pool").field(&p.status()).finish(),
        }
    }
}

/// Builds a [`PgEventStore`]. [`new`](Self::new) documents every default.
///
/// ```no_run
/// use std::time::Duration;
/// use annals_postgres::PgEventStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> annals::Result<()> {
/// let store = PgEventStore::builder()
///     .connection_string("host=127.0.0.1 user=app dbname=app")
///     .schema("billing")
///     .pool_size(32)
///     .statement_timeout(Duration::from_secs(5))
///     .open()
///     .await?;
/// store.init().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct PgEventStoreBuilder {
    source: Option<Source>,
    listen_config: Option<Config>,
    schema: String,
    limits: Limits,
    pool_size: usize,
    statement_timeout: Option<Duration>,
    connect_timeout: Duration,
    poll_interval: Duration,
    fallback_poll_interval: Duration,
    notify_interval: Duration,
    page_size: usize,
    lease_heartbeat: Duration,
    lease_ttl: Duration,
    lease_holder: Option<String>,
}

impl Default for PgEventStoreBuilder {
    fn default() -> Self {
        PgEventStoreBuilder::new()
    }
}

impl PgEventStoreBuilder {
    /// A builder with the defaults:
    ///
    /// - no connection yet: give a [connection string](Self::connection_string), a
    ///   [`Config`](Self::config) or a [pool](Self::pool);
    /// - schema `annals`;
    /// - the default [`Limits`];
    /// - a pool of 16 connections (ignored with an existing pool);
    /// - no statement timeout (the server's setting applies);
    /// - a connect timeout of 10 s;
    /// - a poll interval of 100 ms, used while the LISTEN connection is down and while
    ///   readers are held back by an open transaction;
    /// - a fallback poll every second while notifications are relied on, so a lost wake-up
    ///   delays subscribers by at most a second;
    /// - at most one notification to other processes every 5 ms;
    /// - pages of 1,000 events for reads;
    /// - leases renewed every second, taken over by others 5 s after their last renewal,
    ///   held as `<host name>/<process id>`.
    pub fn new() -> Self {
        PgEventStoreBuilder {
            source: None,
            listen_config: None,
            schema: "annals".to_owned(),
            limits: Limits::new(),
            pool_size: 16,
            statement_timeout: None,
            connect_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(100),
            fallback_poll_interval: FALLBACK_POLL_INTERVAL,
            notify_interval: NOTIFY_INTERVAL,
            page_size: 1000,
            lease_heartbeat: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(5),
            lease_holder: None,
        }
    }

    /// Connects with a libpq-style connection string (`host=… user=… dbname=…`) or URL
    /// (`postgresql://user@host/db`), without TLS.
    #[must_use]
    pub fn connection_string(mut self, text: impl Into<String>) -> Self {
        self.source = Some(Source::Text(text.into()));
        self
    }

    /// Connects with a `tokio-postgres` configuration, without TLS.
    #[must_use]
    pub fn config(mut self, config: Config) -> Self {
        self.source = Some(Source::Config(Box::new(config)));
        self
    }

    /// Uses an existing pool (its own settings, TLS included, apply; [`pool_size`](Self::pool_size),
    /// [`statement_timeout`](Self::statement_timeout) and the connect timeout are ignored).
    ///
    /// A pool cannot hand out a connection that receives notifications, so give
    /// [`listen_config`](Self::listen_config) too for LISTEN/NOTIFY wake-ups; without it the
    /// store wakes subscribers by polling every [`poll_interval`](Self::poll_interval).
    ///
    /// The store cannot see where such a pool connects: the error of a connection it cannot
    /// open is `tokio-postgres`'s alone, without the `host:port` the store's own pool names.
    #[must_use]
    pub fn pool(mut self, pool: Pool) -> Self {
        self.source = Some(Source::Pool(pool));
        self
    }

    /// The configuration of the dedicated LISTEN connection when the store uses an existing
    /// [pool](Self::pool) (otherwise the store's own configuration is used).
    #[must_use]
    pub fn listen_config(mut self, config: Config) -> Self {
        self.listen_config = Some(config);
        self
    }

    /// The schema holding the store's tables, so several applications can share a database
    /// (default `annals`). 1 to 63 characters of `a-z`, `0-9` and `_`, not starting with a digit.
    #[must_use]
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The limits appends are checked against.
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The most connections the store's own pool opens (default 16). The LISTEN connection and
    /// each held lease use one more.
    #[must_use]
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// Cancels any statement running longer than `timeout`; it then fails with
    /// [`Error::Timeout`] (and an append so cancelled wrote nothing).
    #[must_use]
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = Some(timeout);
        self
    }

    /// How long opening a connection may take (default 10 s).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How often the store checks for new events when it cannot rely on notifications
    /// (default 100 ms): while its LISTEN connection is down (or it has none), and while
    /// committed events are held back from readers by an open transaction, whose end notifies
    /// nobody. Must not be zero.
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The longest a lost wake-up can delay subscribers (default 1 s). Subscribers never
    /// depend on a notification alone: while the store listens, its background task still
    /// checks the log's visible head at least this often — one cheap query on the LISTEN
    /// connection, not a read — and wakes subscribers when it moved. A notification that never
    /// came (its writer was killed between its commit and its `pg_notify`, or the notification
    /// was lost with a connection) so delays them by at most this interval. Must not be zero.
    #[must_use]
    pub fn fallback_poll_interval(mut self, interval: Duration) -> Self {
        self.fallback_poll_interval = interval;
        self
    }

    /// The least time between two notifications this store sends to other processes for its
    /// appends (default 5 ms). Local subscribers are woken by each append at once; other
    /// processes' subscribers wait at most this long (commits meanwhile share one
    /// notification), which keeps the background work a few statements per interval however
    /// fast appends come. [`close`](annals::EventStore::close) sends the notification still
    /// owed without waiting for the interval.
    #[must_use]
    pub fn notify_interval(mut self, interval: Duration) -> Self {
        self.notify_interval = interval;
        self
    }

    /// How many events one query of a read fetches (default 1,000). A read holds at most two
    /// pages: the one its reader consumes, and the next, fetched meanwhile.
    #[must_use]
    pub fn page_size(mut self, events: usize) -> Self {
        self.page_size = events;
        self
    }

    /// How often a held [lease](annals::Leases) is renewed: its holder's heartbeat (default
    /// 1 s). Keep it well under [`lease_ttl`](Self::lease_ttl).
    #[must_use]
    pub fn lease_heartbeat(mut self, interval: Duration) -> Self {
        self.lease_heartbeat = interval;
        self
    }

    /// How long after its last renewal a lease may be taken by another holder (default 5 s):
    /// the longest a dead or paused holder keeps others waiting. The holder itself counts its
    /// lease lost this long after the last renewal it *sent* that succeeded, so it stops
    /// before anyone can take over; a holder paused past it is fenced by the epoch.
    #[must_use]
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Who this store's leases say holds them (default `<host name>/<process id>`): what
    /// [`Leases::leases`](annals::Leases::leases) and operators see.
    #[must_use]
    pub fn lease_holder(mut self, holder: impl Into<String>) -> Self {
        self.lease_holder = Some(holder.into());
        self
    }

    /// Opens the store and starts its background task (which must run on a Tokio runtime). It
    /// connects lazily: a server that is down makes the first request fail with
    /// [`Error::Unavailable`], not this call. Call [`PgEventStore::init`] once to create the
    /// schema.
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] naming the setting at fault: `schema` for a bad schema name,
    /// `page_size`, `pool_size`, `poll_interval` or `fallback_poll_interval` for 0,
    /// `connection_string` for a missing connection or an unparsable connection string;
    /// [`Error::Backend`] if the pool cannot be made.
    pub async fn open(mut self) -> Result<PgEventStore> {
        validate_schema_name(&self.schema)?;
        if self.page_size == 0 {
            return Err(Error::configuration(
                "page_size",
                "the page size must be at least 1",
            ));
        }
        if self.pool_size == 0 {
            return Err(Error::configuration(
                "pool_size",
                "the pool size must be at least 1",
            ));
        }
        // A zero interval would make the background task query the server in a busy loop.
        if self.poll_interval.is_zero() {
            return Err(Error::configuration(
                "poll_interval",
                "the poll interval must be longer than zero",
            ));
        }
        if self.fallback_poll_interval.is_zero() {
            return Err(Error::configuration(
                "fallback_poll_interval",
                "the fallback poll interval must be longer than zero",
            ));
        }
        let (pool, own_config) = match self.source.take() {
            None => {
                return Err(Error::configuration(
                    "connection_string",
                    "no connection string, config or pool was given to the store builder",
                ))
            }
            Some(Source::Pool(pool)) => (pool, None),
            Some(Source::Text(text)) => {
                let config = text.parse::<Config>().map_err(|e| {
                    Error::configuration(
                        "connection_string",
                        format!("invalid PostgreSQL connection string: {e}"),
                    )
                })?;
                own_pool(config, &self)?
            }
            Some(Source::Config(config)) => own_pool(*config, &self)?,
        };
        let owns_pool = own_config.is_some();
        // Where the pool connects, for the errors of connections that fail; a pool given to the
        // builder does not tell.
        let tried = own_config
            .as_ref()
            .map(|config| Arc::from(describe_targets(config)));
        Ok(PgEventStore::open(Settings {
            pool,
            owns_pool,
            tried,
            listen_config: self.listen_config.or(own_config),
            channel: channel_name(&self.schema),
            schema: self.schema,
            limits: self.limits,
            page_size: self.page_size,
            poll_interval: self.poll_interval,
            fallback_poll_interval: self.fallback_poll_interval,
            notify_interval: self.notify_interval,
            lease_heartbeat: self.lease_heartbeat,
            lease_ttl: self.lease_ttl,
            lease_holder: self.lease_holder.unwrap_or_else(default_holder),
        }))
    }
}

impl PgEventStore {
    /// A [builder](PgEventStoreBuilder) with the defaults.
    pub fn builder() -> PgEventStoreBuilder {
        PgEventStoreBuilder::new()
    }

    /// A store with the default settings on the database of `connection_string`
    /// (see [`PgEventStoreBuilder::open`]).
    ///
    /// # Errors
    ///
    /// As [`PgEventStoreBuilder::open`].
    pub async fn connect(connection_string: &str) -> Result<PgEventStore> {
        PgEventStoreBuilder::new()
            .connection_string(connection_string)
            .open()
            .await
    }
}

/// The LISTEN/NOTIFY channel of a schema.
/// Channel names are identifiers of at most 63 bytes: a long schema name is hashed.
fn channel_name(schema: &str) -> String {
    let name = format!("annals_{schema}");
    if name.len() <= 63 {
        return name;
    }
    // FNV-1a: stable across processes and versions, unlike `DefaultHasher`.
    let hash = schema.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("annals_{}_{hash:016x}", &schema[..32])
}

/// A pool of the store's own, on `config` with the builder's settings.
fn own_pool(mut config: Config, builder: &PgEventStoreBuilder) -> Result<(Pool, Option<Config>)> {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(builder.connect_timeout);
    }
    if let Some(timeout) = builder.statement_timeout {
        let mut options = config.get_options().unwrap_or_default().to_owned();
        if !options.is_empty() {
            options.push(' ');
        }
        options.push_str(&format!("-c statement_timeout={}", timeout.as_millis()));
        config.options(options);
    }
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(builder.pool_size)
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| Error::backend(BACKEND, e))?;
    Ok((pool, Some(config)))
}

/// `<host name>/<process id>` (the host name from `/etc/hostname` or `$HOSTNAME`, `host`
/// when neither says).
fn default_holder() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".to_owned());
    format!("{host}/{}", std::process::id())
}
