//! Leases: one owner at a time for a named piece of work (a projection partition, the relay).
//!
//! A store that can arbitrate between owners implements [`Leases`]: [`try_lease`](Leases::try_lease)
//! takes the lease `name` if nobody holds it and returns a [`Lease`]. The holder works while
//! it holds the lease and stops as soon as [`Lease::lost`] completes (a lost connection, a
//! revoked lease): someone else may own the work from then on. [`Lease::release`] gives it up;
//! dropping a `Lease` does too.
//!
//! A lease alone cannot stop a holder that was paused and wakes up after losing it: work whose
//! effects must never come from two owners also checks a fencing token inside its own
//! transaction (the projection runtime does). That token is the lease's
//! [`epoch`](Lease::epoch): it grows each time the name changes hands, so "the epoch is still
//! mine" fails for every former holder.
//!
//! Store authors build a [`Lease`] with [`Lease::new`] around their own [`LeaseHolder`] (what
//! releasing means for them) and keep the [`LeaseLoss`] to signal a loss. [`LocalLeases`] is
//! the in-process table used by the in-memory and embedded stores, whose data only one
//! process can open.
//!
//! ```
//! use annals::{InMemoryStore, Leases};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> annals::Result<()> {
//! let store = InMemoryStore::new();
//! let lease = store.try_lease("relay").await?.expect("nobody holds it yet");
//! assert!(store.try_lease("relay").await?.is_none(), "one owner at a time");
//! lease.release().await?;
//! assert!(store.try_lease("relay").await?.is_some());
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::Result;

/// Something that hands out named [`Lease`]s, one holder per name at a time.
///
/// # Contract
///
/// - While a `Lease` for `name` is held and not lost, `try_lease(name)` returns `Ok(None)`
///   everywhere the store is shared (every process, for a server-backed store).
/// - A lease whose holder can no longer be sure it holds it (a lost connection) is signalled
///   lost through [`Lease::lost`] before anyone else can take it, as far as the backend allows;
///   see each implementation for its timing.
/// - [`Lease::release`], or dropping the `Lease`, frees the name.
pub trait Leases: Send + Sync {
    /// Takes the lease `name` if nobody holds it; `Ok(None)` when someone does.
    fn try_lease(&self, name: &str) -> impl Future<Output = Result<Option<Lease>>> + Send;

    /// The leases held now whose names start with `prefix`, in name order: who holds each,
    /// its epoch, and how long ago its holder last showed it was alive.
    fn leases(&self, prefix: &str) -> impl Future<Output = Result<Vec<LeaseInfo>>> + Send;
}

/// A held lease as [`Leases::leases`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseInfo {
    /// The lease's name.
    pub name: String,
    /// Who holds it: the store's holder label (a process, a worker).
    pub holder: String,
    /// Its epoch (see [`Lease::epoch`]).
    pub epoch: u64,
    /// How long ago its holder last renewed it (zero for leases that need no renewal).
    pub renewed: Duration,
}

impl LeaseInfo {
    /// A lease `name` held by `holder` in `epoch`, renewed `renewed` ago.
    pub fn new(
        name: impl Into<String>,
        holder: impl Into<String>,
        epoch: u64,
        renewed: Duration,
    ) -> Self {
        LeaseInfo {
            name: name.into(),
            holder: holder.into(),
            epoch,
            renewed,
        }
    }
}

/// What a store does to give up a lease it handed out: the store author's half of a [`Lease`].
///
/// Dropping the holder must free the lease too (perhaps later, as a closed connection does).
pub trait LeaseHolder: Send + Sync + fmt::Debug + 'static {
    /// Frees the lease and waits until it is free.
    fn release(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
}

/// A held lease (see the [module docs](self)).
#[derive(Debug)]
pub struct Lease {
    name: String,
    epoch: u64,
    lost: watch::Receiver<bool>,
    holder: Box<dyn LeaseHolder>,
}

/// The signal a store keeps to tell a [`Lease`]'s holder that the lease is lost.
#[derive(Debug, Clone)]
pub struct LeaseLoss {
    tx: Arc<watch::Sender<bool>>,
}

impl LeaseLoss {
    /// Tells the holder its lease is lost ([`Lease::lost`] completes). Idempotent.
    pub fn signal(&self) {
        self.tx.send_replace(true);
    }
}

impl Lease {
    /// A lease on `name`, released through `holder`; the [`LeaseLoss`] signals its loss.
    pub fn new(name: impl Into<String>, holder: impl LeaseHolder) -> (Lease, LeaseLoss) {
        let (tx, lost) = watch::channel(false);
        let lease = Lease {
            name: name.into(),
            epoch: 0,
            lost,
            holder: Box::new(holder),
        };
        (lease, LeaseLoss { tx: Arc::new(tx) })
    }

    /// A lease on `name` whose holder is made with its loss signal in hand: for a holder that
    /// owns the task watching for the loss (a connection checker).
    pub fn new_with<H: LeaseHolder>(
        name: impl Into<String>,
        make: impl FnOnce(LeaseLoss) -> H,
    ) -> Lease {
        let (tx, lost) = watch::channel(false);
        let holder = make(LeaseLoss { tx: Arc::new(tx) });
        Lease {
            name: name.into(),
            epoch: 0,
            lost,
            holder: Box::new(holder),
        }
    }

