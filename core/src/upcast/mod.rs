//! Upcasting: reading events written at an older schema version as the current one.
//!
//! An [`Upcaster`] brings one event type from schema version `n` to `n + 1`. Registered in an
//! [`Upcasters`] set (or on a [`RepositoryBuilder`](crate::RepositoryBuilder)), upcasters chain
//! on read, before [`Aggregate::apply`](crate::Aggregate::apply) sees the event: an event
//! stored at v1 goes through v1 → v2 → v3. Events in the store are never rewritten.
//!
//! Two kinds: [`Upcaster::json`] edits the payload as a [`serde_json::Value`] (JSON payloads
//! only), [`Upcaster::typed`] decodes the old struct and produces the new one (any built-in
//! codec). A chain with a missing link is refused when it is checked against the event type
//! ([`Upcasters::check`], run by [`RepositoryBuilder::build`](crate::RepositoryBuilder::build)),
//! not when the first old event is read.
//!
//! ```
//! use annals::upcast::{Upcaster, Upcasters};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct DepositedV2 { cents: u64 }
//! #[derive(Serialize)]
//! struct DepositedV3 { cents: u64, currency: String }
//!
//! let mut upcasters = Upcasters::new();
//! // v1 stored whole units as `amount`; v2 stores `cents`.
//! upcasters.register(Upcaster::json("Deposited", 1, |mut v| {
//!     let amount = v["amount"].as_u64().unwrap_or(0);
//!     v["cents"] = (amount * 100).into();
//!     v
//! }))?;
//! upcasters.register(Upcaster::typed("Deposited", 2, |old: DepositedV2| DepositedV3 {
//!     cents: old.cents,
//!     currency: "EUR".into(),
//! }))?;
//! let payload = upcasters.upcast("Deposited", 1, "application/json", br#"{"amount":2}"#, 3)?;
//! assert_eq!(payload, br#"{"cents":200,"currency":"EUR"}"#);
//! # Ok::<(), annals::Error>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::codec::{Codecs, Json};
use crate::{DomainEvent, Error, CONTENT_TYPE_JSON};

type JsonFn = dyn Fn(Value) -> Value + Send + Sync;
type TypedFn = dyn Fn(&str, &str, &[u8]) -> Result<Vec<u8>, Error> + Send + Sync;

#[derive(Clone)]
enum Kind {
    Json(Arc<JsonFn>),
    Typed(Arc<TypedFn>),
}

/// Brings one event type from one schema version to the next.
#[derive(Clone)]
pub struct Upcaster {
    event_type: String,
    from_version: u16,
    kind: Kind,
}

impl fmt::Debug for Upcaster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upcaster")
            .field("event_type", &self.event_type)
            .field("from_version", &self.from_version)
            .field(
                "kind",
                &match self.kind {
                    Kind::Json(_) => "json",
                    Kind::Typed(_) => "typed",
                },
            )
            .finish()
    }
}

impl Upcaster {
    /// An upcaster of `event_type` from `from_version` to `from_version + 1` that edits the
    /// payload as JSON. It can only read JSON payloads; use [`typed`](Self::typed) for bincode.
    pub fn json(
        event_type: impl Into<String>,
        from_version: u16,
        f: impl Fn(Value) -> Value + Send + Sync + 'static,
    ) -> Self {
        Upcaster {
            event_type: event_type.into(),
            from_version,
            kind: Kind::Json(Arc::new(f)),
        }
    }

    /// An upcaster of `event_type` from `from_version` to `from_version + 1` that decodes the
    /// old payload as `Old` and stores `New`, with the codec that wrote the payload (JSON or
    /// bincode).
    pub fn typed<Old, New>(
        event_type: impl Into<String>,
        from_version: u16,
        f: impl Fn(Old) -> New + Send + Sync + 'static,
    ) -> Self
    where
        Old: DeserializeOwned,
        New: Serialize,
    {
        let codecs = Codecs::new(Json);
        Upcaster {
            event_type: event_type.into(),
            from_version,
            kind: Kind::Typed(Arc::new(move |event_type, content_type, payload| {
                let old: Old = codecs.decode(content_type, event_type, payload)?;
                codecs.encode_as(content_type, event_type, &f(old))
            })),
        }
    }

    /// The event type it upcasts.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The schema version it reads (it writes the next one).
    pub fn from_version(&self) -> u16 {
        self.from_version
    }
}

/// A set of upcasters, at most one per (event type, schema version).
#[derive(Clone, Debug, Default)]
pub struct Upcasters {
    chains: BTreeMap<String, BTreeMap<u16, Upcaster>>,
}

impl Upcasters {
    /// No upcasters.
    pub fn new() -> Self {
        Upcasters::default()
    }

    /// Whether no upcaster is registered.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }

