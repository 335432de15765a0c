//! The store's background task: it turns commits — this process's and other processes' — into
//! wake-ups of the store's [`CommitNotifier`], once readers can see them.
//!
//! - **Local commits** wake local subscribers at once (in `append`) and reach this task, which
//!   sends one `pg_notify` for any number of commits that arrived meanwhile, for the other
//!   processes' stores. Its payload is this store's token, so the notification coming back to
//!   this store's own LISTEN connection is ignored instead of costing another check.
//! - **Other processes' commits** arrive as notifications on a dedicated LISTEN connection.
//! - **Held-back readers**: after any commit, this task checks whether every committed event
//!   is below the readers' horizon; while one is not (an older transaction is still open), it
//!   polls every poll interval and wakes subscribers when the horizon moves. Nobody notifies
//!   when a *foreign* transaction that holds the horizon back ends.
//! - **Fallback**: while the LISTEN connection is down (or there is none), it polls every poll
//!   interval and tries to reconnect.

use std::sync::Arc;
use std::time::Duration;

use annals::{CommitNotifier, Position};
use deadpool_postgres::Pool;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_postgres::{AsyncMessage, Config, NoTls};

use crate::types::Xid8;

/// The least time between two notifications sent for this process's commits (local subscribers
/// are woken at once by the append itself; this only delays other processes).
const NOTIFY_GAP: Duration = Duration::from_millis(5);

pub(crate) struct Watcher {
    pub(crate) pool: Pool,
    pub(crate) listen_config: Option<Config>,
    pub(crate) channel: String,
    /// This store's notification payload: its own notifications come back to its LISTEN
    /// connection, and are ignored there (the commit that sent one was already checked).
    pub(crate) token: String,
    pub(crate) horizon_sql: String,
    pub(crate) schema: String,
    pub(crate) notifier: CommitNotifier,
    pub(crate) committed: Arc<Notify>,
    pub(crate) poll_interval: Duration,
    pub(crate) shutdown: oneshot::Receiver<()>,
}

pub(crate) fn spawn(watcher: Watcher) {
    tokio::spawn(watcher.run());
}

/// A live LISTEN connection: its client (dropping it closes the connection) and the channel its
/// connection task signals notifications on (closed when the connection ends).
struct Listener {
    _client: tokio_postgres::Client,
    signals: mpsc::Receiver<()>,
}

impl Watcher {
    async fn run(mut self) {
        let mut listener: Option<Listener> = None;
        let mut pending = true;
        let mut frontier = Position::START;
        loop {
            if listener.is_none() {
                if let Some(config) = &self.listen_config {
                    match listen(config, &self.channel, &self.token).await {
                        Ok(l) => {
                            tracing::debug!(channel = %self.channel, "annals-postgres: listening");
                            listener = Some(l);
                            // Commits may have come while nobody listened.
                            pending = true;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "annals-postgres: LISTEN connection failed; polling");
                        }
                    }
                }
            }
            let polling = pending || listener.is_none();
            if polling {
                match self.check(&mut frontier).await {
                    Some(all_visible) => pending = !all_visible,
                    None => pending = true,
                }
            }
            let polling = pending || listener.is_none();
            let mut local = false;
            tokio::select! {
                _ = &mut self.shutdown => return,
                _ = self.committed.notified() => local = true,
                signal = next_signal(&mut listener) => {
                    if signal.is_none() {
                        tracing::debug!("annals-postgres: LISTEN connection lost; polling until it is back");
                        listener = None;
                    }
                    pending = true;
                }
                _ = tokio::time::sleep(self.poll_interval), if polling => {}
            }
            if local {
                pending = true;
                self.notify_others().await;
                // Commits that land during the gap share the next notification and check: the
                // background work stays a few statements per gap however fast appends come.
                tokio::time::sleep(NOTIFY_GAP).await;
            }
        }
    }

    /// Sends one notification for other processes' stores (best effort: a failure only delays
    /// them until the next commit or their own polling).
    async fn notify_others(&self) {
        if let Ok(client) = self.pool.get().await {
            if let Err(e) = client
                .execute("SELECT pg_notify($1, $2)", &[&self.channel, &self.token])
                .await
            {
                tracing::debug!(error = %e, "annals-postgres: pg_notify failed");
            }
        }
    }

    /// Reads the readers' frontier; wakes subscribers when it moved. Returns whether every
    /// committed event is visible to readers, or `None` when the server could not be asked.
    async fn check(&self, frontier: &mut Position) -> Option<bool> {
        let client = self.pool.get().await.ok()?;
        let row = match client.query_one(&self.horizon_sql, &[]).await {
            Ok(row) => row,
            Err(e) => {
                tracing::trace!(schema = %self.schema, error = %e, "annals-postgres: horizon check failed");
                return None;
            }
        };
        let all_visible: bool = row.get(0);
        let xid: Option<Xid8> = row.get(1);
        let seq: Option<i64> = row.get(2);
        if let (Some(xid), Some(seq)) = (xid, seq) {
            let visible = Position::new(xid.0, seq as u64);
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
    Ok(Listener {
        _client: client,
        signals,
    })
}
