//! Progress bars for long work (hidden in JSON mode and when stderr is not a terminal), and
//! the log writer that prints above them.

use std::sync::{Mutex, PoisonError};

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

/// The bar on screen now, if any: log lines and errors are printed above it.
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// While it lives, `bar` is the bar log lines are printed above (see [`LogWriter`]).
#[derive(Debug)]
pub(crate) struct Shown(());

impl Shown {
    /// Makes `bar` the one on screen.
    pub(crate) fn new(bar: &ProgressBar) -> Self {
        *SHOWN.lock().unwrap_or_else(PoisonError::into_inner) = Some(bar.clone());
        Shown(())
    }
}

impl Drop for Shown {
    fn drop(&mut self) {
        *SHOWN.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// Runs `print` (writing to stderr or stdout) with the bar on screen hidden meanwhile, so what
/// it prints stays above the bar instead of being drawn over.
pub(crate) fn above<R>(print: impl FnOnce() -> R) -> R {
    let shown = SHOWN.lock().unwrap_or_else(PoisonError::into_inner).clone();
    match shown {
        Some(bar) => bar.suspend(print),
        None => print(),
    }
}

/// Where log lines go: stderr, above the bar on screen (one log line per writer: it is
/// buffered and written whole when dropped).
#[derive(Debug, Default)]
pub(crate) struct LogWriter(Vec<u8>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.0.is_empty() {
            let line = std::mem::take(&mut self.0);
            above(|| std::io::stderr().write_all(&line))?;
        }
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        let _ = std::io::Write::flush(self);
    }
}
