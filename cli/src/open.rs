//! Opening a store from its URL.

use std::path::PathBuf;

use annals::{AnyStore, IntoAnyStore};

use crate::commands::verify::Problem;
use crate::failure::{CliResult, Failure};

/// A store opened from a URL: the run-time-chosen [`AnyStore`] every command uses, and the
/// concrete store where a command needs more (sled's checksum walk in `verify`).
#[derive(Clone)]
pub struct OpenedStore {
    /// The URL it was opened from.
    pub url: String,
    /// The store.
    pub any: AnyStore,
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sled(annals_sled::SledEventStore),
    #[cfg(feature = "postgres")]
    Postgres,
}

impl std::fmt::Debug for OpenedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Opens the store named by `url`: `sled:<path>` or `postgres://…` / `postgresql://…`
/// (`?schema=<name>` selects the schema; default `annals`).
///
/// With `create`, a missing sled store is created and a PostgreSQL schema initialised; without
/// it, a missing store is an error.
///
/// # Errors
///
/// A usage failure (exit 2) for an unknown scheme, a missing store, or a server that cannot be
/// reached.
pub async fn open(url: &str, create: bool) -> CliResult<OpenedStore> {
    if let Some(path) = url.strip_prefix("sled:") {
        let path = PathBuf::from(path.strip_prefix("//").unwrap_or(path));
        if path.as_os_str().is_empty() {
            return Err(Failure::usage(format!(
                "store URL `{url}` names no path: use sled:<path>"
            )));
        }
        if !create && !path.exists() {
            return Err(Failure::usage(format!(
                "no sled store at {}",
                path.display()
            )));
        }
        let store = annals_sled::SledEventStore::builder()
            .path(&path)
            .open()
            .await
            .map_err(|e| {
                Failure::usage(crate::failure::one_line(&e))
                    .context(format!("opening sled store {}", path.display()))
            })?;
        return Ok(OpenedStore {
            url: url.to_owned(),
            any: store.clone().into_any(),
            backend: Backend::Sled(store),
        });
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return open_postgres(url, create).await;
    }
    let scheme = url.split_once(':').map_or(url, |(s, _)| s);
    Err(Failure::usage(format!(
        "unknown store URL scheme `{scheme}` in `{url}`: use sled:<path> or postgres://user@host/db"
    )))
}

#[cfg(feature = "postgres")]
async fn open_postgres(url: &str, create: bool) -> CliResult<OpenedStore> {
    let (connection, schema) = split_schema(url);
    let mut builder = annals_postgres::PgEventStore::builder().connection_string(connection);
    if let Some(schema) = schema {
        builder = builder.schema(schema);
    }
    let place = format!("connecting to {}", redact(connection));
    let store = builder
        .build()
        .await
        .map_err(|e| Failure::usage(crate::failure::one_line(&e)).context(&place))?;
    if create {
        store
            .init()
            .await
            .map_err(|e| Failure::usage(crate::failure::one_line(&e)).context(&place))?;
    }
    Ok(OpenedStore {
        url: url.to_owned(),
        any: store.into_any(),
        backend: Backend::Postgres,
    })
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(url: &str, _create: bool) -> CliResult<OpenedStore> {
    Err(Failure::usage(format!(
        "`{}`: this build has no PostgreSQL support (feature `postgres`)",
        redact(url)
    )))
}

/// Splits a `schema=` query parameter off a PostgreSQL URL.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
fn split_schema(url: &str) -> (&str, Option<&str>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url, None);
    };
    let schema = query.split('&').find_map(|kv| kv.strip_prefix("schema="));
    let rest: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.starts_with("schema="))
        .collect();
    if rest.is_empty() {
        (base, schema)
    } else {
        // Other parameters stay for the driver: keep the URL whole but for `schema=`.
        (url, schema)
    }
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl OpenedStore {
    /// Store-specific integrity checks (sled: every record's checksum and every index).
    pub(crate) async fn native_verify(&self) -> CliResult<Vec<Problem>> {
        match &self.backend {
            Backend::Sled(store) => {
                let report = store.verify().await?;
                Ok(report
                    .problems
                    .iter()
                    .map(|p| Problem {
                        stream: p.stream.as_ref().map(ToString::to_string),
                        version: p.version.map(|v| v.get()),
                        position: p.position.map(|p| p.to_string()),
                        problem: format!("{:?}: {}", p.kind, p.detail),
                    })
                    .collect())
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres => Ok(Vec::new()),
        }
    }

    /// Flushes and closes what needs it.
    pub(crate) async fn close(&self) {
        if let Backend::Sled(store) = &self.backend {
            if let Err(e) = store.close().await {
                eprintln!("annals: closing the sled store: {e}");
            }
        }
    }
}
