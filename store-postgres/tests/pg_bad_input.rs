//! Bad input and unusable servers give clear, distinct errors and write nothing.

mod support;

use std::time::Duration;

use annals::{Error, EventData, EventStore, ExpectedVersion, Limit, Limits, ReadAll, StreamId};
use annals_postgres::PgEventStore;
use futures::TryStreamExt;
use support::{event, raw_client, server};

async fn count(store: &PgEventStore) -> usize {
    let client = store.pool().get().await.expect("connection");
    let n: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM \"{}\".events", store.schema()),
            &[],
        )
        .await
        .expect("count")
        .get(0);
    usize::try_from(n).expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_stream_ids_and_oversized_payloads_are_refused() {
    for bad in ["", "a\u{0}b", "tab\there", &"x".repeat(256)] {
        assert!(
            matches!(StreamId::new(bad), Err(Error::InvalidStreamId { .. })),
            "{bad:?}"
        );
    }
    let store = support::init(
        support::builder_on(server(), "limits").limits(Limits::new().with_max_payload_bytes(1024)),
    )
    .await;
    let stream = StreamId::new("bad-1").expect("id");
    let big = EventData::new("Big", "application/octet-stream", vec![1u8; 1025]);
    match store
        .append(&stream, ExpectedVersion::Any, vec![event("Ok", 1), big])
        .await
    {
        Err(Error::LimitExceeded {
            limit: Limit::PayloadBytes,
            value: 1025,
            max: 1024,
        }) => {}
        other => panic!("expected a payload limit error, got {other:?}"),
    }
    assert_eq!(count(&store).await, 0, "nothing written");
}

