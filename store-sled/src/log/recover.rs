//! The end of the log at open: the tail scanned, a torn tail cut, the writer's end set.

use std::io;

use annals::Error;

use super::*;

impl Log {
    /// Scans the log from the segment holding `after + 1` (or the first) to its end. Returns
    /// the end, the records past `after`, and the first frame that does not read back, if any.
    /// Sets the writer's end after the last good frame (see [`cut`](Self::cut) for a bad one).
    pub(crate) fn scan_tail(&self, after: u64) -> Result<TailScan> {
        let segments = self.segments();
        let mut scan = TailScan::default();
        let Some(&start) = segments
            .iter()
            .rev()
            .find(|&&s| s <= after + 1)
            .or(segments.first())
        else {
            // A new log: its first segment starts at position 1.
            self.start()?;
            return Ok(scan);
        };
        if start > after + 1 {
            // The index covers positions the log no longer holds: segments are missing.
            return Err(Error::corrupt(
                RecordPlace::new().position(Position::sequence(after + 1)),
                format!(
                    "the log's first segment file in {} starts at position {start}, the index \
                     covers the log through position {after}: segment files are missing",
                    self.dir.display()
                ),
            ));
        }
        let mut frames = match self.reader_at_segment(start) {
            Ok(frames) => frames,
            Err(bad) => {
                scan.end = start - 1;
                scan.bad = Some(bad);
                self.set_tail(start, HEADER, start - 1)?;
                return Ok(scan);
            }
        };
        scan.end = start - 1;
        loop {
            match frames.next_frame() {
                Ok(Some(Item::Record(record))) => {
                    if record.last > after {
                        // Past the index marker the records are checked whole: a torn write
                        // may leave a frame head and garbage bodies.
                        let checked = format::parse_commit(&record.key, &record.value)
                            .and_then(|commit| commit.check());
                        if let Err(reason) = checked {
                            scan.bad = Some(Bad {
                                segment: record.loc.segment,
                                offset: record.loc.offset,
                                position: record.first,
                                reason: format!("commit record: {reason}"),
                            });
                            frames.offset = record.loc.offset;
                            break;
                        }
                        scan.records.push((record.first, record.last, record.loc));
                    }
                    scan.end = record.last;
                }
                Ok(Some(Item::Sealed { last, at })) => {
                    match self.next_segment(frames.segment, last, at) {
                        Ok(next) => frames = next,
                        Err(bad) => {
                            scan.bad = Some(bad);
                            break;
                        }
                    }
                }
                Ok(None) => {
                    let later = self
                        .files_read()
                        .range(frames.segment + 1..)
                        .next()
                        .map(|(k, _)| *k);
                    if let Some(later) = later {
                        // Segment `later` was created, the seal before it never written.
                        scan.bad = Some(frames.bad(format!(
                            "the segment ends unsealed, and segment {later} follows it"
                        )));
                    }
                    break;
                }
                Err(bad) => {
                    scan.bad = Some(bad);
                    break;
                }
            }
        }
        self.set_tail(frames.segment, frames.offset, scan.end)?;
        Ok(scan)
    }

    fn set_tail(&self, segment: u64, end: u64, last: u64) -> Result<()> {
        let file = match self.file(segment) {
            Some(file) => file,
            None => self
                .create_segment(segment)
                .map_err(|e| io_error("creating a segment file", &e))?,
        };
        let zeroed = file
            .metadata()
            .map_err(|e| io_error("reading a segment's size", &e))?
            .len();
        *self.tail() = Some(Tail {
            segment,
            file,
            end,
            last,
            zeroed,
            pending: Vec::new(),
            dirty: Vec::new(),
            pending_bytes: 0,
        });
        self.written.fetch_max(last, Ordering::AcqRel);
        Ok(())
    }

    /// Removes every segment file and starts the log again, empty (the upgrade's first step).
    pub(crate) fn reset(&self) -> Result<()> {
        let segments = self.segments();
        for first in segments {
            std::fs::remove_file(self.dir.join(segment_name(first)))
                .map_err(|e| io_error("removing a segment file", &e))?;
        }
        self.files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        *self.tail() = None;
        self.start()
    }

    /// Starts the log of a new store (or an upgraded one) at position 1.
    pub(crate) fn start(&self) -> Result<()> {
        self.set_tail(1, HEADER, 0)
    }

    /// Cuts the log at the frame at `offset` of `segment` (a torn tail, or what an interrupted
    /// restore left): zeros from there on, later segments removed, all durably; the writer goes
    /// on from there, after position `last`.
    pub(crate) fn cut(&self, segment: u64, offset: u64, last: u64) -> Result<()> {
        let later: Vec<u64> = self
            .files_read()
            .range(segment + 1..)
            .map(|(k, _)| *k)
            .collect();
        for first in later.iter().rev() {
            std::fs::remove_file(self.dir.join(segment_name(*first)))
                .map_err(|e| io_error("removing a segment file", &e))?;
            self.files
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(first);
        }
        if offset < HEADER {
            // The segment's header itself is torn: the segment goes, and starts again.
            let _ = std::fs::remove_file(self.dir.join(segment_name(segment)));
            self.files
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&segment);
            sync_dir(&self.dir).map_err(|e| io_error("syncing the log directory", &e))?;
            return self.set_tail(segment, HEADER, last);
        }
        if let Some(file) = self.file(segment) {
            let cut = || -> io::Result<()> {
                file.set_len(offset)?;
                file.sync_all()
            };
            cut().map_err(|e| io_error("cutting the log's tail", &e))?;
        }
        sync_dir(&self.dir).map_err(|e| io_error("syncing the log directory", &e))?;
        self.set_tail(segment, offset, last)
    }
}
