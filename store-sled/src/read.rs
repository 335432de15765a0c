//! Reads. They run beside the writer (sled is concurrent), a page of at most [`PAGE`] records at
//! a time ([`annals::store::kit::paged`]): a reader that stops early costs no further page, and
//! no read holds more than a page in memory.
//!
//! Sled page reads are blocking (file I/O when the page cache misses), so no page is read on an
//! async worker: on a multi-thread runtime inside `block_in_place` (the worker's other tasks
//! move to another thread meanwhile), on a current-thread runtime on the blocking pool, so a
//! long read never stops the runtime's other tasks (see [`off_worker`]). What decides whether
//! there is a page to read at all — the stream's head, the visibility mark — runs in place, as
//! [`stream_version`](annals::EventStore::stream_version) does, so a caught-up reader (a
//! repository catching up a cached aggregate, a subscription woken by a commit it has seen)
//! costs no hand-off.
//!
//! Every read sees only positions up to the `visible` mark taken when it starts: flushed events
//! under `Durability::Flush`, so nothing a reader saw can vanish in a crash.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use annals::store::kit::{paged, Page};
use annals::{
    category_of, Direction, Error, Position, ReadAll, ReadStream, RecordPlace, RecordedEvent,
    Result, StreamId, StreamInfo, Version,
};
use futures::stream::BoxStream;

use crate::error::{corrupt_somewhere, damaged_files, guarded, panic_message, sled_error};
use crate::format::{self, Head, StreamRun, HEAD};
use crate::log::{Log, LogReader};
use crate::lookup::read_head;
use crate::overlay::Overlay;
use crate::recover;

/// Records read per page.
const PAGE: u64 = 256;

/// A read's position between pages.
trait Pages: Sized + Send + 'static {
    /// What the read yields.
    type Item: Send + 'static;

    /// Whether another page is to be read, found without a page read (in memory, or with at
    /// most the point lookup [`stream_version`](annals::EventStore::stream_version) makes too):
    /// run in place, so a read with nothing to read (a caught-up reader) costs no hand-off.
    fn more(&mut self) -> Result<bool> {
        Ok(true)
    }

    /// Adds the next page's items to `out` (sled page reads, run off the async workers);
    /// returns whether the read is over.
    fn fill(&mut self, out: &mut Vec<Result<Self::Item>>) -> Result<bool>;

    /// Reads the next page: its items (the good ones, then the error if the page failed), and
    /// the cursor unless the read is over.
    fn page(mut self) -> Page<Self::Item, Self> {
        let mut items = Vec::new();
        match self.fill(&mut items) {
            Ok(done) => Page {
                items,
                next: (!done).then_some(self),
            },
            Err(error) => {
                items.push(Err(error));
                Page::last(items)
            }
        }
    }
}

/// A read of `cursor`'s pages as one stream, each page read off the async workers.
fn read_pages<C: Pages>(cursor: C) -> BoxStream<'static, Result<C::Item>> {
    paged(Some(cursor), |mut cursor: C| {
        // Taken when the page is asked for, inside the read's span, so the page's sled work is
        // measured under it wherever it runs.
        let span = tracing::Span::current();
        async move {
            if !guarded(|| cursor.more())? {
                return Ok(Page::last(Vec::new()));
            }
            off_worker(move || {
                span.in_scope(|| {
                    // Sled panics on some damaged files: that ends the read as corruption.
                    std::panic::catch_unwind(AssertUnwindSafe(|| cursor.page())).unwrap_or_else(
                        |panic| {
                            let reason = panic_message(&*panic);
                            Page::last(vec![Err(damaged_files(None, &reason))])
                        },
                    )
                })
            })
            .await
        }
    })
}

/// Runs `work` (blocking sled reads) where it holds no async worker (see
/// [`off_worker`](annals::store::kit::off_worker)).
async fn off_worker<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    annals::store::kit::off_worker("sled", work).await
}