/// PostgreSQL text and jsonb cannot hold U+0000, the one Unicode scalar value a Rust `String`
/// header can carry that PostgreSQL cannot store: a clear error, not a server error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_postgres_cannot_store_is_a_clear_error() {
    let store = support::fresh_store("nul").await;
    let stream = StreamId::new("nul-1").expect("id");
    let cases = [
        (
            "a NUL in a header value",
            event("E", 1).with_header("user", "ad\u{0}a"),
        ),
        (
            "a NUL in a header key",
            event("E", 1).with_header("us\u{0}er", "ada"),
        ),
        (
            "a NUL in the content type",
            EventData::new("E", "application/\u{0}json", &b"{}"[..]),
        ),
    ];
    for (what, bad) in cases {
        let id = bad.id;
        match store
            .append(&stream, ExpectedVersion::Any, vec![event("Fine", 0), bad])
            .await
        {
            Err(Error::InvalidEvent { event_id, reason }) => {
                assert_eq!(event_id, Some(id), "{what}");
                assert!(reason.contains("NUL"), "{what}: {reason}");
            }
            other => panic!("{what}: expected InvalidEvent, got {other:?}"),
        }
    }
    assert_eq!(count(&store).await, 0, "nothing written");
    // Any other Unicode is fine, and the store still works.
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![event("E", 1).with_header("ключ", "\u{1F600}\u{7f}")],
        )
        .await
        .expect("append");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_without_the_schema_says_to_call_init() {
    let store = support::builder_on(server(), "missing")
        .open()
        .await
        .expect("open");
    assert_eq!(store.schema_version().await.expect("version"), None);
    let stream = StreamId::new("missing-1").expect("id");
    let expect_init = |what: &str, result: Result<(), Error>| match result {
        Err(e @ Error::NotInitialized { .. }) => {
            let message = e.to_string();
            assert!(message.contains("init()"), "{what}: {message}");
            assert!(
                matches!(&e, Error::NotInitialized { schema } if schema == store.schema()),
                "{what}: {message}"
            );
        }
        other => panic!("{what}: expected Error::NotInitialized, got {other:?}"),
    };
    expect_init(
        "append",
        store
            .append(&stream, ExpectedVersion::Any, vec![event("E", 1)])
            .await
            .map(drop),
    );
    expect_init(
        "stream_version",
        store.stream_version(&stream).await.map(drop),
    );
    expect_init(
        "read_all",
        store
            .read_all(ReadAll::all())
            .try_collect::<Vec<_>>()
            .await
            .map(drop),
    );
    expect_init("last_position", store.last_position().await.map(drop));
    assert_eq!(
        store.init().await.expect("init"),
        annals_postgres::SCHEMA_VERSION
    );
    assert_eq!(
        store.init().await.expect("init again"),
        annals_postgres::SCHEMA_VERSION
    );
    assert_eq!(
        store.schema_version().await.expect("version"),
        Some(annals_postgres::SCHEMA_VERSION)
    );
    store
        .append(&stream, ExpectedVersion::Any, vec![event("E", 1)])
        .await
        .expect("append after init");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_from_a_newer_version_is_refused() {
    let store = support::fresh_store("newer").await;
    let client = raw_client(server()).await;
    client
        .execute(
            &format!(
                "INSERT INTO \"{}\".schema_version (version) VALUES (99)",
                store.schema()
            ),
            &[],
        )
        .await
        .expect("insert");
    match store.init().await {
        Err(Error::Format {
            backend: "postgres",
            found,
            supported,
            ..
        }) => {
            assert_eq!(found, Some(99));
            assert_eq!(
                supported,
                1..=u32::try_from(annals_postgres::SCHEMA_VERSION).expect("a version")
            );
        }
        other => panic!("expected Error::Format, got {other:?}"),
    }
}

/// A schema created by the first version of the crate is upgraded in place by `init()`, its
/// events kept, and the store writes and reads it afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_upgrades_a_version_1_schema_in_place() {
    let store = support::builder_on(server(), "upgrade")
        .open()
        .await
        .expect("open");
    let schema = format!("\"{}\"", store.schema());
    let client = raw_client(server()).await;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; \
             CREATE TABLE {schema}.schema_version (version integer PRIMARY KEY, \
               applied_at timestamptz NOT NULL DEFAULT now()); \
             {} \
             INSERT INTO {schema}.schema_version (version) VALUES (1); \
             INSERT INTO {schema}.events (stream_id, version, event_id, event_type, schema_version, \
               content_type, payload, event_timestamp) \
             VALUES ('old-1', 1, gen_random_uuid(), 'Opened', 1, 'application/json', '\\x7b7d', now())",
            include_str!("../migrations/0001_init.sql").replace("__SCHEMA__", &schema)
        ))
        .await
        .expect("a version 1 schema");
    assert_eq!(store.schema_version().await.expect("version"), Some(1));
    assert_eq!(
        store.init().await.expect("upgrade"),
        annals_postgres::SCHEMA_VERSION
    );
    assert_eq!(
        store.schema_version().await.expect("version"),
        Some(annals_postgres::SCHEMA_VERSION)
    );
    let checks: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = ($1 || '.events')::regclass \
             AND conname = 'events_schema_version_check'",
            &[&schema],
        )
        .await
        .expect("constraints")
        .get(0);
    assert_eq!(checks, 0, "migration 2 drops the schema version check");
    let old = StreamId::new("old-1").expect("id");
    store
        .append(&old, ExpectedVersion::exact(1), vec![event("Deposited", 2)])
        .await
        .expect("append after the upgrade");
    let events: Vec<_> = store
        .read_all(ReadAll::all())
        .try_collect()
        .await
        .expect("read");
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["Opened", "Deposited"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_builder_settings_are_refused() {
    for schema in ["", "Bad", "a-b", "9x", "x\"; DROP TABLE y"] {
        let built = PgEventStore::builder()
            .connection_string(server().connection_string())
            .schema(schema)
            .open()
            .await;
        assert!(
            matches!(
                built,
                Err(Error::Configuration {
                    setting: "schema",
                    ..
                })
            ),
            "{schema:?}"
        );
    }
    let built = PgEventStore::builder()
        .connection_string("host=127.0.0.1 port=notaport")
        .open()
        .await;
    assert!(matches!(
        built,
        Err(Error::Configuration {
            setting: "connection_string",
            ..
        })
    ));
    assert!(matches!(
        PgEventStore::builder().open().await,
        Err(Error::Configuration {
            setting: "connection_string",
            ..
        })
    ));
    // Zero intervals would make the background task query the server in a busy loop.
    let built = PgEventStore::builder()
        .connection_string(server().connection_string())
        .poll_interval(Duration::ZERO)
        .open()
        .await;
    assert!(
        matches!(
            built,
            Err(Error::Configuration {
                setting: "poll_interval",
                ..
            })
        ),
        "{built:?}"
    );
    let built = PgEventStore::builder()
        .connection_string(server().connection_string())
        .fallback_poll_interval(Duration::ZERO)
        .open()
        .await;
    assert!(
        matches!(
            built,
            Err(Error::Configuration {
                setting: "fallback_poll_interval",
                ..
            })
        ),
        "{built:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_is_unavailable() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let store = PgEventStore::connect(&format!(
        "host=127.0.0.1 port={port} user=postgres dbname=postgres"
    ))
    .await
    .expect("building connects lazily");
    let stream = StreamId::new("down-1").expect("id");
    let result = store
        .append(&stream, ExpectedVersion::Any, vec![event("E", 1)])
        .await;
    assert!(
        matches!(
            result,
            Err(Error::Unavailable {
                backend: "postgres",
                ..
            })
        ),
        "{result:?}"
    );
    assert!(matches!(store.init().await, Err(Error::Unavailable { .. })));
    let read = store.read_all(ReadAll::all()).try_collect::<Vec<_>>().await;
    assert!(matches!(read, Err(Error::Unavailable { .. })), "{read:?}");
}

