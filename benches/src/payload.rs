//! The events every scenario writes, so the Annals side and the baseline move the same bytes.

use annals::{EventData, CONTENT_TYPE_JSON};

/// Bytes of every benchmark payload.
pub const PAYLOAD_BYTES: usize = 128;

/// A JSON payload of exactly [`PAYLOAD_BYTES`] bytes, different for each `n`.
pub fn payload(n: u64) -> Vec<u8> {
    let head = format!("{{\"amount\":{n},\"note\":\"");
    let mut out = head.into_bytes();
    while out.len() < PAYLOAD_BYTES - 2 {
        out.push(b'x');
    }
    out.extend_from_slice(b"\"}");
    out
}

/// An event carrying [`payload`]`(n)`.
pub fn event(n: u64) -> EventData {
    EventData::new("Deposited", CONTENT_TYPE_JSON, payload(n))
}

/// `count` events starting at `n`.
pub fn batch(n: u64, count: u64) -> Vec<EventData> {
    (n..n + count).map(event).collect()
}
