use std::path::PathBuf;
use std::time::Duration;

use annals::{Error, Limits, Result};

use crate::SledEventStore;

/// When an append is answered, relative to the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Durability {
    /// An append is answered after its events reached the disk (`fsync`). A crash, even of the
    /// whole machine, loses no acknowledged event. Appends that arrive while a flush runs share
    /// the next one (group commit), so concurrent writers pay for far fewer flushes than appends.
    ///
    /// Readers (reads, [`subscribe_all`](annals::subscribe_all)) only ever see flushed events,
    /// so nothing a reader has seen can vanish in a crash.
    #[default]
    Flush,
    /// An append is answered after its events are written in memory; the store flushes on a
    /// timer (see [`SledStoreBuilder::flush_interval`]) and on close. A crash of the process or
    /// machine may lose the events of the last interval — whole appends only, never part of one,
    /// and never anything before a flushed append. Readers see events as soon as they are
    /// answered, so after such a crash a position a reader saw may be given to another event.
    Buffered,
}

/// Opens a [`SledEventStore`]; made by [`SledEventStore::builder`].
///
/// ```
/// use annals_sled::{Durability, SledEventStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> annals::Result<()> {
/// # let dir = tempfile::tempdir().map_err(|e| annals::Error::backend("test", e))?;
/// let store = SledEventStore::builder()
///     .path(dir.path().join("annals-data"))
///     .durability(Durability::Flush)
///     .open()
///     .await?;
/// # store.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct SledStoreBuilder {
    pub(crate) path: Option<PathBuf>,
    pub(crate) temporary: bool,
    pub(crate) durability: Durability,
    pub(crate) limits: Limits,
    pub(crate) cache_bytes: u64,
    pub(crate) flush_interval: Duration,
}

impl Default for SledStoreBuilder {
    fn default() -> Self {
        SledStoreBuilder::new()
    }
}

impl SledStoreBuilder {
    /// A builder with the defaults:
    ///
    /// - path: none; [`path`](Self::path) or [`temporary`](Self::temporary) must be set before
    ///   [`open`](Self::open);
    /// - durability: [`Durability::Flush`] — answered after `fsync`;
    /// - limits: [`Limits::new`] (1 MiB per payload, 10,000 events and 16 MiB per append…);
    /// - cache: 64 MiB of sled page cache, which bounds the store's memory whatever the size
    ///   of the data (sled's own default is 1 GiB);
    /// - flush interval: 500 ms, the most a [`Durability::Buffered`] store waits before
    ///   flushing what it has written (sled's own default).
    pub fn new() -> Self {
        SledStoreBuilder {
            path: None,
            temporary: false,
            durability: Durability::Flush,
            limits: Limits::new(),
            cache_bytes: 64 * 1024 * 1024,
            flush_interval: Duration::from_millis(500),
        }
    }

    /// The directory holding the store; made if missing.
    #[must_use]
    pub fn path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self.temporary = false;
        self
    }

    /// A store in a fresh temporary place, deleted when the store is dropped: for tests.
    #[must_use]
    pub fn temporary(mut self) -> Self {
        self.temporary = true;
        self.path = None;
        self
    }

    /// When appends are answered; see [`Durability`].
    #[must_use]
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The limits appends are checked against.
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The size of sled's page cache in bytes.
    #[must_use]
    pub fn cache_bytes(mut self, bytes: u64) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// How long a [`Durability::Buffered`] store may hold written events before flushing them.
    #[must_use]
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// Opens (or creates) the store and checks its format.
    ///
    /// # Errors
    ///
    /// - [`Error::Format`] when neither a path nor `temporary` was given, when the data was
    ///   written in a format this build does not know (a newer `annals-sled`), or when the
    ///   directory holds a sled database that is not an Annals store;
    /// - [`Error::Unavailable`] when sled cannot open the directory (for example because
    ///   another process has it open: its lock is waited for up to half a second first);
    /// - [`Error::Corrupt`] when sled finds its files damaged.
    pub async fn open(self) -> Result<SledEventStore> {
        if !self.temporary && self.path.is_none() {
            return Err(Error::Format(
                "no path given: call `path(..)` or `temporary()` on the builder before `open()`"
                    .into(),
            ));
        }
        if self.flush_interval.is_zero() {
            return Err(Error::Format(
                "the flush interval must be above zero".into(),
            ));
        }
        // Opening replays sled's log: blocking file I/O, kept off the async workers.
        tokio::task::spawn_blocking(move || SledEventStore::open_blocking(self))
            .await
            .map_err(|e| Error::backend("sled", e))?
    }
}
