use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// The longest stream id accepted, in bytes of UTF-8.
pub const MAX_STREAM_ID_LEN: usize = 255;

/// The name of an event stream: `account-42`, `order-7f3a…`.
///
/// A stream id is 1 to [`MAX_STREAM_ID_LEN`] bytes of UTF-8 without control characters. By
/// convention it is `category-id`; the [category](StreamId::category) is the text before the
/// first `-` (the whole id when there is none). Cloning is cheap (a shared string).
///
/// ```
/// use annals::StreamId;
///
/// let id = StreamId::new("account-42")?;
/// assert_eq!(id.category(), "account");
/// assert!(StreamId::new("").is_err());
/// # Ok::<(), annals::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(Arc<str>);

impl StreamId {
    /// Validates `id` and makes a stream id of it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidStreamId`] when `id` is empty, longer than [`MAX_STREAM_ID_LEN`] bytes, or
    /// holds a control character.
    pub fn new(id: impl AsRef<str>) -> Result<Self, Error> {
        let id = id.as_ref();
        validate(id)?;
        Ok(StreamId(Arc::from(id)))
    }

    /// Makes the id `category-id`, e.g. `StreamId::compose("account", 42)` is `account-42`.
    ///
    /// # Errors
    ///
    /// As [`StreamId::new`] for the composed text.
    pub fn compose(category: &str, id: impl fmt::Display) -> Result<Self, Error> {
        Self::new(format!("{category}-{id}"))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The category: the text before the first `-`, or the whole id when it has none.
    pub fn category(&self) -> &str {
        category_of(&self.0)
    }
}

/// The category of a stream id given as text: the part before the first `-`.
pub fn category_of(id: &str) -> &str {
    id.split_once('-').map_or(id, |(category, _)| category)
}

fn validate(id: &str) -> Result<(), Error> {
    let reason = if id.is_empty() {
        "it is empty"
    } else if id.len() > MAX_STREAM_ID_LEN {
        "it is longer than 255 bytes"
    } else if id.chars().any(char::is_control) {
        "it contains a control character"
    } else {
        return Ok(());
    };
    Err(Error::InvalidStreamId {
        id: id.chars().take(300).collect(),
        reason,
    })
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for StreamId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for StreamId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FromStr for StreamId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        StreamId::new(s)
    }
}

impl TryFrom<&str> for StreamId {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self, Error> {
        StreamId::new(s)
    }
}

impl TryFrom<String> for StreamId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        StreamId::new(s)
    }
}

impl Serialize for StreamId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StreamId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        StreamId::new(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_boundaries() {
        assert!(StreamId::new("a").is_ok());
        assert!(StreamId::new("é".repeat(127)).is_ok()); // 254 bytes
        assert!(StreamId::new("x".repeat(255)).is_ok());
    }

    #[test]
    fn rejects_bad_ids_with_a_reason() {
        for (id, reason) in [
            (String::new(), "empty"),
            ("x".repeat(256), "255"),
            ("a\nb".to_owned(), "control"),
            ("a\u{7f}".to_owned(), "control"),
        ] {
            match StreamId::new(&id) {
                Err(Error::InvalidStreamId { reason: r, .. }) => assert!(r.contains(reason), "{r}"),
                other => panic!("{id:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn category_is_text_before_the_first_dash() {
        assert_eq!(StreamId::new("account-42-x").unwrap().category(), "account");
        assert_eq!(StreamId::new("singleton").unwrap().category(), "singleton");
        assert_eq!(StreamId::new("-x").unwrap().category(), "");
    }

    #[test]
    fn deserializing_validates() {
        let err = serde_json::from_str::<StreamId>("\"\"").unwrap_err();
        assert!(err.to_string().contains("empty"));
    }
}
