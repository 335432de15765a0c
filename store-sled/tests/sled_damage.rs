//! Bit rot in sled's files is never silent (issue 12, §1 and §2): one byte flipped at a random
//! offset of a closed store's `db` file either changes nothing a reader sees, or is reported as
//! damage — refused at open, a read's error, or a `verify` problem — and never as a vague
//! backend error (sled panics) or a format error (sled's "unsupported").

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use annals::{
    CheckpointStore, Error, EventStore, ExpectedVersion, Position, ReadAll, ReadStream,
    RecordedEvent, RestoredEvent, Snapshot, SnapshotStore, StreamId, Timestamp, Version,
};
use annals_sled::SledEventStore;
use futures::TryStreamExt;
use support::{event, sid, to_u64, to_usize};

/// Trials: one flipped byte each, in a fresh copy of the store.
const TRIALS: usize = 200;
/// Events appended per session (three sessions, and a restore of 400 more): enough for sled's
/// file to span several segments, where damage makes sled recover an older state or panic.
const PER_SESSION: u64 = 1500;
/// The seed of the offsets and flips, so a failure reproduces. (Sled's layout of the same
/// content varies a little from run to run — the indexer thread's timing — so the counts of
/// each outcome do too.)
const SEED: u64 = 0x5EED_12AB_CDEF_0042;

/// A tiny xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Everything a reader can see of a store.
#[derive(Debug, PartialEq)]
struct Content {
    log: Vec<RecordedEvent>,
    /// Each stream's version and events.
    streams: BTreeMap<String, (Version, Vec<RecordedEvent>)>,
    snapshots: BTreeMap<String, Option<Snapshot>>,
    checkpoints: BTreeMap<String, Option<Position>>,
}

fn snapshot_streams() -> Vec<StreamId> {
    (0..12).map(|i| sid(&format!("acct-{i}"))).collect()
}

fn checkpoint_names() -> Vec<String> {
    (0..8).map(|i| format!("projection-{i}")).collect()
}

/// Writes the store the trials damage: appends to 20 interleaved streams, a restore of 10 more
/// (mixed commit records), snapshots and checkpoints, over three sessions.
async fn build(path: &Path) {
    let mut rng = Rng(SEED ^ 0xABCD);
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    let mut n = 0u64;
    for session in 0..3u64 {
        let store = support::open(path).await;
        let mut appended = 0;
        while appended < PER_SESSION {
            let stream = format!("acct-{}", rng.below(20));
            let count = 1 + rng.below(3);
            let version = versions.entry(stream.clone()).or_default();
            let events = (0..count).map(|i| event("Deposited", n + i)).collect();
            store
                .append(&sid(&stream), ExpectedVersion::exact(*version), events)
                .await
                .expect("append");
            *version += count;
            n += count;
            appended += count;
        }
        if session == 1 {
            let restored = (0..400u64)
                .map(|i| {
                    let stream = format!("copy-{}", i % 10);
                    RestoredEvent::new(
                        sid(&stream),
                        Version::new(i / 10 + 1),
                        Timestamp::from_unix_micros(
                            1_600_000_000_000_000 + i64::try_from(i).expect("small"),
                        ),
                        event("Copied", i),
                    )
                })
                .collect();
            store.restore(restored).await.expect("restore");
        }
        for stream in snapshot_streams() {
            let version = versions.get(stream.as_str()).copied().unwrap_or(0);
            if version > 0 && rng.below(2) == 0 {
                let state = format!("{{\"session\":{session},\"version\":{version}}}");
                let snapshot =
                    Snapshot::new(stream, Version::new(version), "application/json", state);
                store.save_snapshot(snapshot).await.expect("snapshot");
            }
        }
        for name in checkpoint_names() {
            if rng.below(2) == 0 {
                let position = Position::sequence(rng.below(n) + 1);
                store
                    .save_checkpoint(&name, position)
                    .await
                    .expect("checkpoint");
            }
        }
        support::shut(store).await;
    }
}

