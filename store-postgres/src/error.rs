//! How PostgreSQL failures become [`annals::Error`]s.

use annals::{Error, Result, StreamId};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::FromSql;
use tokio_postgres::Row;

/// The backend name carried by errors.
pub(crate) const BACKEND: &str = "postgres";

/// How far a failed request got, which decides what its failure means for an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Nothing that writes was sent (getting a connection, preparing, reading).
    BeforeWrite,
    /// The append statement was sent: if the connection died, it may have committed.
    Writing,
}

/// Whether the error means the connection (or the server) is gone, rather than that the
/// statement failed.
pub(crate) fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            code == &SqlState::ADMIN_SHUTDOWN
                || code == &SqlState::CRASH_SHUTDOWN
                || code == &SqlState::CANNOT_CONNECT_NOW
                || code.code().starts_with("08")
        }
        // Not a server error: an I/O failure or the connection task ending.
        None => e.as_db_error().is_none(),
    }
}

fn not_set_up(schema: &str) -> Error {
    Error::NotInitialized {
        schema: schema.to_owned(),
    }
}

/// Reads column `idx` of a row answering one of the store's control statements (a lock, a
/// schema version, a count): a failure means the server answered something else than the
/// statement asks for, a backend error. (Rows holding stored records are read by
/// `store::rows`, whose failures are corruptions.)
pub(crate) fn column<'a, T: FromSql<'a>>(row: &'a Row, idx: usize) -> Result<T> {
    row.try_get(idx).map_err(|e| Error::backend(BACKEND, e))
}

/// Maps a statement failure that did not depend on an append's outcome.
pub(crate) fn map(e: tokio_postgres::Error, schema: &str) -> Error {
    if let Some(code) = e.code() {
        if code == &SqlState::QUERY_CANCELED {
            return Error::Timeout {
                backend: BACKEND,
                source: Box::new(e),
            };
        }
        if code == &SqlState::UNDEFINED_TABLE || code == &SqlState::INVALID_SCHEMA_NAME {
            return not_set_up(schema);
        }
        if code == &SqlState::CHARACTER_NOT_IN_REPERTOIRE
            || code == &SqlState::UNTRANSLATABLE_CHARACTER
        {
            return Error::InvalidEvent {
                event_id: None,
                reason: format!("PostgreSQL cannot store this text: {e}"),
            };
        }
    }
    if is_connection_error(&e) {
        return Error::Unavailable {
            backend: BACKEND,
            source: Box::new(e),
        };
    }
    Error::backend(BACKEND, e)
}

/// Maps a failure of an append's statement: a lost connection after it was sent means the
/// outcome is unknown.
pub(crate) fn map_append(
    e: tokio_postgres::Error,
    schema: &str,
    stream: &StreamId,
    stage: Stage,
) -> Error {
    // A server error answering the statement means the transaction rolled back, except for a
    // shutdown, which may cut in after the commit.
    let answered = e.as_db_error().is_some() && !is_connection_error(&e);
    if stage == Stage::Writing && !answered && is_connection_error(&e) {
        return Error::AppendOutcomeUnknown {
            backend: BACKEND,
            stream: stream.clone(),
            source: Box::new(e),
        };
    }
    map(e, schema)
}

/// Maps a failure to get a pooled connection.
pub(crate) fn map_pool(e: deadpool_postgres::PoolError) -> Error {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Closed => Error::Closed,
        PoolError::Backend(e) => Error::Unavailable {
            backend: BACKEND,
            source: Box::new(e),
        },
        PoolError::Timeout(_) => Error::Timeout {
            backend: BACKEND,
            source: Box::new(e),
        },
        other => Error::Unavailable {
            backend: BACKEND,
            source: Box::new(other),
        },
    }
}
