//! [`Leases`] on a table: one holder at a time across processes, renewed by a heartbeat, taken
//! over when the holder stops renewing, fenced by an epoch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use annals::lease::{LeaseHolder, LeaseLoss};
use annals::{Lease, LeaseInfo, Leases, Result};
use futures::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio_postgres::GenericClient;

use crate::error::{column, map};
use crate::store::PgEventStore;

/// Leases of a [`PgEventStore`], rows of the table `leases` of its schema: name, holder, epoch,
/// last renewal and expiry, all times on the server's clock.
///
/// - **One holder at a time, across processes**: every store on the same schema competes for
///   the same rows; another process's store, a clone of this one and this very store all get
///   `None` while the lease is held.
/// - **Heartbeat and takeover**: a task renews each held lease every
///   [`lease_heartbeat`](crate::PgEventStoreBuilder::lease_heartbeat) (1 s by default). A lease
///   not renewed for [`lease_ttl`](crate::PgEventStoreBuilder::lease_ttl) (5 s) may be taken by
///   anyone: a killed holder, a paused one (`SIGSTOP`, a long GC pause, a frozen VM: its
///   session lives on, which is why this is not a session advisory lock), one cut off from the
///   server.
/// - **Loss**: [`Lease::lost`] completes when a renewal finds the lease taken by someone else,
///   or when no renewal has succeeded for the time to live, counted from when the last
///   successful renewal was *sent* (so the holder gives up before anyone can take over, as far
///   as its clock runs at the server's pace). A brief disconnection loses nothing: the next
///   heartbeat renews on a new connection.
/// - **Fencing**: each grant's [`epoch`](Lease::epoch) is one more than the name's previous one.
///   A holder that wakes up after a takeover still believes it holds the lease until its next
///   heartbeat; work that must never come from two holders checks the epoch inside its own
///   transaction with [`PgEventStore::check_fence`], which also locks the row so no takeover
///   commits in between (the projection runtime's PostgreSQL read model does). Such a
///   transaction should set `idle_in_transaction_session_timeout` to the lease's time to live,
///   so that a holder paused inside it is ended by the server and its lock freed.
/// - **Release**: [`Lease::release`] frees the row at once; dropping the `Lease` frees it in
///   the background (or it expires).
/// - After [`close`](annals::EventStore::close), `try_lease` fails with
///   [`Error::Closed`](annals::Error::Closed).
///
/// ```no_run
/// use annals::Leases;
/// # use annals_postgres::PgEventStore;
/// # async fn demo(store: PgEventStore) -> annals::Result<()> {
/// if let Some(lease) = store.try_lease("projection:balances:partition-3").await? {
///     tokio::select! {
///         _ = lease.lost() => { /* stop: another worker may own it now */ }
///         _ = async { /* do the owner's work, checking lease.epoch() in its transactions */ } => {}
///     }
///     lease.release().await?;
/// }
/// # Ok(())
/// # }
/// ```
impl Leases for PgEventStore {
    async fn try_lease(&self, name: &str) -> Result<Option<Lease>> {
        let mut client = self.client().await?;
        let ttl = micros(self.lease_ttl());
        let tx = client
            .transaction()
            .await
            .map_err(|e| map(e, self.schema()))?;
        // A holder's transaction may hold the row (its fence check, just before it commits):
        // wait a heartbeat at most, then report the lease as held. A holder paused there is
        // ended by the server (its idle-in-transaction timeout), which frees the row.
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{}ms'",
            self.lease_heartbeat().as_millis().max(1)
        ))
        .await
        .map_err(|e| map(e, self.schema()))?;
        let row = tx
            .query_opt(
                &format!(
                    "INSERT INTO {s}.leases AS l (name, holder, epoch, renewed, expires)
                     VALUES ($1, $2, 1, now(), now() + make_interval(secs => $3::float8 / 1e6))
                     ON CONFLICT (name) DO UPDATE
                     SET holder = EXCLUDED.holder, epoch = l.epoch + 1,
                         renewed = EXCLUDED.renewed, expires = EXCLUDED.expires
                     WHERE l.holder IS NULL OR l.expires < now()
                     RETURNING l.epoch",
                    s = self.quoted_schema()
                ),
                &[&name, &self.lease_holder(), &(ttl as f64)],
            )
            .await;
        let row = match row {
            Ok(row) => row,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                return Ok(None);
            }
            Err(e) => return Err(map(e, self.schema())),
        };
        tx.commit().await.map_err(|e| map(e, self.schema()))?;
        drop(client);
        let Some(row) = row else {
            return Ok(None);
        };
        let epoch = u64::try_from(column::<i64>(&row, 0)?).unwrap_or(0);
        let store = self.clone();
        let owned = name.to_owned();
        let lease = Lease::new_with(name, move |loss| {
            let renewer = tokio::spawn(renew(store.clone(), owned.clone(), epoch, loss));
            PgLeaseHolder {
                store,
                name: owned,
                epoch,
                renewer: Some(renewer),
            }
        })
        .with_epoch(epoch);
        tracing::debug!(name, epoch, "annals-postgres: lease acquired");
        Ok(Some(lease))
    }

    /// The unexpired leases under `prefix`, from the table (every process's).
    async fn leases(&self, prefix: &str) -> Result<Vec<LeaseInfo>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT name, holder, epoch,
                            (EXTRACT(EPOCH FROM (now() - renewed)) * 1e6)::bigint
                     FROM {s}.leases
                     WHERE starts_with(name, $1) AND holder IS NOT NULL AND expires > now()
                     ORDER BY name",
                    s = self.quoted_schema()
                ),
                &[&prefix],
            )
            .await
            .map_err(|e| map(e, self.schema()))?;
        rows.iter()
            .map(|row| {
                let renewed = u64::try_from(column::<i64>(row, 3)?).unwrap_or(0);
                Ok(LeaseInfo::new(
                    column::<String>(row, 0)?,
                    column::<String>(row, 1)?,
                    u64::try_from(column::<i64>(row, 2)?).unwrap_or(0),
                    Duration::from_micros(renewed),
                ))
            })
            .collect()
    }
}

