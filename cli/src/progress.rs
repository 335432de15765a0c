//! Progress bars for long work (hidden in JSON mode and when stderr is not a terminal).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::Context;

/// A bar of `total` items, or a counter when the total is unknown.
pub(crate) fn bar(cx: &Context<'_>, what: &str, total: Option<u64>) -> ProgressBar {
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {pos} {per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_message(what.to_owned());
    if cx.out.is_json() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

/// A counter without a known total.
pub(crate) fn counter(cx: &Context<'_>, what: &str) -> ProgressBar {
    bar(cx, what, None)
}
