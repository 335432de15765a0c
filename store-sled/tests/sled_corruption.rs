//! Damaged records are reported as corruption naming the record: never garbage, never a panic;
//! `verify()` lists them.

mod support;

use annals::ProblemKind;
use annals::{Error, EventStore, ExpectedVersion, Position, ReadAll, ReadStream, Version};
use futures::TryStreamExt;
use support::{body_range, commit_of, event, open, raw_tree, shut, sid};

async fn seeded(path: &std::path::Path) -> Vec<annals::RecordedEvent> {
    let store = open(path).await;
    store
        .append(
            &sid("other-1"),
            ExpectedVersion::NoStream,
            vec![event("E", 0)],
        )
        .await
        .expect("append");
    store
        .append(
            &sid("victim-1"),
            ExpectedVersion::NoStream,
            vec![event("E", 1), event("E", 2), event("E", 3)],
        )
        .await
        .expect("append");
    let events = support::read_all(&store).await;
    shut(store).await;
    events
}

fn damage(path: &std::path::Path, key: &[u8], change: impl FnOnce(&mut Vec<u8>)) {
    if key.first() == Some(&b'W') {
        // Commit records live in the log's segment files (format 5).
        return support::damage_record(path, key, change);
    }
    let (db, tree) = raw_tree(path);
    let mut value = tree
        .get(key)
        .expect("get")
        .expect("the record exists")
        .to_vec();
    change(&mut value);
    tree.insert(key, value).expect("insert");
    db.flush().expect("flush");
}

#[tokio::test]
async fn a_flipped_byte_in_an_event_is_a_corruption_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let events = seeded(&path).await;
    let victim = &events[2]; // victim-1 version 2
    assert_eq!(victim.version, Version::new(2));
    // Flip one bit of the payload's last byte (inside the commit record holding versions 1-3).
    let (key, index) = commit_of(&raw_tree(&path).1, "victim-1", 2);
    damage(&path, &key, |v| {
        let last = body_range(v, index).end - 1;
        v[last] ^= 0x01;
    });

    let store = open(&path).await;
    let mut read = store.read_stream(&sid("victim-1"), ReadStream::forward());
    let first = read
        .try_next()
        .await
        .expect("version 1 is intact")
        .expect("an event");
    assert_eq!(first.version, Version::new(1));
    match read.try_next().await {
        Err(Error::Corrupt { place, reason }) => {
            assert_eq!(place.stream, Some(sid("victim-1")));
            assert_eq!(place.version, Some(Version::new(2)));
            assert_eq!(place.position, Some(victim.position));
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    assert!(
        read.try_next().await.expect("ended").is_none(),
        "the read stops after the error"
    );

    // The global log hits the same record.
    let all: Result<Vec<_>, _> = store.read_all(ReadAll::all()).try_collect().await;
    match all {
        Err(Error::Corrupt { place, .. }) => {
            assert_eq!(place.stream, Some(sid("victim-1")));
            assert_eq!(place.version, Some(Version::new(2)));
            assert_eq!(place.position, Some(victim.position));
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    // Reads that avoid it still work.
    let before: Vec<_> = store
        .read_all(ReadAll::from(Position::START).limit(2))
        .try_collect()
        .await
        .expect("the first two events are intact");
    assert_eq!(before.len(), 2);

    let report = store.verify().await.expect("verify");
    assert!(!report.is_clean());
    let problem = report
        .problems
        .iter()
        .find(|p| p.kind == ProblemKind::Corrupt)
        .expect("a corruption problem");
    assert_eq!(problem.place.stream, Some(sid("victim-1")));
    assert_eq!(problem.place.version, Some(Version::new(2)));
    assert!(report.to_string().contains("victim-1"), "{report}");
}

#[tokio::test]
async fn damaged_heads_indexes_and_truncated_records_never_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    seeded(&path).await;
    // A head with a flipped bit.
    damage(&path, b"Hvictim-1", |v| v[6] ^= 0x40);
    let store = open(&path).await;
    match store.stream_version(&sid("victim-1")).await {
        Err(Error::Corrupt { place, .. }) => assert_eq!(place.stream, Some(sid("victim-1"))),
        other => panic!("expected a corruption error, got {other:?}"),
    }
    let report = store.verify().await.expect("verify");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::Corrupt),
        "{report}"
    );
    // Appending to the stream refuses too, rather than guessing a version.
    let refused = store
        .append(&sid("victim-1"), ExpectedVersion::Any, vec![event("E", 9)])
        .await;
    assert!(matches!(refused, Err(Error::Corrupt { .. })), "{refused:?}");
    // Other streams are unaffected.
    store
        .append(
            &sid("other-1"),
            ExpectedVersion::exact(1),
            vec![event("E", 9)],
        )
        .await
        .expect("append elsewhere");
    shut(store).await;

    // Every truncation of a record reads as corruption.
    let (victim, _) = commit_of(&raw_tree(&path).1, "victim-1", 3);
    for keep in [0usize, 3, 4, 11, 20, 40] {
        damage(&path, &victim, |v| v.truncate(keep.min(v.len())));
        let store = open(&path).await;
        let read: Result<Vec<_>, _> = store
            .read_stream(&sid("victim-1"), ReadStream::backward().limit(1))
            .try_collect()
            .await;
        assert!(
            matches!(read, Err(Error::Corrupt { .. })),
            "keep {keep}: {read:?}"
        );
        shut(store).await;
    }

    // A log entry pointing nowhere is reported by reads and by verify.
    {
        let (db, tree) = raw_tree(&path);
        let (key, _) = commit_of(&tree, "other-1", 1);
        tree.remove(key).expect("remove");
        db.flush().expect("flush");
    }
    let store = open(&path).await;
    let all: Result<Vec<_>, _> = store.read_all(ReadAll::all()).try_collect().await;
    assert!(matches!(all, Err(Error::Corrupt { .. })), "{all:?}");
    let report = store.verify().await.expect("verify");
    let kinds: Vec<_> = report.problems.iter().map(|p| p.kind).collect();
    assert!(kinds.contains(&ProblemKind::LogMismatch), "{report}");
    assert!(kinds.contains(&ProblemKind::IdIndexMismatch), "{report}");
    assert!(kinds.contains(&ProblemKind::VersionGap), "{report}");
}
