//! Reading the log: a frame at a locator, and sequential readers of segments and of the whole log.

use std::fs::File;
use std::io;

use super::*;
use crate::num::u64_from;

impl Log {
    /// A sequential reader from the start of `segment` (its header checked).
    pub(crate) fn reader_at_segment(&self, segment: u64) -> std::result::Result<Frames, Bad> {
        let bad = |reason: String| Bad {
            segment,
            offset: 0,
            position: segment,
            reason,
        };
        let file = self
            .file(segment)
            .ok_or_else(|| bad("the segment file is missing".into()))?;
        let mut frames = Frames::new(file, segment, 0).map_err(|e| bad(e.to_string()))?;
        frames
            .fill(24)
            .map_err(|e| bad(format!("reading the header: {e}")))?;
        let head = frames.slice(0, 24);
        check_header(head, segment).map_err(bad)?;
        frames.offset = HEADER;
        frames.next = segment;
        Ok(frames)
    }

    /// A sequential reader from the frame at `loc`, which holds `position` first.
    pub(crate) fn reader_at(&self, loc: Loc, position: u64) -> std::result::Result<Frames, Bad> {
        let file = self.file(loc.segment).ok_or_else(|| Bad {
            segment: loc.segment,
            offset: loc.offset,
            position,
            reason: "the segment file is missing".into(),
        })?;
        let mut frames = Frames::new(file, loc.segment, loc.offset).map_err(|e| Bad {
            segment: loc.segment,
            offset: loc.offset,
            position,
            reason: e.to_string(),
        })?;
        frames.next = position;
        Ok(frames)
    }

    /// The reader of the segment after `segment`, which ended (sealed at offset `at`) at `last`.
    pub(super) fn next_segment(
        &self,
        segment: u64,
        last: u64,
        at: u64,
    ) -> std::result::Result<Frames, Bad> {
        match self.files_read().range(segment + 1..).next() {
            Some((&first, _)) if first == last + 1 => {}
            found => {
                return Err(Bad {
                    segment,
                    offset: at,
                    position: last + 1,
                    reason: match found {
                        Some((first, _)) => format!(
                            "the segment after it starts at position {first}, its seal says {}",
                            last + 1
                        ),
                        None => format!(
                            "the segment is sealed at position {last} but no segment follows"
                        ),
                    },
                })
            }
        }
        self.reader_at_segment(last + 1)
    }

    /// Reads the commit record whose frame is at `loc` and must hold `first..=last`.
    pub(crate) fn read(&self, loc: Loc, first: u64, last: u64) -> std::result::Result<Record, Bad> {
        let bad = |reason: String| Bad {
            segment: loc.segment,
            offset: loc.offset,
            position: first,
            reason,
        };
        self.ensure_written(last)
            .map_err(|e| bad(format!("writing the log failed: {e}")))?;
        let file = self
            .file(loc.segment)
            .ok_or_else(|| bad("the segment file is missing".into()))?;
        let size = file.metadata().map_or(0, |m| m.len());
        if loc.offset + u64::from(loc.len) > size || u64::from(loc.len) < FRAME_HEAD + 18 {
            return Err(bad(format!(
                "the locator names {} bytes at offset {} of a file of {size}",
                loc.len, loc.offset
            )));
        }
        let mut bytes = vec![0; loc.len as usize];
        read_at(&file, &mut bytes, loc.offset)
            .map_err(|e| bad(format!("the frame does not read back: {e}")))?;
        match parse_frame(&bytes) {
            Ok((len, Parsed::Commit(f, l))) if f == first && l == last && len == bytes.len() => {
                Ok(Record {
                    first,
                    last,
                    loc,
                    key: format::commit_key(first, last),
                    value: bytes[8 + 17..].to_vec(),
                })
            }
            Ok((_, Parsed::Commit(f, l))) => Err(bad(format!(
                "the frame holds positions {f} to {l}, its locator says {first} to {last}"
            ))),
            Ok(_) => Err(bad("the frame there is not a commit record".into())),
            Err(reason) => Err(bad(reason)),
        }
    }
}

/// What a sequential read yields.
pub(crate) enum Item {
    Record(Record),
    /// The segment ended with its seal at position `last`.
    Sealed {
        last: u64,
        /// The seal frame's offset.
        at: u64,
    },
}

/// A sequential reader of one segment's frames, with a bounded buffer.
#[derive(Debug)]
pub(crate) struct Frames {
    file: Arc<File>,
    file_len: u64,
    pub(crate) segment: u64,
    /// The offset of the next frame.
    pub(crate) offset: u64,
    /// The position the next record must start at.
    pub(crate) next: u64,
    buf: Vec<u8>,
    /// The file offset of `buf[0]`.
    buf_at: u64,
    /// Bytes the next read takes at least: small at first (a live reader reads a record or
    /// two), doubling up to [`READ_AHEAD`] as the read goes on.
    ahead: usize,
}

impl Frames {
    fn new(file: Arc<File>, segment: u64, offset: u64) -> io::Result<Frames> {
        let file_len = file.metadata()?.len();
        Ok(Frames {
            file,
            file_len,
            segment,
            offset,
            next: 0,
            buf: Vec::new(),
            buf_at: offset,
            ahead: 8 * 1024,
        })
    }

    fn slice(&self, from: u64, len: usize) -> &[u8] {
        let start = usize::try_from(from - self.buf_at).unwrap_or(usize::MAX);
        &self.buf[start..start + len]
    }

