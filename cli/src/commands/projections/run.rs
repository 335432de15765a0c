//! `projections run`: the registered projections, in this process, until asked to stop.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::text;
use crate::failure::{CliResult, Failure};
use crate::projections::{Projections, Registered, RunStatus, Running};
use crate::Context;

/// `annals projections run [<name>…] [--worker-id ID] [--every SECONDS]`.
pub(crate) async fn run(
    cx: &Context<'_>,
    projections: &Projections,
    names: &[String],
    worker_id: Option<&str>,
    every: u64,
) -> CliResult {
    // Listening before anything starts: a stop asked for during the start is not lost.
    let stop = stop_signal()?;
    let selected = projections.select(cx.store, names)?;
    if selected.is_empty() {
        return Err(Failure::usage(format!(
            "no projection for a {} store is registered with this CLI: nothing to run",
            cx.store.backend.kind()
        )));
    }
    let mut running: Vec<(Arc<dyn Registered>, Box<dyn Running>)> = Vec::new();
    for projection in selected {
        match projection.start(cx.store, worker_id).await {
            Ok(handle) => running.push((projection, handle)),
            Err(failure) => {
                // Those already started stop cleanly before the failure is reported.
                shutdown(cx, running).await?;
                return Err(failure.context(format!("starting projection `{}`", projection.name())));
            }
        }
    }
    let mut reported = HashSet::new();
    let mut failed = false;
    let mut tick = tokio::time::interval(Duration::from_secs(every.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = tick.tick() => {}
        }
        for (projection, handle) in &running {
            let name = projection.name().as_str();
            let status = match handle.status().await {
                Ok(status) => status,
                Err(failure) => {
                    // A status that cannot be read now (the server away) is said, not fatal.
                    eprintln!("annals: projection `{name}`: no status: {failure}");
                    continue;
                }
            };
            for error in &status.errors {
                if reported.insert((name.to_owned(), error.clone())) {
                    failed = true;
                    eprintln!("annals: projection `{name}` stopped: {error}");
                }
            }
            emit_status(cx, name, &status)?;
        }
    }
    let stopped = shutdown(cx, running).await;
    stopped?;
    if failed {
        return Err(Failure::problems(
            "a projection stopped with an error while running (see above)",
        ));
    }
    Ok(())
}

fn emit_status(cx: &Context<'_>, name: &str, status: &RunStatus) -> CliResult {
    cx.out.emit(
        &json!({
            "projection": name,
            "state": status.state,
            "checkpoint": status.checkpoint.map(|p| p.to_string()),
            "lag_events": status.lag.map(|l| l.events),
            "lag_exact": status.lag.is_none_or(|l| l.exact),
            "parked": status.parked,
            "skipped": status.skipped,
            "owned": status.owned,
        }),
        || {
            let owned = match &status.owned {
                Some(owned) if owned.is_empty() => ", owns no partition".to_owned(),
                Some(owned) => format!(
                    ", owns partition{} {}",
                    if owned.len() == 1 { "" } else { "s" },
                    owned
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                None => String::new(),
            };
            format!(
                "{name}: {}, checkpoint {}, lag {}, parked {}, skipped {}{owned}",
                status.state,
                text(status.checkpoint),
                status.lag.map_or_else(|| "-".to_owned(), |l| l.to_string()),
                status.parked,
                status.skipped,
            )
        },
    )
}

/// Shuts every projection down (each commits the batch in hand; workers release their
/// leases), all of them even when one fails, and reports the first failure.
async fn shutdown(
    cx: &Context<'_>,
    running: Vec<(Arc<dyn Registered>, Box<dyn Running>)>,
) -> CliResult {
    let mut first = None;
    for (projection, handle) in running {
        let name = projection.name().to_string();
        match handle.shutdown().await {
            Ok(()) => cx
                .out
                .emit(&json!({ "projection": name, "state": "shut down" }), || {
                    format!("{name}: shut down")
                })?,
            Err(failure) => {
                eprintln!("annals: projection `{name}`: {failure}");
                first.get_or_insert(failure.context(format!("projection `{name}`")));
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// Completes at Ctrl-C, or SIGTERM on Unix.
fn stop_signal() -> CliResult<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
