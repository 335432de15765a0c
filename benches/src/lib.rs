//! # annals-benches
//!
//! The measuring side of Annals: criterion benches (`cargo bench -p annals-benches`) and the
//! `report` binary, which runs each [`Scenario`] against a raw baseline doing the same work on
//! the same backend, alternating the two for several rounds, and prints the medians and their
//! ratio. `BENCHMARKS.md` at the repository root explains every scenario and its baseline.
//!
//! A scenario is a value implementing [`Scenario`]; [`all_scenarios`] lists them. To add one
//! (a new store, a new layer), implement the trait in its own module and add it
//! to that list.

use std::future::Future;
use std::time::{Duration, Instant};

pub mod copy_scenarios;
pub mod payload;
pub mod pg_scenarios;
pub mod proj_lag;
pub mod proj_scenarios;
pub mod proj_workers;
pub mod rebuild_scenarios;
pub mod repo_scenarios;
pub mod sled_scenarios;

/// How a report run is sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Smaller counts, so the whole report finishes in under 3 minutes on 2 cores.
    pub quick: bool,
    /// A/B rounds per scenario (at least 3).
    pub rounds: usize,
}

impl Settings {
    /// Picks `quick` or `full` by mode.
    pub fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// The scenario's name (with the counts used in quick mode, when they differ).
    pub scenario: String,
    /// What `annals` and `baseline` measure, e.g. `events/s`.
    pub unit: &'static str,
    /// The median of the Annals side.
    pub annals: f64,
    /// The median of the baseline.
    pub baseline: f64,
    /// `annals / baseline`, oriented so that higher is better.
    pub ratio: f64,
    /// The lowest ratio the issues accept; 0 for a line judged only by its rate, or shown for
    /// information only.
    pub target: f64,
    /// The lowest rate (in `unit`) the issues accept, for lines judged by their rate.
    pub floor: Option<f64>,
    /// Rounds measured.
    pub rounds: usize,
}

impl Line {
    /// A line judged by its ratio to the baseline: `annals / baseline` must reach `target`
    /// (0 for a line shown for information only).
    pub fn new(
        scenario: String,
        unit: &'static str,
        (annals, baseline): (f64, f64),
        target: f64,
        rounds: usize,
    ) -> Self {
        Line {
            scenario,
            unit,
            annals,
            baseline,
            ratio: annals / baseline,
            target,
            floor: None,
            rounds,
        }
    }

    /// A line judged by its rate alone: `annals` must reach `floor`; the ratio to the
    /// baseline is shown for information.
    pub fn with_floor(
        scenario: String,
        unit: &'static str,
        (annals, baseline): (f64, f64),
        floor: f64,
        rounds: usize,
    ) -> Self {
        Line {
            scenario,
            unit,
            annals,
            baseline,
            ratio: annals / baseline,
            target: 0.0,
            floor: Some(floor),
            rounds,
        }
    }

    /// Whether the ratio reaches the target and the rate its floor (always, for a line
    /// without either).
    pub fn passes(&self) -> bool {
        self.ratio >= self.target && self.floor.is_none_or(|floor| self.annals >= floor)
    }

    /// Whether the line is shown for information only (it has no target and no floor).
    pub fn is_informational(&self) -> bool {
        self.target == 0.0 && self.floor.is_none()
    }

