use std::future::Future;

use futures::stream::{self, BoxStream};
use futures::StreamExt;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::{Error, Result};

/// One page of a [`paged`] read: its items and where the next page starts.
#[derive(Debug)]
pub struct Page<T, C> {
    /// The page's items, in reading order. The read ends after the first `Err` (so a store can
    /// hand out the good records before a damaged one).
    pub items: Vec<Result<T>>,
    /// Where the next page starts, or `None` when this page is the last.
    pub next: Option<C>,
}

impl<T, C> Page<T, C> {
    /// The last page: `items`, then nothing.
    pub fn last(items: Vec<Result<T>>) -> Self {
        Page { items, next: None }
    }
}

/// A read of many pages as one stream: `fetch(cursor)` reads the page at `cursor` (a query, a
/// blocking read moved to the blocking pool…), and the stream yields its items, then fetches
/// the page at [`Page::next`], until a page has no next cursor or an item is an error.
///
/// Pages are fetched only when the reader has used up the previous one, so a reader that stops
/// early costs no further page, and memory holds one page.
///
/// ```
/// use annals::store::kit::{paged, Page};
/// use futures::TryStreamExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> annals::Result<()> {
/// // Numbers 0..10 in pages of 4.
/// let numbers = paged(Some(0u32), |from| async move {
///     let items = (from..10.min(from + 4)).map(Ok).collect();
///     Ok(Page { items, next: Some(from + 4).filter(|&n| n < 10) })
/// });
/// assert_eq!(numbers.try_collect::<Vec<_>>().await?, (0..10).collect::<Vec<_>>());
/// # Ok(())
/// # }
/// ```
pub fn paged<T, C, F, Fut>(first: Option<C>, mut fetch: F) -> BoxStream<'static, Result<T>>
where
    T: Send + 'static,
    C: Send + 'static,
    F: FnMut(C) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Page<T, C>>> + Send + 'static,
{
    stream::unfold(first, move |cursor| {
        let fetch = cursor.map(&mut fetch);
        async move {
            let (items, next) = settle(fetch?.await);
            Some((stream::iter(items), next))
        }
    })
    .flatten()
    .boxed()
}

/// A fetched page's items and next cursor, ending at its first error (nothing after it, even
/// from the same page); a failed fetch is one error and the end.
fn settle<T, C>(fetched: Result<Page<T, C>>) -> (Vec<Result<T>>, Option<C>) {
    match fetched {
        Ok(mut page) => {
            if let Some(failed) = page.items.iter().position(Result::is_err) {
                page.items.truncate(failed + 1);
                page.next = None;
            }
            (page.items, page.next)
        }
        Err(error) => (vec![Err(error)], None),
    }
}

/// [`paged`] with read-ahead: as soon as a page arrives and has a next cursor, the fetch of the
/// next page starts on a task of its own (`tokio::spawn`, so the query runs while the reader
/// consumes the page), and the stream hands out the page's items.
///
/// The order of items and the cursors are those of [`paged`]: the next page's cursor comes from
/// the page just fetched, before any of its items is handed out, and the read ends at the first
/// error. Memory holds at most two pages: the one being consumed and the one fetched ahead
/// (the page after that is fetched only when the reader reaches the one ahead). A reader that
/// drops the stream aborts the fetch ahead; its result, if it already came, is dropped unread.
/// The fetch ahead runs in the span current when its page's predecessor arrived.
///
/// Call it where a Tokio runtime runs the stream (the first page is fetched on the reader's
/// task, the later ones spawned).
///
/// ```
/// use annals::store::kit::{paged_ahead, Page};
/// use futures::TryStreamExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> annals::Result<()> {
/// let numbers = paged_ahead(Some(0u32), |from| async move {
///     let items = (from..10.min(from + 4)).map(Ok).collect();
///     Ok(Page { items, next: Some(from + 4).filter(|&n| n < 10) })
/// });
/// assert_eq!(numbers.try_collect::<Vec<_>>().await?, (0..10).collect::<Vec<_>>());
/// # Ok(())
/// # }
/// ```
pub fn paged_ahead<T, C, F, Fut>(first: Option<C>, fetch: F) -> BoxStream<'static, Result<T>>
where
    T: Send + 'static,
    C: Send + 'static,
    F: FnMut(C) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Page<T, C>>> + Send + 'static,
{
    let first = first.map(Ahead::Inline);
    stream::unfold((fetch, first), |(mut fetch, ahead)| async move {
        let fetched = match ahead? {
            Ahead::Inline(cursor) => fetch(cursor).await,
            Ahead::Spawned(mut task) => match (&mut task.0).await {
                Ok(fetched) => fetched,
                Err(failed) if failed.is_panic() => std::panic::resume_unwind(failed.into_panic()),
                Err(failed) => Err(Error::backend("read-ahead", failed)),
            },
        };
        let (items, next) = settle(fetched);
        // The next page's query starts now and runs while this page is handed out.
        let ahead = next.map(|cursor| {
            let query = fetch(cursor).instrument(tracing::Span::current());
            Ahead::Spawned(AbortOnDrop(tokio::spawn(query)))
        });
        Some((stream::iter(items), (fetch, ahead)))
    })
    .flatten()
    .boxed()
}

