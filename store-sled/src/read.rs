//! Reads. They run beside the writer (sled is concurrent) in the caller's task, a page at a time:
//! each poll does at most [`PAGE`] records of in-memory (or page-cache) sled work, so a long
//! read never holds an async worker for long, and no read holds more than a page in memory.
//!
//! Every read sees only positions up to the `visible` mark taken when it starts: flushed events
//! under `Durability::Flush`, so nothing a reader saw can vanish in a crash.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use annals::{
    category_of, Direction, Error, Position, ReadAll, ReadStream, RecordedEvent, Result, StreamId,
    StreamInfo, Version,
};
use futures::stream::{self, BoxStream};
use futures::StreamExt;

use crate::format::{self, Head, HEAD};
use crate::overlay::Overlay;
use crate::recover;
use crate::sled_error;
use crate::writer::read_head;

/// Events read per poll.
const PAGE: u64 = 256;

/// The stream's head as readers may see it: the last version at or below `visible`.
pub(crate) fn head_at(
    tree: &sled::Tree,
    overlay: &Overlay,
    stream: &StreamId,
    visible: u64,
) -> Result<Option<Head>> {
    // The overlay first: a commit leaves it only after its index entries reached sled.
    if let Some(head) = overlay.head(stream, visible) {
        return Ok(Some(head));
    }
    let Some(head) = read_head(tree, stream)? else {
        return Ok(None);
    };
    if head.last_position <= visible {
        return Ok(Some(head));
    }
    // Indexed after this reader's mark was taken (a rare, short window): step back.
    recover::last_indexed_at_or_before(tree, stream.as_str(), visible)
}

fn missing(stream: &StreamId, version: u64) -> Error {
    Error::corrupt(
        Some(stream.clone()),
        Some(Version::new(version)),
        None,
        "the record is missing although the stream's head is past it",
    )
}

/// Where the commits holding a stream's versions `lo..=hi` are: first version → (first
/// position, count). Unindexed commits come from the overlay, taken BEFORE sled is read, so a
/// commit indexed meanwhile is found in sled.
fn places(
    tree: &sled::Tree,
    overlay: &Overlay,
    stream: &StreamId,
    lo: u64,
    hi: u64,
) -> Result<BTreeMap<u64, (u64, u64)>> {
    let unindexed = overlay.stream_commits(stream, lo, hi);
    let mut places = BTreeMap::new();
    let id = stream.as_str();
    let mut add = |item: sled::Result<(sled::IVec, sled::IVec)>| -> Result<()> {
        let (key, value) = item.map_err(sled_error)?;
        let (_, version) = format::parse_stream_key(&key).map_err(|reason| {
            Error::corrupt(
                Some(stream.clone()),
                None,
                None,
                format!("stream index: {reason}"),
            )
        })?;
        let place = format::decode_stream_index(&key, &value).map_err(|reason| {
            Error::corrupt(
                Some(stream.clone()),
                Some(Version::new(version)),
                None,
                format!("stream index: {reason}"),
            )
        })?;
        places.insert(version, place);
        Ok(())
    };
    if let Some(item) = tree
        .range(format::stream_key(id, 0)..=format::stream_key(id, lo))
        .next_back()
    {
        add(item)?;
    }
    if lo < hi {
        for item in tree.range(format::stream_key(id, lo + 1)..=format::stream_key(id, hi)) {
            add(item)?;
        }
    }
    for commit in unindexed {
        places.insert(commit.first_version, (commit.first, commit.count()));
    }
    Ok(places)
}

struct StreamCursor {
    tree: sled::Tree,
    overlay: Arc<Overlay>,
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
                let head = head_at(&self.tree, &self.overlay, &self.stream, self.visible)?;
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
        // Mark the page done first: an error below ends the read.
        if (forward && hi >= last) || (!forward && lo <= last) {
            self.done = true;
        } else {
            self.range = Some(if forward {
                (hi + 1, last)
            } else {
                (lo - 1, last)
            });
        }
        let places = places(&self.tree, &self.overlay, &self.stream, lo, hi)?;
        let mut v = if forward { lo } else { hi };
        while (forward && v <= hi) || (!forward && v >= lo) {
            let Some((&fv, &(fp, count))) = places.range(..=v).next_back() else {
                return Err(missing(&self.stream, v));
            };
            if v > fv + count - 1 {
                return Err(missing(&self.stream, v));
            }
            let p = fp + (v - fv);
            let at = Some(Position::sequence(p));
            let corrupt = |reason: String| {
                Error::corrupt(Some(self.stream.clone()), Some(Version::new(v)), at, reason)
            };
            let (key, value) = format::commit_at(&self.tree, p)
                .map_err(sled_error)?
                .ok_or_else(|| {
                    corrupt("the stream index points to a commit record that does not exist".into())
                })?;
            let commit = format::parse_commit(&key, &value).map_err(corrupt)?;
            // The commit's own versions, as they map onto the run (fv, fp, count).
            let cfv = commit.first_version;
            let consistent = commit.stream == self.stream.as_str()
                && commit.first.checked_sub(fp).map(|d| fv + d) == Some(cfv);
            if !consistent {
                return Err(corrupt(format!(
                    "the stream index points to a commit of `{}` version {}",
                    commit.stream, commit.first_version
                )));
            }
            // The part of this commit inside both the run and the page.
            let c_last = cfv + commit.count() - 1;
            let (a, b) = (cfv.max(lo), c_last.min(fv + count - 1).min(hi));
            if forward {
                for x in v..=b {
                    let event = commit.event(&self.stream, (x - cfv) as usize)?;
                    self.buffer.push_back(event);
                }
                v = b + 1;
            } else {
                for x in (a..=v).rev() {
                    let event = commit.event(&self.stream, (x - cfv) as usize)?;
                    self.buffer.push_back(event);
                }
                if a == 0 {
                    break;
                }
                v = a - 1;
            }
        }
        Ok(())
    }
}

