//! The id index: single entries point to records the log holds; segments decode, do not
//! overlap, and map each id to the position holding it.

use annals::{EventId, ProblemKind, Result};

use super::walk::Walk;
use crate::error::sled_error;
use crate::format;

impl Walk<'_> {
    /// A single id-index entry: it decodes and its position is in the log.
    pub(super) fn id(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let (stream, version, position) = match format::decode_id(key, value) {
            Ok(entry) => entry,
            Err(reason) => {
                self.problem_somewhere(ProblemKind::Corrupt, format!("id index entry: {reason}"));
                return Ok(());
            }
        };
        if position > self.visible {
            return Ok(());
        }
        // A damaged locator is reported where the walk meets it.
        let there = !matches!(format::locate(self.tree, position), Ok(None));
        if !there {
            self.problem(
                ProblemKind::IdIndexMismatch,
                Some(stream),
                Some(version),
                Some(position),
                "the id index points to a record that does not exist",
            );
        }
        Ok(())
    }

    /// Whether the id segment whose range holds `id` maps it to `position`.
    pub(super) fn in_segment(&self, id: EventId, position: u64) -> Result<bool> {
        let bytes = id.as_uuid().as_bytes();
        let segment = format::segment_for(self.tree, bytes).map_err(sled_error)?;
        // A damaged segment is reported when the walk reaches it.
        Ok(segment.is_some_and(|(key, value)| {
            format::segment_find(&key, &value, bytes).is_ok_and(|p| p == Some(position))
        }))
    }

    /// An id segment: it decodes, starts above the previous one, and each of its positions
    /// holds its id.
    pub(super) fn segment(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let entries = match format::decode_segment(key, value) {
            Ok(entries) => entries,
            Err(reason) => {
                self.problem_somewhere(ProblemKind::Corrupt, format!("id segment: {reason}"));
                return Ok(());
            }
        };
        // A lookup reads the first segment whose key is at or above the id: an id at or below
        // the previous segment's key would never be found here.
        if entries
            .first()
            .is_some_and(|(id, _)| *id <= self.last_segment)
        {
            self.problem_somewhere(
                ProblemKind::IdIndexMismatch,
                "an id segment overlaps the one before it",
            );
        }
        if let Some((last, _)) = entries.last() {
            self.last_segment = *last;
        }
        for (id, position) in entries {
            if position > self.visible {
                continue;
            }
            let id = EventId::from_uuid(uuid::Uuid::from_bytes(id));
            let holds = format::event_at(self.tree, self.log, position)?
                .is_some_and(|event| event.is_ok_and(|event| event.id == id));
            if !holds {
                self.problem(
                    ProblemKind::IdIndexMismatch,
                    None,
                    None,
                    Some(position),
                    format!("an id segment maps {id} to a position that does not hold it"),
                );
            }
        }
        Ok(())
    }
}
