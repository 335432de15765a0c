//! [`PgLease`]: "one owner at a time" on PostgreSQL session advisory locks.

use std::sync::Arc;
use std::time::Duration;

use annals::Result;
use deadpool_postgres::{ClientWrapper, Object, Pool};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{map, map_pool};

/// A held lease: the session advisory lock `key`, on a connection of its own.
///
/// The lock lives as long as the connection's session, so a lease is lost when its connection
/// is: the server ends the session (restart, `pg_terminate_backend`, a network failure) and
/// another process may then take the lease. The guard notices: a background task checks the
/// connection every check interval, and [`lost`](Self::lost) completes (and
/// [`is_lost`](Self::is_lost) turns true) when it fails. An owner must stop acting as owner
/// when that happens.
///
/// Dropping the guard closes its connection, which releases the lock;
/// [`release`](Self::release) does so explicitly and waits for it.
///
/// ```no_run
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
#[derive(Debug)]
pub struct PgLease {
    key: i64,
    client: Arc<ClientWrapper>,
    lost: watch::Receiver<bool>,
    checker: JoinHandle<()>,
}

impl PgLease {
    /// Tries to take the advisory lock `key` on a connection taken out of `pool` for good.
    /// Returns `None` when another session holds it.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`](annals::Error::Unavailable) when no connection can be made.
    pub async fn try_acquire(
        pool: &Pool,
        key: i64,
        check_interval: Duration,
    ) -> Result<Option<PgLease>> {
        let object = pool.get().await.map_err(map_pool)?;
        let acquired: bool = object
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .map_err(|e| map(e, "(lease)"))?
            .get(0);
        if !acquired {
            return Ok(None);
        }
        // Out of the pool: the lock must never be lent to another user of the pool.
        let client = Arc::new(Object::take(object));
        let (tx, lost) = watch::channel(false);
        let checker = tokio::spawn(check(client.clone(), key, check_interval, tx));
        tracing::debug!(key, "annals-postgres: lease acquired");
        Ok(Some(PgLease {
            key,
            client,
            lost,
            checker,
        }))
    }

    /// The advisory lock key.
    pub fn key(&self) -> i64 {
        self.key
    }

    /// Whether the lease's connection was found lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Completes when the lease's connection is found lost (at once if it already was).
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        // An error means the checker ended, which it only does after sending `true`.
        let _ = lost.wait_for(|lost| *lost).await;
    }

    /// Unlocks and closes the connection.
    ///
    /// # Errors
    ///
    /// The unlock's failure (the lock is released anyway when the connection closes).
    pub async fn release(self) -> Result<()> {
        self.checker.abort();
        let result = self
            .client
            .execute("SELECT pg_advisory_unlock($1)", &[&self.key])
            .await;
        result.map(drop).map_err(|e| map(e, "(lease)"))
    }
}

impl Drop for PgLease {
    fn drop(&mut self) {
        self.checker.abort();
    }
}

async fn check(
    client: Arc<ClientWrapper>,
    key: i64,
    interval: Duration,
    lost: watch::Sender<bool>,
) {
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
            let _ = lost.send(true);
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
