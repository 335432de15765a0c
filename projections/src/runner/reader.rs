//! The one reader of the global log: hands each wanted event to its partition, and tells every
//! partition how far it has read.

use std::sync::Arc;

use annals::{EventStore, Filter, Position, ReadAll};
use futures::TryStreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::partition::Msg;
use crate::status::Board;
use crate::{partition_of, Retry};

/// Events read from the store at a time.
const PAGE: usize = 1024;

pub(super) struct Reader<S> {
    pub(super) store: S,
    pub(super) filter: Filter,
    /// The projection's partition count.
    pub(super) total: u32,
    /// The partitions this reader feeds, in the order of `senders` and `checkpoints`.
    pub(super) ids: Vec<u32>,
    /// Each partition's checkpoint at start: events at or before it are not handed over again.
    pub(super) checkpoints: Vec<Option<Position>>,
    pub(super) senders: Vec<mpsc::Sender<Msg>>,
    pub(super) board: Arc<Board>,
    pub(super) cancel: CancellationToken,
    pub(super) retry: Retry,
}

impl<S: EventStore + 'static> Reader<S> {
    pub(super) async fn run(self) {
        // From the oldest checkpoint: every partition sees every event after its own.
        let mut next = self
            .checkpoints
            .iter()
            .map(|c| c.map_or(Position::START, Position::next))
            .min()
            .unwrap_or(Position::START);
        let mut watch = self.store.watch_commits();
        let mut failures = 0u32;
        loop {
            if self.cancel.is_cancelled() {
                return;
            }
            // Marked before reading: a commit landing during the read still wakes us.
            watch.mark_seen();
            // The filter goes to the store (which skips what it can without decoding); the
            // head, asked for first, says how far a short page scanned: a read that starts
            // after the head was visible sees every event up to it (the stores' global order
            // never skips), so the checkpoints move past events the filter never returned.
            let read = async {
                let head = self.store.last_position().await?;
                let page: Vec<_> = self
                    .store
                    .read_all(ReadAll::from(next).limit(PAGE).filter(self.filter.clone()))
                    .try_collect()
                    .await?;
                Ok::<_, annals::Error>((head, page))
            };
            let (head, page) = match read.await {
                Ok(read) => {
                    failures = 0;
                    read
                }
                Err(error) => {
                    // The store is unavailable: never move on past what was not read.
                    failures += 1;
                    tracing::warn!(projection = %self.board.name, %error, "reading the log failed; retrying");
                    for &partition in &self.ids {
                        self.board
                            .error(partition, format!("reading the log: {error}"));
                    }
                    tokio::select! {
                        () = self.cancel.cancelled() => return,
                        () = tokio::time::sleep(self.retry.backoff(failures)) => {}
                    }
                    continue;
                }
            };
            let full = page.len() == PAGE;
            let last_read = page.last().map(|e| e.position);
            // A full page scanned up to its last event; a short one up to the head too.
            let scanned = if full { last_read } else { last_read.max(head) }
                .filter(|scanned| *scanned >= next);
            if let Some(head) = head.max(last_read) {
                self.board.set_head(head);
            }
            // Each partition's share of the page, handed over at once.
            let mut shares: Vec<Vec<annals::RecordedEvent>> = vec![Vec::new(); self.senders.len()];
            for event in page {
                let partition = partition_of(&event.stream_id, self.total);
                // Another process's partition (workers): not ours to hand over.
                let Some(index) = self.ids.iter().position(|&id| id == partition) else {
                    continue;
                };
                let done = self.checkpoints.get(index).copied().flatten();
                if done.is_some_and(|c| event.position <= c) || !self.filter.matches(&event) {
                    continue;
                }
                if let Some(share) = shares.get_mut(index) {
                    share.push(event);
                }
            }
            for (index, share) in shares.into_iter().enumerate() {
                let Some(first) = share.first() else { continue };
                let partition = self.ids.get(index).copied().unwrap_or(u32::MAX);
                self.board.received(
                    partition,
                    u64::try_from(share.len()).unwrap_or(u64::MAX),
                    first.recorded_at,
                );
                if !self.send(index, Msg::Events(share)).await {
                    return;
                }
            }
            if let Some(scanned) = scanned {
                next = scanned.next();
                for index in 0..self.senders.len() {
                    if !self.send(index, Msg::Scanned(scanned)).await {
                        return;
                    }
                }
            }
            if full {
                self.board.set_caught_up(false);
                continue;
            }
            self.board.set_caught_up(true);
            tokio::select! {
                () = self.cancel.cancelled() => return,
                changed = watch.changed() => {
                    if changed.is_err() {
                        tracing::warn!(projection = %self.board.name, "the store closed; the projection stops reading");
                        return;
                    }
                }
            }
        }
    }

    /// Hands `msg` to a partition, waiting while it is busy (so a slow partition slows the
    /// reader instead of filling memory). False when the projection is stopping.
    async fn send(&self, index: usize, msg: Msg) -> bool {
        let Some(sender) = self.senders.get(index) else {
            return false;
        };
        tokio::select! {
            () = self.cancel.cancelled() => false,
            sent = sender.send(msg) => sent.is_ok(),
        }
    }
}
