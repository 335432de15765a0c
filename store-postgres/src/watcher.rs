//! The store's background task: it turns commits — this process's and other processes' — into
//! wake-ups of the store's [`CommitNotifier`], once readers can see them.
//!
//! - **Local commits** wake local subscribers at once (in `append`) and reach this task, which
//!   sends one `pg_notify` for any number of commits that arrived meanwhile, for the other
//!   processes' stores. Its payload is this store's token, so the notification coming back to
//!   this store's own LISTEN connection is ignored instead of costing another check.
//! - **Other processes' commits** arrive as notifications on a dedicated LISTEN connection.
//! - **Held-back readers**: after another process's commit, and after local commits (see
//!   [`LocalCommits::committed`]), this task checks whether every
//!   committed event is below the readers' horizon; while one is not (an older transaction is
//!   still open), it polls every poll interval and wakes subscribers when the horizon moves.
//!   Nobody notifies when a *foreign* transaction that holds the horizon back ends.
//! - **Fallback**: while the LISTEN connection is down (or there is none), it polls every poll
//!   interval and tries to reconnect.
//!
//! The notification and the check run on the LISTEN connection while it is up (prepared once),
//! never on the pool: they never take a connection an append is waiting for, so a pool of one
//! connection really is one connection for appends. Only while it is down do they borrow a
//! pooled connection.
//!
//! **Stopping**: [`Background::stop`] (the store's `close`), or dropping it with the store's
//! last clone, stops the task; before it ends, it sends the notification still owed for local
//! commits that none has announced yet (those of the current notification gap). `stop` waits
//! for it, so a process that closes its store before exiting never leaves other processes'
//! subscribers waiting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use annals::store::kit::CommitNotifier;
use annals::{Error, Position, Result};
use deadpool_postgres::Pool;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Config, NoTls, Statement};

use crate::error::{describe_targets, map_pool, BACKEND};
use crate::types::Xid8;

/// The default least time between two notifications sent for this process's commits (local
/// subscribers are woken at once by the append itself; this only delays other processes).
pub(crate) const NOTIFY_INTERVAL: Duration = Duration::from_millis(5);

