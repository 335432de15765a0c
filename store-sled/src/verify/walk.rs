//! The walk: every key once, in key order, each handed to the check for its kind; then the
//! checks that need the whole walk.

use annals::{Position, ProblemKind, Result, VerifyReport};

use crate::error::sled_error;
use crate::format::{CHECKPOINT, COMMIT, HEAD, ID, META, SEGMENT, SNAPSHOT, STREAM};
use crate::log::Log;

/// The walk's state: the report so far and what the checks carry from key to key.
pub(super) struct Walk<'a> {
    pub(super) tree: &'a sled::Tree,
    pub(super) log: &'a Log,
    /// Commit locators met (each must locate one record of the log, see `segments`).
    pub(super) locators: u64,
    /// The last position readers may see: records past it were written after the walk began.
    pub(super) visible: u64,
    pub(super) report: VerifyReport,
    /// The stream being walked: its id, last version and last position.
    pub(super) current: Option<(String, u64, u64)>,
    /// The last position of the commit records walked so far.
    pub(super) last_log: u64,
    /// The key of the last id segment walked (zeros before the first).
    pub(super) last_segment: [u8; 16],
    /// Whether the format marker was seen.
    pub(super) marker: bool,
}

impl<'a> Walk<'a> {
    pub(super) fn new(tree: &'a sled::Tree, log: &'a Log, visible: u64) -> Self {
        let mut report = VerifyReport::new();
        report.last_position = (visible > 0).then(|| Position::sequence(visible));
        Walk {
            tree,
            log,
            locators: 0,
            visible,
            report,
            current: None,
            last_log: 0,
            last_segment: [0; 16],
            marker: false,
        }
    }

    /// Walks every key and returns the report.
    pub(super) fn run(mut self) -> Result<VerifyReport> {
        for item in self.tree.iter() {
            let (key, value) = item.map_err(sled_error)?;
            self.visit(&key, &value)?;
        }
        self.finish()?;
        self.segments();
        Ok(self.report)
    }

    fn visit(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        match key.first().copied() {
            Some(STREAM) => self.stream_entry(key, value)?,
            Some(COMMIT) => self.commit(key, value)?,
            Some(HEAD) => self.head(key, value)?,
            Some(ID) => self.id(key, value)?,
            Some(SEGMENT) => self.segment(key, value)?,
            Some(SNAPSHOT) => self.snapshot(key, value)?,
            Some(CHECKPOINT) => self.checkpoint(key, value),
            Some(META) if self.meta(key, value) => {}
            _ => self.problem_somewhere(
                ProblemKind::UnknownKey,
                format!("key {:?}", String::from_utf8_lossy(key)),
            ),
        }
        Ok(())
    }

    /// What only the end of the walk shows: the last stream's head, the format marker, the end
    /// of the log.
    fn finish(&mut self) -> Result<()> {
        self.finish_stream()?;
        if !self.marker {
            self.problem_somewhere(ProblemKind::FormatMarker, "the format marker is missing");
        }
        if self.last_log != self.visible {
            let visible = self.visible;
            self.problem(
                ProblemKind::LogGap,
                None,
                None,
                Some(visible),
                format!(
                    "the global log ends at position {}, expected {visible}",
                    self.last_log
                ),
            );
        }
        Ok(())
    }
}
