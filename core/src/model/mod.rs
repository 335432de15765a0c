//! The vocabulary: stream ids, versions, positions, events and limits.

mod event;
mod limits;
mod place;
mod position;
mod stream_id;
mod timestamp;
mod version;

pub use event::{
    AppendResult, EventData, EventId, Metadata, RecordedEvent, CONTENT_TYPE_BINCODE,
    CONTENT_TYPE_JSON, CONTENT_TYPE_OCTET_STREAM,
};
pub use limits::{Limit, Limits};
pub use place::RecordPlace;
pub use position::{ParsePositionError, Position};
pub use stream_id::{category_of, StreamId, MAX_STREAM_ID_LEN};
pub use timestamp::Timestamp;
pub use version::{ExpectedVersion, Version};
