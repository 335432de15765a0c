//! How sled's failures become Annals errors.

use annals::{Error, RecordPlace};

use crate::format;

/// Maps a sled failure to the Annals error.
pub(crate) fn sled_error(error: sled::Error) -> Error {
    match error {
        sled::Error::Corruption { at, .. } => Error::corrupt(
            RecordPlace::new(),
            format!("sled found its files damaged (at {at:?})"),
        ),
        sled::Error::Unsupported(message) => format::format_error(None, format!("sled: {message}")),
        other => Error::backend("sled", other),
    }
}

/// A corruption at an unknown place.
pub(crate) fn corrupt_somewhere(reason: impl Into<String>) -> Error {
    Error::corrupt(RecordPlace::new(), reason)
}
