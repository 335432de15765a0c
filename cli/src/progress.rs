//! Progress bars for long work (hidden in JSON mode and when stderr is not a terminal).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::Context;

/// A bar of `total` items, or a counter when the total is unknown.
pub(crate) fn bar(cx: &Context<'_>, what: &str, total: Option<u64>) -> ProgressBar {
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {rate} eta {eta}")
                .map(with_rate)
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {pos} {rate}")
                .map(with_rate)
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_message(what.to_owned());
    if cx.out.is_json() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

/// Adds `{rate}`: items per second as a whole number (`7,833/s`; indicatif's `{per_sec}` prints
/// three decimals).
fn with_rate(style: ProgressStyle) -> ProgressStyle {
    style.with_key(
        "rate",
        |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{}/s", indicatif::HumanCount(whole(state.per_sec())));
        },
    )
}

/// A rate as a whole number (rates are never negative; a huge one saturates).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn whole(rate: f64) -> u64 {
    // `as` from f64 saturates and maps NaN to 0: exactly what a display wants.
    rate.round() as u64
}

/// A counter without a known total.
pub(crate) fn counter(cx: &Context<'_>, what: &str) -> ProgressBar {
    bar(cx, what, None)
}
