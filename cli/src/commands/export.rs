//! `export` and `import`.

use std::path::Path;

use annals::{EventStore, Position, ReadAll};
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

/// `annals import <file>`.
pub(crate) async fn import(cx: &Context<'_>, file: &Path) -> CliResult {
    // First pass: check the whole file; nothing is written unless all of it is sound.
    let total = Reader::validate(file)?;
    let progress = crate::progress::bar(cx, "importing", Some(total));
    let mut copier = Copier::new(cx.store.any.clone());
    // Second pass: append (the reader checks every line again as it goes).
    for event in Reader::open(file)? {
        let event = event?;
        let data = event.to_event_data().map_err(Failure::problems)?;
        copier
            .push(event.stream_id.clone(), event.version, data)
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
