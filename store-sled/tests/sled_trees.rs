//! Trees lent to the caller (`open_tree`): in the store's database, made durable by the store's
//! flushes, invisible to the store's reads and `verify`; the store's own names are refused.

mod support;

use annals::{Error, EventStore, ExpectedVersion};
use annals_sled::Durability;
use support::{event, open_with, read_all, shut, sid};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lent_tree_shares_the_stores_files_and_flushes_and_never_its_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = open_with(&path, Durability::Buffered).await;
    for name in ["", "annals", "annals/index", "__sled__default"] {
        let refused = store.open_tree(name);
        assert!(
            matches!(
                refused,
                Err(Error::Configuration {
                    setting: "tree",
                    ..
                })
            ),
            "{name:?}: {refused:?}"
        );
    }
    let tree = store.open_tree("projections/data/t").expect("open_tree");
    tree.insert("k", "v").expect("insert");
    store
        .append(
            &sid("account-1"),
            ExpectedVersion::NoStream,
            vec![event("E", 1)],
        )
        .await
        .expect("append");
    // The store's flush makes the tree's writes durable too (one log for every tree).
    store.flush().await.expect("flush");
    let report = store.verify().await.expect("verify");
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.events, 1);
    drop(tree);
    shut(store).await;

    let store = open_with(&path, Durability::Flush).await;
    let tree = store.open_tree("projections/data/t").expect("open_tree");
    assert_eq!(tree.get("k").expect("get").as_deref(), Some(&b"v"[..]));
    assert_eq!(
        read_all(&store).await.len(),
        1,
        "the tree is not in the log"
    );
    assert!(store.verify().await.expect("verify").is_clean());
    // Usable after close, until dropped.
    store.close().await.expect("close");
    tree.insert("k2", "v2").expect("insert after close");
    assert!(matches!(store.flush().await, Err(Error::Closed)));
}
