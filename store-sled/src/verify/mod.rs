//! [`EventStore::verify`](annals::EventStore::verify) for sled: one pass over every key, plus
//! point lookups to check that each index and its target agree. Memory stays bounded: the walk
//! keeps only the stream it is in and at most
//! [`VerifyReport::MAX_PROBLEMS`](annals::VerifyReport::MAX_PROBLEMS) problems.
//!
//! - [`walk`]: the walk over the keys, and the checks once it is over;
//! - [`log`]: commit records (the global log);
//! - [`streams`]: stream-index entries and heads;
//! - [`ids`]: the id index (single entries and segments);
//! - [`saved`]: snapshots, checkpoints and the markers;
//! - [`report`]: problems, as the core [`VerifyReport`] lists them.

use annals::{Result, VerifyReport};

use crate::overlay::Overlay;

mod ids;
mod log;
mod report;
mod saved;
mod streams;
mod walk;

/// Checks the whole store as readers see it up to `visible`.
pub(crate) fn run(tree: &sled::Tree, overlay: &Overlay, visible: u64) -> Result<VerifyReport> {
    // Index everything visible and keep other indexers out: the walk then checks every index
    // entry against the log, and none moves under it.
    let mut guard = overlay.lock_indexing();
    overlay.index_locked(&mut guard, tree, visible)?;
    walk::Walk::new(tree, visible).run()
}