    /// Makes the buffer hold `need` bytes from `offset` (fewer at the end of the file).
    fn fill(&mut self, need: usize) -> io::Result<()> {
        let held_end = self.buf_at + u64_from(self.buf.len());
        if self.offset >= self.buf_at && self.offset + u64_from(need) <= held_end {
            return Ok(());
        }
        let want = u64_from(need.max(self.ahead));
        self.ahead = (self.ahead * 2).min(READ_AHEAD);
        let len = want.min(self.file_len.saturating_sub(self.offset));
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        self.buf.clear();
        self.buf.resize(len, 0);
        read_at(&self.file, &mut self.buf, self.offset)?;
        self.buf_at = self.offset;
        Ok(())
    }

    fn refresh(&mut self) -> std::result::Result<(), Bad> {
        self.file_len = self
            .file
            .metadata()
            .map_err(|e| self.bad(format!("reading the file's size failed: {e}")))?
            .len();
        Ok(())
    }

    pub(super) fn bad(&self, reason: String) -> Bad {
        Bad {
            segment: self.segment,
            offset: self.offset,
            position: self.next,
            reason,
        }
    }

    /// The next frame: a record (its positions continuing the log), a seal, or `None` at the
    /// end of the log.
    pub(crate) fn next_frame(&mut self) -> std::result::Result<Option<Item>, Bad> {
        match self.frame_once() {
            Ok(Some(item)) => Ok(Some(item)),
            _ => {
                // What the buffer holds may have been read ahead before the writer wrote there
                // (the zeros written ahead of frames read as the end, a frame being written as
                // damage): read again from the file before concluding either.
                self.buf.clear();
                self.buf_at = self.offset;
                self.refresh()?;
                self.frame_once()
            }
        }
    }

    fn frame_once(&mut self) -> std::result::Result<Option<Item>, Bad> {
        if self.offset + FRAME_HEAD > self.file_len {
            // The file may have grown since (the writer writes zeros ahead of its frames).
            self.refresh()?;
        }
        if self.offset + FRAME_HEAD > self.file_len {
            return if self.offset == self.file_len {
                Ok(None)
            } else {
                Err(self.bad("the file ends inside a frame head".into()))
            };
        }
        self.fill(8)
            .map_err(|e| self.bad(format!("read failed: {e}")))?;
        let head = self.slice(self.offset, 8);
        let len = u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
        let total = FRAME_HEAD + len;
        if self.offset + total > self.file_len {
            self.refresh()?;
        }
        if self.offset + total > self.file_len {
            return Err(self.bad(format!(
                "a frame of {len} bytes runs past the end of the file"
            )));
        }
        let total_usize = usize::try_from(total).unwrap_or(usize::MAX);
        self.fill(total_usize)
            .map_err(|e| self.bad(format!("read failed: {e}")))?;
        let bytes = self.slice(self.offset, total_usize);
        let parsed = parse_frame(bytes).map_err(|reason| self.bad(reason))?;
        match parsed.1 {
            Parsed::End => Ok(None),
            Parsed::Seal(last) => {
                if last + 1 != self.next || self.offset == HEADER {
                    return Err(self.bad(format!(
                        "the segment's seal names position {last}, its records end at {}",
                        self.next - 1
                    )));
                }
                let at = self.offset;
                self.offset += total;
                Ok(Some(Item::Sealed { last, at }))
            }
            Parsed::Commit(first, last) => {
                if first != self.next {
                    return Err(self.bad(format!(
                        "the frame holds positions {first} to {last}, the log continues at {}",
                        self.next
                    )));
                }
                let value = bytes[8 + 17..].to_vec();
                let loc = Loc {
                    segment: self.segment,
                    offset: self.offset,
                    len: u32::try_from(total).unwrap_or(u32::MAX),
                };
                self.offset += total;
                self.next = last + 1;
                Ok(Some(Item::Record(Record {
                    first,
                    last,
                    loc,
                    key: format::commit_key(first, last),
                    value,
                })))
            }
        }
    }
}

/// A sequential reader of the whole log from a record on, crossing segments at their seals.
#[derive(Debug)]
pub(crate) struct LogReader<L: Deref<Target = Log>> {
    log: L,
    frames: Frames,
}

impl<L: Deref<Target = Log>> LogReader<L> {
    /// Reads from the frame at `loc`, which holds `position` first.
    pub(crate) fn at(log: L, loc: Loc, position: u64) -> std::result::Result<Self, Bad> {
        let frames = log.reader_at(loc, position)?;
        Ok(LogReader { log, frames })
    }

    /// Reads from the start of the log (`None` when it has no segment).
    pub(crate) fn from_start(log: L) -> std::result::Result<Option<Self>, Bad> {
        let Some(first) = log.segments().first().copied() else {
            return Ok(None);
        };
        let frames = log.reader_at_segment(first)?;
        Ok(Some(LogReader { log, frames }))
    }

    /// The position the next record must start at.
    pub(crate) fn next_position(&self) -> u64 {
        self.frames.next
    }

    /// The next record, `None` at the end of the log.
    pub(crate) fn next_record(&mut self) -> std::result::Result<Option<Record>, Bad> {
        loop {
            match self.frames.next_frame()? {
                None => return Ok(None),
                Some(Item::Record(record)) => return Ok(Some(record)),
                Some(Item::Sealed { last, at }) => {
                    self.frames = self.log.next_segment(self.frames.segment, last, at)?;
                }
            }
        }
    }
}
