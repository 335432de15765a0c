//! Codecs: how events and snapshots become bytes, and back.
//!
//! A [`Codec`] turns serde types into bytes. Two ship: [`Json`] (the default, readable by every
//! tool) and [`Bincode`] (compact; behind the default-on `bincode` feature). Each stored event
//! and snapshot records the content type of the codec that wrote it, and readers pick the codec
//! from that record, so one store can hold both and changing codec never strands old events.
//!
//! [`encode_variant`] and [`decode_variant`] store an enum's variant *payload* alone (the
//! variant itself is named by the event type beside it): they are what
//! `#[derive(DomainEvent)]` uses, and they work with any serde format.

mod variant;

use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, DeserializeSeed};
use serde::Serialize;

#[cfg(feature = "bincode")]
use crate::CONTENT_TYPE_BINCODE;
use crate::{BoxError, Error, CONTENT_TYPE_JSON};

pub use variant::{decode_variant, encode_variant};

/// Turns serde values into bytes and back, under one content type.
///
/// The trait has generic methods, so it is used through type parameters, not `dyn`; readers
/// choose among codecs by the content type recorded beside each payload.
pub trait Codec: Clone + fmt::Debug + Send + Sync + 'static {
    /// The content type recorded beside every payload this codec writes, e.g.
    /// `application/json`.
    fn content_type(&self) -> &str;

    /// Encodes `value`.
    ///
    /// # Errors
    ///
    /// The format's error when `value` cannot be represented.
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>, BoxError>;

    /// Decodes one value from `bytes` (which must hold exactly one) through a serde `seed`:
    /// the primitive every other decoding is built on, since a seed can carry run-time facts
    /// (such as which enum variant a payload belongs to) into the decoding.
    ///
    /// # Errors
    ///
    /// The format's error when `bytes` are not a valid value for the seed.
    fn decode_seed<'de, T: DeserializeSeed<'de>>(
        &self,
        seed: T,
        bytes: &'de [u8],
    ) -> Result<T::Value, BoxError>;

    /// Decodes a `T` from `bytes`, which must hold exactly one value.
    ///
    /// # Errors
    ///
    /// The format's error when `bytes` are not a valid `T`.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, BoxError> {
        self.decode_seed(PhantomData::<T>, bytes)
    }
}

/// JSON through `serde_json`: readable by people and by every tool, the default codec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Json;

impl Codec for Json {
    fn content_type(&self) -> &str {
        CONTENT_TYPE_JSON
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(value)?)
    }

    fn decode_seed<'de, T: DeserializeSeed<'de>>(
        &self,
        seed: T,
        bytes: &'de [u8],
    ) -> Result<T::Value, BoxError> {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let value = seed.deserialize(&mut deserializer)?;
        deserializer.end()?;
        Ok(value)
    }
}

/// bincode 2.0.1 in serde mode with its standard configuration (variable-length integers,
/// little endian): compact and fast, but not self-describing, so only typed upcasters can read
/// its payloads.
///
/// bincode is pinned at 2.0.1: the project is unmaintained and its 3.x release is a stub that
/// does not build, so it stays behind this trait and the `bincode` feature.
#[cfg(feature = "bincode")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Bincode;

#[cfg(feature = "bincode")]
impl Codec for Bincode {
    fn content_type(&self) -> &str {
        CONTENT_TYPE_BINCODE
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>, BoxError> {
        Ok(bincode::serde::encode_to_vec(
            value,
            bincode::config::standard(),
        )?)
    }

    fn decode_seed<'de, T: DeserializeSeed<'de>>(
        &self,
        seed: T,
        bytes: &'de [u8],
    ) -> Result<T::Value, BoxError> {
        let (value, read) =
            bincode::serde::seed_decode_from_slice(seed, bytes, bincode::config::standard())?;
        if read != bytes.len() {
            return Err(format!(
                "{} trailing bytes after the value ({} bytes read)",
                bytes.len() - read,
                read
            )
            .into());
        }
        Ok(value)
    }
}

/// The codecs a reader knows: the repository's own (`C`) plus the built-in ones, chosen by the
/// content type recorded beside a payload.
#[derive(Clone, Debug)]
pub(crate) struct Codecs<C> {
    pub(crate) writer: C,
}

/// Runs `$body` with `$codec` bound to the codec for `$content_type`, or evaluates to `None`.
macro_rules! with_codec {
    ($codecs:expr, $content_type:expr, |$codec:ident| $body:expr) => {{
        let content_type: &str = $content_type;
        if content_type == $crate::codec::Codec::content_type(&$codecs.writer) {
            let $codec = &$codecs.writer;
            Some($body)
        } else if content_type == $crate::CONTENT_TYPE_JSON {
            let $codec = &$crate::codec::Json;
            Some($body)
        } else {
            $crate::codec::with_bincode!(content_type, |$codec| $body)
        }
    }};
}

#[cfg(feature = "bincode")]
macro_rules! with_bincode {
    ($content_type:expr, |$codec:ident| $body:expr) => {
        if $content_type == $crate::CONTENT_TYPE_BINCODE {
            let $codec = &$crate::codec::Bincode;
            Some($body)
        } else {
            None
        }
    };
}

#[cfg(not(feature = "bincode"))]
macro_rules! with_bincode {
    ($content_type:expr, |$codec:ident| $body:expr) => {{
        let _ = $content_type;
        None
    }};
}

pub(crate) use {with_bincode, with_codec};

impl<C: Codec> Codecs<C> {
    pub(crate) fn new(writer: C) -> Self {
        Codecs { writer }
    }

