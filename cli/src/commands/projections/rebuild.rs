//! `projections rebuild` and `projections reset`.

use std::io::Write;
use std::sync::Arc;

use annals::{EventStore, Position};
use annals_projections::RebuildProgress;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::text;
use crate::failure::{CliResult, Failure};
use crate::progress;
use crate::projections::{lags, Lag, RebuildSettings, Registered};
use crate::Context;

/// `annals projections rebuild <name> [--resume] [--keep-old]`: a bar (or JSON progress lines)
/// while the new generation is built, then the swap's report. Ctrl-C cancels: the active
/// generation keeps serving, and `--resume` goes on later.
pub(crate) async fn rebuild(
    cx: &Context<'_>,
    projection: &dyn Registered,
    resume: bool,
    keep_old: bool,
) -> CliResult {
    let name = projection.name().to_string();
    let bar = progress::bar(cx, &format!("rebuilding {name}"), Some(0));
    let shown = progress::Shown::new(&bar);
    let json = cx.out.is_json();
    let on_progress = {
        let bar = bar.clone();
        move |p: &RebuildProgress| {
            if json {
                let line = json!({
                    "projection": p.projection.as_str(),
                    "generation": p.generation,
                    "done": p.done,
                    "total": p.total,
                    "per_second": p.per_second,
                    "eta_s": p.eta.map(|eta| eta.as_secs_f64()),
                });
                // A closed pipe only loses progress lines; the result is still reported.
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            } else {
                bar.set_message(format!("rebuilding {} gen {}", p.projection, p.generation));
                bar.set_length(p.total.max(p.done));
                bar.set_position(p.done);
            }
        }
    };
    let cancel = CancellationToken::new();
    let interrupted = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                cancel.cancel();
            }
        }
    });
    let settings = RebuildSettings {
        resume,
        keep_old,
        progress: Arc::new(on_progress),
        cancel: cancel.clone(),
    };
    let result = projection.rebuild(cx.store, settings).await;
    interrupted.abort();
    bar.finish_and_clear();
    drop(shown);
    let report = match result {
        Ok(report) => report,
        Err(failure) if cancel.is_cancelled() => {
            return Err(Failure::problems(format!(
                "the rebuild of `{name}` was cancelled ({failure}); the active generation still \
                 serves: `projections rebuild {name} --resume` goes on from where it stopped"
            )))
        }
        Err(failure) => return Err(failure.context(format!("rebuilding `{name}`"))),
    };
    let old = if report.kept_old { "kept" } else { "dropped" };
    cx.out.emit(
        &json!({
            "projection": name,
            "result": "swapped",
            "generation": report.generation,
            "previous": report.previous,
            "events": report.events,
            "swapped_at": report.swapped_at.to_string(),
            "elapsed_s": report.elapsed.as_secs_f64(),
            "kept_old": report.kept_old,
        }),
        || {
            format!(
                "{name}: generation {} is active (was {}): {} events in {:.3} s, swapped at {}; \
                 generation {} {old}",
                report.generation,
                report.previous,
                report.events,
                report.elapsed.as_secs_f64(),
                report.swapped_at,
                report.previous,
            )
        },
    )
}

/// What moving one partition's checkpoint does (the events are applied, or not, when the
/// projection next runs).
fn change(
    partition: u32,
    from: Option<Position>,
    from_lag: Lag,
    to: Position,
    to_lag: Lag,
) -> String {
    match from_lag.events.cmp(&to_lag.events) {
        std::cmp::Ordering::Less => format!(
            "partition {partition} from {} back to {to}: the {} events after {to} will be \
             applied again",
            text(from),
            count(to_lag.events - from_lag.events, to_lag.exact)
        ),
        std::cmp::Ordering::Greater => format!(
            "partition {partition} from {} on to {to}: {} events will be skipped, never applied",
            text(from),
            count(from_lag.events - to_lag.events, from_lag.exact)
        ),
        std::cmp::Ordering::Equal => format!("partition {partition} stays at {to}"),
    }
}

fn count(events: u64, exact: bool) -> String {
    if exact {
        events.to_string()
    } else {
        format!("{events} or more")
    }
}

/// `annals projections reset <name> --to <position> [--yes]`: every partition's checkpoint of
/// the active generation moves to the position. Without `--yes`, says what it would do and
/// exits 2.
pub(crate) async fn reset(
    cx: &Context<'_>,
    projection: &dyn Registered,
    to: Position,
    yes: bool,
) -> CliResult {
    let name = projection.name().to_string();
    let stored = projection.stored(cx.store).await?;
    let head = cx.store.any.last_position().await?;
    if to > head.unwrap_or(Position::START) {
        return Err(Failure::usage(format!(
            "{to} is beyond the end of the log ({}): a checkpoint there would skip the events \
             appended next",
            text(head)
        )));
    }
    let mut points = vec![Some(to)];
    points.extend(stored.checkpoints.iter().copied());
    let lagging = lags(&cx.store.any, head, &points).await?;
    let to_lag = lagging[0];
    let changes: Vec<String> = (0u32..)
        .zip(stored.checkpoints.iter().zip(&lagging[1..]))
        .map(|(partition, (from, lag))| change(partition, *from, *lag, to, to_lag))
        .collect();
    let generation = stored.active;
    if !yes {
        return Err(Failure::usage(format!(
            "this would move the checkpoints of `{name}` (generation {generation}): {}; pass \
             --yes to do it",
            changes.join("; ")
        )));
    }
    projection.reset(cx.store, to).await?;
    for ((partition, change), from) in (0u32..).zip(&changes).zip(&stored.checkpoints) {
        tracing::warn!(projection = %name, generation, partition, to = %to, "checkpoint reset: {change}");
        cx.out.emit(
            &json!({
                "projection": name,
                "generation": generation,
                "partition": partition,
                "from": from.map(|p| p.to_string()),
                "to": to.to_string(),
                "change": change,
            }),
            || format!("{name} gen {generation}: reset {change}"),
        )?;
    }
    Ok(())
}
