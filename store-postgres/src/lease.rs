//! [`Leases`] on PostgreSQL session advisory locks: "one owner at a time" across processes.

use std::sync::Arc;
use std::time::Duration;

use annals::lease::{LeaseHolder, LeaseLoss};
use annals::{Lease, Leases, Result};
use deadpool_postgres::{ClientWrapper, Object};
use futures::future::BoxFuture;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{column, map};
use crate::store::PgEventStore;

/// Leases of a [`PgEventStore`]: the lease `name` is the session advisory lock
/// [`lease_key`]`(schema, name)`, taken with `pg_try_advisory_lock` on a connection of its own
/// (taken out of the pool for good, so the lock is never lent to another user of the pool).
///
/// - **One owner at a time, across processes**: every store on the same schema of the same
///   database competes for the same locks; another process's store, a clone of this one and
///   this very store all get `None` while the lease is held.
/// - **Loss**: the lock lives as long as the connection's session, so the lease is lost when
///   its connection is (a server restart, `pg_terminate_backend`, a network failure), and
///   another process may then take it. A background task checks the connection every
///   [`lease_check_interval`](crate::PgEventStoreBuilder::lease_check_interval);
///   [`Lease::lost`] completes (and [`Lease::is_lost`] turns true) when a check fails. An owner
///   must stop acting as owner then.
/// - **Release**: [`Lease::release`] unlocks and closes the connection; dropping the `Lease`
///   closes it, which releases the lock as soon as the server sees the session end.
/// - After [`close`](annals::EventStore::close), `try_lease` fails with
///   [`Error::Closed`](annals::Error::Closed); leases taken before stay held until released
///   or dropped (they have their own connections).
///
/// An operator finds the session holding a lease in `pg_locks` (`locktype = 'advisory'`,
/// `objsubid = 1`, key `(classid::bigint << 32) | objid::bigint`).
///
/// ```no_run
/// use annals::Leases;
/// # use annals_postgres::PgEventStore;
/// # async fn demo(store: PgEventStore) -> annals::Result<()> {
/// if let Some(lease) = store.try_lease("projection:balances:partition-3").await? {
///     tokio::select! {
///         _ = lease.lost() => { /* stop: another worker may own it now */ }
///         _ = async { /* do the owner's work */ } => {}
///     }
///     lease.release().await?;
/// }
/// # Ok(())
/// # }
/// ```
impl Leases for PgEventStore {
    async fn try_lease(&self, name: &str) -> Result<Option<Lease>> {
        let key = lease_key(self.schema(), name);
        let object = self.client().await?;
        let row = object
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .map_err(|e| map(e, self.schema()))?;
        if !column::<bool>(&row, 0)? {
            return Ok(None);
        }
        // Out of the pool: the lock must never be lent to another user of the pool.
        let client = Arc::new(Object::take(object));
        // The checker owns the loss signal for as long as the lease lives (a dropped signal
        // reads as a loss); the holder stops it on release or drop. The signal only exists
        // once the lease does, so it is handed to the running checker.
        let (signal_tx, signal) = oneshot::channel();
        let checker = tokio::spawn(check(
            client.clone(),
            key,
            self.lease_check_interval(),
            signal,
        ));
        let holder = PgLeaseHolder {
            key,
            schema: self.schema().to_owned(),
            client,
            checker: Some(checker),
        };
        let (lease, loss) = Lease::new(name, holder);
        // The checker ends only when aborted with the holder, which lives as long as `lease`.
        let _ = signal_tx.send(loss);
        tracing::debug!(key, name, "annals-postgres: lease acquired");
        Ok(Some(lease))
    }
}

/// What a [`Lease`] of this store holds: the connection with the lock, and the task that
/// checks it.
#[derive(Debug)]
struct PgLeaseHolder {
    key: i64,
    schema: String,
    client: Arc<ClientWrapper>,
    checker: Option<JoinHandle<()>>,
}

impl LeaseHolder for PgLeaseHolder {
    fn release(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        if let Some(checker) = self.checker.take() {
            checker.abort();
        }
        Box::pin(async move {
            let unlocked = self
                .client
                .execute("SELECT pg_advisory_unlock($1)", &[&self.key])
                .await;
            // Dropping `self` closes the connection (once the aborted checker lets go of it),
            // which releases the lock even if the unlock failed.
            unlocked.map(drop).map_err(|e| map(e, &self.schema))
        })
    }
}

impl Drop for PgLeaseHolder {
    fn drop(&mut self) {
        if let Some(checker) = self.checker.take() {
            checker.abort();
        }
    }
}

/// Checks the lease's connection every `interval`; signals the loss and ends when a check
/// fails.
async fn check(
    client: Arc<ClientWrapper>,
    key: i64,
    interval: Duration,
    loss: oneshot::Receiver<LeaseLoss>,
) {
    let Ok(loss) = loss.await else {
        return;
    };
    loop {
        tokio::time::sleep(interval).await;
        let alive = !client.is_closed()
            && tokio::time::timeout(
                interval.max(Duration::from_secs(1)),
                client.simple_query(""),
            )
            .await
            .is_ok_and(|r| r.is_ok());
        if !alive {
            tracing::warn!(key, "annals-postgres: lease lost with its connection");
            loss.signal();
            return;
        }
    }
}

/// The advisory lock key of the lease `name` in `schema`: a stable 64-bit hash (FNV-1a), the
/// same in every process and version.
pub fn lease_key(schema: &str, name: &str) -> i64 {
    let hash = schema
        .bytes()
        .chain([0])
        .chain(name.bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    i64::from_ne_bytes(hash.to_ne_bytes())
}
