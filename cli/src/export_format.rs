//! The export file format, version 1.
//!
//! An export is UTF-8 text, one JSON object per line (JSON Lines):
//!
//! 1. a header: `{"format":"annals-export","format_version":1,"created_at":"…","from":"<position>"}`;
//! 2. one line per event, in global-log order: `{"e":{…},"c":<crc32>}` where `c` is the CRC-32
//!    (IEEE) of the exact bytes of the `e` value as written; `e` holds the stream id, version,
//!    original position, recorded time, event id, type, schema version, content type, the
//!    payload in base64, and the metadata (correlation and causation ids, timestamp in
//!    microseconds since the Unix epoch, headers);
//! 3. a trailer: `{"end":true,"events":<count>,"crc":<crc32 of every event line's c, in order>}`.
//!
//! A file whose header, any line's checksum, or trailer is wrong or missing is refused whole,
//! before anything is written.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use annals::{EventData, EventId, Metadata, Position, RecordedEvent, StreamId, Timestamp, Version};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::failure::{CliResult, Failure};

/// The format's name in the header.
pub const FORMAT: &str = "annals-export";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    format_version: u32,
    created_at: String,
    from: String,
}

#[derive(Serialize, Deserialize)]
struct Trailer {
    end: bool,
    events: u64,
    crc: u32,
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    e: &'a RawValue,
    c: u32,
}

/// One event as exported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportedEvent {
    /// The stream.
    pub stream_id: StreamId,
    /// Its version in the stream.
    pub version: Version,
    /// Its position in the source store.
    pub position: String,
    /// When the source store recorded it (µs since the Unix epoch).
    pub recorded_at: Timestamp,
    /// The event id (kept, so imports are idempotent).
    pub id: EventId,
    /// The event type.
    pub event_type: String,
    /// The schema version.
    pub schema_version: u16,
    /// The payload's content type.
    pub content_type: String,
    /// The payload, base64.
    pub payload: String,
    /// The metadata.
    pub metadata: Metadata,
}

impl ExportedEvent {
    /// The exported form of `event`.
    pub fn from_recorded(event: &RecordedEvent) -> Self {
        ExportedEvent {
            stream_id: event.stream_id.clone(),
            version: event.version,
            position: event.position.to_string(),
            recorded_at: event.recorded_at,
            id: event.id,
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            content_type: event.content_type.clone(),
            payload: base64::engine::general_purpose::STANDARD.encode(&event.payload),
            metadata: event.metadata.clone(),
        }
    }

    /// The event to append again.
    pub fn to_event_data(&self) -> Result<EventData, String> {
        let payload = base64::engine::general_purpose::STANDARD
            .decode(&self.payload)
            .map_err(|e| format!("payload of event {} is not base64: {e}", self.id))?;
        Ok(EventData {
            id: self.id,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            content_type: self.content_type.clone(),
            payload: payload.into(),
            metadata: self.metadata.clone(),
        })
    }
}

/// Writes an export file event by event.
#[derive(Debug)]
pub struct ExportWriter {
    out: BufWriter<File>,
    count: u64,
    crc: crc32fast::Hasher,
}

impl ExportWriter {
    /// Creates `path` (refusing to overwrite) and writes the header.
    pub fn create(path: &Path, from: Position) -> CliResult<Self> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| Failure::usage(format!("cannot create {}: {e}", path.display())))?;
        let mut out = BufWriter::new(file);
        let header = Header {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            created_at: Timestamp::now().to_string(),
            from: from.to_string(),
        };
        writeln!(
            out,
            "{}",
            serde_json::to_string(&header).map_err(json_failure)?
        )?;
        Ok(ExportWriter {
            out,
            count: 0,
            crc: crc32fast::Hasher::new(),
        })
    }

    /// Appends one event.
    pub fn write(&mut self, event: &RecordedEvent) -> CliResult {
        let e =
            serde_json::to_string(&ExportedEvent::from_recorded(event)).map_err(json_failure)?;
        let c = crc32fast::hash(e.as_bytes());
        self.crc.update(&c.to_le_bytes());
        writeln!(self.out, "{{\"e\":{e},\"c\":{c}}}")?;
        self.count += 1;
        Ok(())
    }

    /// Writes the trailer and syncs the file; returns the number of events.
    pub fn finish(mut self) -> CliResult<u64> {
        let trailer = Trailer {
            end: true,
            events: self.count,
            crc: self.crc.finalize(),
        };
        writeln!(
            self.out,
            "{}",
            serde_json::to_string(&trailer).map_err(json_failure)?
        )?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| Failure::from(e.into_error()))?;
        file.sync_all()?;
        Ok(self.count)
    }
}

fn json_failure(e: serde_json::Error) -> Failure {
    Failure::usage(format!("cannot encode JSON: {e}"))
}

