//! The read models the CLI can open from a store it opened by URL.

use annals::{EventStore, Leases};
use annals_projections::{ReadModel, SledModel};
use annals_sled::SledEventStore;
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::failure::CliResult;
use crate::OpenedStore;

/// A read model the CLI can open on the store it was given (`--store`), so the projections
/// registered with it can be run, inspected and rebuilt: [`SledModel`] on a sled store, and with
/// the `postgres` feature `PgModel` on a PostgreSQL one.
///
/// Opening one on a store of the other kind is a usage error (exit 2) naming both.
pub trait CliModel: ReadModel + Clone {
    /// The store its projections read, with its own type.
    type Store: EventStore + Leases + Clone + 'static;

    /// Whether processes share the read model (PostgreSQL): `projections run` then runs each
    /// projection as one worker among others (`ProjectionWorkers`), where a model of one
    /// process (sled) runs as the one `ProjectionRunner`.
    const SHARED: bool;

    /// The kind of store it lives in, as [`Backend::kind`](crate::Backend::kind) names it:
    /// commands over every projection skip those of another kind.
    const BACKEND: &'static str;

    /// The model in `store`, with the store it belongs to.
    ///
    /// # Errors
    ///
    /// A usage failure when `store` is of another kind, or when the model cannot be opened.
    fn open(store: &OpenedStore) -> BoxFuture<'_, CliResult<(Self::Store, Self)>>;
}

impl CliModel for SledModel {
    type Store = SledEventStore;
    const SHARED: bool = false;
    const BACKEND: &'static str = "sled";

    fn open(store: &OpenedStore) -> BoxFuture<'_, CliResult<(SledEventStore, SledModel)>> {
        store.sled_model().boxed()
    }
}

#[cfg(feature = "postgres")]
impl CliModel for annals_projections::PgModel {
    type Store = annals_postgres::PgEventStore;
    const SHARED: bool = true;
    const BACKEND: &'static str = "postgres";

    fn open(
        store: &OpenedStore,
    ) -> BoxFuture<'_, CliResult<(annals_postgres::PgEventStore, annals_projections::PgModel)>>
    {
        async move {
            let crate::Backend::Postgres(pg) = &store.backend else {
                return wrong_kind(store, "PgModel", "PostgreSQL");
            };
            let model = annals_projections::PgModel::new(pg);
            // Creates the runtime's two tables when they are missing (idempotent).
            model.init().await.map_err(|e| {
                crate::Failure::usage(crate::failure::one_line(&e))
                    .context("opening the PostgreSQL read model")
            })?;
            Ok((pg.clone(), model))
        }
        .boxed()
    }
}

/// The failure of opening a `model` on a store that is not a `wanted` one.
pub(crate) fn wrong_kind<T>(store: &OpenedStore, model: &str, wanted: &str) -> CliResult<T> {
    Err(crate::Failure::usage(format!(
        "`{}` is a {} store: projections with a {model} need a {wanted} store",
        store.redacted_url(),
        store.backend.kind()
    )))
}
