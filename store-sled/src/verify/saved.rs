//! What is kept besides events: snapshots (not ahead of their streams), checkpoints and the
//! markers (they decode; the format is this build's).

use annals::{ProblemKind, Result, StreamId};

use super::walk::Walk;
use crate::error::sled_error;
use crate::format;

impl Walk<'_> {
    /// A snapshot: it decodes, and its version is not past its stream's head.
    pub(super) fn snapshot(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.report.snapshots += 1;
        let text = String::from_utf8_lossy(&key[1..]).into_owned();
        let Ok(stream) = StreamId::new(&text) else {
            self.problem_somewhere(
                ProblemKind::Corrupt,
                format!("snapshot of invalid stream id {text:?}"),
            );
            return Ok(());
        };
        let snapshot = match format::decode_snapshot(&stream, key, value) {
            Ok(snapshot) => snapshot,
            Err(reason) => {
                self.problem(
                    ProblemKind::Corrupt,
                    Some(&text),
                    None,
                    None,
                    format!("snapshot: {reason}"),
                );
                return Ok(());
            }
        };
        let head_key = format::head_key(&text);
        let head = match self.tree.get(&head_key).map_err(sled_error)? {
            None => 0,
            Some(v) => format::decode_head(&head_key, &v).map_or(u64::MAX, |h| h.version),
        };
        if snapshot.version.get() > head {
            self.problem(
                ProblemKind::SnapshotAhead,
                Some(&text),
                Some(snapshot.version.get()),
                None,
                format!(
                    "the snapshot is of version {}, the stream is at {head}",
                    snapshot.version
                ),
            );
        }
        Ok(())
    }

    /// A checkpoint: it decodes.
    pub(super) fn checkpoint(&mut self, key: &[u8], value: &[u8]) {
        self.report.checkpoints += 1;
        if let Err(reason) = format::decode_checkpoint(key, value) {
            let name = String::from_utf8_lossy(&key[1..]).into_owned();
            self.problem_somewhere(
                ProblemKind::Corrupt,
                format!("checkpoint `{name}`: {reason}"),
            );
        }
    }

    /// A marker: it decodes, and the format is this build's. Returns whether `key` is a marker
    /// this format defines.
    pub(super) fn meta(&mut self, key: &[u8], value: &[u8]) -> bool {
        if key == format::META_INDEXED {
            if let Err(reason) = format::decode_indexed(value) {
                self.problem_somewhere(ProblemKind::Corrupt, format!("index marker: {reason}"));
            }
            true
        } else if key == format::META_WRITES {
            if let Err(reason) = format::decode_writes(value) {
                self.problem_somewhere(ProblemKind::Corrupt, format!("write counter: {reason}"));
            }
            true
        } else if key == format::META_SAVES {
            if let Err(reason) = format::decode_saves(value) {
                self.problem_somewhere(ProblemKind::Corrupt, format!("save counter: {reason}"));
            }
            true
        } else if key == format::META_FORMAT {
            self.marker = true;
            match format::decode_format(value) {
                Ok(format::FORMAT_VERSION) => {}
                Ok(other) => {
                    self.problem_somewhere(ProblemKind::FormatMarker, format!("format {other}"));
                }
                Err(reason) => self.problem_somewhere(ProblemKind::FormatMarker, reason),
            }
            true
        } else {
            false
        }
    }
}