    /// The line as one JSON object with exactly the report's keys.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "scenario": self.scenario,
            "unit": self.unit,
            "annals": round3(self.annals),
            "baseline": round3(self.baseline),
            "ratio": round3(self.ratio),
            "target": self.target,
            "floor": self.floor,
            "rounds": self.rounds,
        })
        .to_string()
    }

    /// The line as aligned text.
    pub fn to_text(&self) -> String {
        let target = match self.floor {
            Some(floor) => format!("floor {floor:.0}/s"),
            None => format!("target {:>4.2}", self.target),
        };
        format!(
            "{:<44} {:>14.1} {:>14.1} {:<9} ratio {:>6.3}  {target}  {}  ({} rounds)",
            self.scenario,
            self.annals,
            self.baseline,
            self.unit,
            self.ratio,
            if self.is_informational() {
                "info"
            } else if self.passes() {
                "ok"
            } else {
                "MISSED"
            },
            self.rounds
        )
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A measured scenario: an Annals operation and its raw baseline.
pub trait Scenario: Send + Sync {
    /// The name printed on the line; may depend on the settings (quick runs use smaller counts
    /// and say so in the name).
    fn name(&self, settings: &Settings) -> String;

    /// Runs the scenario and returns its line.
    ///
    /// # Errors
    ///
    /// Any failure of the store or the baseline; the report prints it and goes on.
    fn run<'a>(
        &'a self,
        settings: &'a Settings,
    ) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<Line>> + Send + 'a>>;
}

/// Every scenario of the report, in order.
pub fn all_scenarios() -> Vec<Box<dyn Scenario>> {
    let mut list: Vec<Box<dyn Scenario>> = Vec::new();
    list.extend(sled_scenarios::scenarios());
    list.extend(pg_scenarios::scenarios());
    list.extend(repo_scenarios::scenarios());
    list.extend(copy_scenarios::scenarios());
    list.extend(proj_scenarios::scenarios());
    list.extend(rebuild_scenarios::scenarios());
    list
}

/// The median of `values` (which must not be empty).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Runs `annals` and `baseline` alternately for `rounds` rounds (A B, then B A, … so drift in
/// the machine hits both sides alike) and returns their medians. Each call returns one
/// measurement (a rate, higher is better).
///
/// # Errors
///
/// The first failure of either side.
pub async fn alternate<A, AF, B, BF>(
    rounds: usize,
    mut annals: A,
    mut baseline: B,
) -> anyhow::Result<(f64, f64)>
where
    A: FnMut(usize) -> AF,
    AF: Future<Output = anyhow::Result<f64>>,
    B: FnMut(usize) -> BF,
    BF: Future<Output = anyhow::Result<f64>>,
{
    let mut a = Vec::with_capacity(rounds);
    let mut b = Vec::with_capacity(rounds);
    for round in 0..rounds {
        if round % 2 == 0 {
            a.push(annals(round).await?);
            b.push(baseline(round).await?);
        } else {
            b.push(baseline(round).await?);
            a.push(annals(round).await?);
        }
    }
    Ok((median(&mut a), median(&mut b)))
}

/// Events per second for `count` events done in `elapsed`.
pub fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Times `f`.
pub async fn timed<F: Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<Duration> {
    let started = Instant::now();
    f.await?;
    Ok(started.elapsed())
}

/// This process's peak resident set (`VmHWM` of `/proc/self/status`), in KiB: what a memory
/// child prints as `VMHWM_KIB <n>`.
///
/// # Errors
///
/// A `/proc/self/status` that cannot be read or has no `VmHWM`.
pub fn peak_kib() -> anyhow::Result<u64> {
    use anyhow::Context as _;
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")
}

/// Runs this binary as a memory child with `args` and returns the peak it printed
/// (`VMHWM_KIB <n>`), in MiB.
///
/// # Errors
///
/// The child failing (with its stderr), or printing no peak.
pub async fn child_peak_mib<I, A>(args: I) -> anyhow::Result<f64>
where
    I: IntoIterator<Item = A>,
    A: AsRef<std::ffi::OsStr>,
{
    use anyhow::Context as _;
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .args(&args)
        .output()
        .await
        .with_context(|| format!("running the memory child {args:?}"))?;
    anyhow::ensure!(
        output.status.success(),
        "memory child {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let kib: f64 = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("VMHWM_KIB "))
        .context("the child printed no VmHWM")?
        .trim()
        .parse()?;
    Ok(kib / 1024.0)
}
