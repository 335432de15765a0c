//! Upcasting: events stored at schema v1 read as v3 through a chain of two upcasters; broken
//! chains are refused when the repository is built.

use annals::codec::{Bincode, Codec};
use annals::upcast::Upcaster;
use annals::{
    Aggregate, CommandContext, DomainEvent, Error, EventData, EventStore, ExpectedVersion,
    InMemoryStore, Repository, StreamId, CONTENT_TYPE_BINCODE,
};
use serde::{Deserialize, Serialize};

/// v1: `{"amount": units}`. v2: `{"cents": n}`. v3: `{"cents": n, "currency": "…"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
enum WalletEvent {
    #[annals(schema_version = 3)]
    Deposited {
        cents: u64,
        currency: String,
    },
    Emptied,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Wallet {
    cents: u64,
    currencies: Vec<String>,
}

impl Aggregate for Wallet {
    const TYPE: &'static str = "wallet";
    type Command = ();
    type Event = WalletEvent;
    type Error = std::convert::Infallible;

    fn handle(&self, _: &()) -> Result<Vec<WalletEvent>, Self::Error> {
        Ok(vec![WalletEvent::Emptied])
    }

    fn apply(&mut self, event: &WalletEvent) {
        match event {
            WalletEvent::Deposited { cents, currency } => {
                self.cents += cents;
                self.currencies.push(currency.clone());
            }
            WalletEvent::Emptied => self.cents = 0,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct DepositedV1 {
    amount: u64,
}

#[derive(Serialize, Deserialize)]
struct DepositedV2 {
    cents: u64,
}

#[derive(Serialize)]
struct DepositedV3 {
    cents: u64,
    currency: String,
}

fn v1_to_v2_json() -> Upcaster {
    Upcaster::json("Deposited", 1, |value| {
        let amount = value["amount"].as_u64().unwrap_or(0);
        serde_json::json!({ "cents": amount * 100 })
    })
}

fn v2_to_v3_typed() -> Upcaster {
    Upcaster::typed("Deposited", 2, |old: DepositedV2| DepositedV3 {
        cents: old.cents,
        currency: "EUR".into(),
    })
}

fn wallets(store: &InMemoryStore) -> Repository<Wallet, InMemoryStore> {
    Repository::builder(store.clone())
        .upcaster(v1_to_v2_json())
        .upcaster(v2_to_v3_typed())
        .build()
        .unwrap()
}

async fn append(store: &InMemoryStore, events: Vec<EventData>) {
    store
        .append(
            &StreamId::new("wallet-1").unwrap(),
            ExpectedVersion::Any,
            events,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn events_written_at_v1_and_v2_are_read_as_v3() {
    let store = InMemoryStore::new();
    append(
        &store,
        vec![
            EventData::json("Deposited", &DepositedV1 { amount: 2 }).unwrap(),
            EventData::json("Deposited", &DepositedV2 { cents: 50 })
                .unwrap()
                .with_schema_version(2),
        ],
    )
    .await;
    let wallets = wallets(&store);
    // And one written today, at v3, through the repository's own codec.
    let current = WalletEvent::Deposited {
        cents: 7,
        currency: "CHF".into(),
    };
    append(
        &store,
        vec![EventData::new(
            "Deposited",
            "application/json",
            current.encode(&annals::codec::Json).unwrap(),
        )
        .with_schema_version(3)],
    )
    .await;

    let loaded = wallets.load("1").await.unwrap();
    assert_eq!(loaded.state.cents, 257);
    assert_eq!(loaded.state.currencies, ["EUR", "EUR", "CHF"]);
    let changes = wallets
        .changes("1", annals::Version::EMPTY, annals::Version::new(1))
        .await
        .unwrap();
    assert_eq!(
        changes.events[0].event,
        WalletEvent::Deposited {
            cents: 200,
            currency: "EUR".into()
        }
    );
    // New events are written at the current version.
    wallets
        .execute("1", (), CommandContext::new())
        .await
        .unwrap();
    assert_eq!(wallets.load("1").await.unwrap().state.cents, 0);
}

#[tokio::test]
async fn typed_upcasters_read_bincode_payloads() {
    let store = InMemoryStore::new();
    append(
        &store,
        vec![EventData::new(
            "Deposited",
            CONTENT_TYPE_BINCODE,
            Bincode.encode(&DepositedV2 { cents: 9 }).unwrap(),
        )
        .with_schema_version(2)],
    )
    .await;
    let loaded = wallets(&store).load("1").await.unwrap();
    assert_eq!((loaded.state.cents, loaded.state.currencies.len()), (9, 1));

    // A JSON upcaster cannot read bincode: a clear error, not garbage.
    append(
        &store,
        vec![EventData::new(
            "Deposited",
            CONTENT_TYPE_BINCODE,
            Bincode.encode(&DepositedV1 { amount: 1 }).unwrap(),
        )],
    )
    .await;
    match wallets(&store).load("1").await {
        Err(Error::Upcast {
            event_type,
            schema_version,
            reason,
        }) => {
            assert_eq!((event_type.as_str(), schema_version), ("Deposited", 1));
            assert!(reason.contains("application/x-bincode"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_link_is_refused_when_building() {
    let store = InMemoryStore::new();
    // v1 → v2 only: nothing brings v2 to v3.
    let missing = Repository::<Wallet, _>::builder(store.clone())
        .upcaster(v1_to_v2_json())
        .build()
        .unwrap_err();
    match missing {
        Error::Upcast {
            event_type,
            schema_version,
            reason,
        } => {
            assert_eq!((event_type.as_str(), schema_version), ("Deposited", 2));
            assert!(reason.contains("missing link"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // v2 → v3 alone is a complete chain (v1 events then fail when read, naming the version).
    assert!(Repository::<Wallet, _>::builder(store.clone())
        .upcaster(v2_to_v3_typed())
        .build()
        .is_ok());
    let unknown = Repository::<Wallet, _>::builder(store.clone())
        .upcaster(Upcaster::json("Withdrawn", 1, |v| v))
        .build()
        .unwrap_err();
    assert!(
        unknown.to_string().contains("no such event type"),
        "{unknown}"
    );
    let too_new = Repository::<Wallet, _>::builder(store.clone())
        .upcaster(Upcaster::json("Emptied", 1, |v| v))
        .build()
        .unwrap_err();
    assert!(
        too_new.to_string().contains("current schema version is 1"),
        "{too_new}"
    );
    let twice = Repository::<Wallet, _>::builder(store)
        .upcaster(v1_to_v2_json())
        .upcaster(v1_to_v2_json())
        .upcaster(v2_to_v3_typed())
        .build()
        .unwrap_err();
    assert!(twice.to_string().contains("already registered"), "{twice}");
}

#[tokio::test]
async fn unknown_types_versions_and_content_types_are_named() {
    let store = InMemoryStore::new();
    append(&store, vec![EventData::json("Stolen", &()).unwrap()]).await;
    match wallets(&store).load("1").await {
        Err(Error::UnknownEventType { event_type, .. }) => assert_eq!(event_type, "Stolen"),
        other => panic!("{other:?}"),
    }

    let store = InMemoryStore::new();
    append(&store, vec![EventData::new("Emptied", "text/csv", "x")]).await;
    match wallets(&store).load("1").await {
        Err(Error::UnknownContentType {
            content_type,
            event_type,
        }) => assert_eq!(
            (content_type.as_str(), event_type.as_str()),
            ("text/csv", "Emptied")
        ),
        other => panic!("{other:?}"),
    }

    let store = InMemoryStore::new();
    append(
        &store,
        vec![EventData::json("Emptied", &())
            .unwrap()
            .with_schema_version(4)],
    )
    .await;
    match wallets(&store).load("1").await {
        Err(Error::Upcast {
            schema_version,
            reason,
            ..
        }) => {
            assert_eq!(schema_version, 4);
            assert!(reason.contains("newer"), "{reason}");
        }
        other => panic!("{other:?}"),
    }

    let store = InMemoryStore::new();
    append(
        &store,
        vec![EventData::json("Deposited", &DepositedV1 { amount: 1 }).unwrap()],
    )
    .await;
    let only_v2: Repository<Wallet, _> = Repository::builder(store.clone())
        .upcaster(v2_to_v3_typed())
        .build()
        .unwrap();
    match only_v2.load("1").await {
        Err(Error::Upcast { schema_version, .. }) => assert_eq!(schema_version, 1),
        other => panic!("{other:?}"),
    }
}
