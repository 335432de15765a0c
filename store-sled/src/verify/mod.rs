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

use std::path::Path;

use annals::{Problem, ProblemKind, RecordPlace, Result, VerifyReport};

use crate::manifest;
use crate::marks::{self, Marks};
use crate::overlay::Overlay;

mod ids;
mod log;
mod report;
mod saved;
mod segments;
mod streams;
mod walk;

/// Checks the whole store as readers see it up to `visible`; then the snapshots and checkpoints
/// against the save counter's digest (`marks`), and the files against the manifest in `dir`
/// (when the store has one), adding what the open found `lost` and accepted.
pub(crate) fn run(
    tree: &sled::Tree,
    overlay: &Overlay,
    visible: u64,
    marks: &Marks,
    dir: Option<&Path>,
    lost: &[Problem],
) -> Result<VerifyReport> {
    // Index everything visible and keep other indexers out: the walk then checks every index
    // entry against the log, and none moves under it.
    let mut guard = overlay.lock_indexing();
    overlay.index_locked(&mut guard, tree, visible)?;
    let mut report = walk::Walk::new(tree, overlay.log(), visible).run()?;
    for problem in lost {
        report.push(problem.clone());
    }
    if let Some(detail) = marks.saves_lost(tree)? {
        report.push(Problem::new(
            ProblemKind::Missing,
            RecordPlace::new(),
            detail,
        ));
    }
    if let Some(dir) = dir {
        // A damaged counter is reported by the walk.
        if let Ok(found) = marks::read_tally(tree, overlay.log().end()) {
            for problem in manifest::check_now(dir, &found) {
                report.push(problem);
            }
        }
    }
    Ok(report)
}