/// Reads everything, the first error ending the read.
async fn read_everything(store: &SledEventStore) -> Result<Content, Error> {
    let log: Vec<RecordedEvent> = store.read_all(ReadAll::all()).try_collect().await?;
    let mut streams = BTreeMap::new();
    let names: std::collections::BTreeSet<String> =
        log.iter().map(|e| e.stream_id.to_string()).collect();
    let listed: Vec<_> = store.streams().try_collect().await?;
    let mut all: std::collections::BTreeSet<String> = names;
    all.extend(listed.iter().map(|s| s.stream_id.to_string()));
    for name in all {
        let events: Vec<RecordedEvent> = store
            .read_stream(&sid(&name), ReadStream::forward())
            .try_collect()
            .await?;
        let version = store.stream_version(&sid(&name)).await?;
        streams.insert(name, (version, events));
    }
    let mut snapshots = BTreeMap::new();
    for stream in snapshot_streams() {
        snapshots.insert(stream.to_string(), store.load_snapshot(&stream).await?);
    }
    let mut checkpoints = BTreeMap::new();
    for name in checkpoint_names() {
        checkpoints.insert(name.clone(), store.load_checkpoint(&name).await?);
    }
    Ok(Content {
        log,
        streams,
        snapshots,
        checkpoints,
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// How one trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    NoEffect,
    AtOpen,
    AtRead,
    ByVerify,
}

/// An error a damaged file may cause: corruption, saying so. Anything else fails the test.
fn damage_error(error: &Error, trial: usize, offset: u64, when: &str) {
    assert!(
        matches!(error, Error::Corrupt { .. }),
        "trial {trial} (offset {offset}): {when} failed with something other than corruption: \
         {error:?}"
    );
}

/// The file a trial damages: sled's `db`, or the log's segment file (within its written part
/// and a little past it: the rest is zeros no read reaches).
#[derive(Clone, Copy, Debug)]
enum Target {
    Db,
    Log,
}

/// The log's one segment file of the store at `path`, and how far it holds data.
fn segment_of(path: &Path) -> (PathBuf, u64) {
    let dir = path.join("annals-log");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "one segment");
    let file = files.remove(0);
    let bytes = std::fs::read(&file).expect("read the segment");
    let used = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    (file, to_u64(used))
}

async fn trial(
    original: &Content,
    source: &Path,
    work: &Path,
    trial: usize,
    rng: &mut Rng,
    target: Target,
) -> Outcome {
    let path: PathBuf = work.join(format!("trial-{trial}"));
    copy_dir(source, &path);
    let (db, span) = match target {
        Target::Db => {
            let db = path.join("db");
            let len = std::fs::metadata(&db).expect("db").len();
            (db, len)
        }
        // A few bytes past the written part: a frame head there is what a torn write leaves.
        Target::Log => {
            let (file, used) = segment_of(&path);
            (file, used + 64)
        }
    };
    let mut bytes = std::fs::read(&db).expect("read db");
    let offset = rng.below(span);
    let flip = u8::try_from(1 + rng.below(255)).expect("a byte");
    bytes[to_usize(offset)] ^= flip;
    std::fs::write(&db, bytes).expect("write db");

    let outcome = async {
        let store = match SledEventStore::builder().path(&path).open().await {
            Ok(store) => store,
            Err(error) => {
                damage_error(&error, trial, offset, "open");
                if std::env::var_os("DAMAGE_VERBOSE").is_some() {
                    println!("trial {trial} offset {offset}: {error}");
                }
                return Outcome::AtOpen;
            }
        };
        let outcome = match read_everything(&store).await {
            Err(error) => {
                damage_error(&error, trial, offset, "a read");
                if std::env::var_os("DAMAGE_VERBOSE").is_some() {
                    println!("trial {trial} offset {offset}: read: {error}");
                }
                Outcome::AtRead
            }
            Ok(content) => {
                let report = match store.verify().await {
                    Ok(report) => report,
                    Err(error) => {
                        damage_error(&error, trial, offset, "verify");
                        return Outcome::ByVerify;
                    }
                };
                if std::env::var_os("DAMAGE_VERBOSE").is_some() && !report.is_clean() {
                    println!("trial {trial} offset {offset}: verify: {report}");
                }
                if report.is_clean() {
                    assert!(
                        content == *original,
                        "trial {trial} (offset {offset}, flip {flip:#04x}): the store opened, read \
                         and verified clean, yet its content differs from the original"
                    );
                    Outcome::NoEffect
                } else {
                    Outcome::ByVerify
                }
            }
        };
        // A damaged store may fail to close; that is not a silent loss.
        if let Err(error) = store.close().await {
            if std::env::var_os("DAMAGE_VERBOSE").is_some() {
                println!("CLOSE trial {trial}: {error:?}");
            }
        }
        outcome
    };
    let outcome = tokio::time::timeout(Duration::from_secs(60), outcome)
        .await
        .unwrap_or_else(|_| panic!("trial {trial} (offset {offset}) hangs"));
    if std::env::var_os("DAMAGE_VERBOSE").is_some() {
        println!("OUTCOME {offset} {outcome:?}");
    }
    let _ = std::fs::remove_dir_all(&path);
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_anywhere_in_the_db_file_is_never_a_silent_loss() {
    flipped_bytes(Target::Db).await;
}

/// The same for the log's segment file (format 5): every byte of it is under a checksum —
/// the segment header's, each frame's (its length and positions), each commit record's header
/// and each event's — and the log's end is known from the manifest, so a flip inside the log is
/// damage, and one past its end a torn tail cut off with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_anywhere_in_the_log_is_never_a_silent_loss() {
    flipped_bytes(Target::Log).await;
}

async fn flipped_bytes(target: Target) {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("store");
    build(&source).await;
    // The content, read from a copy: an open lets sled record how far its log is sound (its
    // snapshot), and the trials damage the files as the last session left them.
    let original = {
        let reference = dir.path().join("reference");
        copy_dir(&source, &reference);
        let store = support::open(&reference).await;
        let content = read_everything(&store)
            .await
            .expect("the intact store reads");
        assert!(store.verify().await.expect("verify").is_clean());
        support::shut(store).await;
        content
    };
    assert!(
        original.log.len() >= to_usize(3 * PER_SESSION),
        "{} events",
        original.log.len()
    );
    assert!(original.snapshots.values().filter(|s| s.is_some()).count() > 3);
    assert!(
        original
            .checkpoints
            .values()
            .filter(|c| c.is_some())
            .count()
            > 3
    );

    if std::env::var_os("DAMAGE_VERBOSE").is_some() {
        for entry in std::fs::read_dir(&source).expect("dir") {
            let entry = entry.expect("entry");
            println!(
                "FILE {:?} {}",
                entry.file_name(),
                entry.metadata().expect("meta").len()
            );
        }
    }
    let work = dir.path().join("trials");
    // `DAMAGE_SEED` and `DAMAGE_TRIALS` run other trials (a longer hunt); `DAMAGE_VERBOSE`
    // prints each trial's outcome.
    let seed = std::env::var("DAMAGE_SEED").map_or(SEED, |s| s.parse().expect("a seed"));
    let trials = std::env::var("DAMAGE_TRIALS").map_or(TRIALS, |s| s.parse().expect("a count"));
    let mut rng = Rng(seed);
    let mut counts: BTreeMap<Outcome, usize> = BTreeMap::new();
    for n in 0..trials {
        let outcome = trial(&original, &source, &work, n, &mut rng, target).await;
        *counts.entry(outcome).or_default() += 1;
    }
    println!("{target:?}: {trials} trials (seed {seed:#x}): {counts:?}");
    assert!(
        counts.keys().any(|o| *o != Outcome::NoEffect),
        "no trial damaged anything: the test tests nothing"
    );
}
