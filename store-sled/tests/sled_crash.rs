//! Crash safety: a child process appends multi-event batches with `Durability::Flush` and
//! prints every acknowledged append; the test kills it with SIGKILL at random moments, reopens
//! the store and checks that no acknowledged event is missing, no batch is partly there,
//! versions are contiguous and `verify()` is clean.
//!
//! The same for restores: a child restores batches of events of several streams, interleaved,
//! and the test checks every batch is wholly there or not at all.
//!
//! The child is this test binary itself, re-run with `ANNALS_CRASH_CHILD_DIR` (or
//! `ANNALS_CRASH_RESTORE_DIR`) set and `--exact crash_child` (or `crash_restore_child`).

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use annals::{EventStore, ExpectedVersion, RestoredEvent, Timestamp, Version};
use support::{open, read_stream, shut, sid, to_u64};

const CHILD_ENV: &str = "ANNALS_CRASH_CHILD_DIR";
const RESTORE_ENV: &str = "ANNALS_CRASH_RESTORE_DIR";
/// The segment size the appending child opens its store with, when set (small segments: the
/// kills land around segment rollovers too).
const SEGMENT_ENV: &str = "ANNALS_CRASH_SEGMENT_BYTES";
/// Streams a restoring child interleaves, and events per stream in one batch.
const RESTORED_STREAMS: u64 = 8;
const PER_STREAM: u64 = 40;
const ROUNDS: usize = 24;
const WRITERS: u64 = 4;

/// The child: appends forever until killed. Does nothing in a normal test run.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let path = std::path::Path::new(&dir);
        let store = match std::env::var(SEGMENT_ENV).ok().and_then(|v| v.parse().ok()) {
            Some(bytes) => annals_sled::SledEventStore::builder()
                .path(path)
                .segment_bytes(bytes)
                .open()
                .await
                .expect("open"),
            None => open(path).await,
        };
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let stream = sid(&format!("crash-{w}"));
                let mut version = store.stream_version(&stream).await.expect("version").get();
                let mut n = 0u64;
                loop {
                    n += 1;
                    let size = 1 + (n + w) % 5;
                    let batch_id = format!("{w}-{}", version + 1);
                    let events = (0..size)
                        .map(|i| {
                            annals::EventData::json(
                                "Crashed",
                                &serde_json::json!({ "batch": batch_id, "size": size, "i": i }),
                            )
                            .expect("json")
                        })
                        .collect();
                    let r = store
                        .append(&stream, ExpectedVersion::exact(version), events)
                        .await
                        .expect("append");
                    version = r.last_version.get();
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {stream} {} {}", r.first_version, r.last_version)
                        .expect("stdout");
                    out.flush().expect("flush");
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer");
        }
    });
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_sigkill_and_no_batch_is_half_there() {
    sigkill_rounds(None).await;
}

/// The same with 16 KiB segments: the log rolls over to a new segment every few dozen
/// appends, so kills also land between a seal and the next segment's first frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_sigkill_across_segment_rollovers() {
    sigkill_rounds(Some(16 * 1024)).await;
}

async fn sigkill_rounds(segment_bytes: Option<u64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    // The low 64 bits of the clock are seed enough.
    let seed = u64::try_from(seed & u128::from(u64::MAX)).expect("masked to 64 bits") | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    // The highest acknowledged version of each stream, over every round.
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut total_acks = 0;
    for round in 0..ROUNDS {
        let mut command = Command::new(std::env::current_exe().expect("test binary"));
        command
            .args([
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, &path);
        if let Some(bytes) = segment_bytes {
            command.env(SEGMENT_ENV, bytes.to_string());
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(ack) = line.strip_prefix("ACK ") {
                    let mut parts = ack.split(' ');
                    let stream = parts.next().unwrap_or_default().to_owned();
                    let last: u64 = parts.nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
                    if tx.send((stream, last)).is_err() {
                        break;
                    }
                }
            }
        });
        // Wait for the child to be appending (a hang guard, not a timing assumption)...
        let first = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the child acknowledged nothing");
        // ...then kill it at a random moment.
        std::thread::sleep(Duration::from_millis(rng.next() % 120));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap the child");
        reader.join().expect("reader");
        let mut round_acks = 1;
        for (stream, last) in std::iter::once(first).chain(rx.try_iter()) {
            round_acks += 1;
            let entry = acked.entry(stream).or_default();
            *entry = (*entry).max(last);
        }
        total_acks += round_acks;

        let store = open(&path).await;
        for w in 0..WRITERS {
            let stream = sid(&format!("crash-{w}"));
            let events = read_stream(&store, &stream).await;
            let have = to_u64(events.len());
            let want = acked.get(stream.as_str()).copied().unwrap_or(0);
            assert!(
                have >= want,
                "round {round}: {stream} has {have} events, {want} were acknowledged"
            );
            let mut batches: HashMap<String, (u64, u64)> = HashMap::new();
            for (i, e) in events.iter().enumerate() {
                assert_eq!(
                    e.version.get(),
                    to_u64(i) + 1,
                    "round {round}: {stream} versions have a gap"
                );
                let body: serde_json::Value =
                    serde_json::from_slice(&e.payload).expect("a payload the child wrote");
                let batch = body["batch"].as_str().expect("batch").to_owned();
                let size = body["size"].as_u64().expect("size");
                let seen = batches.entry(batch).or_insert((size, 0));
                seen.1 += 1;
            }
            for (batch, (size, seen)) in batches {
                assert_eq!(
                    seen, size,
                    "round {round}: batch {batch} of {stream} is partly there"
                );
            }
        }
        let report = store.verify().await.expect("verify");
        assert!(report.is_clean(), "round {round}: {report}");
        shut(store).await;
    }
    assert!(
        total_acks > ROUNDS * 2,
        "the children acknowledged too little to test anything"
    );
    if segment_bytes.is_some() {
        let segments = std::fs::read_dir(path.join("annals-log"))
            .expect("the log")
            .count();
        assert!(segments > 3, "the log rolled over only {segments} times");
    }
}

