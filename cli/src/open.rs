//! Opening a store from its URL.

use std::path::PathBuf;
use std::sync::Arc;

use annals::{AnyStore, EventStore, IntoAnyStore};
use annals_sled::SledEventStore;
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::failure::{one_line, CliResult, Failure};

/// How [`open`] treats a store that does not exist yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// The store must exist: a missing sled directory or an uninitialised PostgreSQL schema is
    /// an error. Every command but `import` (and `migrate`'s target) opens this way.
    Existing,
    /// A missing sled store is created; a PostgreSQL schema is initialised (idempotent).
    CreateIfMissing,
}

/// A store opened from a URL: the run-time-chosen [`AnyStore`] every command uses, and the
/// concrete store behind it for what needs its type (the projections' read models).
#[derive(Clone)]
pub struct OpenedStore {
    /// The URL it was opened from.
    pub url: String,
    /// The store.
    pub any: AnyStore,
    /// The same store with its own type.
    pub backend: Backend,
    /// The sled read model, once a projection command opened it: a sled store has at most one
    /// open `SledModel`, which every projection of the process shares.
    sled_model: Arc<tokio::sync::OnceCell<annals_projections::SledModel>>,
}

/// The concrete store behind an [`OpenedStore`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Backend {
    /// An embedded sled store (`sled:<path>`).
    Sled(SledEventStore),
    /// A PostgreSQL store (`postgres://…`).
    #[cfg(feature = "postgres")]
    Postgres(annals_postgres::PgEventStore),
}

impl Backend {
    /// The backend's name, as the CLI prints it: `sled` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Sled(_) => "sled",
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => "postgres",
        }
    }

    fn into_any(self) -> AnyStore {
        match self {
            Backend::Sled(store) => store.into_any(),
            #[cfg(feature = "postgres")]
            Backend::Postgres(store) => store.into_any(),
        }
    }
}

impl std::fmt::Debug for OpenedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedStore")
            .field("url", &redact(&self.url))
            .finish_non_exhaustive()
    }
}

/// Opens a store from its URL, in a mode, with a lease holder name (PostgreSQL).
type Opener = for<'a> fn(&'a str, OpenMode, Option<&'a str>) -> BoxFuture<'a, CliResult<Backend>>;

/// Every URL scheme the CLI knows, with the function that opens its stores.
const SCHEMES: &[(&str, Opener)] = &[
    ("sled", |url, mode, _| open_sled(url, mode).boxed()),
    ("postgres", |url, mode, holder| {
        open_postgres(url, mode, holder).boxed()
    }),
    ("postgresql", |url, mode, holder| {
        open_postgres(url, mode, holder).boxed()
    }),
];

/// Opens the store named by `url`: `sled:<path>` or `postgres://…` / `postgresql://…`
/// (`?schema=<name>` selects the schema; default `annals`), as `mode` says.
///
/// # Errors
///
/// A usage failure (exit 2) for an unknown scheme, a missing store, or a server that cannot be
/// reached.
pub async fn open(url: &str, mode: OpenMode) -> CliResult<OpenedStore> {
    open_as(url, mode, None).await
}

/// [`open`], naming the leases the store hands out after `holder` (PostgreSQL; what
/// `projections status` shows as a partition's owner).
pub(crate) async fn open_as(
    url: &str,
    mode: OpenMode,
    holder: Option<&str>,
) -> CliResult<OpenedStore> {
    let scheme = url.split_once(':').map_or(url, |(s, _)| s);
    let Some((_, opener)) = SCHEMES.iter().find(|(name, _)| *name == scheme) else {
        return Err(Failure::usage(format!(
            "unknown store URL scheme `{scheme}` in `{}`: use sled:<path> or postgres://user@host/db",
            redact(url)
        )));
    };
    let backend = opener(url, mode, holder).await?;
    Ok(OpenedStore {
        url: url.to_owned(),
        any: backend.clone().into_any(),
        backend,
        sled_model: Arc::default(),
    })
}

async fn open_sled(url: &str, mode: OpenMode) -> CliResult<Backend> {
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
    match SledEventStore::builder().path(&path).open().await {
        Ok(store) => Ok(Backend::Sled(store)),
        Err(e @ annals::Error::Unavailable { .. }) if one_line(&e).contains("acquire lock") => {
            Err(Failure::usage(format!(
                "the sled store at {} is in use by another process (a sled store opens in one \
                 process at a time): stop it and run the command again, or run the rebuild \
                 in-process with annals_projections::Rebuild (see README, Projections)",
                path.display()
            )))
        }
        Err(e) => Err(Failure::from(e).context(format!("opening sled store {}", path.display()))),
    }
}

#[cfg(feature = "postgres")]
async fn open_postgres(url: &str, mode: OpenMode, holder: Option<&str>) -> CliResult<Backend> {
    let (connection, schema) = split_schema(url);
    let mut builder = annals_postgres::PgEventStore::builder().connection_string(connection);
    if let Some(schema) = schema {
        builder = builder.schema(schema);
    }
    if let Some(holder) = holder {
        builder = builder.lease_holder(holder);
    }
    let place = format!("connecting to {}", redact(connection));
    let store = builder
        .open()
        .await
        .map_err(|e| Failure::usage(one_line(&e)).context(&place))?;
    if mode == OpenMode::CreateIfMissing {
        store
            .init()
            .await
            .map_err(|e| Failure::usage(one_line(&e)).context(&place))?;
    }
    Ok(Backend::Postgres(store))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(url: &str, _mode: OpenMode, _holder: Option<&str>) -> CliResult<Backend> {
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
    /// The store's sled read model, opened at the first call (every projection of the process
    /// shares it: a sled store has at most one open model).
    pub(crate) async fn sled_model(
        &self,
    ) -> CliResult<(SledEventStore, annals_projections::SledModel)> {
        #[allow(irrefutable_let_patterns)] // without the `postgres` feature
        let Backend::Sled(store) = &self.backend
        else {
            return crate::projections::wrong_kind(self, "SledModel", "sled");
        };
        let model = self
            .sled_model
            .get_or_try_init(|| async {
                annals_projections::SledModel::open(store)
                    .await
                    .map_err(|e| {
                        Failure::usage(one_line(&e)).context("opening the sled read model")
                    })
            })
            .await?;
        Ok((store.clone(), model.clone()))
    }

    /// The URL without its password, for messages.
    pub(crate) fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    /// Makes everything durable and announced, and stops the store's background work.
    pub(crate) async fn close(&self) {
        if let Err(e) = self.any.close().await {
            eprintln!("annals: closing the store: {}", one_line(&e));
        }
    }
}
