//! Printing: human text or one JSON object per line.

use std::io::Write;

use annals::RecordedEvent;
use base64::Engine;
use serde_json::{json, Value};

use crate::failure::CliResult;

/// Where command output goes, and in which form.
#[derive(Debug)]
pub(crate) struct Out {
    json: bool,
    stdout: std::io::Stdout,
}

impl Out {
    /// Output in JSON lines when `json`, else text.
    pub(crate) fn new(json: bool) -> Self {
        Out {
            json,
            stdout: std::io::stdout(),
        }
    }

    /// Whether the output is JSON lines.
    pub(crate) fn is_json(&self) -> bool {
        self.json
    }

    /// Prints `value` as one JSON line (JSON mode) or `text` (text mode).
    pub(crate) fn emit(&self, value: &Value, text: impl FnOnce() -> String) -> CliResult {
        let mut lock = self.stdout.lock();
        let written = if self.json {
            writeln!(lock, "{value}")
        } else {
            writeln!(lock, "{}", text())
        };
        closed_pipe_is_fine(written)
    }

    /// Prints `text` in text mode only (a table's header, a note).
    pub(crate) fn text_only(&self, text: impl FnOnce() -> String) -> CliResult {
        if self.json {
            return Ok(());
        }
        closed_pipe_is_fine(writeln!(self.stdout.lock(), "{}", text()))
    }
}

fn closed_pipe_is_fine(written: std::io::Result<()>) -> CliResult {
    match written {
        Ok(()) => Ok(()),
        // A closed pipe (`annals show … | head`) is not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A payload as JSON when its content type is JSON (or `decoded` gives it), else base64.
pub(crate) fn payload_json(event: &RecordedEvent, decoded: Option<Value>) -> (Value, &'static str) {
    if let Some(value) = decoded {
        return (value, "json");
    }
    if event.content_type == annals::CONTENT_TYPE_JSON {
        if let Ok(value) = serde_json::from_slice::<Value>(&event.payload) {
            return (value, "json");
        }
    }
    (
        Value::String(base64::engine::general_purpose::STANDARD.encode(&event.payload)),
        "base64",
    )
}

/// An event with all its metadata as a JSON object.
pub(crate) fn event_json(event: &RecordedEvent, decoded: Option<Value>) -> Value {
    let (payload, encoding) = payload_json(event, decoded);
    json!({
        "stream_id": event.stream_id,
        "version": event.version,
        "position": event.position.to_string(),
        "recorded_at": event.recorded_at.to_string(),
        "id": event.id.to_string(),
        "event_type": event.event_type,
        "schema_version": event.schema_version,
        "content_type": event.content_type,
        "correlation_id": event.metadata.correlation_id,
        "causation_id": event.metadata.causation_id,
        "timestamp": event.metadata.timestamp.to_string(),
        "headers": event.metadata.headers,
        "payload_encoding": encoding,
        "payload": payload,
    })
}

/// An event as human text: one header line, then metadata and payload lines.
pub(crate) fn event_text(event: &RecordedEvent, decoded: Option<Value>) -> String {
    let (payload, encoding) = payload_json(event, decoded);
    let mut text = format!(
        "{} v{} @{} {} (schema {}, {})\n  id {}  recorded {}  timestamp {}",
        event.stream_id,
        event.version,
        event.position,
        event.event_type,
        event.schema_version,
        event.content_type,
        event.id,
        event.recorded_at,
        event.metadata.timestamp,
    );
    if let Some(c) = event.metadata.correlation_id {
        text.push_str(&format!("\n  correlation {c}"));
    }
    if let Some(c) = event.metadata.causation_id {
        text.push_str(&format!("\n  causation {c}"));
    }
    for (k, v) in &event.metadata.headers {
        text.push_str(&format!("\n  header {k}: {v}"));
    }
    let payload = match payload {
        Value::String(s) if encoding == "base64" => format!("base64 {s}"),
        other => other.to_string(),
    };
    text.push_str(&format!("\n  payload {payload}"));
    text
}