    /// The same lease, in `epoch` (zero unless the store sets it).
    #[must_use]
    pub fn with_epoch(mut self, epoch: u64) -> Self {
        self.epoch = epoch;
        self
    }

    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lease's epoch: it grows each time the name changes hands (every grant gets a higher
    /// one than the grant before), so it fences former holders: work that must never come from
    /// two owners checks, inside its own transaction, that the name's epoch is still this one.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether the lease was signalled lost (or its store dropped the loss signal, which can
    /// then never tell).
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow() || self.lost.has_changed().is_err()
    }

    /// Completes when the lease is lost (at once if it already is). The holder must then stop
    /// acting as owner. A lease whose store dropped its loss signal counts as lost.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        let _ = lost.wait_for(|lost| *lost).await;
    }

    /// Gives the lease up and waits until it is free.
    ///
    /// # Errors
    ///
    /// The backend's failure to release; the lease is freed anyway when its holder is dropped
    /// (for a server-backed store, when its connection closes).
    pub async fn release(self) -> Result<()> {
        self.holder.release().await
    }
}

/// An in-process lease table: one holder per name among the users of one process.
///
/// Right for stores only one process can open (the in-memory store, the embedded sled store).
/// [`revoke`](Self::revoke) takes a lease away from its holder, as a lost connection would on a
/// server; tests use it to check that holders stop.
#[derive(Clone, Debug, Default)]
pub struct LocalLeases {
    table: Arc<Mutex<Table>>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    /// Held names: the grant's id (also its epoch) and its loss signal.
    held: HashMap<String, (u64, LeaseLoss)>,
}

impl LocalLeases {
    /// An empty table.
    pub fn new() -> Self {
        LocalLeases::default()
    }

    /// Takes `name` if free.
    pub fn try_lease(&self, name: &str) -> Option<Lease> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table.held.contains_key(name) {
            return None;
        }
        table.next_id += 1;
        let id = table.next_id;
        let holder = LocalHolder {
            table: self.table.clone(),
            name: name.to_owned(),
            id,
        };
        let (lease, loss) = Lease::new(name, holder);
        table.held.insert(name.to_owned(), (id, loss));
        // Grant ids only grow: each grant's epoch is above every earlier one.
        Some(lease.with_epoch(id))
    }

    /// Takes `name` away from its holder, which is told through [`Lease::lost`]; the name is
    /// free at once. Returns whether it was held.
    pub fn revoke(&self, name: &str) -> bool {
        let removed = self
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .held
            .remove(name);
        match removed {
            Some((_, loss)) => {
                loss.signal();
                true
            }
            None => false,
        }
    }

    /// The epoch of `name`'s current grant, if it is held.
    pub fn epoch_of(&self, name: &str) -> Option<u64> {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .held
            .get(name)
            .map(|(id, _)| *id)
    }

    /// The held leases whose names start with `prefix`, in name order, held by `holder`.
    pub fn list(&self, prefix: &str, holder: &str) -> Vec<LeaseInfo> {
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let mut found: Vec<LeaseInfo> = table
            .held
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, (id, _))| LeaseInfo::new(name.clone(), holder, *id, Duration::ZERO))
            .collect();
        found.sort_by(|a, b| a.name.cmp(&b.name));
        found
    }

    /// Whether `name` is held.
    pub fn is_held(&self, name: &str) -> bool {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .held
            .contains_key(name)
    }
}

impl Leases for LocalLeases {
    async fn try_lease(&self, name: &str) -> Result<Option<Lease>> {
        Ok(LocalLeases::try_lease(self, name))
    }

    /// Every lease is held by this process: the holder is `pid-<process id>`.
    async fn leases(&self, prefix: &str) -> Result<Vec<LeaseInfo>> {
        Ok(self.list(prefix, &local_holder()))
    }
}

/// The holder label of the leases of this process.
pub fn local_holder() -> String {
    format!("pid-{}", std::process::id())
}

#[derive(Debug)]
struct LocalHolder {
    table: Arc<Mutex<Table>>,
    name: String,
    id: u64,
}

impl LeaseHolder for LocalHolder {
    fn release(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        drop(self);
        Box::pin(async { Ok(()) })
    }
}

impl Drop for LocalHolder {
    fn drop(&mut self) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        // Only our own entry: after a revoke the name may already belong to someone else.
        if table
            .held
            .get(&self.name)
            .is_some_and(|(id, _)| *id == self.id)
        {
            table.held.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_revoked_lease_is_lost_and_its_late_drop_frees_nothing_of_the_next_holder() {
        let leases = LocalLeases::new();
        let first = leases.try_lease("p-1").unwrap();
        assert!(leases.try_lease("p-1").is_none());
        assert!(leases.revoke("p-1"));
        first.lost().await;
        assert!(first.is_lost());
        let second = leases.try_lease("p-1").expect("free after the revoke");
        assert!(
            second.epoch() > first.epoch(),
            "a new grant fences the old one"
        );
        drop(first);
        assert!(
            leases.is_held("p-1"),
            "the old holder's drop must not free the new lease"
        );
        assert!(!second.is_lost());
        second.release().await.unwrap();
        assert!(!leases.is_held("p-1"));
    }
}
