use annals::{
    CheckpointStore, EventStore, ExpectedVersion, Leases, Snapshot, SnapshotStore, Version,
};

use super::{event, sid, StoreFactory, HANG_GUARD};

/// Leases: one holder per name; others get `None` until it is released or dropped; names are
/// independent; a released name can be taken again at once, in a higher epoch; `leases` lists
/// what is held.
pub async fn leases<F: StoreFactory>(factory: &F) {
    let store = factory.new_store().await;
    // Names unique to this run: a server-backed store's leases are shared by every store value
    // on the same data.
    let name = format!("conformance-lease-{}", uuid::Uuid::now_v7());
    let other = format!("{name}-other");
    let held = store
        .try_lease(&name)
        .await
        .expect("try_lease")
        .expect("a free lease is granted");
    assert_eq!(held.name(), name);
    assert!(!held.is_lost(), "a fresh lease is not lost");
    assert!(
        store.try_lease(&name).await.expect("try_lease").is_none(),
        "a held lease must not be granted twice"
    );
    let second = store.clone();
    assert!(
        second.try_lease(&name).await.expect("try_lease").is_none(),
        "a clone of the store shares its leases"
    );
    let other_lease = store
        .try_lease(&other)
        .await
        .expect("try_lease")
        .expect("another name is independent");
    let listed = store.leases(&name).await.expect("leases");
    assert_eq!(
        listed
            .iter()
            .map(|l| (l.name.clone(), l.epoch))
            .collect::<Vec<_>>(),
        vec![
            (name.clone(), held.epoch()),
            (other.clone(), other_lease.epoch())
        ],
        "the held leases under the prefix, in name order"
    );
    let first_epoch = held.epoch();
    held.release().await.expect("release");
    let again = store
        .try_lease(&name)
        .await
        .expect("try_lease")
        .expect("a released lease can be taken again");
    assert!(
        again.epoch() > first_epoch,
        "every grant gets a higher epoch (the fencing token)"
    );
    drop(again);
    // Dropping frees the lease too; a server may take a moment to see the closed session.
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            if let Some(lease) = store.try_lease(&name).await.expect("try_lease") {
                break lease;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a dropped lease is freed");
    drop(other_lease);
}

/// `verify` of a store holding events, a snapshot and a checkpoint finds no problem and counts
/// what it checked.
pub async fn verify_a_sound_store<F: StoreFactory>(factory: &F) {
    let store = factory.new_store().await;
    let stream = sid("verify-1");
    let events = (1..=5).map(|n| event("Counted", n)).collect();
    let appended = store
        .append(&stream, ExpectedVersion::NoStream, events)
        .await
        .expect("append");
    store
        .save_snapshot(Snapshot::new(
            stream.clone(),
            Version::new(3),
            "application/json",
            "{}",
        ))
        .await
        .expect("snapshot");
    store
        .save_checkpoint("verify-projection", appended.last_position)
        .await
        .expect("checkpoint");
    let report = store.verify().await.expect("verify");
    assert!(report.is_clean(), "a sound store verifies clean: {report}");
    assert!(
        report.events >= 5 && report.streams >= 1,
        "verify counts what it checked: {report}"
    );
    assert!(
        report.last_position >= Some(appended.last_position),
        "verify reports the end of the log: {:?}",
        report.last_position
    );
}

/// `close` makes acknowledged events durable and returns; closing twice is harmless.
pub async fn close<F: StoreFactory>(factory: &F) {
    let store = factory.new_store().await;
    let stream = sid("close-1");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![event("Counted", 1)],
        )
        .await
        .expect("append");
    store.close().await.expect("close");
    store.close().await.expect("a second close is harmless");
}
