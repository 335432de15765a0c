//! `dlq list`, `dlq retry`, `dlq drop`: a projection's dead letters.

use annals::StreamId;
use annals_projections::DeadLetterKind;
use serde_json::json;

use crate::args::DlqCommand;
use crate::failure::{CliResult, Failure};
use crate::projections::{ParkedAction, Projections};
use crate::Context;

/// `annals dlq …`.
pub(crate) async fn dlq(
    cx: &Context<'_>,
    projections: &Projections,
    command: &DlqCommand,
) -> CliResult {
    match command {
        DlqCommand::List { name, stream } => {
            let projection = projections.get(name)?;
            let stream = stream.as_deref().map(stream_id).transpose()?;
            let stored = projection.stored(cx.store).await?;
            let letters = stored
                .dead
                .iter()
                .filter(|l| stream.as_ref().is_none_or(|s| *s == l.event.stream_id));
            let mut header = true;
            for letter in letters {
                if std::mem::take(&mut header) {
                    cx.out.text_only(|| {
                        format!(
                            "{:>10} {:<24} {:>7} {:<20} {:<7} {:<32} REASON",
                            "POSITION", "STREAM", "VERSION", "TYPE", "KIND", "AT"
                        )
                    })?;
                }
                let event = &letter.event;
                let kind = match letter.kind {
                    DeadLetterKind::Parked => "parked",
                    DeadLetterKind::Skipped => "skipped",
                };
                cx.out.emit(
                    &json!({
                        "projection": name,
                        "generation": stored.active,
                        "partition": letter.partition,
                        "position": event.position.to_string(),
                        "stream": event.stream_id,
                        "version": event.version,
                        "event_type": event.event_type,
                        "event_id": event.id.to_string(),
                        "kind": kind,
                        "reason": letter.reason,
                        "at": letter.at.to_string(),
                    }),
                    || {
                        format!(
                            "{:>10} {:<24} {:>7} {:<20} {kind:<7} {:<32} {}",
                            event.position.to_string(),
                            event.stream_id.as_str(),
                            event.version.to_string(),
                            event.event_type,
                            letter.at.to_string(),
                            letter.reason.replace('\n', " ")
                        )
                    },
                )?;
            }
            if header {
                cx.out
                    .text_only(|| format!("projection `{name}` has no dead letters"))?;
            }
            Ok(())
        }
        DlqCommand::Retry { name, stream } => {
            parked(cx, projections, name, stream, ParkedAction::Retry).await
        }
        DlqCommand::Drop { name, stream } => {
            parked(cx, projections, name, stream, ParkedAction::Drop).await
        }
    }
}

/// `dlq retry` and `dlq drop`: the projection's runner started for the change, then shut
/// down (its partitions held by this process meanwhile).
async fn parked(
    cx: &Context<'_>,
    projections: &Projections,
    name: &str,
    stream: &str,
    action: ParkedAction,
) -> CliResult {
    let projection = projections.get(name)?;
    let stream = stream_id(stream)?;
    let count = projection.parked(cx.store, &stream, action).await?;
    let (verb, key) = match action {
        ParkedAction::Retry => ("applied again", "retried"),
        ParkedAction::Drop => ("dropped", "dropped"),
    };
    tracing::warn!(projection = name, stream = %stream, count, "dead letters {verb}");
    cx.out.emit(
        &json!({ "projection": name, "stream": stream, key: count }),
        || format!("{name}: {count} parked events of {stream} {verb}"),
    )
}

fn stream_id(text: &str) -> CliResult<StreamId> {
    StreamId::new(text).map_err(|e| Failure::usage(crate::failure::one_line(&e)))
}
