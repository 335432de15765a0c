//! Storing an enum's variant payload alone, the variant being named beside it.
//!
//! Serialising goes through the enum's own `Serialize` impl with a serializer wrapper that
//! turns `serialize_*_variant` into the plain struct / tuple / newtype / unit calls, so every
//! serde attribute on the fields keeps working. Deserialising feeds the enum's own
//! `Deserialize` impl a deserializer that answers its `deserialize_enum` with the variant index
//! known from the event type, then hands the payload to the variant.

use serde::de::value::U32Deserializer;
use serde::de::{
    DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, VariantAccess, Visitor,
};
use serde::ser::{
    Impossible, SerializeStruct, SerializeStructVariant, SerializeTuple, SerializeTupleVariant,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{codec_error, Codec};
use crate::Error;

/// Encodes the payload of the enum variant `event` alone: for `Deposited { amount: 5 }` in JSON,
/// `{"amount":5}`; for a newtype variant `Opened(Opened)`, the inner value; for a unit variant,
/// the unit value (`null` in JSON).
///
/// `E` must use serde's default, externally tagged enum representation. `event_type` names the
/// event in errors.
///
/// # Errors
///
/// [`Error::Codec`] when the codec fails or `event` is not an enum.
pub fn encode_variant<C: Codec, E: Serialize>(
    codec: &C,
    event_type: &str,
    event: &E,
) -> Result<Vec<u8>, Error> {
    codec
        .encode(&VariantPayload(event))
        .map_err(|e| codec_error(codec, event_type, e))
}

/// Decodes the payload of the `index`-th variant (in declaration order) of the enum `E`, as
/// written by [`encode_variant`]. `event_type` names the event in errors.
///
/// # Errors
///
/// [`Error::Codec`] when the payload is not a valid value of that variant.
pub fn decode_variant<C: Codec, E: DeserializeOwned>(
    codec: &C,
    event_type: &str,
    index: u32,
    payload: &[u8],
) -> Result<E, Error> {
    codec
        .decode_seed(
            VariantSeed {
                index,
                marker: std::marker::PhantomData::<E>,
            },
            payload,
        )
        .map_err(|e| codec_error(codec, event_type, e))
}

struct VariantPayload<'a, E>(&'a E);

impl<E: Serialize> Serialize for VariantPayload<'_, E> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(PayloadSerializer(serializer))
    }
}

struct PayloadSerializer<S>(S);

fn not_an_enum<E: serde::ser::Error>() -> E {
    E::custom("only an enum variant can be stored as a variant payload")
}

macro_rules! refuse {
    ($($method:ident($($ty:ty),*);)*) => {
        $(fn $method(self, $(_: $ty),*) -> Result<Self::Ok, Self::Error> {
            Err(not_an_enum())
        })*
    };
}

