//! `export` and `import`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use annals::{
    EventId, EventStore, Limits, Position, ReadAll, ReadStream, RestoredEvent, StreamId, Version,
};
use futures::TryStreamExt;
use serde_json::json;

use super::copy::Copier;
use crate::export_format::{ExportWriter, Reader};
use crate::failure::{CliResult, Failure};
use crate::Context;

/// `annals export <file> [--from POSITION]`.
pub(crate) async fn export(cx: &Context<'_>, file: &Path, from: Option<Position>) -> CliResult {
    let from = from.unwrap_or(Position::START);
    let total = crate::commands::verify::total_events(cx).await.ok();
    let progress = crate::progress::bar(cx, "exporting", total);
    let mut writer = ExportWriter::create(file, from)?;
    let mut events = cx.store.any.read_all(ReadAll::from(from));
    let result: CliResult<u64> = async {
        while let Some(event) = events.try_next().await? {
            writer.write(&event)?;
            progress.inc(1);
        }
        writer.finish()
    }
    .await;
    progress.finish_and_clear();
    let count = match result {
        Ok(count) => count,
        Err(e) => {
            // Never leave a half export behind that looks like a whole one.
            let _ = std::fs::remove_file(file);
            return Err(e);
        }
    };
    cx.out.emit(
        &json!({ "exported": count, "file": file.display().to_string() }),
        || format!("exported {count} events to {}", file.display()),
    )
}

/// What an export file holds, checked whole before anything is written: each stream's
/// versions (contiguous within the file) and where they start.
#[derive(Debug)]
pub(crate) struct FilePlan {
    /// Events in the file.
    total: u64,
    /// Each stream's first and last version in the file, and the line of its first event.
    streams: BTreeMap<StreamId, StreamSpan>,
}

#[derive(Debug, Clone, Copy)]
struct StreamSpan {
    first: Version,
    last: Version,
    line: usize,
}

/// The checks of `import` that need only the file, run before a store is opened (so a refused
/// import never leaves a new, empty store behind): every line sound, each event within the
/// store's limits, each stream's versions contiguous, no event id twice.
pub(crate) fn check_file(file: &Path, limits: Limits) -> CliResult<FilePlan> {
    let mut reader = Reader::open(file)?;
    let mut streams: BTreeMap<StreamId, StreamSpan> = BTreeMap::new();
    let mut ids: HashMap<EventId, usize> = HashMap::new();
    let mut total = 0u64;
    while let Some(event) = reader.next() {
        let event = event?;
        let line = reader.line_number();
        let at =
            |what: String| Failure::problems(format!("{} line {line}: {what}", file.display()));
        let data = event.to_event_data().map_err(|e| at(e.to_string()))?;
        limits.check(std::slice::from_ref(&data)).map_err(|e| {
            at(format!(
                "stream `{}` version {}: {e}",
                event.stream_id, event.version
            ))
        })?;
        if let Some(first_line) = ids.insert(event.id, line) {
            return Err(at(format!(
                "event id {} appears again (first on line {first_line})",
                event.id
            )));
        }
        match streams.get_mut(&event.stream_id) {
            Some(span) if event.version == span.last.next() => span.last = event.version,
            Some(span) => {
                return Err(at(format!(
                    "stream `{}` version {} follows its version {}: a stream's versions must be \
                     contiguous in the file",
                    event.stream_id, event.version, span.last
                )))
            }
            None => {
                streams.insert(
                    event.stream_id.clone(),
                    StreamSpan {
                        first: event.version,
                        last: event.version,
                        line,
                    },
                );
            }
        }
        total += 1;
    }
    Ok(FilePlan { total, streams })
}

/// The checks of `import` against the target: each stream of the file starts at most one past
/// the target's version, and the events the target already holds are the file's (same ids at
/// the same versions: a re-run), so the import can write all of it.
async fn check_target(cx: &Context<'_>, file: &Path, plan: &FilePlan) -> CliResult {
    // Streams the target already has some of the file's versions of: (stream, version) → id.
    let mut overlap: HashMap<(StreamId, Version), EventId> = HashMap::new();
    for (stream, span) in &plan.streams {
        let head = cx.store.any.stream_version(stream).await?;
        if span.first.get() > head.get() + 1 {
            return Err(Failure::problems(format!(
                "{} line {}: stream `{stream}` starts at version {} in the file, but the target \
                 is at version {head}: the versions between would be missing",
                file.display(),
                span.line,
                span.first
            )));
        }
        if span.first <= head {
            let mut held = cx.store.any.read_stream(
                stream,
                ReadStream::forward().from(span.first).limit(
                    usize::try_from(head.get() - span.first.get() + 1).unwrap_or(usize::MAX),
                ),
            );
            while let Some(event) = held.try_next().await? {
                overlap.insert((stream.clone(), event.version), event.id);
            }
        }
    }
    if overlap.is_empty() {
        return Ok(());
    }
    let mut reader = Reader::open(file)?;
    while let Some(event) = reader.next() {
        let event = event?;
        if let Some(held) = overlap.get(&(event.stream_id.clone(), event.version)) {
            if *held != event.id {
                return Err(Failure::problems(format!(
                    "{} line {}: the target already holds another event ({held}) at stream `{}` \
                     version {}",
                    file.display(),
                    reader.line_number(),
                    event.stream_id,
                    event.version
                )));
            }
        }
    }
    Ok(())
}

/// `annals import <file>`, after [`check_file`] passed.
pub(crate) async fn import(cx: &Context<'_>, file: &Path, plan: &FilePlan) -> CliResult {
    check_target(cx, file, plan).await?;
    let total = plan.total;
    let progress = crate::progress::bar(cx, "importing", Some(total));
    let mut copier = Copier::new(cx.store.any.clone());
    for event in Reader::open(file)? {
        let event = event?;
        let data = event.to_event_data().map_err(Failure::problems)?;
        copier
            .push(RestoredEvent::new(
                event.stream_id.clone(),
                event.version,
                event.recorded_at,
                data,
            ))
            .await?;
        progress.inc(1);
    }
    copier.flush().await?;
    progress.finish_and_clear();
    let (written, present) = (copier.written, copier.present);
    cx.out.emit(
        &json!({ "imported": written, "already_present": present, "events": total }),
        || {
            format!(
                "imported {written} events ({present} were already present) from {}",
                file.display()
            )
        },
    )
}
