use serde::{Deserialize, Serialize};

use crate::{category_of, Position, RecordedEvent, Version};

/// The direction of a stream read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Direction {
    /// Oldest first.
    #[default]
    Forward,
    /// Newest first.
    Backward,
}

/// What to read of one stream: a direction, a starting version (inclusive) and a limit.
///
/// ```
/// use annals::{ReadStream, Version};
///
/// // The first 100 events.
/// let first = ReadStream::forward().limit(100);
/// // The last 10 events, newest first.
/// let last = ReadStream::backward().limit(10);
/// // From version 42 on.
/// let tail = ReadStream::forward().from(Version::new(42));
/// # let _ = (first, last, tail);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ReadStream {
    /// Which way to read.
    pub direction: Direction,
    /// The first version to return (inclusive); forward reads from before the first event
    /// start at version 1, backward reads from past the end start at the last event.
    pub from: Version,
    /// The most events to return.
    pub limit: usize,
}

impl ReadStream {
    /// The whole stream, oldest first.
    pub const fn forward() -> Self {
        ReadStream {
            direction: Direction::Forward,
            from: Version::FIRST,
            limit: usize::MAX,
        }
    }

    /// The whole stream, newest first.
    pub const fn backward() -> Self {
        ReadStream {
            direction: Direction::Backward,
            from: Version::new(u64::MAX),
            limit: usize::MAX,
        }
    }

    /// Starts at `version` (inclusive).
    #[must_use]
    pub const fn from(mut self, version: Version) -> Self {
        self.from = version;
        self
    }

    /// Returns at most `limit` events.
    #[must_use]
    pub const fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// The inclusive version range this read covers in a stream at version `head`, in reading
    /// order, or `None` when it covers nothing. Stores use it to plan their reads.
    pub fn range(&self, head: Version) -> Option<(Version, Version)> {
        if self.limit == 0 || head.is_empty() {
            return None;
        }
        let take = self.limit as u64;
        match self.direction {
            Direction::Forward => {
                let first = self.from.get().max(1);
                if first > head.get() {
                    return None;
                }
                let last = head.get().min(first.saturating_add(take - 1));
                Some((Version::new(first), Version::new(last)))
            }
            Direction::Backward => {
                let first = self.from.get().min(head.get());
                if first == 0 {
                    return None;
                }
                let last = first.saturating_sub(take - 1).max(1);
                Some((Version::new(first), Version::new(last)))
            }
        }
    }
}

impl Default for ReadStream {
    fn default() -> Self {
        ReadStream::forward()
    }
}

/// Which events of the global log a reader wants: by category and by event type.
///
/// An empty list means "all"; an event must match both lists.
///
/// ```
/// use annals::Filter;
///
/// let deposits = Filter::all().category("account").event_type("Deposited");
/// assert!(deposits.matches_parts("account-1", "Deposited"));
/// assert!(!deposits.matches_parts("order-1", "Deposited"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Filter {
    /// Stream categories to keep (empty: all).
    pub categories: Vec<String>,
    /// Event types to keep (empty: all).
    pub event_types: Vec<String>,
}

impl Filter {
    /// Every event.
    pub fn all() -> Self {
        Filter::default()
    }

    /// Also keeps events of streams in `category`.
    #[must_use]
    pub fn category(mut self, category: impl Into<String>) -> Self {
        self.categories.push(category.into());
        self
    }

    /// Also keeps events of type `event_type`.
    #[must_use]
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_types.push(event_type.into());
        self
    }

    /// Whether this filter keeps every event.
    pub fn is_all(&self) -> bool {
        self.categories.is_empty() && self.event_types.is_empty()
    }

    /// Whether `event` passes.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        self.matches_parts(event.stream_id.as_str(), &event.event_type)
    }

    /// Whether an event of `event_type` in the stream `stream_id` passes.
    pub fn matches_parts(&self, stream_id: &str, event_type: &str) -> bool {
        (self.categories.is_empty() || self.categories.iter().any(|c| c == category_of(stream_id)))
            && (self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type))
    }
}

/// What to read of the global log: a starting position (inclusive), a limit and a filter.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ReadAll {
    /// The first position to return (inclusive).
    pub from: Position,
    /// The most events to return (after filtering).
    pub limit: usize,
    /// Which events to return.
    pub filter: Filter,
}

impl ReadAll {
    /// Every event from `from` (inclusive) on.
    pub fn from(from: Position) -> Self {
        ReadAll {
            from,
            limit: usize::MAX,
            filter: Filter::all(),
        }
    }

    /// The whole log.
    pub fn all() -> Self {
        ReadAll::from(Position::START)
    }

    /// Returns at most `limit` events.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Returns only the events `filter` keeps.
    #[must_use]
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_ranges() {
        let r = ReadStream::forward();
        assert_eq!(r.range(Version::new(0)), None);
        assert_eq!(
            r.range(Version::new(5)),
            Some((Version::new(1), Version::new(5)))
        );
        let r = ReadStream::forward().from(Version::new(3)).limit(2);
        assert_eq!(
            r.range(Version::new(10)),
            Some((Version::new(3), Version::new(4)))
        );
        assert_eq!(r.range(Version::new(2)), None);
        assert_eq!(ReadStream::forward().limit(0).range(Version::new(3)), None);
    }

    #[test]
    fn backward_ranges() {
        let r = ReadStream::backward();
        assert_eq!(
            r.range(Version::new(5)),
            Some((Version::new(5), Version::new(1)))
        );
        let r = ReadStream::backward().from(Version::new(3)).limit(2);
        assert_eq!(
            r.range(Version::new(10)),
            Some((Version::new(3), Version::new(2)))
        );
        assert_eq!(
            ReadStream::backward()
                .from(Version::new(0))
                .range(Version::new(3)),
            None
        );
    }
}