    /// Decodes a `T` written by the codec of `content_type`; `what` names the value in errors
    /// (an event type, or the aggregate type for snapshots).
    pub(crate) fn decode<T: DeserializeOwned>(
        &self,
        content_type: &str,
        what: &str,
        bytes: &[u8],
    ) -> Result<T, Error> {
        match with_codec!(self, content_type, |codec| codec.decode::<T>(bytes)) {
            Some(Ok(value)) => Ok(value),
            Some(Err(source)) => Err(Error::Codec {
                content_type: content_type.to_owned(),
                event_type: what.to_owned(),
                source,
            }),
            None => Err(Error::UnknownContentType {
                content_type: content_type.to_owned(),
                event_type: what.to_owned(),
            }),
        }
    }

    /// Encodes `value` with the codec of `content_type`.
    pub(crate) fn encode_as<T: Serialize + ?Sized>(
        &self,
        content_type: &str,
        what: &str,
        value: &T,
    ) -> Result<Vec<u8>, Error> {
        match with_codec!(self, content_type, |codec| codec.encode(value)) {
            Some(Ok(bytes)) => Ok(bytes),
            Some(Err(source)) => Err(Error::Codec {
                content_type: content_type.to_owned(),
                event_type: what.to_owned(),
                source,
            }),
            None => Err(Error::UnknownContentType {
                content_type: content_type.to_owned(),
                event_type: what.to_owned(),
            }),
        }
    }
}

/// Wraps a codec failure on `what` (an event type or an aggregate type) as an [`Error::Codec`].
pub(crate) fn codec_error<C: Codec>(codec: &C, what: &str, source: BoxError) -> Error {
    Error::Codec {
        content_type: codec.content_type().to_owned(),
        event_type: what.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Sample {
        name: String,
        amount: u64,
    }

    #[test]
    fn json_round_trips() {
        let value = Sample {
            name: "ada".into(),
            amount: 7,
        };
        let bytes = Json.encode(&value).unwrap();
        assert_eq!(bytes, br#"{"name":"ada","amount":7}"#);
        assert_eq!(Json.decode::<Sample>(&bytes).unwrap(), value);
        assert!(Json.decode::<Sample>(b"{").is_err());
    }

    #[cfg(feature = "bincode")]
    #[test]
    fn bincode_round_trips_and_refuses_trailing_bytes() {
        let value = Sample {
            name: "ada".into(),
            amount: 7,
        };
        let mut bytes = Bincode.encode(&value).unwrap();
        assert_eq!(Bincode.decode::<Sample>(&bytes).unwrap(), value);
        bytes.push(0);
        assert!(Bincode.decode::<Sample>(&bytes).is_err());
    }

    #[test]
    fn codecs_pick_by_content_type_and_name_unknown_ones() {
        let codecs = Codecs::new(Json);
        let bytes = codecs
            .encode_as(CONTENT_TYPE_JSON, "Sample", &5u32)
            .unwrap();
        assert_eq!(
            codecs
                .decode::<u32>(CONTENT_TYPE_JSON, "Sample", &bytes)
                .unwrap(),
            5
        );
        match codecs.decode::<u32>("text/csv", "Sample", &bytes) {
            Err(Error::UnknownContentType {
                content_type,
                event_type,
            }) => assert_eq!(
                (content_type.as_str(), event_type.as_str()),
                ("text/csv", "Sample")
            ),
            other => panic!("{other:?}"),
        }
    }
}