// ---------------------------------------------------------------------------------------------
// One stream

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
    recover::last_indexed_at_or_before(tree, overlay.log(), stream.as_str(), visible)
}

fn missing(stream: &StreamId, version: u64) -> Error {
    Error::corrupt(
        RecordPlace::new()
            .stream(stream.clone())
            .version(Version::new(version)),
        "the record is missing although the stream's head is past it",
    )
}

/// Where a stream's versions `lo..=hi` are: first version → the run of positions holding it and
/// the versions after it. Unindexed commits come from the overlay, taken BEFORE sled is read, so
/// a commit indexed meanwhile is found in sled.
fn places(
    tree: &sled::Tree,
    overlay: &Overlay,
    stream: &StreamId,
    lo: u64,
    hi: u64,
) -> Result<BTreeMap<u64, StreamRun>> {
    let unindexed = overlay.stream_commits(stream, lo, hi);
    let mut places = BTreeMap::new();
    let id = stream.as_str();
    let mut add = |item: sled::Result<(sled::IVec, sled::IVec)>| -> Result<()> {
        let (key, value) = item.map_err(sled_error)?;
        let at = RecordPlace::new().stream(stream.clone());
        let (_, version) = format::parse_stream_key(&key)
            .map_err(|reason| Error::corrupt(at.clone(), format!("stream index: {reason}")))?;
        let place = format::decode_stream_index(&key, &value).map_err(|reason| {
            Error::corrupt(
                at.version(Version::new(version)),
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
        let run = StreamRun::consecutive(commit.first, commit.count());
        places.insert(commit.first_version, run);
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
}

impl Pages for StreamCursor {
    type Item = RecordedEvent;

    fn more(&mut self) -> Result<bool> {
        if self.range.is_none() {
            self.range = self.plan()?;
        }
        Ok(self.range.is_some())
    }

    /// Adds the next page's events to `out`; returns whether the read is over.
    fn fill(&mut self, out: &mut Vec<Result<RecordedEvent>>) -> Result<bool> {
        // Planned by `more`, which found something to read.
        let Some((next, last)) = self.range else {
            return Ok(true);
        };
        let forward = self.options.direction == Direction::Forward;
        let (lo, hi) = if forward {
            (next, last.min(next.saturating_add(PAGE - 1)))
        } else {
            (next.saturating_sub(PAGE - 1).max(last), next)
        };
        // Mark the page done first: an error below ends the read.
        let done = (forward && hi >= last) || (!forward && lo <= last);
        if !done {
            self.range = Some(if forward {
                (hi + 1, last)
            } else {
                (lo - 1, last)
            });
        }
        let places = places(&self.tree, &self.overlay, &self.stream, lo, hi)?;
        let mut v = if forward { lo } else { hi };
        while (forward && v <= hi) || (!forward && v >= lo) {
            match self.read_run(&places, v, lo, hi, forward, out)? {
                Some(next) => v = next,
                None => break,
            }
        }
        Ok(done)
    }
}

impl StreamCursor {
    /// Where the read goes: the first and last versions in reading order, `None` when there is
    /// nothing to read.
    fn plan(&self) -> Result<Option<(u64, u64)>> {
        let head = head_at(&self.tree, &self.overlay, &self.stream, self.visible)?;
        let head = Version::new(head.map_or(0, |h| h.version));
        Ok(self
            .options
            .range(head)
            .map(|(first, last)| (first.get(), last.get())))
    }

    /// Reads the events of the commit record holding version `v` that lie in the page
    /// `lo..=hi` and in `v`'s run into `out`, from `v` on in reading order. Returns the next
    /// version to read (`None` when a backward read passed version 0).
    fn read_run(
        &self,
        places: &BTreeMap<u64, StreamRun>,
        v: u64,
        lo: u64,
        hi: u64,
        forward: bool,
        out: &mut Vec<Result<RecordedEvent>>,
    ) -> Result<Option<u64>> {
        let Some((&fv, run)) = places.range(..=v).next_back() else {
            return Err(missing(&self.stream, v));
        };
        let run_last = fv + run.count - 1;
        if v > run_last {
            return Err(missing(&self.stream, v));
        }
        let corrupt = |x: u64, p: u64, reason: String| {
            Error::corrupt(
                RecordPlace::new()
                    .stream(self.stream.clone())
                    .version(Version::new(x))
                    .position(Position::sequence(p)),
                reason,
            )
        };
        let p = run.position(v - fv);
        let record = self.overlay.commit_at(&self.tree, p)?.ok_or_else(|| {
            corrupt(
                v,
                p,
                "the stream index points to a commit record that does not exist".into(),
            )
        })?;
        let key = record.key;
        let commit =
            format::parse_commit(&key, &record.value).map_err(|reason| corrupt(v, p, reason))?;
        // The versions of the run and the page this record holds, from `v` on.
        let (stop_lo, stop_hi) = (lo.max(fv), hi.min(run_last));
        let mut x = v;
        loop {
            let q = run.position(x - fv);
            if q < commit.first || q > commit.last() {
                return Ok(Some(x)); // in the next record
            }
            let i = q - commit.first;
            if commit.stream(i) != self.stream.as_str() || commit.version(i) != x {
                return Err(corrupt(
                    x,
                    q,
                    format!(
                        "the stream index points to `{}` version {}",
                        commit.stream(i),
                        commit.version(i)
                    ),
                ));
            }
            out.push(Ok(commit.event(&self.stream, i)?));
            if forward {
                if x >= stop_hi {
                    return Ok(Some(x + 1));
                }
                x += 1;
            } else {
                if x <= stop_lo {
                    return Ok(x.checked_sub(1));
                }
                x -= 1;
            }
        }
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
    };
    read_pages(cursor)
}

// ---------------------------------------------------------------------------------------------
// The global log

struct LogCursor {
    tree: sled::Tree,
    overlay: Arc<Overlay>,
    log: Arc<Log>,
    options: ReadAll,
    visible: u64,
    next: u64,
    remaining: usize,
    last_stream: Option<StreamId>,
    /// The sequential reader of the log's segment files, from the second page on.
    reader: Option<LogReader<Arc<Log>>>,
}

impl Pages for LogCursor {
    type Item = RecordedEvent;

    fn more(&mut self) -> Result<bool> {
        Ok(self.remaining > 0 && self.next <= self.visible)
    }

    /// Adds the next page's events (those the filter keeps) to `out`; returns whether the read
    /// is over. The log is read from its segment files in order, with a bounded buffer: sled is
    /// consulted once, for the locator of the record holding the read's first position.
    fn fill(&mut self, out: &mut Vec<Result<RecordedEvent>>) -> Result<bool> {
        let hi = self.visible.min(self.next.saturating_add(PAGE - 1));
        if self.next > hi || self.remaining == 0 {
            return Ok(true);
        }
        let dir = self.log.dir().to_path_buf();
        self.log.ensure_written(hi)?;
        let mut reader = match self.reader.take() {
            Some(reader) => reader,
            None => {
                let Some((first, _, loc)) = self.overlay.locate(&self.tree, self.next)? else {
                    return Err(gap(self.next, hi + 1));
                };
                LogReader::at(self.log.clone(), loc, first).map_err(|bad| bad.error(&dir))?
            }
        };
        while self.next <= hi {
            let Some(record) = reader.next_record().map_err(|bad| bad.error(&dir))? else {
                return Err(gap(self.next, hi + 1));
            };
            if self.read_commit(&record.key, &record.value, out)? {
                return Ok(true);
            }
        }
        self.reader = Some(reader);
        Ok(self.next > self.visible)
    }
}

impl LogCursor {
    /// Reads the events of one commit record from `next` on into `out`; returns whether the
    /// read's limit is reached.
    fn read_commit(
        &mut self,
        key: &[u8],
        value: &[u8],
        out: &mut Vec<Result<RecordedEvent>>,
    ) -> Result<bool> {
        let (first, last) = format::parse_commit_key(key)
            .ok_or_else(|| corrupt_somewhere("malformed commit key"))?;
        if last < self.next {
            return Ok(false);
        }
        if first > self.next {
            return Err(gap(self.next, first));
        }
        let at = RecordPlace::new().position(Position::sequence(first));
        let commit = format::parse_commit(key, value)
            .map_err(|reason| Error::corrupt(at, format!("commit record: {reason}")))?;
        for i in (self.next - first)..commit.count() {
            let stream = commit.stream(i);
            let categories = &self.options.filter.categories;
            if !categories.is_empty() && !categories.iter().any(|c| c == category_of(stream)) {
                continue;
            }
            let at = RecordPlace::new().position(Position::sequence(first + i));
            let stream_id = self.stream_id(stream, at)?;
            let event = commit.event(&stream_id, i)?;
            self.next = first + i + 1;
            if self.options.filter.matches(&event) {
                out.push(Ok(event));
                self.remaining -= 1;
                if self.remaining == 0 {
                    return Ok(true);
                }
            }
        }
        self.next = last + 1;
        Ok(false)
    }

    /// The id of the stream a commit record names (the last one again when it repeats).
    fn stream_id(&mut self, stream: &str, at: RecordPlace) -> Result<StreamId> {
        match &self.last_stream {
            Some(s) if s.as_str() == stream => Ok(s.clone()),
            _ => {
                let s = StreamId::new(stream)
                    .map_err(|e| Error::corrupt(at, format!("commit record: {e}")))?;
                self.last_stream = Some(s.clone());
                Ok(s)
            }
        }
    }
}

fn gap(from: u64, to: u64) -> Error {
    Error::corrupt(
        RecordPlace::new().position(Position::sequence(from)),
        format!(
            "the global log has no record of positions {from} to {}",
            to - 1
        ),
    )
}

/// Reads the global log.
pub(crate) fn all(
    tree: sled::Tree,
    overlay: Arc<Overlay>,
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
        log: overlay.log().clone(),
        overlay,
        reader: None,
        remaining: options.limit,
        options,
        visible,
        next,
        last_stream: None,
    };
    read_pages(cursor)
}

// ---------------------------------------------------------------------------------------------
// The streams

struct HeadCursor {
    tree: sled::Tree,
    overlay: Arc<Overlay>,
    /// Whether the overlay was indexed yet (the first page does it).
    caught_up: bool,
    visible: u64,
    after: Option<sled::IVec>,
}

impl Pages for HeadCursor {
    type Item = StreamInfo;

    /// Adds the next page of streams to `out`; returns whether the listing is over.
    fn fill(&mut self, out: &mut Vec<Result<StreamInfo>>) -> Result<bool> {
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
        for item in range.take(PAGE_STREAMS) {
            read += 1;
            let (key, _) = item.map_err(sled_error)?;
            let text = std::str::from_utf8(&key[1..])
                .map_err(|_| corrupt_somewhere("a stream head's id is not UTF-8"))?;
            let stream =
                StreamId::new(text).map_err(|e| corrupt_somewhere(format!("stream head: {e}")))?;
            if let Some(head) = head_at(&self.tree, &self.overlay, &stream, self.visible)? {
                out.push(Ok(StreamInfo::new(
                    stream,
                    Version::new(head.version),
                    Position::sequence(head.last_position),
                    head.last_recorded_at,
                )));
            }
            self.after = Some(key);
        }
        Ok(read < PAGE_STREAMS)
    }
}

/// Streams listed per page.
const PAGE_STREAMS: usize = 256;

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
    };
    read_pages(cursor)
}
