//! `replay`: an aggregate's state at a point, or what changed between two versions.

use annals::{EventStore, StreamId};
use serde_json::{json, Value};

use crate::args::ReplayArgs;
use crate::failure::{CliResult, Failure};
use crate::registry::ReplayPoint;
use crate::{Context, Registry};

/// `annals replay <stream> [--at-version V | --as-of TIME] [--diff V1..V2]`.
pub(crate) async fn replay(cx: &Context<'_>, registry: &Registry, args: &ReplayArgs) -> CliResult {
    let stream = StreamId::new(&args.stream).map_err(|e| Failure::usage(e.to_string()))?;
    let Some(replayer) = registry.for_stream(&stream) else {
        let known: Vec<_> = registry.categories().collect();
        return Err(Failure::usage(format!(
            "no aggregate type is registered for category `{}` (stream `{stream}`); registered: {}. \
             Build a CLI with your types: annals_cli::App::new().register::<YourAggregate>()",
            stream.category(),
            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
        )));
    };
    let head = cx.store.any.stream_version(&stream).await?;
    if head.is_empty() {
        return Err(Failure::not_found(format!(
            "stream `{stream}` does not exist"
        )));
    }
    if let Some(version) = args.at_version {
        if version > head || version.is_empty() {
            return Err(Failure::not_found(format!(
                "stream `{stream}` has versions 1 to {head}; there is no version {version}"
            )));
        }
    }
    if let Some((a, b)) = args.diff {
        if b > head {
            return Err(Failure::not_found(format!(
                "stream `{stream}` is at version {head}; there is no version {b}"
            )));
        }
        let replayed = replayer.changes(&cx.store.any, &stream, a, b).await?;
        let mut changes = Vec::new();
        diff_values("", &replayed.before, &replayed.after, &mut changes);
        let events: Vec<Value> = replayed
            .events
            .iter()
            .map(|(version, event_type, recorded_at)| {
                json!({ "version": version, "event_type": event_type, "recorded_at": recorded_at.to_string() })
            })
            .collect();
        let (before, after) = (replayed.before, replayed.after);
        return cx.out.emit(
            &json!({ "stream_id": stream, "from": a, "to": b, "events": events, "changes": changes, "before": before, "after": after }),
            || {
                let mut text = format!("{stream}: from version {a} to {b}, {} events", events.len());
                for e in &events {
                    text.push_str(&format!("\n  v{} {}", e["version"], e["event_type"].as_str().unwrap_or("")));
                }
                if changes.is_empty() {
                    text.push_str("\nno change in state");
                }
                for c in &changes {
                    text.push_str(&format!("\n  {} : {} -> {}", c["path"].as_str().unwrap_or(""), c["before"], c["after"]));
                }
                text
            },
        );
    }
    let point = match (args.at_version, args.as_of) {
        (Some(v), _) => ReplayPoint::Version(v),
        (None, Some(t)) => ReplayPoint::AsOf(t),
        (None, None) => ReplayPoint::Latest,
    };
    let replayed = replayer.replay(&cx.store.any, &stream, point).await?;
    if let (ReplayPoint::AsOf(t), true) = (point, replayed.version.is_empty()) {
        return Err(Failure::not_found(format!(
            "stream `{stream}` had no events yet at {t}: its first event was recorded later"
        )));
    }
    cx.out.emit(
        &json!({ "stream_id": stream, "version": replayed.version, "state": replayed.state }),
        || {
            format!(
                "{stream} at version {}:\n{}",
                replayed.version,
                serde_json::to_string_pretty(&replayed.state).unwrap_or_default()
            )
        },
    )
}

/// Collects the leaves that differ between two JSON values, by JSON path.
fn diff_values(path: &str, before: &Value, after: &Value, out: &mut Vec<Value>) {
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let sub = format!("{path}/{key}");
                diff_values(
                    &sub,
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(
            json!({ "path": if path.is_empty() { "/" } else { path }, "before": a, "after": b }),
        ),
        _ => {}
    }
}
