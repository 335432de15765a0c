//! Opening a store: sled, the format check, recovery, and the store's threads.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::{Error, Limits, Result};

use crate::commit_state::CommitState;
use crate::error::sled_error;
use crate::flusher::{self, FlusherParts};
use crate::format::{self, format_error, FORMAT_VERSION, TREE};
use crate::overlay::Overlay;
use crate::recover;
use crate::store::{Parts, SledEventStore};
use crate::writer::{LogEnd, Writer};
use crate::Durability;

/// What the builder checked and hands to [`open`].
#[derive(Debug)]
pub(crate) struct Settings {
    /// The directory; `None` for a temporary store.
    pub(crate) path: Option<PathBuf>,
    pub(crate) durability: Durability,
    pub(crate) limits: Limits,
    pub(crate) cache_bytes: u64,
    pub(crate) flush_interval: Duration,
}

/// Opens (or creates) the store described by `settings`.
pub(crate) async fn open(settings: Settings) -> Result<SledEventStore> {
    // Opening replays sled's log: blocking file I/O, kept off the async workers.
    tokio::task::spawn_blocking(move || open_blocking(settings))
        .await
        .map_err(|e| Error::backend("sled", e))?
}

fn open_blocking(settings: Settings) -> Result<SledEventStore> {
    let mut config = sled::Config::new()
        .cache_capacity(settings.cache_bytes)
        .flush_every_ms(None)
        .mode(sled::Mode::HighThroughput);
    config = match &settings.path {
        Some(path) => config.path(path),
        None => config.temporary(true),
    };
    let db = open_db(&config)?;
    let tree = check_format(&db)?;
    let last = recover::recover(&db, &tree)?;
    let frontier = recover::frontier(&tree)?;
    let overlay = Arc::new(Overlay::new(last, frontier));
    let state = Arc::new(CommitState::new(
        last,
        overlay.written(),
        settings.durability,
    ));
    let end = LogEnd {
        position: last,
        max_id: recover::max_indexed_id(&tree, frontier)?,
    };
    let writer = Arc::new(Writer::new(
        tree.clone(),
        end,
        state.clone(),
        overlay.clone(),
    ));
    let indexer_thread = overlay.spawn_indexer(tree.clone(), state.visible_mark())?;
    let committer = writer.clone();
    let flusher_thread = flusher::spawn(FlusherParts {
        state: state.clone(),
        interval: settings.flush_interval,
        db,
        tree: tree.clone(),
        overlay: overlay.clone(),
        commit: move |group| committer.commit(group),
    })?;
    tracing::debug!(path = ?settings.path, position = last, "opened sled store");
    Ok(SledEventStore::from_parts(Parts {
        tree,
        overlay,
        writer,
        state,
        flusher_thread,
        indexer_thread,
        limits: settings.limits,
        durability: settings.durability,
        path: settings.path,
    }))
}

/// Checks (or, on a fresh database, writes) the format marker, and returns the store's tree.
fn check_format(db: &sled::Db) -> Result<sled::Tree> {
    let has_tree = db.tree_names().iter().any(|name| name.as_ref() == TREE);
    if !has_tree && (!db.is_empty() || db.tree_names().len() > 1) {
        return Err(foreign());
    }
    let tree = db.open_tree(TREE).map_err(sled_error)?;
    match tree.get(format::META_FORMAT).map_err(sled_error)? {
        Some(value) => {
            let version = format::decode_format(&value).map_err(|reason| {
                format_error(None, format!("unreadable format marker: {reason}"))
            })?;
            check_version(db, &tree, version)?;
        }
        None if !tree.is_empty() => return Err(foreign()),
        None => write_marker(db, &tree)?,
    }
    Ok(tree)
}

/// A sled database that is not an Annals store.
fn foreign() -> Error {
    format_error(
        None,
        format!(
            "this sled database is not an Annals store (it has no `{}` tree with a format \
             marker); refusing to write into it",
            String::from_utf8_lossy(TREE)
        ),
    )
}

/// Accepts this build's format, upgrades format 2, refuses the others.
fn check_version(db: &sled::Db, tree: &sled::Tree, version: u32) -> Result<()> {
    if version > FORMAT_VERSION {
        return Err(format_error(
            Some(version),
            format!(
                "the store was written in format {version} by a newer annals-sled; this build \
                 reads format {FORMAT_VERSION} only: upgrade annals-sled to open it"
            ),
        ));
    }
    if version == 2 {
        // Format 3 only adds id segments: a format 2 store is a format 3 store without any.
        // Once marked 3, older builds refuse it (they would not see the segments).
        return write_marker(db, tree);
    }
    if version != FORMAT_VERSION {
        return Err(format_error(
            Some(version),
            format!(
                "the store was written in format {version} by an older, unreleased \
                 annals-sled; this build reads format {FORMAT_VERSION} only and does not \
                 convert it"
            ),
        ));
    }
    Ok(())
}

/// Marks the store as this build's format, durably.
fn write_marker(db: &sled::Db, tree: &sled::Tree) -> Result<()> {
    tree.insert(format::META_FORMAT, format::format_value(FORMAT_VERSION))
        .map_err(sled_error)?;
    db.flush().map_err(sled_error)?;
    Ok(())
}

/// How long an open waits for sled's file lock to be released before reporting the store
/// unavailable.
const LOCK_WAIT: Duration = Duration::from_millis(500);

/// Opens sled. A database just dropped in this process releases its file lock a moment later
/// (sled finishes its last writes on its I/O threads), so a lock held at the first attempt is
/// retried for up to [`LOCK_WAIT`]; a lock another process holds is reported then.
fn open_db(config: &sled::Config) -> Result<sled::Db> {
    let started = Instant::now();
    loop {
        match config.open() {
            Err(sled::Error::Io(io))
                if io.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other.map_err(open_error),
        }
    }
}

fn open_error(error: sled::Error) -> Error {
    match error {
        sled::Error::Io(io) => Error::Unavailable {
            backend: "sled",
            source: Box::new(io),
        },
        other => sled_error(other),
    }
}
