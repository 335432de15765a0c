//! `tail`: follow the global log.

use annals::{subscribe_all, EventStore, Filter, Position};
use futures::StreamExt;

use crate::failure::CliResult;
use crate::{Context, Registry};

/// `annals tail [--category C] [--from POSITION]`.
pub(crate) async fn tail(
    cx: &Context<'_>,
    registry: &Registry,
    category: Option<String>,
    from: Option<Position>,
    count: Option<usize>,
) -> CliResult {
    let from = match from {
        Some(p) => p,
        None => cx
            .store
            .any
            .last_position()
            .await?
            .map_or(Position::START, Position::next),
    };
    let filter = category.map_or_else(Filter::all, |c| Filter::all().category(c));
    let mut events = subscribe_all(cx.store.any.clone(), from, filter);
    let mut seen = 0usize;
    loop {
        if count.is_some_and(|n| seen >= n) {
            return Ok(());
        }
        let next = tokio::select! {
            next = events.next() => next,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(event) = next else { return Ok(()) };
        let event = event?;
        seen += 1;
        let decoded = registry.decode_event(&event);
        cx.out
            .emit(&crate::output::event_json(&event, decoded.clone()), || {
                crate::output::event_text(&event, decoded)
            })?;
    }
}
