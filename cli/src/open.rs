//! Opening a store from its URL.

use std::path::PathBuf;

use annals::{AnyStore, EventStore, IntoAnyStore};
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::failure::{CliResult, Failure};

/// How [`open`] treats a store that does not exist yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// The store must exist: a missing sled directory or an uninitialised PostgreSQL schema is
    /// an error. Every command but `import` (and `migrate`'s target) opens this way.
    Existing,
    /// A missing sled store is created; a PostgreSQL schema is initialised (idempotent).
    CreateIfMissing,
}

/// A store opened from a URL: the run-time-chosen [`AnyStore`] every command uses.
#[derive(Clone)]
pub struct OpenedStore {
    /// The URL it was opened from.
    pub url: String,
    /// The store.
    pub any: AnyStore,
}

impl std::fmt::Debug for OpenedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedStore")
            .field("url", &redact(&self.url))
            .finish_non_exhaustive()
    }
}

type Opener = for<'a> fn(&'a str, OpenMode) -> BoxFuture<'a, CliResult<AnyStore>>;

/// Every URL scheme the CLI knows, with the function that opens its stores.
const SCHEMES: &[(&str, Opener)] = &[
    ("sled", |url, mode| open_sled(url, mode).boxed()),
    ("postgres", |url, mode| open_postgres(url, mode).boxed()),
    ("postgresql", |url, mode| open_postgres(url, mode).boxed()),
];

/// Opens the store named by `url`: `sled:<path>` or `postgres://…` / `postgresql://…`
/// (`?schema=<name>` selects the schema; default `annals`), as `mode` says.
///
/// # Errors
///
/// A usage failure (exit 2) for an unknown scheme, a missing store, or a server that cannot be
/// reached.
pub async fn open(url: &str, mode: OpenMode) -> CliResult<OpenedStore> {
    let scheme = url.split_once(':').map_or(url, |(s, _)| s);
    let Some((_, opener)) = SCHEMES.iter().find(|(name, _)| *name == scheme) else {
        return Err(Failure::usage(format!(
            "unknown store URL scheme `{scheme}` in `{}`: use sled:<path> or postgres://user@host/db",
            redact(url)
        )));
    };
    Ok(OpenedStore {
        url: url.to_owned(),
        any: opener(url, mode).await?,
    })
}

async fn open_sled(url: &str, mode: OpenMode) -> CliResult<AnyStore> {
    let path = url.strip_prefix("sled:").unwrap_or(url);
    let path = PathBuf::from(path.strip_prefix("//").unwrap_or(path));
    if path.as_os_str().is_empty() {
        return Err(Failure::usage(format!(
            "store URL `{url}` names no path: use sled:<path>"
        )));
    }
    if mode == OpenMode::Existing && !path.exists() {
        return Err(Failure::usage(format!(
            "no sled store at {}",
            path.display()
        )));
    }
    let store = annals_sled::SledEventStore::builder()
        .path(&path)
        .open()
        .await
        .map_err(|e| Failure::from(e).context(format!("opening sled store {}", path.display())))?;
    Ok(store.into_any())
}

#[cfg(feature = "postgres")]
async fn open_postgres(url: &str, mode: OpenMode) -> CliResult<AnyStore> {
    let (connection, schema) = split_schema(url);
    let mut builder = annals_postgres::PgEventStore::builder().connection_string(connection);
    if let Some(schema) = schema {
        builder = builder.schema(schema);
    }
    let place = format!("connecting to {}", redact(connection));
    let store = builder
        .open()
        .await
        .map_err(|e| Failure::usage(crate::failure::one_line(&e)).context(&place))?;
    if mode == OpenMode::CreateIfMissing {
        store
            .init()
            .await
            .map_err(|e| Failure::usage(crate::failure::one_line(&e)).context(&place))?;
    }
    Ok(store.into_any())
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(url: &str, _mode: OpenMode) -> CliResult<AnyStore> {
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
    /// Makes everything durable and announced, and stops the store's background work.
    pub(crate) async fn close(&self) {
        if let Err(e) = self.any.close().await {
            eprintln!(
                "annals: closing the store: {}",
                crate::failure::one_line(&e)
            );
        }
    }
}