/// The error of a server that cannot be reached says where the store tried — host and port —
/// and never the password of the connection string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_names_the_host_and_port_never_the_password() {
    const PASSWORD: &str = "Sw0rdf1sh-not-to-be-shown";
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let store = PgEventStore::connect(&format!(
        "host=127.0.0.1 port={port} user=postgres password={PASSWORD} dbname=postgres"
    ))
    .await
    .expect("building connects lazily");
    let stream = StreamId::new("refused-1").expect("id");
    let appended = store
        .append(&stream, ExpectedVersion::Any, vec![event("E", 1)])
        .await;
    let read = store.read_all(ReadAll::all()).try_collect::<Vec<_>>().await;
    for (what, error) in [
        (
            "append",
            appended.map(|_| ()).expect_err("the server is down"),
        ),
        (
            "init",
            store
                .init()
                .await
                .map(|_| ())
                .expect_err("the server is down"),
        ),
        (
            "read_all",
            read.map(|_| ()).expect_err("the server is down"),
        ),
    ] {
        assert!(
            matches!(error, Error::Unavailable { .. }),
            "{what}: {error:?}"
        );
        // Everything an operator could be shown: the message, its causes, the debug form.
        let mut text = format!("{error}\n{error:?}");
        let mut cause = std::error::Error::source(&error);
        while let Some(e) = cause {
            text.push_str(&format!("\n{e}"));
            cause = e.source();
        }
        assert!(
            error.to_string().contains(&format!("127.0.0.1:{port}")),
            "{what}: the message does not say where the store tried: {error}"
        );
        assert!(
            !text.contains(PASSWORD),
            "{what}: the password is in the error: {text}"
        );
    }
}

/// A statement that runs past the statement timeout is cancelled: a timeout error, nothing
/// written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_is_a_timeout_error() {
    let store = support::init(
        support::builder_on(server(), "timeout").statement_timeout(Duration::from_millis(200)),
    )
    .await;
    let stream = StreamId::new("slow-1").expect("id");
    store
        .append(&stream, ExpectedVersion::NoStream, vec![event("E", 1)])
        .await
        .expect("append");
    // Another session blocks writes to the events table, so the next append waits past the
    // timeout.
    let mut raw = raw_client(server()).await;
    let tx = raw.transaction().await.expect("begin");
    tx.execute(
        &format!("LOCK TABLE \"{}\".events IN SHARE MODE", store.schema()),
        &[],
    )
    .await
    .expect("lock");
    let result = store
        .append(&stream, ExpectedVersion::exact(1), vec![event("E", 2)])
        .await;
    assert!(
        matches!(
            result,
            Err(Error::Timeout {
                backend: "postgres",
                ..
            })
        ),
        "{result:?}"
    );
    tx.rollback().await.expect("rollback");
    assert_eq!(
        store.stream_version(&stream).await.expect("version").get(),
        1,
        "nothing written"
    );
    store
        .append(&stream, ExpectedVersion::exact(1), vec![event("E", 2)])
        .await
        .expect("append after");
}
