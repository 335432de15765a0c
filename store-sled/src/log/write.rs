//! Writing the log: segments created, records framed, written out and synced.

use std::fs::File;
use std::io;

use annals::Error;

use super::*;
use crate::num::u64_from;

impl Log {
    pub(super) fn create_segment(&self, first: u64) -> io::Result<Arc<File>> {
        let path = self.dir.join(segment_name(first));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        // Preallocated as the writes go, with zeros written ahead of them (`append`).
        write_at(&file, &header(first), 0)?;
        file.sync_all()?;
        sync_dir(&self.dir)?;
        let file = Arc::new(file);
        self.files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(first, file.clone());
        Ok(file)
    }

    /// Frames the commit record of positions `first..=last` after the log's end; written by
    /// the next [`write_out`](Self::write_out). Returns where its frame is.
    pub(crate) fn append(&self, first: u64, last: u64, value: &[u8]) -> Result<Loc> {
        let bytes = commit_frame(first, last, value);
        let len = u32::try_from(bytes.len())
            .map_err(|_| Error::backend("sled", "a commit record of 4 GiB or more"))?;
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::backend(
                "sled",
                "an earlier write of the log failed: the store takes no further appends",
            ));
        }
        let mut guard = self.tail();
        let tail = guard
            .as_mut()
            .ok_or_else(|| Error::backend("sled", "the log is not open for writing"))?;
        if tail.last + 1 != first {
            return Err(Error::backend(
                "sled",
                format!(
                    "the log ends at position {}, the writer appends at {first}",
                    tail.last
                ),
            ));
        }
        let full = tail.end + u64::from(len) + FRAME_HEAD + 9 > self.segment_bytes;
        if full && tail.end > HEADER {
            // Seal this segment and start the next: a record is never split.
            let seal = seal_frame(tail.last);
            tail.pending.push((tail.file.clone(), tail.end, seal));
            let file = self
                .create_segment(first)
                .map_err(|e| io_error("creating a segment file", &e))?;
            tail.segment = first;
            tail.file = file;
            tail.end = HEADER;
            tail.zeroed = HEADER;
        }
        let needed = tail.end + u64::from(len);
        if needed > tail.zeroed {
            // Preallocation: zeros written ahead of the frames, in growing steps (1 MiB, then
            // the file's size, at most 8 MiB; never past the segment size unless one record
            // needs it). Blocks allocated *and* written make each group's `fdatasync` write
            // data only — no block allocation, no size: about 5 times cheaper on ext4 than
            // overwriting a sparse or `fallocate`d file (measured: 0.38 ms against 1.0 to 1.8
            // ms per 4.8 KB write + `fdatasync`).
            let step = tail.zeroed.clamp(ZERO_STEP_MIN, ZERO_STEP_MAX);
            let to = (tail.zeroed + step)
                .min(self.segment_bytes)
                .max(needed + FRAME_HEAD + 9);
            let zeros = vec![0; usize::try_from(to - tail.zeroed).unwrap_or(0)];
            tail.pending.push((tail.file.clone(), tail.zeroed, zeros));
            tail.zeroed = to;
        }
        let loc = Loc {
            segment: tail.segment,
            offset: tail.end,
            len,
        };
        match tail.pending.last_mut() {
            Some((file, at, chunk))
                if Arc::ptr_eq(file, &tail.file) && *at + u64_from(chunk.len()) == tail.end =>
            {
                chunk.extend_from_slice(&bytes);
            }
            _ => tail.pending.push((tail.file.clone(), tail.end, bytes)),
        }
        tail.end += u64::from(len);
        tail.last = last;
        tail.pending_bytes += len as usize;
        Ok(loc)
    }

    /// Where the writer's end is now.
    pub(crate) fn mark(&self) -> LogMark {
        let guard = self.tail();
        match guard.as_ref() {
            Some(tail) => LogMark {
                segment: tail.segment,
                end: tail.end,
                last: tail.last,
                zeroed: tail.zeroed,
                chunks: tail.pending.len(),
                chunk_len: tail.pending.last().map_or(0, |(_, _, bytes)| bytes.len()),
            },
            None => LogMark {
                segment: 0,
                end: 0,
                last: 0,
                zeroed: 0,
                chunks: 0,
                chunk_len: 0,
            },
        }
    }

    /// Takes back what was framed (not yet written) since `mark`; false when it cannot (a
    /// segment was started meanwhile).
    pub(crate) fn rollback(&self, mark: LogMark) -> bool {
        let mut guard = self.tail();
        let Some(tail) = guard.as_mut() else {
            return true;
        };
        if tail.segment != mark.segment || tail.pending.len() < mark.chunks {
            return false;
        }
        tail.pending.truncate(mark.chunks);
        if let Some((_, _, bytes)) = tail.pending.last_mut() {
            bytes.truncate(mark.chunk_len);
        }
        tail.pending_bytes = tail.pending.iter().map(|(_, _, b)| b.len()).sum();
        tail.end = mark.end;
        tail.last = mark.last;
        tail.zeroed = mark.zeroed;
        true
    }

    /// Writes what was framed since the last call (to the operating system; durable after the
    /// next [`sync`](Self::sync)).
    pub(crate) fn write_out(&self) -> Result<()> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let (pending, last) = match self.tail().as_mut() {
            Some(tail) => {
                tail.pending_bytes = 0;
                (std::mem::take(&mut tail.pending), tail.last)
            }
            None => return Ok(()),
        };
        let mut sealed: Vec<Arc<File>> = Vec::new();
        for (file, offset, bytes) in pending {
            if let Err(error) = write_at(&file, &bytes, offset) {
                self.failed.store(true, Ordering::Release);
                return Err(io_error("writing the log", &error));
            }
            if !sealed.iter().any(|f| Arc::ptr_eq(f, &file)) {
                sealed.push(file);
            }
        }
        // Files other than the last segment (sealed by these writes) are synced by the next
        // sync, which starts after the writes are done.
        if let Some(tail) = self.tail().as_mut() {
            for file in sealed {
                if !Arc::ptr_eq(&file, &tail.file)
                    && !tail.dirty.iter().any(|f| Arc::ptr_eq(f, &file))
                {
                    tail.dirty.push(file);
                }
            }
        }
        self.written.fetch_max(last, Ordering::AcqRel);
        Ok(())
    }

    /// Writes what was framed once it adds up to [`WRITE_AT`] bytes (a `Durability::Buffered`
    /// writer's groups: one write per many small appends). Readers find the rest written when
    /// they need it ([`ensure_written`](Self::ensure_written)), and every sync writes it first.
    pub(crate) fn write_out_some(&self) -> Result<()> {
        let due = self
            .tail()
            .as_ref()
            .is_some_and(|tail| tail.pending_bytes >= WRITE_AT);
        if due {
            self.write_out()?;
        }
        Ok(())
    }

    /// Makes sure the frames through `position` are written to their files (a reader about to
    /// read them).
    pub(crate) fn ensure_written(&self, position: u64) -> Result<()> {
        if self.written.load(Ordering::Acquire) < position {
            self.write_out()?;
        }
        Ok(())
    }

    /// Makes everything written so far durable: `fdatasync` of the last segment and of any
    /// sealed since the last call. Runs outside the writer's lock.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.write_out().map_err(io::Error::other)?;
        let (current, dirty) = match self.tail().as_mut() {
            Some(tail) => (tail.file.clone(), std::mem::take(&mut tail.dirty)),
            None => return Ok(()),
        };
        for file in &dirty {
            file.sync_data()?;
        }
        current.sync_data()
    }
}
