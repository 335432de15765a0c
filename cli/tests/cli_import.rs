//! `import` refuses a well-formed file it cannot write whole, before writing anything; export
//! files with lines out of order or cut short are named precisely.

mod support;

use std::path::Path;

use annals::{EventData, Position, RecordedEvent, StreamId, Timestamp, Version};
use annals_cli::ExportWriter;
use support::{annals, fill_sled, json_lines, outcome};

fn sled_url(dir: &Path) -> String {
    format!("sled:{}", dir.display())
}

fn recorded(stream: &str, version: u64, position: u64, payload: Vec<u8>) -> RecordedEvent {
    RecordedEvent::new(
        EventData::new("Noted", "application/octet-stream", payload),
        StreamId::new(stream).unwrap(),
        Version::new(version),
        Position::sequence(position),
        Timestamp::from_unix_micros(1_700_000_000_000_000 + i64::try_from(position).unwrap()),
    )
}

/// An export file holding `events`, with every checksum right.
fn export_file(path: &Path, events: &[RecordedEvent]) {
    let mut writer = ExportWriter::create(path, Position::START).unwrap();
    for event in events {
        writer.write(event).unwrap();
    }
    writer.finish().unwrap();
}

/// 24 good events of 8 streams, then `last`.
fn file_ending_with(dir: &Path, name: &str, last: RecordedEvent) -> std::path::PathBuf {
    let mut events: Vec<RecordedEvent> = (1..=24u64)
        .map(|n| recorded(&format!("note-{}", n % 8), n.div_ceil(8), n, vec![1, 2, 3]))
        .collect();
    events.push(last);
    let path = dir.join(name);
    export_file(&path, &events);
    path
}

#[test]
fn a_file_with_an_event_over_the_limits_is_refused_whole_and_leaves_no_store() {
    let dir = tempfile::tempdir().unwrap();
    let big = recorded("note-1", 4, 25, vec![0; 2 * 1024 * 1024]);
    let file = file_ending_with(dir.path(), "big.jsonl", big);
    let target = dir.path().join("target");
    let (code, _, err) = outcome(&annals(
        &sled_url(&target),
        &["import", file.to_str().unwrap()],
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("line 26") && err.contains("payload size"),
        "the message names the line and the limit: {err}"
    );
    assert!(!target.exists(), "a refused import leaves no store behind");
}

#[test]
fn a_file_with_a_stream_version_twice_is_refused_whole_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    // note-1 has versions 1..=3 in the first 24 events; a second version 3 follows.
    let twice = recorded("note-1", 3, 25, vec![9]);
    let file = file_ending_with(dir.path(), "twice.jsonl", twice);
    let target = dir.path().join("target");
    let (code, _, err) = outcome(&annals(
        &sled_url(&target),
        &["import", file.to_str().unwrap()],
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("line 26") && err.contains("note-1") && err.contains("contiguous"),
        "{err}"
    );
    assert!(
        !err.contains("other events in the target"),
        "the target is not to blame: {err}"
    );
    assert!(!target.exists(), "a refused import leaves no store behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_streams_do_not_follow_the_targets_is_refused_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store");
    fill_sled(&db).await;
    let url = sled_url(&db);
    let before = &json_lines(&annals(&url, &["--json", "stats"]))[0]["events"].clone();
    // `account-1` is at version 4 in the target: a file starting it at version 1 with other
    // events is refused, and its other, new streams are not written either.
    let events = vec![
        recorded("fresh-1", 1, 1, vec![1]),
        recorded("account-1", 1, 2, vec![2]),
    ];
    let file = dir.path().join("clash.jsonl");
    export_file(&file, &events);
    let (code, _, err) = outcome(&annals(&url, &["import", file.to_str().unwrap()]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("account-1") && err.contains("line 3"), "{err}");
    let after = &json_lines(&annals(&url, &["--json", "stats"]))[0]["events"];
    assert_eq!(after, before, "nothing of a refused file is written");
}

#[test]
fn lines_out_of_order_are_named_at_the_first_one() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<RecordedEvent> = (1..=6)
        .map(|n| recorded(&format!("note-{n}"), 1, n, vec![1]))
        .collect();
    let file = dir.path().join("ordered.jsonl");
    export_file(&file, &events);
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    // Line 1 is the header: events are lines 2..=7. Swap the events of lines 4 and 5.
    lines.swap(3, 4);
    let swapped = dir.path().join("swapped.jsonl");
    std::fs::write(&swapped, lines.join("\n") + "\n").unwrap();
    let target = dir.path().join("target");
    let (code, _, err) = outcome(&annals(
        &sled_url(&target),
        &["import", swapped.to_str().unwrap()],
    ));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("line 5") && err.contains("does not follow position 4"),
        "the first line out of order is named: {err}"
    );
}

#[test]
fn a_truncated_line_names_the_file_line_not_the_parsers() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<RecordedEvent> = (1..=4)
        .map(|n| recorded(&format!("note-{n}"), 1, n, vec![1]))
        .collect();
    let file = dir.path().join("whole.jsonl");
    export_file(&file, &events);
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let cut = lines[2].len() / 2;
    lines[2].truncate(cut);
    let damaged = dir.path().join("cut.jsonl");
    std::fs::write(&damaged, lines.join("\n") + "\n").unwrap();
    let target = dir.path().join("target");
    let (code, _, err) = outcome(&annals(
        &sled_url(&target),
        &["import", damaged.to_str().unwrap()],
    ));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(
        !err.contains("line 1 column"),
        "no parser line numbers: {err}"
    );
    assert!(err.contains("column"), "the column within the line: {err}");
}