/// The restoring child: restores batches forever until killed, each of [`RESTORED_STREAMS`]
/// streams' next [`PER_STREAM`] versions, interleaved. Does nothing in a normal test run.
#[test]
fn crash_restore_child() {
    let Ok(dir) = std::env::var(RESTORE_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let store = open(std::path::Path::new(&dir)).await;
        // Every stream is at the same version: batches are whole.
        let mut version = store
            .stream_version(&sid("copy-0"))
            .await
            .expect("version")
            .get();
        loop {
            let batch_id = version / PER_STREAM;
            let events: Vec<RestoredEvent> = (0..RESTORED_STREAMS * PER_STREAM)
                .map(|i| {
                    let v = version + 1 + i / RESTORED_STREAMS;
                    RestoredEvent::new(
                        sid(&format!("copy-{}", i % RESTORED_STREAMS)),
                        Version::new(v),
                        Timestamp::from_unix_micros(1_000_000 + i64::try_from(v).expect("small")),
                        // Large enough that a restore spans several of sled's 512 KiB log
                        // buffers, the first of them written before the restore ends.
                        annals::EventData::json(
                            "Copied",
                            &serde_json::json!({ "batch": batch_id, "pad": "x".repeat(4000) }),
                        )
                        .expect("json"),
                    )
                })
                .collect();
            let r = store.restore(events).await.expect("restore");
            assert_eq!(r.written, RESTORED_STREAMS * PER_STREAM);
            version += PER_STREAM;
            let mut out = std::io::stdout().lock();
            writeln!(out, "ACK {batch_id}").expect("stdout");
            out.flush().expect("flush");
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_restores_survive_sigkill_and_no_restore_is_half_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let seed = u64::try_from(seed & u128::from(u64::MAX)).expect("masked to 64 bits") | 1;
    eprintln!("restore crash test seed {seed}");
    let mut rng = Rng(seed);
    let mut acked: Option<u64> = None;
    for round in 0..ROUNDS / 2 {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "crash_restore_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(RESTORE_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(batch) = line
                    .strip_prefix("ACK ")
                    .and_then(|b| b.parse::<u64>().ok())
                {
                    if tx.send(batch).is_err() {
                        break;
                    }
                }
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the child acknowledged nothing");
        std::thread::sleep(Duration::from_millis(rng.next() % 120));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap the child");
        reader.join().expect("reader");
        for batch in std::iter::once(first).chain(rx.try_iter()) {
            acked = acked.max(Some(batch));
        }

        let store = open(&path).await;
        let mut lengths = Vec::new();
        for s in 0..RESTORED_STREAMS {
            let stream = sid(&format!("copy-{s}"));
            let events = read_stream(&store, &stream).await;
            for (i, e) in events.iter().enumerate() {
                assert_eq!(e.version.get(), to_u64(i) + 1, "round {round}: {stream}");
                let body: serde_json::Value =
                    serde_json::from_slice(&e.payload).expect("a payload the child wrote");
                assert_eq!(body["batch"].as_u64(), Some(to_u64(i) / PER_STREAM));
            }
            lengths.push(to_u64(events.len()));
        }
        assert!(
            lengths
                .iter()
                .all(|l| l % PER_STREAM == 0 && *l == lengths[0]),
            "round {round}: a restore is partly there: {lengths:?}"
        );
        let batches = lengths[0] / PER_STREAM;
        if let Some(acked) = acked {
            assert!(
                batches > acked,
                "round {round}: {batches} restores there, restore {acked} was acknowledged"
            );
        }
        let report = store.verify().await.expect("verify");
        assert!(report.is_clean(), "round {round}: {report}");
        shut(store).await;
    }
}