/// Reads and checks an export file, event by event: an iterator of events that ends with an
/// error as soon as anything is wrong (header, a line's checksum, the trailer, truncation).
///
/// Run it to the end once to validate a file before writing anything.
pub struct Reader {
    path: std::path::PathBuf,
    lines: std::io::Lines<BufReader<File>>,
    number: usize,
    count: u64,
    crc: crc32fast::Hasher,
    done: bool,
    /// The previous event's position and line: positions in an export increase.
    previous: Option<(Position, usize)>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("path", &self.path)
            .field("line", &self.number)
            .finish()
    }
}

impl Reader {
    /// Opens `path` and checks its header.
    pub fn open(path: &Path) -> CliResult<Self> {
        let file = File::open(path)
            .map_err(|e| Failure::not_found(format!("cannot open {}: {e}", path.display())))?;
        let mut reader = Reader {
            path: path.to_owned(),
            lines: BufReader::new(file).lines(),
            number: 1,
            count: 0,
            crc: crc32fast::Hasher::new(),
            done: false,
            previous: None,
        };
        let header = match reader.lines.next() {
            None => return Err(reader.corrupt("the file is empty")),
            Some(line) => line.map_err(|e| reader.corrupt(e))?,
        };
        let header: Header = serde_json::from_str(&header)
            .map_err(|e| reader.corrupt(format!("not an annals export header: {e}")))?;
        if header.format != FORMAT {
            return Err(reader.corrupt(format!("format is `{}`, not `{FORMAT}`", header.format)));
        }
        if header.format_version != FORMAT_VERSION {
            return Err(reader.corrupt(format!(
                "format version {} is not supported (this build reads version {FORMAT_VERSION})",
                header.format_version
            )));
        }
        Ok(reader)
    }

    /// The number of the line read last (the header is line 1).
    pub fn line_number(&self) -> usize {
        self.number
    }

    /// Checks the whole file; the number of events it holds.
    pub fn validate(path: &Path) -> CliResult<u64> {
        let mut reader = Reader::open(path)?;
        for event in &mut reader {
            event?;
        }
        Ok(reader.count)
    }

    fn corrupt(&self, what: impl std::fmt::Display) -> Failure {
        Failure::problems(format!(
            "corrupt export file {} at line {}: {what}",
            self.path.display(),
            self.number
        ))
    }

    fn line(&mut self, line: &str) -> CliResult<Option<ExportedEvent>> {
        if let Ok(trailer) = serde_json::from_str::<Trailer>(line) {
            let crc = self.crc.clone().finalize();
            if !trailer.end || trailer.events != self.count || trailer.crc != crc {
                return Err(self.corrupt(format!(
                    "the trailer says {} events (crc {}), the file holds {} (crc {crc})",
                    trailer.events, trailer.crc, self.count
                )));
            }
            return Ok(None);
        }
        let parsed: Line<'_> = serde_json::from_str(line)
            .map_err(|e| self.corrupt(format!("not an event line: {}", json_error(&e))))?;
        let actual = crc32fast::hash(parsed.e.get().as_bytes());
        if actual != parsed.c {
            return Err(self.corrupt(format!(
                "checksum mismatch (stored {}, computed {actual})",
                parsed.c
            )));
        }
        self.crc.update(&parsed.c.to_le_bytes());
        let event: ExportedEvent = serde_json::from_str(parsed.e.get())
            .map_err(|e| self.corrupt(format!("bad event: {}", json_error(&e))))?;
        event.to_event_data().map_err(|e| self.corrupt(e))?;
        let position: Position = event
            .position
            .parse()
            .map_err(|e| self.corrupt(format!("bad position: {e}")))?;
        if let Some((previous, line)) = self.previous {
            if position <= previous {
                return Err(self.corrupt(format!(
                    "position {position} does not follow position {previous} of line {line}: \
                     lines are reordered or repeated (positions in an export increase)"
                )));
            }
        }
        self.previous = Some((position, self.number));
        self.count += 1;
        Ok(Some(event))
    }
}

/// A JSON error without serde's own "at line 1 column N" (each event is one line of the file,
/// whose number the message gives): the column alone.
fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let what = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(what, _)| what);
    if e.column() == 0 {
        what.to_owned()
    } else {
        format!("{what} (at column {})", e.column())
    }
}

impl Iterator for Reader {
    type Item = CliResult<ExportedEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        self.number += 1;
        let result = match self.lines.next() {
            None => Err(self.corrupt("the file ends without its trailer (truncated?)")),
            Some(Err(e)) => Err(self.corrupt(e)),
            Some(Ok(line)) => self.line(&line),
        };
        match result {
            Ok(Some(event)) => Some(Ok(event)),
            Ok(None) => {
                self.done = true;
                // Nothing may follow the trailer.
                self.lines
                    .next()
                    .map(|_| Err(self.corrupt("lines follow the trailer")))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
