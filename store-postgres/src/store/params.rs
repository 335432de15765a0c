//! An append's statement parameters, and the checks of what PostgreSQL can store.

use annals::{Error, EventData, ExpectedVersion, Metadata, Result, StreamId, Timestamp};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::schema::{EXPECT_ANY, EXPECT_EXISTS, EXPECT_NO_STREAM};
use crate::types::PgTime;

/// The expected version as the statements take it (`$2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ExpectedCode {
    /// The code: one of the `EXPECT_*` constants, or the exact version.
    pub(super) code: i64,
    /// The version the stream must be at exactly (`NoStream` is 0), if the check is exact.
    pub(super) exact: Option<u64>,
}

impl ExpectedCode {
    /// The code of `expected`, or `None` for an exact version no `bigint` holds (no stream
    /// reaches it: always a conflict).
    pub(super) fn of(expected: ExpectedVersion) -> Option<ExpectedCode> {
        let (code, exact) = match expected {
            ExpectedVersion::Any => (EXPECT_ANY, None),
            ExpectedVersion::StreamExists => (EXPECT_EXISTS, None),
            ExpectedVersion::NoStream => (EXPECT_NO_STREAM, Some(0)),
            ExpectedVersion::Exact(v) => (i64::try_from(v.get()).ok()?, Some(v.get())),
        };
        Some(ExpectedCode { code, exact })
    }
}

/// The parameters of an append statement: `$1` the stream, `$2` the expected-version code,
/// `$3`–`$11` the event columns (one value each for a single event, arrays for a batch).
pub(super) struct AppendParams<'a> {
    stream: &'a str,
    expected: i64,
    columns: Columns<'a>,
}

enum Columns<'a> {
    One {
        id: &'a Uuid,
        event_type: &'a str,
        schema_version: i32,
        content_type: &'a str,
        payload: &'a [u8],
        correlation: Option<Uuid>,
        causation: Option<Uuid>,
        timestamp: PgTime,
        headers: serde_json::Value,
    },
    Batch {
        ids: Vec<Uuid>,
        types: Vec<&'a str>,
        schema_versions: Vec<i32>,
        content_types: Vec<&'a str>,
        payloads: Vec<&'a [u8]>,
        correlations: Vec<Option<Uuid>>,
        causations: Vec<Option<Uuid>>,
        timestamps: Vec<PgTime>,
        headers: Vec<serde_json::Value>,
    },
}

impl<'a> AppendParams<'a> {
    pub(super) fn new(
        stream: &'a StreamId,
        expected: i64,
        events: &'a [EventData],
    ) -> AppendParams<'a> {
        let columns = match events {
            [e] => Columns::One {
                id: e.id.as_uuid(),
                event_type: e.event_type.as_str(),
                schema_version: i32::from(e.schema_version),
                content_type: e.content_type.as_str(),
                payload: e.payload.as_ref(),
                correlation: e.metadata.correlation_id,
                causation: e.metadata.causation_id,
                timestamp: PgTime(e.metadata.timestamp),
                headers: headers_to_json(&e.metadata),
            },
            _ => Columns::Batch {
                ids: events.iter().map(|e| *e.id.as_uuid()).collect(),
                types: events.iter().map(|e| e.event_type.as_str()).collect(),
                schema_versions: events.iter().map(|e| i32::from(e.schema_version)).collect(),
                content_types: events.iter().map(|e| e.content_type.as_str()).collect(),
                payloads: events.iter().map(|e| e.payload.as_ref()).collect(),
                correlations: events.iter().map(|e| e.metadata.correlation_id).collect(),
                causations: events.iter().map(|e| e.metadata.causation_id).collect(),
                timestamps: events
                    .iter()
                    .map(|e| PgTime(e.metadata.timestamp))
                    .collect(),
                headers: events
                    .iter()
                    .map(|e| headers_to_json(&e.metadata))
                    .collect(),
            },
        };
        AppendParams {
            stream: stream.as_str(),
            expected,
            columns,
        }
    }

    pub(super) fn as_params(&self) -> [&(dyn ToSql + Sync); 11] {
        match &self.columns {
            Columns::One {
                id,
                event_type,
                schema_version,
                content_type,
                payload,
                correlation,
                causation,
                timestamp,
                headers,
            } => [
                &self.stream,
                &self.expected,
                *id,
                event_type,
                schema_version,
                content_type,
                payload,
                correlation,
                causation,
                timestamp,
                headers,
            ],
            Columns::Batch {
                ids,
                types,
                schema_versions,
                content_types,
                payloads,
                correlations,
                causations,
                timestamps,
                headers,
            } => [
                &self.stream,
                &self.expected,
                ids,
                types,
                schema_versions,
                content_types,
                payloads,
                correlations,
                causations,
                timestamps,
                headers,
            ],
        }
    }
}

/// The earliest time a PostgreSQL `timestamptz` holds (4714-11-24 BC, 00:00 UTC), in
/// microseconds from the Unix epoch. Every later [`Timestamp`] fits.
const PG_MIN_MICROS: i64 = -210_866_803_200_000_000;

/// Why PostgreSQL cannot store `time` as the `what` of an event, if it cannot.
pub(super) fn unstorable_time(what: &str, time: Timestamp) -> Option<String> {
    (time.unix_micros() < PG_MIN_MICROS).then(|| {
        format!(
            "the {what} ({} µs from the Unix epoch) is before 4714 BC, the earliest time \
             PostgreSQL's timestamptz holds",
            time.unix_micros()
        )
    })
}

/// PostgreSQL `text` and `jsonb` cannot hold U+0000, nor `timestamptz` a time before 4714 BC:
/// refuse them with the facts instead of a server error.
pub(super) fn check_storable(events: &[EventData]) -> Result<()> {
    for event in events {
        let reason = if let Some(reason) = unstorable_time("timestamp", event.metadata.timestamp) {
            reason
        } else if event.content_type.contains('\0') {
            "the content type contains a NUL character (U+0000), which PostgreSQL text cannot store"
                .to_owned()
        } else if let Some((key, _)) = event
            .metadata
            .headers
            .iter()
            .find(|(k, v)| k.contains('\0') || v.contains('\0'))
        {
            format!(
                "header {key:?} contains a NUL character (U+0000), which PostgreSQL jsonb cannot store"
            )
        } else {
            continue;
        };
        return Err(Error::InvalidEvent {
            event_id: Some(event.id),
            reason,
        });
    }
    Ok(())
}

fn headers_to_json(metadata: &Metadata) -> serde_json::Value {
    serde_json::Value::Object(
        metadata
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    )
}

pub(super) fn check_text(what: &str, text: &str) -> Result<()> {
    if text.contains('\0') {
        return Err(Error::InvalidEvent {
            event_id: None,
            reason: format!(
                "the {what} contains a NUL character (U+0000), which PostgreSQL text cannot store"
            ),
        });
    }
    Ok(())
}
