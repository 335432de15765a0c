//! `projections rebuild` and `projections reset`.

use annals::Position;

use crate::failure::{CliResult, Failure};
use crate::projections::Registered;
use crate::Context;

/// `annals projections rebuild <name> [--resume] [--keep-old]`.
pub(crate) async fn rebuild(
    _cx: &Context<'_>,
    projection: &dyn Registered,
    _resume: bool,
    _keep_old: bool,
) -> CliResult {
    Err(Failure::usage(format!(
        "rebuilding `{}`: not wired yet",
        projection.name()
    )))
}

/// `annals projections reset <name> --to <position> [--yes]`.
pub(crate) async fn reset(
    _cx: &Context<'_>,
    projection: &dyn Registered,
    _to: Position,
    _yes: bool,
) -> CliResult {
    Err(Failure::usage(format!(
        "resetting `{}`: not wired yet",
        projection.name()
    )))
}
