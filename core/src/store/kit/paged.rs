use std::future::Future;

use futures::stream::{self, BoxStream};
use futures::StreamExt;

use crate::Result;

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
            match fetch?.await {
                Ok(mut page) => {
                    // Nothing after the first error, even from the same page.
                    if let Some(failed) = page.items.iter().position(Result::is_err) {
                        page.items.truncate(failed + 1);
                        page.next = None;
                    }
                    Some((stream::iter(page.items), page.next))
                }
                Err(error) => Some((stream::iter(vec![Err(error)]), None)),
            }
        }
    })
    .flatten()
    .boxed()
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
}
