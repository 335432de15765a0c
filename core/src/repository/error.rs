use crate::Error;

/// Why [`Repository::execute`](crate::Repository::execute) failed: the domain rejected the
/// command, or the store failed (a version conflict that outlasted the retries included).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecuteError<E> {
    /// The aggregate rejected the command; nothing was recorded.
    #[error("command rejected: {0}")]
    Rejected(#[source] E),
    /// The store failed, or the stream kept moving after every retry
    /// ([`Error::VersionConflict`]).
    #[error(transparent)]
    Store(#[from] Error),
}

impl<E> ExecuteError<E> {
    /// The domain's rejection, if that is what this is.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            ExecuteError::Rejected(e) => Some(e),
            ExecuteError::Store(_) => None,
        }
    }

    /// The domain's rejection, if that is what this is.
    pub fn into_rejection(self) -> Option<E> {
        match self {
            ExecuteError::Rejected(e) => Some(e),
            ExecuteError::Store(_) => None,
        }
    }

    /// The store's error, if that is what this is.
    pub fn store_error(&self) -> Option<&Error> {
        match self {
            ExecuteError::Rejected(_) => None,
            ExecuteError::Store(e) => Some(e),
        }
    }

    /// Whether this is a version conflict that outlasted the retries.
    pub fn is_conflict(&self) -> bool {
        matches!(self, ExecuteError::Store(e) if e.is_conflict())
    }
}