impl PgEventStore {
    /// Whether the lease `name` is still held in `epoch`, checked on `client` (inside the
    /// caller's transaction): locks the lease's row until the transaction ends, so no takeover
    /// can commit between this check and the caller's commit. Work that must never come from
    /// two holders calls it in every transaction and gives up on `false` (see
    /// [`Leases`](annals::Leases) for this store).
    ///
    /// # Errors
    ///
    /// The statement's failure.
    pub async fn check_fence(
        &self,
        client: &impl GenericClient,
        name: &str,
        epoch: u64,
    ) -> Result<bool> {
        let epoch = i64::try_from(epoch).unwrap_or(i64::MAX);
        let row = client
            .query_opt(
                &format!(
                    "SELECT 1 FROM {s}.leases
                     WHERE name = $1 AND epoch = $2 AND holder IS NOT NULL FOR SHARE",
                    s = self.quoted_schema()
                ),
                &[&name, &epoch],
            )
            .await
            .map_err(|e| map(e, self.schema()))?;
        Ok(row.is_some())
    }

    fn quoted_schema(&self) -> String {
        format!("\"{}\"", self.schema())
    }

    /// Renews `name` in `epoch`: `Ok(false)` when it is no longer ours.
    async fn renew_once(&self, name: &str, epoch: i64) -> Result<bool> {
        let client = self.client().await?;
        let ttl = micros(self.lease_ttl());
        let renewed = client
            .execute(
                &format!(
                    "UPDATE {s}.leases
                     SET renewed = now(), expires = now() + make_interval(secs => $4::float8 / 1e6)
                     WHERE name = $1 AND epoch = $2 AND holder = $3",
                    s = self.quoted_schema()
                ),
                &[&name, &epoch, &self.lease_holder(), &(ttl as f64)],
            )
            .await
            .map_err(|e| map(e, self.schema()))?;
        Ok(renewed == 1)
    }

    /// Frees `name` if still ours in `epoch`.
    async fn free(&self, name: &str, epoch: i64) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                &format!(
                    "UPDATE {s}.leases SET holder = NULL, expires = now()
                     WHERE name = $1 AND epoch = $2 AND holder = $3",
                    s = self.quoted_schema()
                ),
                &[&name, &epoch, &self.lease_holder()],
            )
            .await
            .map_err(|e| map(e, self.schema()))?;
        Ok(())
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// What a [`Lease`] of this store holds: its row's key, and the task that renews it.
#[derive(Debug)]
struct PgLeaseHolder {
    store: PgEventStore,
    name: String,
    epoch: u64,
    renewer: Option<JoinHandle<()>>,
}

impl LeaseHolder for PgLeaseHolder {
    fn release(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        Box::pin(async move {
            let epoch = i64::try_from(self.epoch).unwrap_or(i64::MAX);
            self.store.free(&self.name, epoch).await
        })
    }
}

impl Drop for PgLeaseHolder {
    fn drop(&mut self) {
        let Some(renewer) = self.renewer.take() else {
            return;
        };
        // Dropped without `release`: free the row in the background (it expires otherwise).
        renewer.abort();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, name) = (self.store.clone(), self.name.clone());
            let epoch = i64::try_from(self.epoch).unwrap_or(i64::MAX);
            runtime.spawn(async move {
                let _ = store.free(&name, epoch).await;
            });
        }
    }
}

/// Renews the lease every heartbeat; signals the loss and ends when it was taken, or when no
/// renewal succeeded for the time to live.
async fn renew(store: PgEventStore, name: String, epoch: u64, loss: LeaseLoss) {
    let heartbeat = store.lease_heartbeat();
    let ttl = store.lease_ttl();
    let epoch_sql = i64::try_from(epoch).unwrap_or(i64::MAX);
    let mut held_since = Instant::now();
    let loss = Arc::new(loss);
    loop {
        tokio::time::sleep(heartbeat).await;
        let sent = Instant::now();
        let renewed = tokio::time::timeout(ttl, store.renew_once(&name, epoch_sql)).await;
        match renewed {
            Ok(Ok(true)) => held_since = sent,
            Ok(Ok(false)) => {
                tracing::warn!(
                    name,
                    epoch,
                    "annals-postgres: lease taken by another holder"
                );
                loss.signal();
                return;
            }
            Ok(Err(error)) => {
                tracing::warn!(name, epoch, %error, "annals-postgres: renewing a lease failed");
            }
            Err(_) => tracing::warn!(name, epoch, "annals-postgres: renewing a lease timed out"),
        }
        if held_since.elapsed() >= ttl {
            tracing::warn!(
                name,
                epoch,
                "annals-postgres: lease lost: not renewed for its time to live"
            );
            loss.signal();
            return;
        }
    }
}