/// Reads one stream.
pub(crate) fn stream(
    tree: sled::Tree,
    overlay: Arc<Overlay>,
    stream_id: StreamId,
    options: ReadStream,
    visible: u64,
) -> BoxStream<'static, Result<RecordedEvent>> {
    let cursor = StreamCursor {
        tree,
        overlay,
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
        // The commit holding `next` starts at or before it.
        let from = match self
            .tree
            .range(format::commit_key(0, 0)..=format::commit_key(self.next, u64::MAX))
            .next_back()
        {
            Some(item) => item.map_err(sled_error)?.0.to_vec(),
            None => format::commit_key(self.next, 0).to_vec(),
        };
        let filter = &self.options.filter;
        for item in self
            .tree
            .range(from..=format::commit_key(hi, u64::MAX).to_vec())
        {
            let (key, value) = item.map_err(sled_error)?;
            let (first, last) = format::parse_commit_key(&key)
                .ok_or_else(|| Error::corrupt(None, None, None, "malformed commit key"))?;
            if last < self.next {
                continue;
            }
            if first > self.next {
                return Err(gap(self.next, first));
            }
            let at = Some(Position::sequence(first));
            let commit = format::parse_commit(&key, &value).map_err(|reason| {
                Error::corrupt(None, None, at, format!("commit record: {reason}"))
            })?;
            let skip = !filter.categories.is_empty()
                && !filter
                    .categories
                    .iter()
                    .any(|c| c == category_of(commit.stream));
            if !skip {
                let stream_id = match &self.last_stream {
                    Some(s) if s.as_str() == commit.stream => s.clone(),
                    _ => {
                        let s = StreamId::new(commit.stream).map_err(|e| {
                            Error::corrupt(None, None, at, format!("commit record: {e}"))
                        })?;
                        self.last_stream = Some(s.clone());
                        s
                    }
                };
                for i in (self.next - first)..commit.count() {
                    let event = commit.event(&stream_id, i as usize)?;
                    self.next = first + i + 1;
                    if filter.matches(&event) {
                        self.buffer.push_back(event);
                        self.remaining -= 1;
                        if self.remaining == 0 {
                            self.done = true;
                            return Ok(());
                        }
                    }
                }
            }
            self.next = last + 1;
        }
        if self.next <= hi {
            return Err(gap(self.next, hi + 1));
        }
        if self.next > self.visible {
            self.done = true;
        }
        Ok(())
    }
}

fn gap(from: u64, to: u64) -> Error {
    Error::corrupt(
        None,
        None,
        Some(Position::sequence(from)),
        format!(
            "the global log has no record of positions {from} to {}",
            to - 1
        ),
    )
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
    overlay: Arc<Overlay>,
    /// Whether the overlay was indexed yet (the first page does it).
    caught_up: bool,
    visible: u64,
    after: Option<sled::IVec>,
    done: bool,
    buffer: VecDeque<StreamInfo>,
}

impl HeadCursor {
    fn fill(&mut self) -> Result<()> {
        if !self.caught_up {
            // Streams are listed from their heads: index what is visible first.
            self.overlay.index(&self.tree, self.visible)?;
            self.caught_up = true;
        }
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
            if let Some(head) = head_at(&self.tree, &self.overlay, &stream, self.visible)? {
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
pub(crate) fn streams(
    tree: sled::Tree,
    overlay: Arc<Overlay>,
    visible: u64,
) -> BoxStream<'static, Result<StreamInfo>> {
    let cursor = HeadCursor {
        tree,
        overlay,
        caught_up: false,
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
