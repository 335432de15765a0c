//! `stats`: counts of streams, events, bytes and categories.

use std::collections::BTreeMap;

use annals::{EventStore, ReadAll};
use futures::TryStreamExt;
use serde_json::json;

use crate::failure::CliResult;
use crate::Context;

/// `annals stats`.
pub(crate) async fn stats(cx: &Context<'_>) -> CliResult {
    let progress = crate::progress::counter(cx, "reading the log");
    let mut events = cx.store.any.read_all(ReadAll::all());
    let (mut count, mut bytes) = (0u64, 0u64);
    let mut categories: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    while let Some(event) = events.try_next().await? {
        count += 1;
        bytes += event.payload.len() as u64;
        let entry = categories
            .entry(event.stream_id.category().to_owned())
            .or_default();
        entry.1 += 1;
        if event.version.get() == 1 {
            entry.0 += 1;
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    let streams: u64 = categories.values().map(|(s, _)| s).sum();
    let per_category: BTreeMap<_, _> = categories
        .iter()
        .map(|(c, (s, e))| (c.clone(), json!({ "streams": s, "events": e })))
        .collect();
    cx.out.emit(
        &json!({
            "streams": streams,
            "events": count,
            "payload_bytes": bytes,
            "categories": categories.len(),
            "per_category": per_category,
        }),
        || {
            let mut text = format!(
                "streams {streams}\nevents {count}\npayload bytes {bytes}\ncategories {}",
                categories.len()
            );
            for (c, (s, e)) in &categories {
                text.push_str(&format!("\n  {c:<24} {s} streams, {e} events"));
            }
            text
        },
    )
}
