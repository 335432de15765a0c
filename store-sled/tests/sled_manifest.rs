//! The manifest beside sled's files (issue 12, §1 and §2): files holding less than it records
//! are refused as damaged, naming what is missing; `accept_loss` opens them and `verify`
//! reports the loss; a missing or damaged manifest is refused once the store had one; files
//! sled cannot read are damage, not a format error.

mod support;

use std::path::Path;
use std::time::Duration;

use annals::{
    CheckpointStore, Error, EventStore, ExpectedVersion, Position, ProblemKind, Snapshot,
    SnapshotStore, Version,
};
use annals_sled::SledEventStore;
use support::{event, open, read_all, shut, sid};

const MANIFEST: &str = "annals-manifest";

/// The log's directory of segment files (format 5).
const LOG: &str = "annals-log";

/// Copies the log's segment files from `from` to `to` (replacing those there).
fn copy_log(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to.join(LOG));
    std::fs::create_dir_all(to.join(LOG)).expect("mkdir");
    for entry in std::fs::read_dir(from.join(LOG)).expect("read_dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(LOG).join(entry.file_name())).expect("copy");
    }
}

/// Copies the store's files — sled's and the log's, not the manifest — from `from` to `to`.
fn copy_sled_files(from: &Path, to: &Path) {
    copy_log(from, to);
    for entry in std::fs::read_dir(to).expect("read_dir") {
        let entry = entry.expect("entry");
        if entry.file_name() != MANIFEST && entry.file_type().expect("type").is_file() {
            std::fs::remove_file(entry.path()).expect("remove");
        }
    }
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        if entry.file_name() != MANIFEST && entry.file_type().expect("type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

fn copy_all(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    copy_log(from, to);
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

async fn append(store: &SledEventStore, stream: &str, from: u64, count: u64) {
    let events = (from..from + count).map(|n| event("E", n)).collect();
    store
        .append(&sid(stream), ExpectedVersion::exact(from), events)
        .await
        .expect("append");
}

/// A store whose files were put back to an older state (as damage makes sled recover one,
/// and as a log's segment files put back from an older copy are) under a manifest that saw 5
/// more events and a snapshot.
async fn rolled_back(path: &Path, older: &Path) {
    let store = open(path).await;
    append(&store, "acct-1", 0, 10).await;
    store
        .save_checkpoint("projection", Position::sequence(10))
        .await
        .expect("checkpoint");
    shut(store).await;
    copy_all(path, older);
    let store = open(path).await;
    append(&store, "acct-1", 10, 5).await;
    let snapshot = Snapshot::new(sid("acct-1"), Version::new(15), "application/json", "{}");
    store.save_snapshot(snapshot).await.expect("snapshot");
    shut(store).await;
    copy_sled_files(older, path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_older_than_the_manifest_are_refused_naming_what_is_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    rolled_back(&path, &dir.path().join("older")).await;

    match SledEventStore::builder().path(&path).open().await {
        Err(Error::Corrupt { place, reason }) => {
            assert_eq!(place.position, Some(Position::sequence(11)), "{reason}");
            assert!(reason.contains("damaged"), "{reason}");
            assert!(reason.contains(&path.display().to_string()), "{reason}");
            assert!(reason.contains("positions 11 to 15"), "{reason}");
            assert!(reason.contains("Snapshots or checkpoints"), "{reason}");
        }
        other => panic!("expected the files to be refused as damaged, got {other:?}"),
    }

    // Accepting the loss opens what is left; verify says what is missing while it is open.
    let store = SledEventStore::builder()
        .path(&path)
        .accept_loss(true)
        .open()
        .await
        .expect("open, accepting the loss");
    assert_eq!(read_all(&store).await.len(), 10);
    let report = store.verify().await.expect("verify");
    let missing: Vec<_> = report
        .problems
        .iter()
        .filter(|p| p.kind == ProblemKind::Missing)
        .collect();
    assert_eq!(missing.len(), 2, "{report}");
    assert!(missing[0].detail.contains("positions 11 to 15"), "{report}");
    append(&store, "acct-1", 10, 1).await;
    shut(store).await;

    // Accepted: the manifest now records what the files hold.
    let store = open(&path).await;
    assert_eq!(read_all(&store).await.len(), 11);
    assert!(store.verify().await.expect("verify").is_clean());
    shut(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_damaged_manifest_is_refused_once_the_store_had_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = open(&path).await;
    append(&store, "acct-1", 0, 3).await;
    shut(store).await;
    let manifest = path.join(MANIFEST);
    let bytes = std::fs::read(&manifest).expect("the manifest is written");

    std::fs::remove_file(&manifest).expect("remove");
    match SledEventStore::builder().path(&path).open().await {
        Err(Error::Corrupt { reason, .. }) => {
            assert!(reason.contains("manifest"), "{reason}");
            assert!(reason.contains("missing"), "{reason}");
        }
        other => panic!("expected a missing manifest to be refused, got {other:?}"),
    }

    let mut damaged = bytes.clone();
    damaged[20] ^= 0x01;
    std::fs::write(&manifest, &damaged).expect("write");
    match SledEventStore::builder().path(&path).open().await {
        Err(Error::Corrupt { reason, .. }) => {
            assert!(reason.contains("manifest"), "{reason}");
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected a damaged manifest to be refused, got {other:?}"),
    }

    // Accepting the loss writes a new one.
    let store = SledEventStore::builder()
        .path(&path)
        .accept_loss(true)
        .open()
        .await
        .expect("open, accepting");
    let report = store.verify().await.expect("verify");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.detail.contains("manifest")),
        "{report}"
    );
    shut(store).await;
    let store = open(&path).await;
    assert_eq!(read_all(&store).await.len(), 3);
    shut(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_follows_the_store_within_about_a_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = open(&path).await;
    append(&store, "acct-1", 0, 7).await;
    // The log's end, as FORMAT.md lays the manifest out: bytes 20..28, big-endian.
    let log_end = || {
        let bytes = std::fs::read(path.join(MANIFEST)).expect("read");
        u64::from_be_bytes(bytes[20..28].try_into().expect("8 bytes"))
    };
    let started = std::time::Instant::now();
    while log_end() != 7 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the manifest still says {}",
            log_end()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shut(store).await;
    assert_eq!(log_end(), 7);
}

#[tokio::test]
async fn files_sled_cannot_read_are_damaged_not_a_format_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = open(&path).await;
    append(&store, "acct-1", 0, 1).await;
    shut(store).await;
    // Sled calls a `conf` it cannot parse "created using a sled version earlier than 0.29".
    std::fs::write(path.join("conf"), [0xFF; 20]).expect("write");
    match SledEventStore::builder().path(&path).open().await {
        Err(Error::Corrupt { reason, .. }) => {
            assert!(reason.contains("damaged"), "{reason}");
            assert!(reason.contains(&path.display().to_string()), "{reason}");
            assert!(reason.contains("0.29"), "sled's own message: {reason}");
        }
        other => panic!("expected the files to be reported as damaged, got {other:?}"),
    }
}

#[tokio::test]
async fn a_snapshot_back_at_an_older_value_is_reported_by_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = open(&path).await;
    append(&store, "acct-1", 0, 4).await;
    let older = Snapshot::new(
        sid("acct-1"),
        Version::new(2),
        "application/json",
        "{\"v\":2}",
    );
    store.save_snapshot(older.clone()).await.expect("snapshot");
    shut(store).await;
    let old_value = {
        let (_db, tree) = support::raw_tree(&path);
        tree.get(b"Nacct-1")
            .expect("get")
            .expect("the snapshot")
            .to_vec()
    };
    let store = open(&path).await;
    let newer = Snapshot::new(
        sid("acct-1"),
        Version::new(4),
        "application/json",
        "{\"v\":4}",
    );
    store.save_snapshot(newer).await.expect("snapshot");
    store
        .save_checkpoint("projection", Position::sequence(4))
        .await
        .expect("checkpoint");
    shut(store).await;
    // Damage in the middle of sled's files put the snapshot's node back at an older state,
    // leaving the counters (elsewhere) whole.
    {
        let (db, tree) = support::raw_tree(&path);
        tree.insert(b"Nacct-1", old_value).expect("insert");
        db.flush().expect("flush");
    }
    let store = open(&path).await;
    let loaded = store.load_snapshot(&sid("acct-1")).await.expect("load");
    assert_eq!(loaded.map(|s| s.version), Some(Version::new(2)));
    let report = store.verify().await.expect("verify");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::Missing && p.detail.contains("snapshot or checkpoint")),
        "{report}"
    );
    shut(store).await;
}
