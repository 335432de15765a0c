//! The event-id index: ids written in id segments (fresh UUID v7 ids) and in single entries
//! (older or hash-derived ids) are found again after a reopen, so retries stay idempotent and
//! reused ids stay refused; damage is reported; a format 2 store is upgraded in place.

mod support;

use annals::ProblemKind;
use annals::{Error, EventData, EventId, EventStore, ExpectedVersion};
use annals_sled::SledEventStore;
use support::{event, format_marker, open, raw_tree, read_all, read_stream, shut, sid};
use uuid::Uuid;

/// Keys of the raw tree starting with `prefix`.
fn keys(path: &std::path::Path, prefix: u8) -> Vec<Vec<u8>> {
    let (_db, tree) = raw_tree(path);
    tree.scan_prefix([prefix])
        .map(|entry| entry.expect("scan").0.to_vec())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_in_segments_and_in_entries_are_found_after_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let stream = sid("ledger-1");
    // Made before all the others, appended after them: its id is below the frontier by then.
    let early = event("Early", 0);
    // A hash-derived id (like a command's UUID v5): nowhere near the time-ordered ones.
    let derived = event("Derived", 0).with_id(EventId::from_uuid(Uuid::from_u128(7)));

    let store = open(&path).await;
    let mut batches = Vec::new();
    let mut results = Vec::new();
    for b in 0..7u64 {
        let batch: Vec<EventData> = (0..100).map(|i| event("Booked", b * 100 + i)).collect();
        results.push(
            store
                .append(&stream, ExpectedVersion::exact(b * 100), batch.clone())
                .await
                .expect("append"),
        );
        batches.push(batch);
    }
    shut(store).await;
    let store = open(&path).await;
    let early_result = store
        .append(&stream, ExpectedVersion::exact(700), vec![early.clone()])
        .await
        .expect("append early");
    let derived_result = store
        .append(&stream, ExpectedVersion::exact(701), vec![derived.clone()])
        .await
        .expect("append derived");
    shut(store).await;
    // 700 fresh ids fill two segments (512 at most each); the other two have entries.
    assert_eq!(keys(&path, b'J').len(), 2, "id segments");
    assert_eq!(keys(&path, b'I').len(), 2, "single id entries");

    let store = open(&path).await;
    // Retries of every batch (ids in either segment, one batch straddling both) answer with the
    // first result and write nothing; so do the two single entries.
    for (batch, first) in batches.iter().zip(&results) {
        let again = store
            .append(&stream, ExpectedVersion::Any, batch.clone())
            .await
            .expect("retry");
        assert_eq!(&again, first);
    }
    for (e, first) in [(&early, &early_result), (&derived, &derived_result)] {
        let again = store
            .append(&stream, ExpectedVersion::exact(3), vec![e.clone()])
            .await
            .expect("retry of a single entry");
        assert_eq!(&again, first);
    }
    assert_eq!(read_stream(&store, &stream).await.len(), 702);
    // A stored id is refused in another stream and in a partly new batch.
    for (name, id) in [
        ("segment", batches[5][40].id),
        ("entry", early.id),
        ("derived", derived.id),
    ] {
        match store
            .append(
                &sid("other-1"),
                ExpectedVersion::Any,
                vec![event("Reused", 1).with_id(id)],
            )
            .await
        {
            Err(Error::IdempotencyConflict {
                existing_stream, ..
            }) => assert_eq!(existing_stream, stream, "{name}"),
            other => panic!("{name}: expected an idempotency conflict, got {other:?}"),
        }
    }
    let partly = vec![batches[2][99].clone(), event("New", 1)];
    assert!(matches!(
        store.append(&stream, ExpectedVersion::Any, partly).await,
        Err(Error::IdempotencyConflict { .. })
    ));
    let report = store.verify().await.expect("verify");
    assert!(report.problems.is_empty(), "{report}");
    assert_eq!(read_all(&store).await.len(), 702);
    shut(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_id_segment_is_reported_and_never_misread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let stream = sid("ledger-1");
    let batch: Vec<EventData> = (0..10).map(|i| event("Booked", i)).collect();
    let store = open(&path).await;
    store
        .append(&stream, ExpectedVersion::NoStream, batch.clone())
        .await
        .expect("append");
    shut(store).await;
    let segment = keys(&path, b'J').pop().expect("a segment");
    {
        let (db, tree) = raw_tree(&path);
        let mut value = tree.get(&segment).expect("get").expect("value").to_vec();
        // Inside the position of the first entry.
        value[4 + 4 + 20] ^= 0x10;
        tree.insert(&segment, value).expect("insert");
        db.flush().expect("flush");
    }
    let store = open(&path).await;
    let retried = store
        .append(&stream, ExpectedVersion::Any, batch.clone())
        .await;
    assert!(matches!(retried, Err(Error::Corrupt { .. })), "{retried:?}");
    assert_eq!(
        read_stream(&store, &stream).await.len(),
        10,
        "nothing written"
    );
    let report = store.verify().await.expect("verify");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::Corrupt && p.detail.contains("id segment")),
        "{report}"
    );
    shut(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_2_3_and_4_stores_are_upgraded_in_place() {
    for old in [2u32, 3, 4] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let stream = sid("ledger-1");
        let first = event("Opened", 1);
        let store = open(&path).await;
        store
            .append(&stream, ExpectedVersion::NoStream, vec![first.clone()])
            .await
            .expect("append");
        shut(store).await;
        // What format 2 or 3 wrote: the same records with their marker, ids only in `I`
        // entries (format 2), no write counters and no manifest; the commit records inside
        // sled (formats 2 to 4), no segment files.
        support::log_back_into_sled(&path);
        {
            let (db, tree) = raw_tree(&path);
            tree.insert(b"Mformat", format_marker(old)).expect("marker");
            tree.remove(b"Mwrites").expect("remove");
            tree.remove(b"Msaves").expect("remove");
            db.flush().expect("flush");
            std::fs::remove_file(path.join("annals-manifest")).expect("remove the manifest");
        }
        let store = SledEventStore::builder()
            .path(&path)
            .open()
            .await
            .unwrap_or_else(|e| panic!("a format {old} store opens: {e}"));
        assert_eq!(read_stream(&store, &stream).await.len(), 1);
        store
            .append(
                &stream,
                ExpectedVersion::exact(1),
                vec![event("Deposited", 2)],
            )
            .await
            .expect("append");
        let report = store.verify().await.expect("verify");
        assert!(report.problems.is_empty(), "format {old}: {report}");
        shut(store).await;
        let (_db, tree) = raw_tree(&path);
        assert_eq!(
            tree.get(b"Mformat").expect("get").expect("marker").to_vec(),
            format_marker(annals_sled::FORMAT_VERSION)
        );
        assert!(path.join("annals-manifest").exists(), "format {old}");
    }
    assert_eq!(annals_sled::FORMAT_VERSION, 5);
}
