//! `verify`: every record, every stream, every snapshot.

use std::collections::HashMap;

use annals::{Error, EventStore, Position, ReadAll, SnapshotStore, StreamId, StreamInfo, Version};
use futures::TryStreamExt;
use serde::Serialize;
use serde_json::json;

use crate::failure::{CliResult, Failure};
use crate::Context;

/// One problem found.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Problem {
    pub(crate) stream: Option<String>,
    pub(crate) version: Option<u64>,
    pub(crate) position: Option<String>,
    pub(crate) problem: String,
}

impl Problem {
    fn text(&self) -> String {
        let mut place = Vec::new();
        if let Some(s) = &self.stream {
            place.push(format!("stream {s}"));
        }
        if let Some(v) = self.version {
            place.push(format!("version {v}"));
        }
        if let Some(p) = &self.position {
            place.push(format!("position {p}"));
        }
        if place.is_empty() {
            place.push("store".into());
        }
        format!("PROBLEM {}: {}", place.join(", "), self.problem)
    }

    pub(crate) fn of_error(error: &Error) -> Self {
        match error {
            Error::Corrupt {
                stream,
                version,
                position,
                reason,
            } => Problem {
                stream: stream.as_ref().map(ToString::to_string),
                version: version.map(Version::get),
                position: position.map(|p| p.to_string()),
                problem: format!("corrupt record: {reason}"),
            },
            other => Problem {
                stream: None,
                version: None,
                position: None,
                problem: crate::failure::one_line(other),
            },
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
    let mut problems: Vec<Problem> = cx.store.native_verify().await?;
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
                        problems.push(Problem {
                            stream: Some(event.stream_id.to_string()),
                            version: Some(event.version.get()),
                            position: Some(event.position.to_string()),
                            problem: format!(
                                "position does not increase (previous {})",
                                last.unwrap_or_default()
                            ),
                        });
                    }
                    last = Some(event.position);
                    from = event.position.next();
                    let seen = versions.entry(event.stream_id.clone()).or_default();
                    if event.version.get() != *seen + 1 {
                        problems.push(Problem {
                            stream: Some(event.stream_id.to_string()),
                            version: Some(event.version.get()),
                            position: Some(event.position.to_string()),
                            problem: format!("version gap: expected version {}", *seen + 1),
                        });
                    }
                    *seen = event.version.get();
                }
                Ok(None) => break 'log,
                Err(error) => {
                    let problem = Problem::of_error(&error);
                    // Skip past a corrupt record when we know where it is; else stop here.
                    let resume = match &error {
                        Error::Corrupt {
                            position: Some(p), ..
                        } if *p >= from => Some(p.next()),
                        _ => None,
                    };
                    if !problems
                        .iter()
                        .any(|p| p.problem == problem.problem && p.position == problem.position)
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
            problems.push(Problem {
                stream: Some(info.stream_id.to_string()),
                version: Some(info.version.get()),
                position: None,
                problem: format!(
                    "the stream is at version {}, but the log holds {seen} of its events",
                    info.version
                ),
            });
        }
        match cx.store.any.load_snapshot(&info.stream_id).await {
            Ok(Some(snapshot)) if snapshot.version > info.version => problems.push(Problem {
                stream: Some(info.stream_id.to_string()),
                version: Some(snapshot.version.get()),
                position: None,
                problem: format!(
                    "snapshot at version {} is ahead of the stream (version {})",
                    snapshot.version, info.version
                ),
            }),
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
