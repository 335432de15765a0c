//! The log's segment files (format 5, issue 14): a torn tail past what was made durable is cut
//! off at open with no acknowledged event lost; damage before the durable end is corruption
//! naming its place, never taken for the end; records cross sealed segments; a missing
//! segment is found; an upgrade interrupted in its second step is finished at the next open.

mod support;

use std::path::{Path, PathBuf};

use annals::{
    Error, EventStore, ExpectedVersion, Position, ProblemKind, ReadAll, ReadStream, Version,
};
use annals_sled::SledEventStore;
use futures::TryStreamExt;
use support::{event, open, raw_tree, read_all, read_stream, shut, sid, to_usize};

/// The segment files of the store at `path`, in position order.
fn segments(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(path.join("annals-log"))
        .expect("the log's directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// The segment file and the offset of the frame of the commit record holding `position`, and
/// the frame's length, from its locator (FORMAT.md).
fn frame_of(path: &Path, position: u64) -> (PathBuf, usize, usize) {
    let (_db, tree) = raw_tree(path);
    let mut hi = vec![b'W'];
    hi.extend_from_slice(&position.to_be_bytes());
    hi.extend_from_slice(&u64::MAX.to_be_bytes());
    let (_, value) = tree
        .range(vec![b'W']..=hi)
        .next_back()
        .expect("a locator")
        .expect("read");
    let be = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
    let segment = be(&value[4..12]);
    let offset = to_usize(be(&value[12..20]));
    let len = u32::from_be_bytes(value[20..24].try_into().expect("4 bytes")) as usize;
    let file = path.join("annals-log").join(format!("{segment:020}.seg"));
    (file, offset, len)
}

async fn store_of(path: &Path, streams: u64, per_stream: u64) -> Vec<annals::RecordedEvent> {
    let store = open(path).await;
    for v in 0..per_stream {
        for s in 0..streams {
            store
                .append(
                    &sid(&format!("acct-{s}")),
                    ExpectedVersion::exact(v),
                    vec![event("E", s * 1000 + v)],
                )
                .await
                .expect("append");
        }
    }
    let events = read_all(&store).await;
    shut(store).await;
    events
}

/// A frame for position `position`: the bytes of the frame at `offset` with its positions
/// changed and its frame checksum made right again — what a writer that crashed part-way
/// through its next frame may have left (its record's own checksums no longer match).
fn frame_for(bytes: &[u8], offset: usize, len: usize, position: u64) -> Vec<u8> {
    let mut frame = bytes[offset..offset + len].to_vec();
    frame[9..17].copy_from_slice(&position.to_be_bytes());
    frame[17..25].copy_from_slice(&position.to_be_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&frame[..4]);
    hasher.update(&frame[8..25]);
    let crc = hasher.finalize();
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    frame
}

/// Makes the bytes a torn write leaves, from the segment's bytes.
type Tail = Box<dyn Fn(&[u8]) -> Vec<u8>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_off_and_no_acknowledged_event_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let original = store_of(&path, 4, 5).await;
    assert_eq!(original.len(), 20);
    let (file, offset, len) = frame_of(&path, 20);
    let end = offset + len;

    // Each of what a crash in the middle of writing the next frame can leave past the end.
    let torn: Vec<(&str, Tail)> = vec![
        (
            "a whole frame whose record fails its checksums",
            Box::new(move |b: &[u8]| frame_for(b, offset, len, 21)),
        ),
        (
            "the first half of a frame",
            Box::new(move |b: &[u8]| frame_for(b, offset, len, 21)[..len / 2].to_vec()),
        ),
        (
            "a frame head alone",
            Box::new(move |b: &[u8]| frame_for(b, offset, len, 21)[..8].to_vec()),
        ),
        ("garbage", Box::new(|_: &[u8]| vec![0xA5; 100])),
    ];
    for (what, tail) in torn {
        let mut bytes = std::fs::read(&file).expect("read the segment");
        let tail = tail(&bytes);
        if bytes.len() < end + tail.len() {
            bytes.resize(end + tail.len(), 0);
        }
        bytes[end..end + tail.len()].copy_from_slice(&tail);
        std::fs::write(&file, &bytes).expect("write the segment");

        let store = open(&path).await;
        assert_eq!(
            read_all(&store).await,
            original,
            "{what}: every acknowledged event"
        );
        let report = store.verify().await.expect("verify");
        assert!(report.is_clean(), "{what}: {report}");
        let appended = store
            .append(
                &sid("acct-0"),
                ExpectedVersion::exact(5),
                vec![event("E", 99)],
            )
            .await
            .expect("append after the cut");
        assert_eq!(appended.first_position, Position::sequence(21), "{what}");
        shut(store).await;
        let store = open(&path).await;
        assert_eq!(read_all(&store).await.len(), 21, "{what}");
        assert!(store.verify().await.expect("verify").is_clean(), "{what}");
        shut(store).await;
        // Back to the 20 events for the next case: cut the appended frame off by hand, as
        // the manifest recorded 21 events now, put it back as it was.
        let (_, offset21, len21) = frame_of(&path, 21);
        let mut bytes = std::fs::read(&file).expect("read the segment");
        bytes[offset21..offset21 + len21].fill(0);
        std::fs::write(&file, &bytes).expect("write the segment");
        let store = SledEventStore::builder()
            .path(&path)
            .accept_loss(true)
            .open()
            .await
            .expect("open, accepting the loss of position 21");
        assert_eq!(read_all(&store).await, original, "{what}");
        shut(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_before_the_durable_end_is_corruption_never_the_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    store_of(&path, 4, 5).await;
    let (file, offset, _) = frame_of(&path, 10);
    let pristine = std::fs::read(&file).expect("read the segment");

    // A flipped bit in the length of the frame of position 10: the log does not read on
    // there, and the manifest says it goes on to 20.
    let mut bytes = pristine.clone();
    bytes[offset] ^= 0x04;
    std::fs::write(&file, &bytes).expect("write");
    match SledEventStore::builder().path(&path).open().await {
        Err(Error::Corrupt { place, reason }) => {
            assert_eq!(place.position, Some(Position::sequence(10)), "{reason}");
            assert!(reason.contains(&file.display().to_string()), "{reason}");
            assert!(reason.contains(&format!("offset {offset}")), "{reason}");
        }
        other => panic!("expected the damage to be refused, got {other:?}"),
    }

    // The file cut short before position 10 (a lost write): the manifest names what is gone.
    std::fs::write(&file, &pristine[..offset]).expect("write");
    match SledEventStore::builder().path(&path).open().await {
        Err(Error::Corrupt { place, reason }) => {
            assert_eq!(place.position, Some(Position::sequence(10)), "{reason}");
            assert!(reason.contains("positions 10 to 20"), "{reason}");
        }
        other => panic!("expected the loss to be refused, got {other:?}"),
    }
    let store = SledEventStore::builder()
        .path(&path)
        .accept_loss(true)
        .open()
        .await
        .expect("open what is left");
    assert_eq!(read_all(&store).await.len(), 9);
    let report = store.verify().await.expect("verify");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::Missing),
        "{report}"
    );
    shut(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_cross_sealed_segments_and_damage_in_one_is_found_with_its_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = SledEventStore::builder()
        .path(&path)
        .segment_bytes(4096)
        .open()
        .await
        .expect("open");
    for v in 0..40u64 {
        for s in 0..5u64 {
            store
                .append(
                    &sid(&format!("acct-{s}")),
                    ExpectedVersion::exact(2 * v),
                    vec![event("E", s * 1000 + v), event("F", s * 1000 + v)],
                )
                .await
                .expect("append");
        }
    }
    let original = read_all(&store).await;
    assert_eq!(original.len(), 400);
    assert!(store.verify().await.expect("verify").is_clean());
    shut(store).await;
    let files = segments(&path);
    assert!(files.len() > 5, "{} segments", files.len());
    // Reopened with the default segment size: the old segments are read as they are.
    let store = open(&path).await;
    assert_eq!(read_all(&store).await, original);
    assert_eq!(read_stream(&store, &sid("acct-3")).await.len(), 80);
    shut(store).await;

    // A flipped byte in the last body byte of an event inside the second segment: the first
    // of its record's two (each append is `E` then `F`).
    let victim = original
        .iter()
        .find(|e| e.event_type == "E" && frame_of(&path, e.position.commit()).0 == files[1])
        .expect("an event in the second segment")
        .clone();
    let (file, offset, len) = frame_of(&path, victim.position.commit());
    let mut bytes = std::fs::read(&file).expect("read");
    let body = support::body_range(&bytes[offset + 25..offset + len], 0);
    bytes[offset + 25 + body.end - 1] ^= 0x10;
    std::fs::write(&file, &bytes).expect("write");
    let store = open(&path).await;
    let all: Result<Vec<_>, _> = store.read_all(ReadAll::all()).try_collect().await;
    match all {
        Err(Error::Corrupt { place, .. }) => {
            assert_eq!(place.position, Some(victim.position));
            assert_eq!(place.stream, Some(victim.stream_id.clone()));
            assert_eq!(place.version, Some(victim.version));
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    let read: Result<Vec<_>, _> = store
        .read_stream(&victim.stream_id, ReadStream::forward())
        .try_collect()
        .await;
    assert!(matches!(read, Err(Error::Corrupt { .. })), "{read:?}");
    let report = store.verify().await.expect("verify");
    let problem = report
        .problems
        .iter()
        .find(|p| p.kind == ProblemKind::Corrupt)
        .expect("a corruption problem");
    assert_eq!(problem.place.position, Some(victim.position), "{report}");
    shut(store).await;
    bytes[offset + 25 + body.end - 1] ^= 0x10;
    std::fs::write(&file, &bytes).expect("write");

    // The first segment's seal damaged: the log does not cross into the second.
    let first = std::fs::read(&files[0]).expect("read");
    let used = first.iter().rposition(|b| *b != 0).expect("data") + 1;
    let mut damaged = first.clone();
    damaged[used - 1] ^= 0x01;
    std::fs::write(&files[0], &damaged).expect("write");
    let store = open(&path).await;
    let all: Result<Vec<_>, _> = store.read_all(ReadAll::all()).try_collect().await;
    assert!(matches!(all, Err(Error::Corrupt { .. })), "{all:?}");
    let report = store.verify().await.expect("verify");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::Corrupt),
        "{report}"
    );
    shut(store).await;
    std::fs::write(&files[0], &first).expect("write");

    // A segment file gone: reads crossing it and verify say so; the others still read.
    std::fs::remove_file(&files[2]).expect("remove");
    let store = open(&path).await;
    let all: Result<Vec<_>, _> = store.read_all(ReadAll::all()).try_collect().await;
    match all {
        Err(Error::Corrupt { reason, .. }) => assert!(reason.contains("segment"), "{reason}"),
        other => panic!("expected a corruption error, got {other:?}"),
    }
    let report = store.verify().await.expect("verify");
    assert!(!report.is_clean(), "{report}");
    let tail: Vec<_> = store
        .read_all(ReadAll::from(original[399].position))
        .try_collect()
        .await
        .expect("the last segment reads");
    assert_eq!(tail.len(), 1);
    shut(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_stopped_in_its_second_step_is_finished_at_the_next_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let original = store_of(&path, 3, 4).await;
    // The second step had begun: the segments are complete, the marker says 5, and the `W`
    // values are still the commit records themselves.
    let log = dir.path().join("log-copy");
    std::fs::create_dir_all(&log).expect("mkdir");
    for file in segments(&path) {
        std::fs::copy(&file, log.join(file.file_name().expect("name"))).expect("copy");
    }
    support::log_back_into_sled(&path);
    std::fs::rename(&log, path.join("annals-log")).expect("put the log back");
    {
        let (db, tree) = raw_tree(&path);
        tree.insert(b"Mupgrading", vec![0u8; 12]).expect("insert");
        db.flush().expect("flush");
    }
    let store = open(&path).await;
    assert_eq!(read_all(&store).await, original);
    assert_eq!(read_stream(&store, &sid("acct-2")).await.len(), 4);
    let report = store.verify().await.expect("verify");
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        store.stream_version(&sid("acct-1")).await.expect("version"),
        Version::new(4)
    );
    shut(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_refused_for_a_damaged_manifest_cuts_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let original = store_of(&path, 2, 3).await;
    let (file, offset, len) = frame_of(&path, 6);
    let mut bytes = std::fs::read(&file).expect("read the segment");
    let torn = frame_for(&bytes, offset, len, 7);
    bytes[offset + len..offset + len + torn.len() / 2].copy_from_slice(&torn[..torn.len() / 2]);
    std::fs::write(&file, &bytes).expect("write the segment");
    let manifest = path.join("annals-manifest");
    let mut recorded = std::fs::read(&manifest).expect("the manifest");
    recorded[20] ^= 0x01;
    std::fs::write(&manifest, &recorded).expect("damage the manifest");

    let refused = SledEventStore::builder().path(&path).open().await;
    assert!(matches!(refused, Err(Error::Corrupt { .. })), "{refused:?}");
    assert_eq!(
        std::fs::read(&file).expect("read the segment"),
        bytes,
        "a refused open writes nothing"
    );
    let store = SledEventStore::builder()
        .path(&path)
        .accept_loss(true)
        .open()
        .await
        .expect("open, accepting the loss");
    assert_eq!(read_all(&store).await, original);
    shut(store).await;
}

/// A long read of a buffered store whose records are written to the log only as readers ask:
/// the reader's read-ahead of one page may hold the zeros ahead of records not written yet,
/// which must never be taken for the end of the log on the next page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_read_of_buffered_appends_sees_every_record_across_its_pages() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledEventStore::builder()
        .path(dir.path().join("store"))
        .durability(annals_sled::Durability::Buffered)
        .flush_interval(std::time::Duration::from_secs(3600))
        .open()
        .await
        .unwrap();
    let stream = sid("buffered-1");
    let mut written = 0u64;
    for round in 0..6u64 {
        // Small appends, well under the 64 KiB the writer buffers before writing.
        for n in 0..1_000u64 {
            store
                .append(
                    &stream,
                    annals::ExpectedVersion::Any,
                    vec![event("Counted", round * 1_000 + n)],
                )
                .await
                .unwrap();
        }
        written += 1_000;
        let all: Vec<annals::RecordedEvent> = store
            .read_all(annals::ReadAll::all())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(u64::try_from(all.len()).unwrap(), written, "round {round}");
    }
    store.close().await.unwrap();
}
