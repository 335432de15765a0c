//! How sled's failures become Annals errors.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::path::Path;

use annals::{Error, RecordPlace, Result};

/// How every error about damaged sled files starts; the store adds where the files are.
pub(crate) const DAMAGED: &str = "sled's files are damaged";

/// Maps a sled failure to the Annals error. Sled's corruption, and its "unsupported" (what it
/// says of files it cannot make sense of: written by an old sled, it guesses), are
/// [`Error::Corrupt`] starting with [`DAMAGED`].
pub(crate) fn sled_error(error: sled::Error) -> Error {
    match error {
        sled::Error::Corruption { at, .. } => damaged_files(None, &corruption(at)),
        sled::Error::Unsupported(message) => damaged_files(None, &message),
        other => Error::backend("sled", other),
    }
}

/// What sled's corruption error says.
pub(crate) fn corruption(at: Option<sled::DiskPtr>) -> String {
    match at {
        Some(at) => format!("sled found a damaged record ({at:?})"),
        None => "sled found a damaged record".to_owned(),
    }
}

/// Sled's files (at `path`, when known) are damaged; `detail` is what sled said.
pub(crate) fn damaged_files(path: Option<&Path>, detail: &str) -> Error {
    let at = path.map_or_else(String::new, |p| format!(" (at {})", p.display()));
    Error::corrupt(
        RecordPlace::new(),
        format!("{DAMAGED}{at}: sled failed reading them: {detail}"),
    )
}

/// Adds where the files are to an error about damaged sled files.
pub(crate) fn locate(error: Error, path: Option<&Path>) -> Error {
    match (error, path) {
        (Error::Corrupt { place, reason }, Some(path))
            if reason.starts_with(DAMAGED) && !reason[DAMAGED.len()..].starts_with(" (at ") =>
        {
            let rest = &reason[DAMAGED.len()..];
            Error::Corrupt {
                place,
                reason: format!("{DAMAGED} (at {}){rest}", path.display()),
            }
        }
        (error, _) => error,
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("sled panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("sled panicked: {s}")
    } else {
        "sled panicked".to_owned()
    }
}

/// Runs `work` (sled reads), turning a panic of sled's into [`Error::Corrupt`]: sled panics on
/// some damaged files.
pub(crate) fn guarded<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(work))
        .unwrap_or_else(|panic| Err(damaged_files(None, &panic_message(&*panic))))
}

/// A corruption at an unknown place.
pub(crate) fn corrupt_somewhere(reason: impl Into<String>) -> Error {
    Error::corrupt(RecordPlace::new(), reason)
}
