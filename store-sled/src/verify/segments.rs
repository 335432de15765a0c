//! The log's segment files: read once, in order, with a bounded buffer. Every frame passes its
//! checksum, positions run on without a gap across the segments (each sealed one ends where
//! the next begins), the log ends at the visible end or after it, and the index locates
//! exactly the log's records (one locator each: the walk counted them, and checked that each
//! names a frame holding its positions).

use annals::ProblemKind;

use super::walk::Walk;
use crate::log::LogReader;

impl Walk<'_> {
    pub(super) fn segments(&mut self) {
        let dir = self.log.dir().to_path_buf();
        if let Err(error) = self.log.ensure_written(self.visible) {
            self.problem_somewhere(ProblemKind::Corrupt, error.to_string());
            return;
        }
        let mut records = 0u64;
        let mut end = 0u64;
        let reader = match LogReader::from_start(self.log) {
            Ok(reader) => reader,
            Err(bad) => {
                self.problem(
                    ProblemKind::Corrupt,
                    None,
                    None,
                    Some(bad.position),
                    bad.describe(&dir),
                );
                return;
            }
        };
        if let Some(mut reader) = reader {
            if reader.next_position() != 1 {
                let detail = format!(
                    "the log's first segment starts at position {}",
                    reader.next_position()
                );
                self.problem(ProblemKind::LogGap, None, None, Some(1), detail);
            }
            loop {
                match reader.next_record() {
                    Ok(Some(record)) => {
                        if record.first <= self.visible {
                            records += 1;
                        }
                        end = record.last;
                    }
                    Ok(None) => break,
                    Err(bad) => {
                        self.problem(
                            ProblemKind::Corrupt,
                            None,
                            None,
                            Some(bad.position),
                            bad.describe(&dir),
                        );
                        return;
                    }
                }
            }
        }
        if end < self.visible {
            let detail = format!(
                "the log's segment files end at position {end}, the store's log at {}",
                self.visible
            );
            self.problem(ProblemKind::LogGap, None, None, Some(end + 1), detail);
        } else if records != self.locators {
            let detail = format!(
                "the log's segment files hold {records} commit records up to position {}, the \
                 index locates {}",
                self.visible, self.locators
            );
            self.problem(ProblemKind::LogMismatch, None, None, None, detail);
        }
    }
}
