//! `migrate --to <URL>`: copy a whole store, resumably, then compare both sides.

use annals::{
    AnyStore, CheckpointStore, EventStore, Position, ReadAll, RestoredEvent, SnapshotStore,
    StreamId,
};
use std::collections::HashMap;

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
    // One pass over each global log (stream by stream would be a query per stream on a server),
    // both at once.
    let scan = |store: &AnyStore| {
        let store = store.clone();
        tokio::spawn(async move { log_checksums(&store).await })
    };
    let (ours, theirs) = (scan(source), scan(target));
    let joined = |r: Result<CliResult<_>, tokio::task::JoinError>| {
        r.map_err(|e| Failure::problems(format!("comparing the stores: {e}")))?
    };
    let (ours, theirs) = (joined(ours.await)?, joined(theirs.await)?);
    let mut mismatches: Vec<StreamId> = ours
        .iter()
        .filter(|(stream, sum)| theirs.get(*stream) != Some(sum))
        .map(|(stream, _)| stream.clone())
        .collect();
    mismatches.sort();
    let events =
        |sums: &HashMap<StreamId, (u64, u32)>| -> u64 { sums.values().map(|(n, _)| n).sum() };
    Ok(Comparison {
        source_streams: u64::try_from(ours.len()).unwrap_or(u64::MAX),
        target_streams: u64::try_from(theirs.len()).unwrap_or(u64::MAX),
        source_events: events(&ours),
        target_events: events(&theirs),
        mismatches,
    })
}

/// Each stream's event count and a checksum of everything its events carry but their
/// positions: ids, versions, types, schema versions,
/// content types, payloads, metadata and recording times, from one read of the global log
/// (a stream's events come in version order there).
async fn log_checksums(store: &AnyStore) -> CliResult<HashMap<StreamId, (u64, u32)>> {
    let mut sums: HashMap<StreamId, (u64, crc32fast::Hasher)> = HashMap::new();
    let mut events = store.read_all(ReadAll::all());
    while let Some(e) = events.try_next().await? {
        let (count, hasher) = sums.entry(e.stream_id.clone()).or_default();
        *count += 1;
        hasher.update(&e.version.get().to_le_bytes());
        hasher.update(e.id.as_uuid().as_bytes());
        hasher.update(&e.recorded_at.unix_micros().to_le_bytes());
        for text in [&e.event_type, &e.content_type] {
            hasher.update(&u64::try_from(text.len()).unwrap_or(u64::MAX).to_le_bytes());
            hasher.update(text.as_bytes());
        }
        hasher.update(&e.schema_version.to_le_bytes());
        hasher.update(
            &u64::try_from(e.payload.len())
                .unwrap_or(u64::MAX)
                .to_le_bytes(),
        );
        hasher.update(&e.payload);
        let m = &e.metadata;
        for id in [m.correlation_id, m.causation_id] {
            hasher.update(id.as_ref().map_or(&[0u8; 16], |id| id.as_bytes()));
        }
        hasher.update(&m.timestamp.unix_micros().to_le_bytes());
        for (key, value) in &m.headers {
            for text in [key, value] {
                hasher.update(&u64::try_from(text.len()).unwrap_or(u64::MAX).to_le_bytes());
                hasher.update(text.as_bytes());
            }
        }
    }
    Ok(sums
        .into_iter()
        .map(|(stream, (count, hasher))| (stream, (count, hasher.finalize())))
        .collect())
}
