use std::sync::Arc;

use tokio::sync::watch;

use crate::Position;

/// The writer's side of a store's commit signal: a store calls [`notify`](Self::notify) after
/// every commit, and subscribers waiting on a [`CommitWatch`] wake up.
///
/// Notifying never blocks and never waits for subscribers: a slow subscriber cannot slow a writer.
#[derive(Clone, Debug)]
pub struct CommitNotifier {
    tx: Arc<watch::Sender<Position>>,
}

impl Default for CommitNotifier {
    fn default() -> Self {
        CommitNotifier::new()
    }
}

impl CommitNotifier {
    /// A signal that has seen no commit.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(Position::START);
        CommitNotifier { tx: Arc::new(tx) }
    }

    /// Signals that events up to `position` are committed.
    pub fn notify(&self, position: Position) {
        self.tx.send_modify(|last| {
            if position > *last {
                *last = position;
            }
        });
    }

    /// Wakes every subscriber without a new position (for stores that only learn that
    /// *something* changed, e.g. a polling fallback).
    pub fn wake(&self) {
        self.tx.send_modify(|_| {});
    }

    /// A new watch on this signal.
    pub fn watch(&self) -> CommitWatch {
        CommitWatch {
            rx: self.tx.subscribe(),
        }
    }
}

/// The reader's side of a store's commit signal.
#[derive(Clone, Debug)]
pub struct CommitWatch {
    rx: watch::Receiver<Position>,
}

impl CommitWatch {
    /// Marks every signal so far as seen; [`changed`](Self::changed) then waits for the next.
    /// Call it *before* reading, so a commit that lands during the read still wakes you.
    pub fn mark_seen(&mut self) {
        self.rx.borrow_and_update();
    }

    /// The highest position signalled so far.
    pub fn latest(&self) -> Position {
        *self.rx.borrow()
    }

    /// Waits for a commit signalled after the last [`mark_seen`](Self::mark_seen) (or after this
    /// watch was made).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`](crate::Error::Closed) when the store is gone and no signal can come.
    pub async fn changed(&mut self) -> crate::Result<()> {
        self.rx.changed().await.map_err(|_| crate::Error::Closed)
    }
}
