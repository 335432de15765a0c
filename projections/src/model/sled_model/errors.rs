//! What sled's failures, sled's panics and damaged values of the model are as errors.

use std::panic::AssertUnwindSafe;

use annals::{Error, RecordPlace};

use super::codec;
use crate::{ProjectionError, ProjectionName};

/// What sled's failures are as Annals errors: its corruption and "unsupported" (what it says of
/// files it cannot read) are damage.
pub(super) fn sled_error(error: sled::Error) -> Error {
    match error {
        sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => Error::corrupt(
            RecordPlace::new(),
            format!("sled's files are damaged: {error}"),
        ),
        other => Error::backend("sled", other),
    }
}

/// Runs sled work, a panic of sled's (it panics on some damaged files) being damage.
pub(super) fn guarded<T>(work: impl FnOnce() -> annals::Result<T>) -> annals::Result<T> {
    std::panic::catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(Error::corrupt(
            RecordPlace::new(),
            format!("sled's files are damaged: sled panicked: {message}"),
        ))
    })
}

/// A damaged value of the model's own.
pub(super) fn damaged(what: &str, key: &[u8], reason: &str) -> Error {
    let projection = codec::projection_of(key).unwrap_or("?");
    Error::corrupt(
        RecordPlace::new(),
        format!("read model (sled): {what} of projection `{projection}` is damaged: {reason}"),
    )
}

/// The error of a value in a newer format.
pub(super) fn newer(what: &'static str, key: &[u8], found: u32) -> ProjectionError {
    match codec::projection_of(key).map(ProjectionName::new) {
        Some(Ok(projection)) => ProjectionError::NewerFormat {
            projection,
            what,
            found,
            supported: codec::FORMAT,
        },
        _ => ProjectionError::Store(damaged(what, key, "unreadable key")),
    }
}
