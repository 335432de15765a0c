use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, BoxStream};
use futures::StreamExt;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::task::JoinHandle;

use crate::store::{subscribe_all, EventStore, Filter, ReadAll};
use crate::{Bus, Position, RecordedEvent, Result};

/// The in-process bus: one relay task follows the store's global log and broadcasts each event
/// to every subscriber (`tokio::sync::broadcast`).
///
/// A subscriber first catches up from the store, then follows the broadcast. A subscriber that
/// falls more than the channel's capacity behind does not block anyone: it is told it lagged,
/// reads what it missed from the store, and goes on. So a slow consumer loses nothing and
/// never slows writers; the store stays the source of truth.
///
/// ```
/// use annals::{Bus, EventData, EventStore, ExpectedVersion, Filter, InMemoryBus, InMemoryStore, Position, StreamId};
/// use futures::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> annals::Result<()> {
/// let store = InMemoryStore::new();
/// let bus = InMemoryBus::start(store.clone()).await?;
/// let mut events = bus.subscribe(Position::START, Filter::all());
/// let stream = StreamId::new("account-1")?;
/// store.append(&stream, ExpectedVersion::Any, vec![EventData::json("Opened", &())?]).await?;
/// assert_eq!(events.next().await.expect("an event")?.stream_id, stream);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct InMemoryBus<S> {
    store: S,
    tx: broadcast::Sender<RecordedEvent>,
    _relay: Arc<AbortOnDrop>,
}

impl<S: Clone> Clone for InMemoryBus<S> {
    fn clone(&self) -> Self {
        InMemoryBus {
            store: self.store.clone(),
            tx: self.tx.clone(),
            _relay: self._relay.clone(),
        }
    }
}

#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How many events the broadcast channel holds for a slow subscriber before it lags.
pub const DEFAULT_BUS_CAPACITY: usize = 4096;

impl<S> InMemoryBus<S>
where
    S: EventStore + Clone + 'static,
{
    /// Starts the relay on the current tokio runtime, from the store's current end, with a
    /// channel of [`DEFAULT_BUS_CAPACITY`] events.
    ///
    /// # Errors
    ///
    /// The store's error when its last position cannot be read.
    pub async fn start(store: S) -> Result<Self> {
        Self::with_capacity(store, DEFAULT_BUS_CAPACITY).await
    }

    /// As [`start`](Self::start), with a channel of `capacity` events.
    ///
    /// # Errors
    ///
    /// The store's error when its last position cannot be read.
    pub async fn with_capacity(store: S, capacity: usize) -> Result<Self> {
        let (tx, _) = broadcast::channel(capacity.max(1));
        let from = store
            .last_position()
            .await?
            .map_or(Position::START, Position::next);
        let relay = tokio::spawn(relay(store.clone(), tx.clone(), from));
        Ok(InMemoryBus {
            store,
            tx,
            _relay: Arc::new(AbortOnDrop(relay)),
        })
    }
}

async fn relay<S: EventStore + Clone + 'static>(
    store: S,
    tx: broadcast::Sender<RecordedEvent>,
    mut from: Position,
) {
    loop {
        let mut events = subscribe_all(store.clone(), from, Filter::all());
        while let Some(item) = events.next().await {
            match item {
                Ok(event) => {
                    from = event.position.next();
                    // No subscriber is not an error: the event is in the store.
                    let _ = tx.send(event);
                }
                Err(error) => {
                    tracing::warn!(%error, %from, "in-memory bus relay: store read failed; retrying");
                    break;
                }
            }
        }
        // The store failed or closed; subscribers lose nothing (they read the store on lag).
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl<S> Bus for InMemoryBus<S>
where
    S: EventStore + Clone + 'static,
{
    fn subscribe(
        &self,
        from: Position,
        filter: Filter,
    ) -> BoxStream<'static, Result<RecordedEvent>> {
        let state = Subscriber {
            // Subscribed before catching up, so nothing falls between the two.
            rx: self.tx.subscribe(),
            store: self.store.clone(),
            next: from,
            filter,
            buffer: VecDeque::new(),
            catching_up: true,
        };
        stream::unfold(state, |mut s| async move {
            loop {
                if let Some(event) = s.buffer.pop_front() {
                    return Some((Ok(event), s));
                }
                if s.catching_up {
                    match s.catch_up_page().await {
                        Ok(done) => s.catching_up = !done,
                        Err(e) => return Some((Err(e), s)),
                    }
                    continue;
                }
                match s.rx.recv().await {
                    Ok(event) => {
                        if event.position < s.next {
                            continue; // already delivered during catch-up
                        }
                        s.next = event.position.next();
                        if s.filter.matches(&event) {
                            return Some((Ok(event), s));
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, next = %s.next, "bus subscriber lagged; reading the store");
                        s.catching_up = true;
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }
}

struct Subscriber<S> {
    rx: broadcast::Receiver<RecordedEvent>,
    store: S,
    next: Position,
    filter: Filter,
    buffer: VecDeque<RecordedEvent>,
    catching_up: bool,
}

impl<S: EventStore> Subscriber<S> {
    /// Reads one page of the store from `next`, buffering what passes the filter; `true` when
    /// the page reached the end of the log.
    async fn catch_up_page(&mut self) -> Result<bool> {
        const PAGE: usize = 1024;
        let mut page = self.store.read_all(ReadAll::from(self.next).limit(PAGE));
        let mut read = 0;
        while let Some(event) = page.next().await {
            let event = event?;
            read += 1;
            self.next = event.position.next();
            if self.filter.matches(&event) {
                self.buffer.push_back(event);
            }
        }
        Ok(read < PAGE)
    }
}
