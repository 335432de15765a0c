//! Opening a store: sled, the format check, recovery, and the store's threads.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::{Error, Limits, RecordPlace, Result};

use crate::commit_state::CommitState;
use crate::error::{corruption, damaged_files, panic_message, sled_error};
use crate::flusher::{self, FlusherParts};
use crate::format::{self, format_error, FORMAT_VERSION, TREE};
use crate::log::Log;
use crate::manifest::{self, Keeper};
use crate::marks::{self, Marks};
use crate::overlay::Overlay;
use crate::recover;
use crate::store::{Parts, SledEventStore};
use crate::upgrade;
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
    /// Open files holding less than the manifest records, reporting the loss in `verify`.
    pub(crate) accept_loss: bool,
    pub(crate) segment_bytes: u64,
}

/// Opens (or creates) the store described by `settings`.
pub(crate) async fn open(settings: Settings) -> Result<SledEventStore> {
    // Opening replays sled's log: blocking file I/O, kept off the async workers.
    let path = settings.path.clone();
    tokio::task::spawn_blocking(move || {
        // Sled panics on some damaged files while it reads them: that is damage, not a bug of
        // the caller's.
        std::panic::catch_unwind(AssertUnwindSafe(|| open_blocking(settings)))
            .map_err(|panic| damaged_files(path.as_deref(), &panic_message(&*panic)))?
    })
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
    let db = open_db(&config, settings.path.as_deref())?;
    let (tree, version) = check_format(&db)?;
    let log = Arc::new(Log::open(settings.path.as_deref(), settings.segment_bytes)?);
    if version < FORMAT_VERSION {
        // Formats 2 to 4 kept the log in sled: move it into segment files.
        upgrade::run(&db, &tree, &log, version)?;
    } else if upgrade::interrupted(&tree)? {
        upgrade::finish(&db, &tree, &log)?;
    } else if log.is_empty() && tree.scan_prefix([format::COMMIT]).next().is_some() {
        return Err(Error::corrupt(
            RecordPlace::new(),
            format!(
                "the log's segment files are missing ({} holds none) although the index \
                 locates commit records in them",
                log.dir().display()
            ),
        ));
    }
    let marker = recover::indexed(&tree)?;
    let scan = log.scan_tail(marker)?;
    if let Some(bad) = &scan.bad {
        // Past what was made durable, a frame that does not read back is what a crash
        // interrupted: cut off (below). Before it, it is damage: never taken for the end.
        let recorded = match &settings.path {
            Some(dir) => manifest::read(dir).ok().flatten().map_or(0, |t| t.log_end),
            None => 0,
        };
        let durable = recorded.max(marker);
        if bad.position <= durable && !settings.accept_loss {
            return Err(bad.error(log.dir()));
        }
    }
    // The files against the manifest first, before the open repairs (writes) anything.
    let before = marks::read_tally(&tree, scan.end)?;
    let check = match &settings.path {
        Some(dir) => manifest::check_at_open(dir, &before, settings.accept_loss)?,
        None => manifest::Check::default(),
    };
    if let Some(bad) = &scan.bad {
        tracing::warn!(
            position = bad.position,
            reason = %bad.describe(log.dir()),
            "cutting off the log's torn tail"
        );
        log.cut(bad.segment, bad.offset, scan.end)?;
    }
    let last = recover::recover(&db, &tree, &log, scan)?;
    let frontier = recover::frontier(&tree)?;
    let found = marks::read_found(&tree, last)?;
    let tally = found.tally;
    if let Some(dir) = &settings.path {
        manifest::record(dir, check.recorded, &tally)?;
    }
    let lost = check.lost;
    for problem in &lost {
        tracing::warn!(%problem, "opened a damaged store, accepting the loss");
    }
    let marks = Arc::new(Marks::new(found));
    let overlay = Arc::new(Overlay::new(last, frontier, log.clone()));
    let state = Arc::new(CommitState::new(
        last,
        overlay.written(),
        settings.durability,
        marks.clone(),
        log.clone(),
    ));
    let end = LogEnd {
        position: last,
        max_id: recover::max_indexed_id(&tree, frontier)?,
    };
    let writer = Arc::new(Writer::new(
        tree.clone(),
        log.clone(),
        end,
        state.clone(),
        overlay.clone(),
    ));
    let indexer_thread = overlay.spawn_indexer(tree.clone(), state.visible_mark())?;
    let committer = writer.clone();
    let flusher_thread = flusher::spawn(FlusherParts {
        state: state.clone(),
        interval: settings.flush_interval,
        db: db.clone(),
        tree: tree.clone(),
        overlay: overlay.clone(),
        commit: move |group| committer.commit(group),
    })?;
    let keeper = match &settings.path {
        Some(dir) => Some(Arc::new(Keeper::spawn(dir.clone(), marks.clone(), tally)?)),
        None => None,
    };
    tracing::debug!(path = ?settings.path, position = last, "opened sled store");
    Ok(SledEventStore::from_parts(Parts {
        db,
        tree,
        overlay,
        writer,
        state,
        flusher_thread,
        indexer_thread,
        limits: settings.limits,
        durability: settings.durability,
        path: settings.path,
        marks,
        keeper,
        lost,
    }))
}

/// Checks (or, on a fresh database, writes) the format marker, and returns the store's tree.
fn check_format(db: &sled::Db) -> Result<(sled::Tree, u32)> {
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
            check_version(version)?;
            Ok((tree, version))
        }
        None if !tree.is_empty() => Err(foreign()),
        None => {
            write_marker(db, &tree)?;
            Ok((tree, FORMAT_VERSION))
        }
    }
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

/// Refuses the formats this build cannot read: newer ones, and the unreleased format 1 (formats
/// 2 to 4 are upgraded by the open, `upgrade.rs`).
fn check_version(version: u32) -> Result<()> {
    if version > FORMAT_VERSION {
        return Err(format_error(
            Some(version),
            format!(
                "the store was written in format {version} by a newer annals-sled; this build \
                 reads format {FORMAT_VERSION} only: upgrade annals-sled to open it"
            ),
        ));
    }
    if !format::READABLE.contains(&version) {
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
pub(crate) fn write_marker(db: &sled::Db, tree: &sled::Tree) -> Result<()> {
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
fn open_db(config: &sled::Config, path: Option<&Path>) -> Result<sled::Db> {
    let started = Instant::now();
    loop {
        match config.open() {
            Err(sled::Error::Io(io))
                if io.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other.map_err(|e| open_error(e, path)),
        }
    }
}

fn open_error(error: sled::Error, path: Option<&Path>) -> Error {
    match error {
        sled::Error::Io(io) => Error::Unavailable {
            backend: "sled",
            source: Box::new(io),
        },
        // Sled reports files it cannot make sense of as written by an old sled version, or as
        // corrupt: both mean the files are damaged (this crate has only ever used sled 0.34).
        sled::Error::Unsupported(message) => damaged_files(path, &message),
        sled::Error::Corruption { at, .. } => damaged_files(path, &corruption(at)),
        other => sled_error(other),
    }
}
