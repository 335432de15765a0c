//! `verify`: every record, every stream, every snapshot.

use std::collections::HashMap;

use annals::{
    Error, EventStore, Position, Problem as StoreProblem, ProblemKind, ReadAll, RecordPlace,
    SnapshotStore, StreamId, StreamInfo, Version,
};
use futures::TryStreamExt;
use serde::Serialize;
use serde_json::json;

use crate::failure::{CliResult, Failure};
use crate::Context;

/// One problem found, as the CLI prints it: `PROBLEM <place>: <what>`, or in JSON
/// `{"problem": {"stream", "version", "position", "kind", "problem"}}`.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    place: RecordPlace,
    kind: Option<ProblemKind>,
    problem: String,
}

impl Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        json!({
            "stream": self.place.stream.as_ref().map(StreamId::as_str),
            "version": self.place.version.map(Version::get),
            "position": self.place.position.map(|p| p.to_string()),
            "kind": self.kind.map(|k| k.to_string()),
            "problem": self.problem,
        })
        .serialize(serializer)
    }
}

impl Problem {
    fn new(place: RecordPlace, problem: String) -> Self {
        Problem {
            place,
            kind: None,
            problem,
        }
    }

    fn text(&self) -> String {
        if self.place.is_unknown() {
            format!("PROBLEM store: {}", self.problem)
        } else {
            format!("PROBLEM {}: {}", self.place, self.problem)
        }
    }

    fn of_store(problem: &StoreProblem) -> Self {
        Problem {
            place: problem.place.clone(),
            kind: Some(problem.kind),
            problem: format!("{}: {}", problem.kind, problem.detail),
        }
    }

    pub(crate) fn of_error(error: &Error) -> Self {
        match error {
            Error::Corrupt { place, reason } => Problem {
                place: place.clone(),
                kind: Some(ProblemKind::Corrupt),
                problem: format!("corrupt record: {reason}"),
            },
            other => Problem::new(RecordPlace::new(), crate::failure::one_line(other)),
        }
    }
}

/// The number of events in the store: the sum of every stream's version.
pub(crate) async fn total_events(cx: &Context<'_>) -> annals::Result<u64> {
    cx.store
        .any
        .streams()
        .try_fold(0u64, |n, s| async move { Ok(n + s.version.get()) })
        .await
}

/// `annals verify`.
pub(crate) async fn verify(cx: &Context<'_>, max_problems: usize) -> CliResult {
    // The store's own checks (sled: every record's checksum and every index), then the walk
    // below, which any store gets: the log's order, every stream's versions, the heads.
    let report = cx.store.any.verify().await?;
    let mut problems: Vec<Problem> = report.problems.iter().map(Problem::of_store).collect();
    if report.problems_omitted > 0 {
        problems.push(Problem::new(
            RecordPlace::new(),
            format!(
                "… and {} more problems found by the store's own check",
                report.problems_omitted
            ),
        ));
    }
    // The stream heads, listed once: they size the progress bar and are checked against the log.
    let heads: Vec<StreamInfo> = cx.store.any.streams().try_collect().await?;
    let total = heads.iter().map(|s| s.version.get()).sum();
    let progress = crate::progress::bar(cx, "verifying", Some(total));

    // The global log: readable records, strictly increasing positions, contiguous versions.
    let mut versions: HashMap<StreamId, u64> = HashMap::new();
    let mut last: Option<Position> = None;
    let mut from = Position::START;
    let mut checked = 0u64;
    'log: loop {
        let mut events = cx.store.any.read_all(ReadAll::from(from));
        loop {
            match events.try_next().await {
                Ok(Some(event)) => {
                    checked += 1;
                    progress.inc(1);
                    if last.is_some_and(|l| event.position <= l) {
                        problems.push(Problem::new(
                            RecordPlace::of(&event),
                            format!(
                                "position does not increase (previous {})",
                                last.unwrap_or_default()
                            ),
                        ));
                    }
                    last = Some(event.position);
                    from = event.position.next();
                    let seen = versions.entry(event.stream_id.clone()).or_default();
                    if event.version.get() != *seen + 1 {
                        problems.push(Problem::new(
                            RecordPlace::of(&event),
                            format!("version gap: expected version {}", *seen + 1),
                        ));
                    }
                    *seen = event.version.get();
                }
                Ok(None) => break 'log,
                Err(error) => {
                    let problem = Problem::of_error(&error);
                    // Skip past a corrupt record when we know where it is; else stop here.
                    let resume = match &error {
                        Error::Corrupt { place, .. } => {
                            place.position.filter(|p| *p >= from).map(Position::next)
                        }
                        _ => None,
                    };
                    if !problems
                        .iter()
                        .any(|p| p.problem == problem.problem && p.place == problem.place)
                    {
                        problems.push(problem);
                    }
                    match resume {
                        Some(next) => {
                            from = next;
                            continue 'log;
                        }
                        None => break 'log,
                    }
                }
            }
        }
    }
    progress.finish_and_clear();

    // Stream heads agree with the log; snapshots are not ahead of their streams.
    let stream_count = heads.len() as u64;
    for info in &heads {
        let seen = versions.get(&info.stream_id).copied().unwrap_or(0);
        if seen != info.version.get() && problems.len() < 10_000 {
            problems.push(Problem::new(
                RecordPlace::new()
                    .stream(info.stream_id.clone())
                    .version(info.version),
                format!(
                    "the stream is at version {}, but the log holds {seen} of its events",
                    info.version
                ),
            ));
        }
        match cx.store.any.load_snapshot(&info.stream_id).await {
            Ok(Some(snapshot)) if snapshot.version > info.version => problems.push(Problem::new(
                RecordPlace::new()
                    .stream(info.stream_id.clone())
                    .version(snapshot.version),
                format!(
                    "snapshot at version {} is ahead of the stream (version {})",
                    snapshot.version, info.version
                ),
            )),
            Ok(_) => {}
            Err(e) => problems.push(Problem::of_error(&e)),
        }
    }

    for problem in problems.iter().take(max_problems) {
        cx.out
            .emit(&json!({ "problem": problem }), || problem.text())?;
    }
    let summary = json!({
        "ok": problems.is_empty(),
        "events": checked,
        "streams": stream_count,
        "problems": problems.len(),
    });
    cx.out.emit(&summary, || {
        if problems.is_empty() {
            format!("ok: {checked} events in {stream_count} streams verified")
        } else {
            format!(
                "{} problems found ({checked} events in {stream_count} streams read)",
                problems.len()
            )
        }
    })?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::problems(format!(
            "verify found {} problems",
            problems.len()
        )))
    }
}