/// The page a [`paged_ahead`] read reads next: the first, fetched on the reader's task, or a
/// later one, already being fetched.
enum Ahead<T, C> {
    Inline(C),
    Spawned(AbortOnDrop<Result<Page<T, C>>>),
}

/// A spawned fetch, aborted when nobody waits for it any more.
struct AbortOnDrop<R>(JoinHandle<R>);

impl<R> Drop for AbortOnDrop<R> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::Error;

    #[tokio::test]
    async fn the_read_ends_at_the_first_error_after_the_good_items_before_it() {
        let items: Vec<Result<u32>> = paged(Some(0u32), |page| async move {
            Ok(match page {
                0 => Page {
                    items: vec![Ok(1), Ok(2)],
                    next: Some(1),
                },
                _ => Page {
                    items: vec![Ok(3), Err(Error::Closed), Ok(4)],
                    next: Some(2),
                },
            })
        })
        .collect()
        .await;
        assert_eq!(items.len(), 4);
        assert!(matches!(items[3], Err(Error::Closed)));
    }

    #[tokio::test]
    async fn read_ahead_ends_at_the_first_error_like_paged() {
        let items: Vec<Result<u32>> = paged_ahead(Some(0u32), |page| async move {
            match page {
                0 => Ok(Page {
                    items: vec![Ok(1), Ok(2)],
                    next: Some(1),
                }),
                1 => Ok(Page {
                    items: vec![Ok(3), Err(Error::Closed), Ok(4)],
                    next: Some(2),
                }),
                _ => panic!("no page after the error"),
            }
        })
        .collect()
        .await;
        assert_eq!(items.len(), 4);
        assert!(matches!(items[3], Err(Error::Closed)));

        let failed: Vec<Result<u32>> = paged_ahead(Some(0u32), |page| async move {
            match page {
                0 => Ok(Page {
                    items: vec![Ok(1)],
                    next: Some(1),
                }),
                _ => Err(Error::Closed),
            }
        })
        .collect()
        .await;
        assert_eq!(failed.len(), 2);
        assert!(matches!(failed[1], Err(Error::Closed)));
    }

    #[tokio::test]
    async fn read_ahead_fetches_one_page_ahead_at_most_and_stops_with_the_reader() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::Arc;

        let started = Arc::new(AtomicU32::new(0));
        let finished = Arc::new(AtomicU32::new(0));
        let (s, f) = (started.clone(), finished.clone());
        let mut read = paged_ahead(Some(0u32), move |page| {
            let (s, f) = (s.clone(), f.clone());
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                if page >= 2 {
                    // A slow page: the reader is gone before it comes.
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                }
                f.fetch_add(1, Ordering::SeqCst);
                Ok(Page {
                    items: vec![Ok(page * 10), Ok(page * 10 + 1)],
                    next: Some(page + 1),
                })
            }
        });
        assert_eq!(read.next().await.unwrap().unwrap(), 0);
        // Page 1 is being fetched while page 0 is handed out; nothing further.
        tokio::task::yield_now().await;
        assert_eq!(started.load(Ordering::SeqCst), 2);
        assert_eq!(read.next().await.unwrap().unwrap(), 1);
        assert_eq!(read.next().await.unwrap().unwrap(), 10);
        tokio::task::yield_now().await;
        assert_eq!(started.load(Ordering::SeqCst), 3);
        drop(read);
        for _ in 0..100 {
            if Arc::strong_count(&started) == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        // The fetch of page 2 was aborted: it never finished, and holds nothing.
        assert_eq!(finished.load(Ordering::SeqCst), 2);
        assert_eq!(Arc::strong_count(&started), 1);
    }
}
