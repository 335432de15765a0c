//! `migrate --to <URL>`: copy a whole store, resumably, then compare both sides.

use annals::{
    AnyStore, CheckpointStore, EventStore, Position, ReadAll, ReadStream, RestoredEvent,
    SnapshotStore, StreamId,
};
use futures::TryStreamExt;
use serde_json::json;

use super::copy::Copier;
use crate::failure::{CliResult, Failure};
use crate::Context;

/// `annals migrate --to <URL>`.
pub(crate) async fn migrate(cx: &Context<'_>, to: &str) -> CliResult {
    let target = crate::open::open(to, crate::OpenMode::CreateIfMissing)
        .await
        .map_err(|e| e.context(format!("target {to}")))?;
    let source = cx.store.any.clone();
    // Where an interrupted run got to, kept in the target.
    let checkpoint = format!("annals.migrate:{}", cx.store.url);
    let from = target
        .any
        .load_checkpoint(&checkpoint)
        .await?
        .map_or(Position::START, Position::next);
    let total = super::verify::total_events(cx).await?;
    let progress = crate::progress::bar(cx, "migrating", Some(total));
    let mut copier = Copier::new(target.any.clone());
    let mut events = source.read_all(ReadAll::from(from));
    let mut last = None;
    while let Some(event) = events.try_next().await? {
        // A full batch was written: its events are on the target, so the checkpoint may pass
        // them (the event in hand starts the next batch).
        if copier.push(RestoredEvent::of(&event)).await? {
            if let Some(position) = last {
                target.any.save_checkpoint(&checkpoint, position).await?;
            }
        }
        last = Some(event.position);
        progress.inc(1);
    }
    copier.flush().await?;
    if let Some(position) = last {
        target.any.save_checkpoint(&checkpoint, position).await?;
    }
    progress.finish_and_clear();

    // Snapshots follow their streams (checkpoints do not: positions differ between stores, so
    // projections rebuild on the target).
    let mut snapshots = 0u64;
    let mut streams = source.streams();
    while let Some(info) = streams.try_next().await? {
        if let Some(snapshot) = source.load_snapshot(&info.stream_id).await? {
            target.any.save_snapshot(snapshot).await?;
            snapshots += 1;
        }
    }

    let comparison = compare(&source, &target.any).await?;
    let ok =
        comparison.mismatches.is_empty() && comparison.source_events == comparison.target_events;
    for stream in comparison.mismatches.iter().take(20) {
        cx.out.emit(&json!({ "mismatch": stream }), || {
            format!("MISMATCH stream {stream}")
        })?;
    }
    cx.out.emit(
        &json!({
            "copied": copier.written,
            "already_present": copier.present,
            "snapshots": snapshots,
            "source_streams": comparison.source_streams,
            "target_streams": comparison.target_streams,
            "source_events": comparison.source_events,
            "target_events": comparison.target_events,
            "mismatched_streams": comparison.mismatches.len(),
            "ok": ok,
        }),
        || {
            format!(
                "copied {} events ({} already present), {snapshots} snapshots\nsource: {} streams, {} events\ntarget: {} streams, {} events\n{}",
                copier.written,
                copier.present,
                comparison.source_streams,
                comparison.source_events,
                comparison.target_streams,
                comparison.target_events,
                if ok { "every stream's checksum matches" } else { "MISMATCH: the stores differ" }
            )
        },
    )?;
    if ok {
        Ok(())
    } else {
        Err(Failure::problems(
            "the target differs from the source after migration",
        ))
    }
}

struct Comparison {
    source_streams: u64,
    target_streams: u64,
    source_events: u64,
    target_events: u64,
    mismatches: Vec<StreamId>,
}

async fn compare(source: &AnyStore, target: &AnyStore) -> CliResult<Comparison> {
    let mut comparison = Comparison {
        source_streams: 0,
        target_streams: 0,
        source_events: 0,
        target_events: 0,
        mismatches: Vec::new(),
    };
    let mut streams = target.streams();
    while let Some(info) = streams.try_next().await? {
        comparison.target_streams += 1;
        comparison.target_events += info.version.get();
    }
    let mut streams = source.streams();
    while let Some(info) = streams.try_next().await? {
        comparison.source_streams += 1;
        comparison.source_events += info.version.get();
        let (a, b) = (
            stream_checksum(source, &info.stream_id).await?,
            stream_checksum(target, &info.stream_id).await?,
        );
        if a != b {
            comparison.mismatches.push(info.stream_id);
        }
    }
    Ok(comparison)
}

/// A checksum of everything a stream's events carry but their positions (which differ
/// between stores): ids, versions, types, schema versions, content types, payloads, metadata.
pub(crate) async fn stream_checksum(store: &AnyStore, stream: &StreamId) -> CliResult<(u64, u32)> {
    let mut hasher = crc32fast::Hasher::new();
    let mut count = 0;
    let mut events = store.read_stream(stream, ReadStream::forward());
    while let Some(e) = events.try_next().await? {
        count += 1;
        hasher.update(&e.version.get().to_le_bytes());
        hasher.update(e.id.as_uuid().as_bytes());
        for text in [&e.event_type, &e.content_type] {
            hasher.update(&(text.len() as u64).to_le_bytes());
            hasher.update(text.as_bytes());
        }
        hasher.update(&e.schema_version.to_le_bytes());
        hasher.update(&(e.payload.len() as u64).to_le_bytes());
        hasher.update(&e.payload);
        let metadata =
            serde_json::to_vec(&e.metadata).map_err(|e| Failure::problems(e.to_string()))?;
        hasher.update(&metadata);
    }
    Ok((count, hasher.finalize()))
}