    /// Adds `upcaster`.
    ///
    /// # Errors
    ///
    /// [`Error::Upcast`] when its schema version is 0 or the (event type, version) pair
    /// already has an upcaster.
    pub fn register(&mut self, upcaster: Upcaster) -> Result<(), Error> {
        let refuse = |reason: &str| Error::Upcast {
            event_type: upcaster.event_type.clone(),
            schema_version: upcaster.from_version,
            reason: reason.to_owned(),
        };
        if upcaster.from_version == 0 || upcaster.from_version == u16::MAX {
            return Err(refuse(
                "schema versions start at 1 and must have a next version",
            ));
        }
        let chain = self.chains.entry(upcaster.event_type.clone()).or_default();
        if chain.contains_key(&upcaster.from_version) {
            return Err(refuse("an upcaster for this version is already registered"));
        }
        chain.insert(upcaster.from_version, upcaster);
        Ok(())
    }

    /// Checks every chain against the event types of `E`: each upcast type must exist, each
    /// upcaster must read a version older than the type's current one, and every version from
    /// the oldest upcaster up to the current one must have its link.
    ///
    /// # Errors
    ///
    /// [`Error::Upcast`] naming the event type and the version whose link is wrong or missing.
    pub fn check<E: DomainEvent>(&self) -> Result<(), Error> {
        for (event_type, chain) in &self.chains {
            let Some(current) = E::current_schema_version(event_type) else {
                let first = chain.keys().next().copied().unwrap_or(0);
                return Err(Error::Upcast {
                    event_type: event_type.clone(),
                    schema_version: first,
                    reason: format!(
                        "no such event type: the known ones are {}",
                        known_types::<E>()
                    ),
                });
            };
            let versions: BTreeSet<u16> = chain.keys().copied().collect();
            if let Some(&too_new) = versions.range(current..).next() {
                return Err(Error::Upcast {
                    event_type: event_type.clone(),
                    schema_version: too_new,
                    reason: format!(
                        "the current schema version is {current}; an upcaster must read an older one"
                    ),
                });
            }
            let oldest = versions.first().copied().unwrap_or(current);
            if let Some(missing) = (oldest..current).find(|v| !versions.contains(v)) {
                return Err(Error::Upcast {
                    event_type: event_type.clone(),
                    schema_version: missing,
                    reason: format!(
                        "missing link in the chain to the current version {current}: no upcaster from {missing} to {}",
                        missing + 1
                    ),
                });
            }
        }
        Ok(())
    }

    /// Upcasts `payload`, an `event_type` at `schema_version` written with `content_type`, to
    /// `target` (usually the type's current version). The result has the same content type.
    ///
    /// # Errors
    ///
    /// [`Error::Upcast`] when a link is missing or a JSON upcaster meets a non-JSON payload;
    /// [`Error::Codec`] when the payload cannot be read.
    pub fn upcast(
        &self,
        event_type: &str,
        schema_version: u16,
        content_type: &str,
        payload: &[u8],
        target: u16,
    ) -> Result<Vec<u8>, Error> {
        let chain = self.chains.get(event_type);
        let mut bytes: Option<Vec<u8>> = None;
        let mut json: Option<Value> = None;
        for version in schema_version..target {
            let Some(upcaster) = chain.and_then(|c| c.get(&version)) else {
                return Err(Error::Upcast {
                    event_type: event_type.to_owned(),
                    schema_version: version,
                    reason: format!(
                        "no upcaster from schema version {version} to {} (the current version is {target})",
                        version + 1
                    ),
                });
            };
            match &upcaster.kind {
                Kind::Json(f) => {
                    if content_type != CONTENT_TYPE_JSON {
                        return Err(Error::Upcast {
                            event_type: event_type.to_owned(),
                            schema_version: version,
                            reason: format!(
                                "a JSON upcaster cannot read a `{content_type}` payload; register a typed one"
                            ),
                        });
                    }
                    let value = match json.take() {
                        Some(value) => value,
                        None => serde_json::from_slice(bytes.as_deref().unwrap_or(payload))
                            .map_err(|e| Error::Codec {
                                content_type: content_type.to_owned(),
                                event_type: event_type.to_owned(),
                                source: Box::new(e),
                            })?,
                    };
                    json = Some(f(value));
                }
                Kind::Typed(f) => {
                    let input = match json.take() {
                        Some(value) => to_json_bytes(event_type, &value)?,
                        None => bytes.take().unwrap_or_else(|| payload.to_vec()),
                    };
                    bytes = Some(f(event_type, content_type, &input)?);
                }
            }
        }
        match json {
            Some(value) => to_json_bytes(event_type, &value),
            None => Ok(bytes.unwrap_or_else(|| payload.to_vec())),
        }
    }
}

fn to_json_bytes(event_type: &str, value: &Value) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::Codec {
        content_type: CONTENT_TYPE_JSON.to_owned(),
        event_type: event_type.to_owned(),
        source: Box::new(e),
    })
}

fn known_types<E: DomainEvent>() -> String {
    E::EVENT_TYPES
        .iter()
        .map(|(name, version)| format!("{name} (v{version})"))
        .collect::<Vec<_>>()
        .join(", ")
}
