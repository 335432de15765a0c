use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::stream::{BoxStream, Stream};
use futures::StreamExt;
use tracing::field::{display, Empty};
use tracing::{Instrument, Span};

use crate::{AppendResult, Result, StreamId};

fn micros(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Runs an append inside the `append` span every store uses: fields `store`, `stream`, `count`
/// (events in the batch), and once it is done `version` and `position` (of the last event) and
/// `duration_us`.
pub async fn instrument_append<F>(
    store: &'static str,
    stream: &StreamId,
    count: usize,
    append: F,
) -> Result<AppendResult>
where
    F: Future<Output = Result<AppendResult>>,
{
    let span = tracing::debug_span!(
        "append",
        store,
        stream = %stream,
        count,
        version = Empty,
        position = Empty,
        duration_us = Empty,
    );
    let started = Instant::now();
    let result = append.instrument(span.clone()).await;
    span.record("duration_us", micros(started));
    if let Ok(result) = &result {
        span.record("version", result.last_version.get());
        span.record("position", display(result.last_position));
    }
    result
}

/// Wraps a read in the span every store uses, named `op` (`read_stream`, `read_all`): fields
/// `store`, `stream` (for a stream read), `from`, and once the read ends or is dropped `count`
/// (items yielded) and `duration_us`.
///
/// The span covers the whole read: it is entered around every poll of `read`, so the queries
/// and page reads inside it are measured and nested under it.
pub fn instrument_read<T: Send + 'static>(
    store: &'static str,
    op: &'static str,
    stream: Option<&StreamId>,
    from: impl fmt::Display,
    read: BoxStream<'static, Result<T>>,
) -> BoxStream<'static, Result<T>> {
    let span = match op {
        "read_stream" => tracing::debug_span!(
            "read_stream",
            store,
            stream = stream.map(display),
            from = %from,
            count = Empty,
            duration_us = Empty,
        ),
        _ => tracing::debug_span!(
            "read_all",
            store,
            from = %from,
            count = Empty,
            duration_us = Empty,
        ),
    };
    ReadSpan {
        read,
        span,
        started: Instant::now(),
        count: 0,
        finished: false,
    }
    .boxed()
}

struct ReadSpan<T> {
    read: BoxStream<'static, Result<T>>,
    span: Span,
    started: Instant,
    count: u64,
    finished: bool,
}

impl<T> ReadSpan<T> {
    fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.span.record("count", self.count);
            self.span.record("duration_us", micros(self.started));
        }
    }
}

impl<T> Stream for ReadSpan<T> {
    type Item = Result<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // Entering a span no subscriber wants still costs a little on every item.
        let polled = if this.span.is_disabled() {
            this.read.poll_next_unpin(cx)
        } else {
            let _entered = this.span.enter();
            this.read.poll_next_unpin(cx)
        };
        match &polled {
            Poll::Ready(Some(Ok(_))) => this.count += 1,
            Poll::Ready(None) => this.finish(),
            _ => {}
        }
        polled
    }
}

impl<T> Drop for ReadSpan<T> {
    fn drop(&mut self) {
        self.finish();
    }
}
