//! Reads. They run beside the writer (sled is concurrent) in the caller's task, a page at a time:
//! each poll does at most [`PAGE`] records of in-memory (or page-cache) sled work, so a long
//! read never holds an async worker for long, and no read holds more than a page in memory.
//!
//! Every read sees only positions up to the `visible` mark taken when it starts: flushed events
//! under `Durability::Flush`, so nothing a reader saw can vanish in a crash.

use std::collections::VecDeque;

use annals::{
    category_of, Direction, Error, Position, ReadAll, ReadStream, RecordedEvent, Result, StreamId,
    StreamInfo, Version,
};
use futures::stream::{self, BoxStream};
use futures::StreamExt;

use crate::format::{self, Head, HEAD};
use crate::sled_error;
use crate::writer::read_head;

/// Records read per poll.
const PAGE: u64 = 256;

/// The stream's head as readers may see it: the last version at or below `visible`.
pub(crate) fn visible_head(
    tree: &sled::Tree,
    stream: &StreamId,
    visible: u64,
) -> Result<Option<Head>> {
    let Some(head) = read_head(tree, stream)? else {
        return Ok(None);
    };
    if head.last_position <= visible {
        return Ok(Some(head));
    }
    // Written but not yet flushed (a rare, short window): step back to the last visible event.
    for version in (1..head.version).rev() {
        let key = format::stream_key(stream.as_str(), version);
        let Some(value) = tree.get(&key).map_err(sled_error)? else {
            return Err(missing(stream, version));
        };
        let (position, recorded_at) = format::record_place(&key, &value).map_err(|reason| {
            Error::corrupt(
                Some(stream.clone()),
                Some(Version::new(version)),
                format::unverified_position(&value),
                reason,
            )
        })?;
        if position <= visible {
            return Ok(Some(Head {
                version,
                last_position: position,
                last_recorded_at: recorded_at,
            }));
        }
    }
    Ok(None)
}

fn missing(stream: &StreamId, version: u64) -> Error {
    Error::corrupt(
        Some(stream.clone()),
        Some(Version::new(version)),
        None,
        "the record is missing although the stream's head is past it",
    )
}

struct StreamCursor {
    tree: sled::Tree,
    stream: StreamId,
    options: ReadStream,
    visible: u64,
    /// The next version to read and the last one (inclusive), in reading order; `None` until
    /// planned.
    range: Option<(u64, u64)>,
    done: bool,
    buffer: VecDeque<RecordedEvent>,
    /// An error met while filling, yielded after the good events before it.
    failed: Option<Error>,
}

impl StreamCursor {
    fn fill(&mut self) -> Result<()> {
        let (next, last) = match self.range {
            Some(range) => range,
            None => {
                let head = visible_head(&self.tree, &self.stream, self.visible)?;
                let head = Version::new(head.map_or(0, |h| h.version));
                match self.options.range(head) {
                    Some((first, last)) => (first.get(), last.get()),
                    None => {
                        self.done = true;
                        return Ok(());
                    }
                }
            }
        };
        let forward = self.options.direction == Direction::Forward;
        let (lo, hi) = if forward {
            (next, last.min(next.saturating_add(PAGE - 1)))
        } else {
            (next.saturating_sub(PAGE - 1).max(last), next)
        };
        let id = self.stream.as_str();
        let range = self
            .tree
            .range(format::stream_key(id, lo)..=format::stream_key(id, hi));
        let mut expect = if forward { lo } else { hi };
        let mut push = |item: sled::Result<(sled::IVec, sled::IVec)>| -> Result<()> {
            let (key, value) = item.map_err(sled_error)?;
            let version = format::parse_stream_key(&key).map_or(0, |(_, v)| v);
            if version != expect {
                return Err(missing(&self.stream, expect));
            }
            self.buffer
                .push_back(format::decode_record(&self.stream, version, &key, &value)?);
            expect = if forward { expect + 1 } else { expect - 1 };
            Ok(())
        };
        if forward {
            range.into_iter().try_for_each(&mut push)?;
        } else {
            range.rev().try_for_each(&mut push)?;
        }
        let read = self.buffer.len() as u64;
        if read != hi - lo + 1 {
            return Err(missing(&self.stream, expect));
        }
        if (forward && hi >= last) || (!forward && lo <= last) {
            self.done = true;
        } else {
            self.range = Some(if forward {
                (hi + 1, last)
            } else {
                (lo - 1, last)
            });
        }
        Ok(())
    }
}

/// Reads one stream.
pub(crate) fn stream(
    tree: sled::Tree,
    stream_id: StreamId,
    options: ReadStream,
    visible: u64,
) -> BoxStream<'static, Result<RecordedEvent>> {
    let cursor = StreamCursor {
        tree,
        stream: stream_id,
        options,
        visible,
        range: None,
        done: false,
        buffer: VecDeque::new(),
        failed: None,
    };
    stream::unfold(cursor, |mut cursor| async move {
        loop {
            if let Some(event) = cursor.buffer.pop_front() {
                return Some((Ok(event), cursor));
            }
            if let Some(error) = cursor.failed.take() {
                return Some((Err(error), cursor));
            }
            if cursor.done {
                return None;
            }
            let _span =
                tracing::trace_span!("read_stream", store = "sled", stream = %cursor.stream)
                    .entered();
            if let Err(error) = cursor.fill() {
                cursor.done = true;
                cursor.failed = Some(error);
            }
        }
    })
    .boxed()
}

struct LogCursor {
    tree: sled::Tree,
    options: ReadAll,
    visible: u64,
    next: u64,
    remaining: usize,
    last_stream: Option<StreamId>,
    done: bool,
    buffer: VecDeque<RecordedEvent>,
    /// An error met while filling, yielded after the good events before it.
    failed: Option<Error>,
}