/// The default longest time between two checks of the readers' horizon while the store
/// listens for notifications: the most a lost notification delays subscribers.
pub(crate) const FALLBACK_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The longest a stop waits for the notification it still owes (a server that cannot be
/// reached makes it fail rather than hang the caller's shutdown).
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// The name the LISTEN connection reports in `pg_stat_activity.application_name`, unless its
/// configuration names one already.
pub(crate) const LISTENER_NAME: &str = "annals-postgres listener";

/// What appends tell the background task.
#[derive(Debug, Default)]
pub(crate) struct LocalCommits {
    /// Some local commit happened since the task last looked: notify other processes, then
    /// check the horizon.
    signal: Notify,
    /// How many local commits there were: the task announced them all once it sent a
    /// notification after reading this count.
    count: AtomicU64,
}

impl LocalCommits {
    /// Records a local commit: the task notifies other processes and checks the horizon.
    ///
    /// The append's own wake-up (sent before this call) lets local subscribers read its events
    /// at once when nothing older is running. When an older transaction is still open they are
    /// not readable yet, and nobody notifies when it ends; the check sees the horizon move and
    /// wakes them then. One notification and one check serve every commit of a gap.
    pub(crate) fn committed(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        // Without a waiter this only stores a permit: no wake-up while the task sleeps out its
        // notification gap.
        self.signal.notify_one();
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }
}

/// The running background task, as the store holds it.
#[derive(Debug)]
pub(crate) struct Background {
    /// Sending, or dropping, stops the task.
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<()>>,
}

impl Background {
    /// Stops the task and waits until it has sent the notification it still owed.
    ///
    /// # Errors
    ///
    /// The notification's failure ([`Error::Unavailable`] or [`Error::Timeout`] when the
    /// server could not be told).
    pub(crate) async fn stop(self) -> Result<()> {
        // An error means the task ended already (its runtime is shutting down).
        let _ = self.stop.send(());
        match self.task.await {
            Ok(sent) => sent,
            Err(e) if e.is_cancelled() => Ok(()),
            Err(e) => Err(Error::backend(BACKEND, e)),
        }
    }
}

pub(crate) struct Watcher {
    pub(crate) pool: Pool,
    /// Where the pool connects, for errors.
    pub(crate) tried: Option<Arc<str>>,
    pub(crate) listen_config: Option<Config>,
    pub(crate) channel: String,
    /// This store's notification payload: its own notifications come back to its LISTEN
    /// connection, and are ignored there (the commit that sent one was already checked).
    pub(crate) token: String,
    pub(crate) horizon_sql: String,
    pub(crate) schema: String,
    pub(crate) notifier: CommitNotifier,
    pub(crate) local: Arc<LocalCommits>,
    /// How often to check while notifications cannot be relied on.
    pub(crate) poll_interval: Duration,
    /// The longest time between two checks while they can.
    pub(crate) fallback_poll_interval: Duration,
    /// The least time between two notifications for local commits.
    pub(crate) notify_interval: Duration,
}

/// Starts the background task (on the current Tokio runtime).
pub(crate) fn spawn(watcher: Watcher) -> Background {
    let (stop, stopped) = oneshot::channel();
    Background {
        stop,
        task: tokio::spawn(watcher.run(stopped)),
    }
}

/// A live LISTEN connection: its client (dropping it closes the connection), the channel its
/// connection task signals notifications on (closed when the connection ends), and the two
/// background statements prepared on it.
struct Listener {
    client: tokio_postgres::Client,
    signals: mpsc::Receiver<()>,
    notify: Statement,
    /// Prepared at the first check: the schema may not exist before `init()`.
    horizon: Option<Statement>,
}

const NOTIFY_SQL: &str = "SELECT pg_notify($1, $2)";

/// What the task keeps across its loop, so that a stop can finish its work.
struct State {
    listener: Option<Listener>,
    /// The local commit count when the last notification was sent.
    announced: u64,
}

impl Watcher {
    /// Serves until `stopped` fires (or its sender is dropped), then sends the notification
    /// still owed for local commits.
    async fn run(self, stopped: oneshot::Receiver<()>) -> Result<()> {
        let mut state = State {
            listener: None,
            announced: 0,
        };
        tokio::select! {
            biased;
            _ = stopped => {}
            () = self.serve(&mut state) => {}
        }
        if self.local.count() == state.announced {
            return Ok(());
        }
        let sent = match tokio::time::timeout(STOP_LIMIT, self.notify_others(&mut state)).await {
            Ok(sent) => sent,
            Err(elapsed) => Err(Error::Timeout {
                backend: BACKEND,
                source: Box::new(elapsed),
            }),
        };
        if let Err(e) = &sent {
            tracing::warn!(error = %e, "annals-postgres: the last commit notification could not be sent; other processes see those events at their next wake-up");
        }
        sent
    }

    /// The task's loop; it never ends by itself.
    async fn serve(&self, state: &mut State) {
        let mut frontier = Position::START;
        loop {
            if state.listener.is_none() {
                if let Some(config) = &self.listen_config {
                    match listen(config, &self.channel, &self.token).await {
                        Ok(l) => {
                            tracing::debug!(channel = %self.channel, "annals-postgres: listening");
                            // Commits that came while nobody listened: the check below.
                            state.listener = Some(l);
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, tried = %describe_targets(config), "annals-postgres: LISTEN connection failed; polling");
                        }
                    }
                }
            }
            // Every turn of the loop checks: whatever woke the task (a local commit, a
            // notification, the poll) may mean new events for subscribers. The answer: whether
            // committed events are held back from readers.
            let held_back = match self.check(state.listener.as_mut(), &mut frontier).await {
                Some(all_visible) => !all_visible,
                None => {
                    // A check that failed on a closed LISTEN connection: reconnect now rather
                    // than when its reader notices, and poll through the pool.
                    if state
                        .listener
                        .as_ref()
                        .is_some_and(|l| l.client.is_closed())
                    {
                        state.listener = None;
                    }
                    // Treated as held back: poll until a check answers.
                    true
                }
            };
            // Notifications cannot be relied on without a LISTEN connection, nor while events
            // are held back (the end of the transaction holding them notifies nobody): poll.
            // Otherwise the fallback poll still checks now and then, so a notification that
            // never came (its writer died before sending it, or it was lost with a
            // connection) delays subscribers by at most the fallback interval.
            let wait = if held_back || state.listener.is_none() {
                self.poll_interval.min(self.fallback_poll_interval)
            } else {
                self.fallback_poll_interval
            };
            let mut local = false;
            tokio::select! {
                _ = self.local.signal.notified() => local = true,
                signal = next_signal(&mut state.listener) => {
                    if signal.is_none() {
                        tracing::debug!("annals-postgres: LISTEN connection lost; polling until it is back");
                        state.listener = None;
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
            if local {
                // The check runs at the top of the loop, after the gap.
                if let Err(e) = self.notify_others(state).await {
                    // Best effort: other processes learn of the commit at the next one, or
                    // from their own fallback poll.
                    tracing::debug!(error = %e, "annals-postgres: pg_notify failed");
                }
                // Commits that land during the gap share the next notification (and check):
                // the background work stays a few statements per gap however fast appends
                // come. A stop cuts the gap short and sends what it owes.
                tokio::time::sleep(self.notify_interval).await;
            }
        }
    }

    /// Sends one notification for other processes' stores, announcing every local commit so
    /// far.
    ///
    /// A LISTEN connection that fails to send is presumed lost, even before its reader notices:
    /// it is dropped (so the loop reconnects, and checks what came meanwhile) and this
    /// notification goes through the pool instead of being lost with it.
    async fn notify_others(&self, state: &mut State) -> Result<()> {
        // Read before sending: a commit counted after this is announced by the next one.
        let count = self.local.count();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&self.channel, &self.token];
        if let Some(l) = state.listener.as_ref() {
            match l.client.execute(&l.notify, &params).await {
                Ok(_) => {
                    state.announced = count;
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(error = %e, "annals-postgres: pg_notify failed on the LISTEN connection; reconnecting");
                    state.listener = None;
                }
            }
        }
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| map_pool(e, self.tried.as_ref()))?;
        let sent = match client.prepare_cached(NOTIFY_SQL).await {
            Ok(statement) => client.execute(&statement, &params).await,
            Err(e) => Err(e),
        };
        sent.map_err(|e| crate::error::map(e, &self.schema))?;
        state.announced = count;
        Ok(())
    }

    /// Reads the readers' frontier; wakes subscribers when it moved. Returns whether every
    /// committed event is visible to readers, or `None` when the server could not be asked.
    async fn check(
        &self,
        listener: Option<&mut Listener>,
        frontier: &mut Position,
    ) -> Option<bool> {
        let answer = match listener {
            Some(l) => {
                let statement = match &l.horizon {
                    Some(statement) => statement.clone(),
                    None => match l.client.prepare(&self.horizon_sql).await {
                        Ok(statement) => l.horizon.insert(statement).clone(),
                        Err(e) => {
                            tracing::trace!(schema = %self.schema, error = %e, "annals-postgres: horizon check failed");
                            return None;
                        }
                    },
                };
                let answer = l.client.query_one(&statement, &[]).await;
                if answer.is_err() {
                    // Prepared again next time, in case the schema changed under it.
                    l.horizon = None;
                }
                answer
            }
            None => {
                let client = self.pool.get().await.ok()?;
                match client.prepare_cached(&self.horizon_sql).await {
                    Ok(statement) => client.query_one(&statement, &[]).await,
                    Err(e) => Err(e),
                }
            }
        };
        let row = match answer {
            Ok(row) => row,
            Err(e) => {
                tracing::trace!(schema = %self.schema, error = %e, "annals-postgres: horizon check failed");
                return None;
            }
        };
        let read = || -> std::result::Result<_, String> {
            let all_visible: bool = row.try_get(0).map_err(|e| e.to_string())?;
            let xid: Option<Xid8> = row.try_get(1).map_err(|e| e.to_string())?;
            let seq: Option<i64> = row.try_get(2).map_err(|e| e.to_string())?;
            let visible = match (xid, seq) {
                (Some(xid), Some(seq)) => Some(Position::new(
                    xid.0,
                    u64::try_from(seq).map_err(|_| format!("negative seq {seq}"))?,
                )),
                _ => None,
            };
            Ok((all_visible, visible))
        };
        let (all_visible, visible) = match read() {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(schema = %self.schema, error = %e, "annals-postgres: horizon check answered an unreadable row");
                return None;
            }
        };
        if let Some(visible) = visible {
            if visible > *frontier {
                *frontier = visible;
                self.notifier.notify(visible);
            }
        }
        Some(all_visible)
    }
}

async fn next_signal(listener: &mut Option<Listener>) -> Option<()> {
    match listener {
        Some(l) => l.signals.recv().await,
        None => std::future::pending().await,
    }
}

/// Opens the dedicated LISTEN connection.
async fn listen(
    config: &Config,
    channel: &str,
    token: &str,
) -> Result<Listener, tokio_postgres::Error> {
    let mut config = config.clone();
    if config.get_application_name().is_none() {
        config.application_name(LISTENER_NAME);
    }
    let (client, mut connection) = config.connect(NoTls).await?;
    let token = token.to_owned();
    let (tx, signals) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                // This store's own notification: nothing it does not know already.
                Ok(AsyncMessage::Notification(n)) if n.payload() == token => {}
                Ok(AsyncMessage::Notification(_)) => {
                    // A full channel already holds a wake-up: coalesce.
                    let _ = tx.try_send(());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        // Dropping `tx` tells the watcher the connection is gone.
    });
    client
        .batch_execute(&format!("LISTEN \"{channel}\""))
        .await?;
    let notify = client.prepare(NOTIFY_SQL).await?;
    Ok(Listener {
        client,
        signals,
        notify,
        horizon: None,
    })
}
