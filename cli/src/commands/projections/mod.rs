//! `projections list`, `projections status` (here), `run` and `rebuild` / `reset`.

mod rebuild;
mod run;

use annals::{EventStore, LeaseInfo, Leases, Position};
use serde_json::json;

use crate::args::ProjectionsCommand;
use crate::failure::CliResult;
use crate::projections::{lags, Projections, Registered, Stored};
use crate::Context;

/// `annals projections …`.
pub(crate) async fn projections(
    cx: &Context<'_>,
    projections: &Projections,
    command: &ProjectionsCommand,
) -> CliResult {
    match command {
        ProjectionsCommand::Run {
            names,
            worker_id,
            every,
        } => run::run(cx, projections, names, worker_id.as_deref(), *every).await,
        ProjectionsCommand::List => list(cx, projections).await,
        ProjectionsCommand::Status { name } => {
            let selected = match name {
                Some(name) => vec![projections.get(name)?.clone()],
                None => projections.on(cx.store)?,
            };
            for projection in selected {
                status(cx, projection.as_ref()).await?;
            }
            Ok(())
        }
        ProjectionsCommand::Rebuild {
            name,
            resume,
            keep_old,
        } => rebuild::rebuild(cx, projections.get(name)?.as_ref(), *resume, *keep_old).await,
        ProjectionsCommand::Reset { name, to, yes } => {
            rebuild::reset(cx, projections.get(name)?.as_ref(), *to, *yes).await
        }
    }
}

/// A position for text output (`-` for none).
pub(crate) fn text(position: Option<Position>) -> String {
    position.map_or_else(|| "-".to_owned(), |p| p.to_string())
}

/// The leases of a projection's partitions held now, by the workers running it.
async fn partition_leases(cx: &Context<'_>, name: &str) -> CliResult<Vec<LeaseInfo>> {
    Ok(cx.store.any.leases(&format!("{name}/partitions/")).await?)
}

/// The partition a lease is named after (`<projection>/partitions/<n>`).
fn lease_partition(lease: &LeaseInfo) -> Option<u32> {
    lease.name.rsplit('/').next()?.parse().ok()
}

/// `annals projections list`: one line per registered projection.
async fn list(cx: &Context<'_>, projections: &Projections) -> CliResult {
    let all = projections.on(cx.store)?;
    if all.is_empty() && !cx.out.is_json() {
        eprintln!(
            "annals: no projection for a {} store is registered with this CLI",
            cx.store.backend.kind()
        );
    }
    let head = cx.store.any.last_position().await?;
    let mut header = true;
    for projection in &all {
        let name = projection.name().as_str();
        let partitions = projection.options().partition_count();
        let stored = projection.stored(cx.store).await?;
        let lag = lags(&cx.store.any, head, &stored.checkpoints)
            .await?
            .into_iter()
            .max_by_key(|l| l.events);
        let (parked, skipped) = stored.counts(None);
        let owned = partition_leases(cx, name).await?.len();
        // The store's leases say whether workers run it; a sled store is this process's alone.
        let state = if owned > 0 { "running" } else { "idle" };
        if std::mem::take(&mut header) {
            cx.out.text_only(|| {
                format!(
                    "{:<20} {:>3} {:<8} {:>12} {:>8} {:>7} {:>7} {:>8}",
                    "PROJECTION",
                    "GEN",
                    "STATE",
                    "CHECKPOINT",
                    "LAG",
                    "PARKED",
                    "SKIPPED",
                    "BUILDING"
                )
            })?;
        }
        cx.out.emit(
            &json!({
                "projection": name,
                "partitions": partitions,
                "generation": stored.active,
                "state": state,
                "owned_partitions": owned,
                "checkpoint": stored.lowest().map(|p| p.to_string()),
                "head": head.map(|p| p.to_string()),
                "lag_events": lag.map(|l| l.events),
                "lag_exact": lag.is_none_or(|l| l.exact),
                "parked": parked,
                "skipped": skipped,
                "building": stored.building,
            }),
            || {
                format!(
                    "{name:<20} {:>3} {state:<8} {:>12} {:>8} {parked:>7} {skipped:>7} {:>8}",
                    stored.active,
                    text(stored.lowest()),
                    lag.map_or_else(|| "-".to_owned(), |l| l.to_string()),
                    stored
                        .building
                        .map_or_else(|| "-".to_owned(), |g| g.to_string()),
                )
            },
        )?;
    }
    Ok(())
}

/// `annals projections status [<name>]`: one line per partition.
async fn status(cx: &Context<'_>, projection: &dyn Registered) -> CliResult {
    let name = projection.name().as_str();
    let stored: Stored = projection.stored(cx.store).await?;
    let head = cx.store.any.last_position().await?;
    let lags = lags(&cx.store.any, head, &stored.checkpoints).await?;
    let leases = partition_leases(cx, name).await?;
    let generation = stored.active;
    for (partition, (checkpoint, lag)) in (0u32..).zip(stored.checkpoints.iter().zip(&lags)) {
        let (parked, skipped) = stored.counts(Some(partition));
        let lease = leases
            .iter()
            .find(|l| lease_partition(l) == Some(partition));
        let renewed_ms = lease.map(|l| u64::try_from(l.renewed.as_millis()).unwrap_or(u64::MAX));
        cx.out.emit(
            &json!({
                "projection": name,
                "generation": generation,
                "partition": partition,
                "checkpoint": checkpoint.map(|p| p.to_string()),
                "lag_events": lag.events,
                "lag_exact": lag.exact,
                "parked": parked,
                "skipped": skipped,
                "owner": lease.map(|l| l.holder.as_str()),
                "epoch": lease.map(|l| l.epoch),
                "renewed_ms_ago": renewed_ms,
            }),
            || {
                let owner = match lease {
                    Some(l) => format!(
                        "  owner {} (epoch {}, renewed {:.1} s ago)",
                        l.holder,
                        l.epoch,
                        l.renewed.as_secs_f64()
                    ),
                    None if cx.store.backend.kind() == "postgres" => "  no owner".to_owned(),
                    None => String::new(),
                };
                format!(
                    "{name} gen {generation} partition {partition}: checkpoint {}  lag {lag}  \
                     parked {parked}  skipped {skipped}{owner}",
                    text(*checkpoint)
                )
            },
        )?;
    }
    if let Some(building) = stored.building {
        cx.out
            .emit(&json!({ "projection": name, "building": building }), || {
                format!(
                    "{name}: generation {building} is being built (or its rebuild was \
                     interrupted: `projections rebuild {name} --resume`)"
                )
            })?;
    }
    Ok(())
}