impl LogCursor {
    fn fill(&mut self) -> Result<()> {
        let hi = self.visible.min(self.next.saturating_add(PAGE - 1));
        if self.next > hi || self.remaining == 0 {
            self.done = true;
            return Ok(());
        }
        let filter = &self.options.filter;
        for item in self
            .tree
            .range(format::log_key(self.next)..=format::log_key(hi))
        {
            let (key, value) = item.map_err(sled_error)?;
            let position = format::parse_log_key(&key)
                .ok_or_else(|| Error::corrupt(None, None, None, "malformed global log key"))?;
            let at = Some(Position::sequence(position));
            let (stream, version) = format::decode_log(&key, &value)
                .map_err(|reason| Error::corrupt(None, None, at, format!("log entry: {reason}")))?;
            if !filter.categories.is_empty()
                && !filter.categories.iter().any(|c| c == category_of(stream))
            {
                continue;
            }
            let stream_id = match &self.last_stream {
                Some(s) if s.as_str() == stream => s.clone(),
                _ => {
                    let s = StreamId::new(stream).map_err(|e| {
                        Error::corrupt(
                            None,
                            Some(Version::new(version)),
                            at,
                            format!("log entry: {e}"),
                        )
                    })?;
                    self.last_stream = Some(s.clone());
                    s
                }
            };
            let record_key = format::stream_key(stream, version);
            let Some(record) = self.tree.get(&record_key).map_err(sled_error)? else {
                return Err(Error::corrupt(
                    Some(stream_id),
                    Some(Version::new(version)),
                    at,
                    "the global log points to a record that does not exist",
                ));
            };
            let event = format::decode_record(&stream_id, version, &record_key, &record)?;
            if event.position.commit() != position {
                return Err(Error::corrupt(
                    Some(stream_id),
                    Some(Version::new(version)),
                    at,
                    format!(
                        "the global log entry points to a record at position {}",
                        event.position
                    ),
                ));
            }
            if filter.matches(&event) {
                self.buffer.push_back(event);
                self.remaining -= 1;
                if self.remaining == 0 {
                    break;
                }
            }
        }
        self.next = hi + 1;
        if self.next > self.visible || self.remaining == 0 {
            self.done = true;
        }
        Ok(())
    }
}

/// Reads the global log.
pub(crate) fn all(
    tree: sled::Tree,
    options: ReadAll,
    visible: u64,
) -> BoxStream<'static, Result<RecordedEvent>> {
    // Positions are (n, 0): the first at or after `from`.
    let from = options.from;
    let next = if from.prepare() == 0 {
        from.commit()
    } else {
        from.commit().saturating_add(1)
    }
    .max(1);
    let cursor = LogCursor {
        tree,
        remaining: options.limit,
        options,
        visible,
        next,
        last_stream: None,
        done: false,
        buffer: VecDeque::new(),
        failed: None,
    };
    stream::unfold(cursor, |mut cursor| async move {
        loop {
            if let Some(event) = cursor.buffer.pop_front() {
                return Some((Ok(event), cursor));
            }
            if let Some(error) = cursor.failed.take() {
                return Some((Err(error), cursor));
            }
            if cursor.done {
                return None;
            }
            let filled = {
                let _span =
                    tracing::trace_span!("read_all", store = "sled", from = cursor.next).entered();
                cursor.fill()
            };
            if let Err(error) = filled {
                cursor.done = true;
                cursor.failed = Some(error);
                continue;
            }
            if cursor.buffer.is_empty() && !cursor.done {
                // A page the filter emptied: let other tasks run before the next one.
                tokio::task::yield_now().await;
            }
        }
    })
    .boxed()
}

struct HeadCursor {
    tree: sled::Tree,
    visible: u64,
    after: Option<sled::IVec>,
    done: bool,
    buffer: VecDeque<StreamInfo>,
}

impl HeadCursor {
    fn fill(&mut self) -> Result<()> {
        let range = match &self.after {
            None => self.tree.range(vec![HEAD]..vec![HEAD + 1]),
            Some(after) => {
                let mut from = after.to_vec();
                from.push(0);
                self.tree.range(from..vec![HEAD + 1])
            }
        };
        let mut read = 0;
        for item in range.take(PAGE as usize) {
            read += 1;
            let (key, _) = item.map_err(sled_error)?;
            let text = std::str::from_utf8(&key[1..])
                .map_err(|_| Error::corrupt(None, None, None, "a stream head's id is not UTF-8"))?;
            let stream = StreamId::new(text)
                .map_err(|e| Error::corrupt(None, None, None, format!("stream head: {e}")))?;
            if let Some(head) = visible_head(&self.tree, &stream, self.visible)? {
                self.buffer.push_back(StreamInfo {
                    stream_id: stream,
                    version: Version::new(head.version),
                    last_position: Position::sequence(head.last_position),
                    last_recorded_at: head.last_recorded_at,
                });
            }
            self.after = Some(key);
        }
        if read < PAGE {
            self.done = true;
        }
        Ok(())
    }
}

/// Lists the streams, in id order.
pub(crate) fn streams(tree: sled::Tree, visible: u64) -> BoxStream<'static, Result<StreamInfo>> {
    let cursor = HeadCursor {
        tree,
        visible,
        after: None,
        done: false,
        buffer: VecDeque::new(),
    };
    stream::unfold(cursor, |mut cursor| async move {
        loop {
            if let Some(info) = cursor.buffer.pop_front() {
                return Some((Ok(info), cursor));
            }
            if cursor.done {
                return None;
            }
            if let Err(error) = cursor.fill() {
                cursor.done = true;
                return Some((Err(error), cursor));
            }
        }
    })
    .boxed()
}