impl<S: Serializer> Serializer for PayloadSerializer<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Impossible<S::Ok, S::Error>;
    type SerializeTuple = Impossible<S::Ok, S::Error>;
    type SerializeTupleStruct = Impossible<S::Ok, S::Error>;
    type SerializeTupleVariant = TupleAsVariant<S::SerializeTuple>;
    type SerializeMap = Impossible<S::Ok, S::Error>;
    type SerializeStruct = Impossible<S::Ok, S::Error>;
    type SerializeStructVariant = StructAsVariant<S::SerializeStruct>;

    refuse! {
        serialize_bool(bool);
        serialize_i8(i8);
        serialize_i16(i16);
        serialize_i32(i32);
        serialize_i64(i64);
        serialize_u8(u8);
        serialize_u16(u16);
        serialize_u32(u32);
        serialize_u64(u64);
        serialize_f32(f32);
        serialize_f64(f64);
        serialize_char(char);
        serialize_str(&str);
        serialize_bytes(&[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(&'static str);
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<S::Ok, S::Error> {
        Err(not_an_enum())
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
    ) -> Result<S::Ok, S::Error> {
        self.0.serialize_unit()
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _value: &T,
    ) -> Result<S::Ok, S::Error> {
        Err(not_an_enum())
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        value: &T,
    ) -> Result<S::Ok, S::Error> {
        value.serialize(self.0)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        Err(not_an_enum())
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, S::Error> {
        Err(not_an_enum())
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        Err(not_an_enum())
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        Ok(TupleAsVariant(self.0.serialize_tuple(len)?))
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        Err(not_an_enum())
    }

    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        Err(not_an_enum())
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        Ok(StructAsVariant(self.0.serialize_struct(variant, len)?))
    }
}

struct TupleAsVariant<T>(T);

impl<T: SerializeTuple> SerializeTupleVariant for TupleAsVariant<T> {
    type Ok = T::Ok;
    type Error = T::Error;

    fn serialize_field<V: Serialize + ?Sized>(&mut self, value: &V) -> Result<(), T::Error> {
        self.0.serialize_element(value)
    }

    fn end(self) -> Result<T::Ok, T::Error> {
        self.0.end()
    }
}

struct StructAsVariant<T>(T);

impl<T: SerializeStruct> SerializeStructVariant for StructAsVariant<T> {
    type Ok = T::Ok;
    type Error = T::Error;

    fn serialize_field<V: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &V,
    ) -> Result<(), T::Error> {
        self.0.serialize_field(key, value)
    }

    fn skip_field(&mut self, key: &'static str) -> Result<(), T::Error> {
        self.0.skip_field(key)
    }

    fn end(self) -> Result<T::Ok, T::Error> {
        self.0.end()
    }
}

struct VariantSeed<E> {
    index: u32,
    marker: std::marker::PhantomData<E>,
}

impl<'de, E: Deserialize<'de>> DeserializeSeed<'de> for VariantSeed<E> {
    type Value = E;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<E, D::Error> {
        E::deserialize(PayloadDeserializer {
            inner: deserializer,
            index: self.index,
        })
    }
}

struct PayloadDeserializer<D> {
    inner: D,
    index: u32,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for PayloadDeserializer<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, D::Error> {
        Err(serde::de::Error::custom(
            "a variant payload can only be decoded into an externally tagged enum",
        ))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

impl<'de, D: Deserializer<'de>> EnumAccess<'de> for PayloadDeserializer<D> {
    type Error = D::Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), D::Error> {
        let index: U32Deserializer<D::Error> = self.index.into_deserializer();
        Ok((seed.deserialize(index)?, self))
    }
}

impl<'de, D: Deserializer<'de>> VariantAccess<'de> for PayloadDeserializer<D> {
    type Error = D::Error;

    fn unit_variant(self) -> Result<(), D::Error> {
        <()>::deserialize(self.inner)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, D::Error> {
        seed.deserialize(self.inner)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_tuple(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_struct("", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Json;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Opened {
        owner: String,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Event {
        Opened(Opened),
        Deposited {
            amount: u64,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            memo: Option<String>,
        },
        Moved(u64, String),
        Closed,
    }

    fn samples() -> Vec<(u32, Event)> {
        vec![
            (
                0,
                Event::Opened(Opened {
                    owner: "ada".into(),
                }),
            ),
            (
                1,
                Event::Deposited {
                    amount: 5,
                    memo: None,
                },
            ),
            (
                1,
                Event::Deposited {
                    amount: 6,
                    memo: Some("rent".into()),
                },
            ),
            (2, Event::Moved(3, "x".into())),
            (3, Event::Closed),
        ]
    }

    #[test]
    fn json_payloads_hold_the_variant_alone() {
        let json: Vec<String> = samples()
            .iter()
            .map(|(_, e)| String::from_utf8(encode_variant(&Json, "E", e).unwrap()).unwrap())
            .collect();
        assert_eq!(
            json,
            [
                r#"{"owner":"ada"}"#,
                r#"{"amount":5}"#,
                r#"{"amount":6,"memo":"rent"}"#,
                r#"[3,"x"]"#,
                "null"
            ]
        );
        for (index, event) in samples() {
            let bytes = encode_variant(&Json, "E", &event).unwrap();
            assert_eq!(
                decode_variant::<_, Event>(&Json, "E", index, &bytes).unwrap(),
                event
            );
        }
    }

    #[cfg(feature = "bincode")]
    #[test]
    fn bincode_payloads_round_trip() {
        use crate::codec::Bincode;
        // bincode is not self-describing: a skipped field cannot be read back, as with any
        // bincode payload, so the sample that skips one is left out.
        let samples = samples()
            .into_iter()
            .filter(|(_, e)| !matches!(e, Event::Deposited { memo: None, .. }));
        for (index, event) in samples {
            let bytes = encode_variant(&Bincode, "E", &event).unwrap();
            assert_eq!(
                decode_variant::<_, Event>(&Bincode, "E", index, &bytes).unwrap(),
                event
            );
        }
    }

    #[test]
    fn a_payload_of_another_variant_is_a_codec_error() {
        let bytes = encode_variant(&Json, "Opened", &samples()[0].1).unwrap();
        match decode_variant::<_, Event>(&Json, "Deposited", 1, &bytes) {
            Err(Error::Codec { event_type, .. }) => assert_eq!(event_type, "Deposited"),
            other => panic!("{other:?}"),
        }
        assert!(encode_variant(&Json, "n", &5u32).is_err());
    }
}
