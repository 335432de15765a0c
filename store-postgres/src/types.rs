//! The two PostgreSQL types `tokio-postgres` does not convert by itself without extra features:
//! `xid8` (a full transaction id) and `timestamptz` (kept as microseconds, like
//! [`Timestamp`]); and a `jsonb` value's text, borrowed from the row (so a reader can tell an
//! empty object without parsing it).

use std::error::Error as StdError;

use annals::Timestamp;
use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};

type BoxError = Box<dyn StdError + Sync + Send>;

/// A `xid8`: a 64-bit transaction id that never wraps around.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Xid8(pub(crate) u64);

impl<'a> FromSql<'a> for Xid8 {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let bytes: [u8; 8] = raw.try_into().map_err(|_| "a xid8 is 8 bytes")?;
        Ok(Xid8(u64::from_be_bytes(bytes)))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::XID8
    }
}

impl ToSql for Xid8 {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.put_u64(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::XID8
    }

    to_sql_checked!();
}

/// Microseconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A `timestamptz`, in microseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PgTime(pub(crate) Timestamp);

impl<'a> FromSql<'a> for PgTime {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let bytes: [u8; 8] = raw.try_into().map_err(|_| "a timestamptz is 8 bytes")?;
        let pg = i64::from_be_bytes(bytes);
        // `infinity` and `-infinity` are i64::MAX and i64::MIN: saturate.
        Ok(PgTime(Timestamp::from_unix_micros(
            pg.saturating_add(PG_EPOCH_MICROS),
        )))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }
}

impl ToSql for PgTime {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let micros = self.0.unix_micros();
        let pg = micros
            .checked_sub(PG_EPOCH_MICROS)
            .ok_or("the timestamp is out of PostgreSQL's range")?;
        out.put_i64(pg);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }

    to_sql_checked!();
}

/// A `u64` position part as the `bigint` holding the same bits.
pub(crate) fn bits_to_i64(n: u64) -> i64 {
    i64::from_ne_bytes(n.to_ne_bytes())
}

/// The inverse of [`bits_to_i64`].
pub(crate) fn bits_to_u64(n: i64) -> u64 {
    u64::from_ne_bytes(n.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_casts_round_trip() {
        for n in [
            0,
            1,
            i64::MAX.unsigned_abs(),
            i64::MAX.unsigned_abs() + 1,
            u64::MAX,
        ] {
            assert_eq!(bits_to_u64(bits_to_i64(n)), n);
        }
    }
}

/// The JSON text of a `jsonb` (or `json`) value, borrowed from the row it came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct JsonText<'a>(pub(crate) &'a [u8]);

impl JsonText<'_> {
    /// Whether the value is the empty object, `{}` (as the server sends one).
    pub(crate) fn is_empty_object(self) -> bool {
        self.0 == b"{}"
    }
}

impl<'a> FromSql<'a> for JsonText<'a> {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        if *ty == Type::JSONB {
            // A jsonb comes as a format version, 1, and the value's text.
            match raw.split_first() {
                Some((1, text)) => Ok(JsonText(text)),
                _ => Err("unsupported jsonb encoding version".into()),
            }
        } else {
            Ok(JsonText(raw))
        }
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }
}
