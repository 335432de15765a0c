use std::collections::VecDeque;

use futures::stream::{self, BoxStream};
use futures::StreamExt;

use super::{CommitWatch, EventStore, Filter, ReadAll};
use crate::{Position, RecordedEvent, Result};

/// How many events a subscription reads from the store at a time.
const PAGE: usize = 1024;

/// Follows the global log of `store` from `from` (inclusive): first the events already stored,
/// then each new one as it is committed.
///
/// The subscription pulls pages with [`EventStore::read_all`] and sleeps on the store's
/// [commit signal](EventStore::watch_commits) when it has caught up, so it:
///
/// - **never skips**: it only ever asks the store for what follows the last position it saw,
///   and the store's read contract forbids events appearing behind that;
/// - **never repeats**: each page starts after the previous one's last event;
/// - **never blocks writers**: a slow subscriber only reads later; nothing queues up for it.
///
/// The filter is applied here, after reading, so a subscription to a rare category still moves
/// its read position past the events it skips. The stream ends after the first error (yielded);
/// resume from the last position you processed, [`next`](Position::next).
///
/// ```
/// use annals::{subscribe_all, EventData, EventStore, ExpectedVersion, Filter, InMemoryStore, Position, StreamId};
/// use futures::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> annals::Result<()> {
/// let store = InMemoryStore::new();
/// let mut live = subscribe_all(store.clone(), Position::START, Filter::all().category("account"));
/// let stream = StreamId::new("account-1")?;
/// store.append(&stream, ExpectedVersion::NoStream, vec![EventData::json("Opened", &())?]).await?;
/// let event = live.next().await.expect("an event")?;
/// assert_eq!(event.event_type, "Opened");
/// # Ok(())
/// # }
/// ```
pub fn subscribe_all<S>(
    store: S,
    from: Position,
    filter: Filter,
) -> BoxStream<'static, Result<RecordedEvent>>
where
    S: EventStore + 'static,
{
    let watch = store.watch_commits();
    let state = State {
        store,
        next: from,
        filter,
        watch,
        buffer: VecDeque::new(),
        caught_up: false,
        failed: false,
    };
    stream::unfold(state, |mut state| async move {
        loop {
            if state.failed {
                return None;
            }
            if let Some(event) = state.buffer.pop_front() {
                return Some((Ok(event), state));
            }
            if state.caught_up {
                if state.watch.changed().await.is_err() {
                    return None;
                }
                state.caught_up = false;
            }
            // Marking before reading: a commit that lands while we read still wakes us.
            state.watch.mark_seen();
            let mut page = state.store.read_all(ReadAll::from(state.next).limit(PAGE));
            let mut read = 0;
            while let Some(item) = page.next().await {
                match item {
                    Ok(event) => {
                        read += 1;
                        state.next = event.position.next();
                        if state.filter.matches(&event) {
                            state.buffer.push_back(event);
                        }
                    }
                    Err(error) => {
                        state.failed = true;
                        return Some((Err(error), state));
                    }
                }
            }
            state.caught_up = read < PAGE;
        }
    })
    .boxed()
}

struct State<S> {
    store: S,
    next: Position,
    filter: Filter,
    watch: CommitWatch,
    buffer: VecDeque<RecordedEvent>,
    caught_up: bool,
    failed: bool,
}
