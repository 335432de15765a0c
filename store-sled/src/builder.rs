//! The builder: collects the settings, checks them and hands them to the one open function.

use std::path::PathBuf;
use std::time::Duration;

use annals::{Error, Limits, Result};

use crate::log::{DEFAULT_SEGMENT_BYTES, MIN_SEGMENT_BYTES};
use crate::open::{self, Settings};
use crate::{Durability, SledEventStore};

/// Opens a [`SledEventStore`]; made by [`SledEventStore::builder`].
///
/// ```
/// use annals::EventStore;
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
pub struct SledEventStoreBuilder {
    path: Option<PathBuf>,
    temporary: bool,
    durability: Durability,
    limits: Limits,
    cache_bytes: u64,
    segment_bytes: u64,
    flush_interval: Duration,
    accept_loss: bool,
}

impl SledEventStore {
    /// A builder; see [`SledEventStoreBuilder::new`] for the defaults.
    pub fn builder() -> SledEventStoreBuilder {
        SledEventStoreBuilder::new()
    }
}

impl Default for SledEventStoreBuilder {
    fn default() -> Self {
        SledEventStoreBuilder::new()
    }
}

impl SledEventStoreBuilder {
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
        SledEventStoreBuilder {
            path: None,
            temporary: false,
            durability: Durability::Flush,
            limits: Limits::new(),
            cache_bytes: 64 * 1024 * 1024,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            flush_interval: Duration::from_millis(500),
            accept_loss: false,
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

    /// The size of the log's segment files (64 MiB by default, at least 4 KiB): each is
    /// preallocated to it, and a full one is sealed and followed by the next (see `FORMAT.md`).
    /// A commit record larger than a segment gets a segment of its own, grown to hold it.
    /// Existing segments keep their size; the setting applies to the segments created from now
    /// on.
    #[must_use]
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// How long a [`Durability::Buffered`] store may hold written events before flushing them.
    #[must_use]
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// Opens a store whose files hold less than its manifest records — writes the store had made
    /// durable, lost to damaged files (sled recovers an older state from them), or a manifest
    /// that is missing or damaged — instead of refusing it with [`Error::Corrupt`]. Off by
    /// default.
    ///
    /// The loss is logged, and [`verify`](annals::EventStore::verify) reports it as
    /// [`ProblemKind::Missing`](annals::ProblemKind::Missing) problems for as long as this
    /// store is open. The manifest is rewritten to what the files hold, so the loss is
    /// accepted: the next open, with or without this setting, checks against the new manifest.
    /// Use it to read (or export) what is left of a damaged store.
    #[must_use]
    pub fn accept_loss(mut self, accept: bool) -> Self {
        self.accept_loss = accept;
        self
    }

    /// Opens (or creates) the store and checks its format.
    ///
    /// # Errors
    ///
    /// - [`Error::Configuration`] when neither a path nor `temporary` was given (setting
    ///   `path`), or when the flush interval is zero (setting `flush_interval`);
    /// - [`Error::Format`] when the data was written in a format this build does not know (a
    ///   newer `annals-sled`), when its format marker is damaged, or when the directory holds a
    ///   sled database that is not an Annals store;
    /// - [`Error::Unavailable`] when sled cannot open the directory (for example because
    ///   another process has it open: its lock is waited for up to half a second first);
    /// - [`Error::Corrupt`] when sled finds its files damaged: when it cannot read them (sled
    ///   panics, or calls them unsupported), or when they hold less than the store's manifest
    ///   records (see [`accept_loss`](Self::accept_loss)).
    pub async fn open(self) -> Result<SledEventStore> {
        open::open(self.settings()?).await
    }

    /// The checked settings.
    fn settings(self) -> Result<Settings> {
        if !self.temporary && self.path.is_none() {
            return Err(Error::configuration(
                "path",
                "no path given: call `path(..)` or `temporary()` on the builder before `open()`",
            ));
        }
        if self.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(Error::configuration(
                "segment_bytes",
                format!("segments must be at least {MIN_SEGMENT_BYTES} bytes"),
            ));
        }
        if self.flush_interval.is_zero() {
            return Err(Error::configuration(
                "flush_interval",
                "the flush interval must be above zero",
            ));
        }
        Ok(Settings {
            path: self.path,
            durability: self.durability,
            limits: self.limits,
            cache_bytes: self.cache_bytes,
            flush_interval: self.flush_interval,
            accept_loss: self.accept_loss,
            segment_bytes: self.segment_bytes,
        })
    }
}
