//! `streams` and `show`.

use annals::{EventStore, ReadStream, StreamId, Version};
use futures::TryStreamExt;
use serde_json::json;

use crate::args::ShowArgs;
use crate::failure::{CliResult, Failure};
use crate::{Context, Registry};

/// `annals streams [--category C]`.
pub(crate) async fn streams(cx: &Context<'_>, category: Option<&str>) -> CliResult {
    let mut streams = cx.store.any.streams();
    let mut listed = 0u64;
    while let Some(info) = streams.try_next().await? {
        if category.is_some_and(|c| info.stream_id.category() != c) {
            continue;
        }
        listed += 1;
        cx.out.emit(
            &json!({
                "stream_id": info.stream_id,
                "version": info.version,
                "last_position": info.last_position.to_string(),
                "last_recorded_at": info.last_recorded_at.to_string(),
            }),
            || {
                format!(
                    "{:<40} v{:<8} {}",
                    info.stream_id, info.version, info.last_recorded_at
                )
            },
        )?;
    }
    if listed == 0 && !cx.out.is_json() {
        eprintln!(
            "no streams{}",
            category
                .map(|c| format!(" in category `{c}`"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// `annals show <stream> [--from V] [--to V]`.
pub(crate) async fn show(cx: &Context<'_>, registry: &Registry, args: &ShowArgs) -> CliResult {
    let stream = StreamId::new(&args.stream).map_err(|e| Failure::usage(e.to_string()))?;
    let head = cx.store.any.stream_version(&stream).await?;
    if head.is_empty() {
        return Err(Failure::not_found(format!(
            "stream `{stream}` does not exist"
        )));
    }
    let from = args.from.unwrap_or(Version::FIRST).max(Version::FIRST);
    let to = args.to.unwrap_or(head).min(head);
    if from > to {
        return Err(Failure::not_found(format!(
            "stream `{stream}` is at version {head}: nothing between {from} and {to}"
        )));
    }
    // More than fits in memory cannot be shown anyway: a huge range reads to the end.
    let limit = usize::try_from(to.get() - from.get() + 1).unwrap_or(usize::MAX);
    let mut events = cx
        .store
        .any
        .read_stream(&stream, ReadStream::forward().from(from).limit(limit));
    while let Some(event) = events.try_next().await? {
        let decoded = registry.decode_event(&event);
        cx.out
            .emit(&crate::output::event_json(&event, decoded.clone()), || {
                crate::output::event_text(&event, decoded)
            })?;
    }
    Ok(())
}
