//! How PostgreSQL failures become [`annals::Error`]s.

use std::fmt;
use std::net::SocketAddr;

use annals::{Error, Result, StreamId};
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::FromSql;
use tokio_postgres::{Config, Row};

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

/// Where a configuration makes the store connect, for error messages: every host it names, in
/// the order `tokio-postgres` tries them, as `host:port` (`addr:port (host name)` with a
/// `hostaddr`, the socket file for a Unix socket). Never the password, nor the user or any
/// other setting.
pub(crate) fn describe_targets(config: &Config) -> String {
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs();
    let ports = config.get_ports();
    let targets: Vec<String> = (0..hosts.len().max(addrs.len()))
        .map(|i| {
            // As tokio-postgres picks it: one port per host, one for all, or the default.
            let port = ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432);
            let name = match hosts.get(i) {
                Some(Host::Tcp(name)) => Some(name.clone()),
                #[cfg(unix)]
                Some(Host::Unix(dir)) => {
                    return format!("{}", dir.join(format!(".s.PGSQL.{port}")).display())
                }
                None => None,
            };
            match (addrs.get(i), name) {
                (Some(addr), Some(name)) => format!("{} ({name})", SocketAddr::new(*addr, port)),
                (Some(addr), None) => SocketAddr::new(*addr, port).to_string(),
                // An IPv6 literal takes brackets before its port.
                (None, Some(name)) if name.contains(':') => format!("[{name}]:{port}"),
                (None, Some(name)) => format!("{name}:{port}"),
                (None, None) => String::new(),
            }
        })
        .collect();
    if targets.is_empty() {
        "no host (the configuration names none)".to_owned()
    } else {
        targets.join(", ")
    }
}

/// A failure to open a connection, with where the store tried: `tokio-postgres` does not say,
/// and whoever reads the error needs to know which server was not there. Its message names the
/// hosts and ports only, never the password.
#[derive(Debug)]
pub(crate) struct ConnectFailed {
    tried: std::sync::Arc<str>,
    source: tokio_postgres::Error,
}

impl fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tried {}: {}", self.tried, self.source)
    }
}

impl std::error::Error for ConnectFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Maps a failure to get a pooled connection; `tried` describes where the pool connects (see
/// [`describe_targets`]), when the store knows it (not for a pool given to the builder).
pub(crate) fn map_pool(
    e: deadpool_postgres::PoolError,
    tried: Option<&std::sync::Arc<str>>,
) -> Error {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Closed => Error::Closed,
        PoolError::Backend(source) => Error::Unavailable {
            backend: BACKEND,
            source: match tried {
                Some(tried) => Box::new(ConnectFailed {
                    tried: tried.clone(),
                    source,
                }),
                None => Box::new(source),
            },
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

#[cfg(test)]
mod tests {
    use super::describe_targets;
    use tokio_postgres::Config;

    fn targets(text: &str) -> String {
        describe_targets(&text.parse::<Config>().expect("a connection string"))
    }

    #[test]
    fn targets_name_hosts_and_ports_and_nothing_else() {
        assert_eq!(
            targets("host=127.0.0.1 port=6543 user=u password=secret"),
            "127.0.0.1:6543"
        );
        assert_eq!(targets("host=db.example user=u"), "db.example:5432");
        assert_eq!(targets("host=a,b port=1,2 password=secret"), "a:1, b:2");
        assert_eq!(targets("host=a,b port=7"), "a:7, b:7");
        assert_eq!(targets("host=::1 port=7"), "[::1]:7");
        assert_eq!(
            targets("host=db.example hostaddr=10.0.0.5 port=7"),
            "10.0.0.5:7 (db.example)"
        );
        assert_eq!(targets("hostaddr=::1"), "[::1]:5432");
        assert_eq!(
            targets("host=/run/postgresql port=5433"),
            "/run/postgresql/.s.PGSQL.5433"
        );
        assert_eq!(
            targets("postgresql://user:secret@db.example:6000/app"),
            "db.example:6000"
        );
        assert_eq!(targets("user=u"), "no host (the configuration names none)");
    }
}
