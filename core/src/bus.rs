//! The bus: how committed events reach consumers in this and other processes.

use futures::stream::BoxStream;

use crate::store::Filter;
use crate::{Position, RecordedEvent, Result};

/// A carrier of committed events to consumers.
///
/// A bus is never the record: the store's global log is. A subscription yields events from
/// `from` (inclusive) in position order, without gaps or repeats, and heals any loss of the
/// carrier (a lagging receiver, a lost message) by reading the store.
pub trait Bus: Send + Sync {
    /// Follows events from `from` (inclusive) that pass `filter`.
    fn subscribe(
        &self,
        from: Position,
        filter: Filter,
    ) -> BoxStream<'static, Result<RecordedEvent>>;
}
