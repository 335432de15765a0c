//! Codecs: each event records the codec that wrote it, one store holds both, and the derive
//! stores the variant's payload alone.

mod support;

use annals::codec::{Bincode, Json};
use annals::{
    CommandContext, DomainEvent, EventStore, InMemoryStore, ReadStream, Repository,
    CONTENT_TYPE_BINCODE, CONTENT_TYPE_JSON,
};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use support::{add, Tally, TallyCommand};

#[tokio::test]
async fn one_stream_holds_both_codecs_and_every_reader_reads_both() {
    let store = InMemoryStore::new();
    let json: Repository<Tally, _> = Repository::new(store.clone());
    let bincode: Repository<Tally, _, _> = Repository::builder(store.clone())
        .codec(Bincode)
        .build()
        .unwrap();
    json.execute("1", add(1, 10), CommandContext::new())
        .await
        .unwrap();
    bincode
        .execute("1", add(2, 20), CommandContext::new())
        .await
        .unwrap();
    json.execute("1", TallyCommand::Take { n: 5 }, CommandContext::new())
        .await
        .unwrap();
    bincode
        .execute(
            "1",
            TallyCommand::AddMany { count: 2 },
            CommandContext::new(),
        )
        .await
        .unwrap();

    let stored: Vec<_> = store
        .read_stream(&json.stream_id("1").unwrap(), ReadStream::forward())
        .try_collect()
        .await
        .unwrap();
    let content_types: Vec<&str> = stored.iter().map(|e| e.content_type.as_str()).collect();
    assert_eq!(
        content_types,
        [
            CONTENT_TYPE_JSON,
            CONTENT_TYPE_BINCODE,
            CONTENT_TYPE_JSON,
            CONTENT_TYPE_BINCODE,
            CONTENT_TYPE_BINCODE
        ]
    );
    assert!(stored[1].payload.len() < stored[0].payload.len());

    let by_json = Repository::<Tally, _>::new(store.clone())
        .load("1")
        .await
        .unwrap();
    let by_bincode = Repository::<Tally, _>::builder(store.clone())
        .codec(Bincode)
        .build()
        .unwrap()
        .load("1")
        .await
        .unwrap();
    assert_eq!(by_json.state, by_bincode.state);
    assert_eq!(by_json.state.total, 27);
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
#[annals(schema_version = 2)]
enum Shapes {
    Named {
        x: i32,
        #[serde(rename = "why")]
        y: String,
    },
    #[annals(event_type = "wrapped", schema_version = 5)]
    Newtype(Inner),
    Tuple(u8, bool),
    Unit,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Inner {
    a: Vec<u16>,
}

#[test]
fn the_derive_names_versions_and_stores_the_payload_alone() {
    assert_eq!(
        Shapes::EVENT_TYPES,
        &[("Named", 2), ("wrapped", 5), ("Tuple", 2), ("Unit", 2)]
    );
    let cases = [
        (
            Shapes::Named {
                x: -1,
                y: "z".into(),
            },
            "Named",
            2,
            r#"{"x":-1,"why":"z"}"#,
        ),
        (
            Shapes::Newtype(Inner { a: vec![1, 2] }),
            "wrapped",
            5,
            r#"{"a":[1,2]}"#,
        ),
        (Shapes::Tuple(7, true), "Tuple", 2, "[7,true]"),
        (Shapes::Unit, "Unit", 2, "null"),
    ];
    for (event, event_type, version, json) in cases {
        assert_eq!(event.event_type(), event_type);
        assert_eq!(event.schema_version(), version);
        let payload = event.encode(&Json).unwrap();
        assert_eq!(String::from_utf8(payload.clone()).unwrap(), json);
        assert_eq!(Shapes::decode(&Json, event_type, &payload).unwrap(), event);
        let compact = event.encode(&Bincode).unwrap();
        assert_eq!(
            Shapes::decode(&Bincode, event_type, &compact).unwrap(),
            event
        );
    }
    match Shapes::decode(&Json, "Newtype", b"{}") {
        Err(annals::Error::UnknownEventType { event_type, .. }) => {
            assert_eq!(event_type, "Newtype")
        }
        other => panic!("{other:?}"),
    }
    match Shapes::decode(&Json, "Named", br#"{"x":"not a number"}"#) {
        Err(annals::Error::Codec {
            content_type,
            event_type,
            ..
        }) => assert_eq!(
            (content_type.as_str(), event_type.as_str()),
            ("application/json", "Named")
        ),
        other => panic!("{other:?}"),
    }
}
