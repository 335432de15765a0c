//! Integer conversions the store makes everywhere, in one place.

use std::time::Duration;

/// A length or count as `u64`. `usize` is at most 64 bits wide on every platform Rust supports,
/// so this never saturates in practice.
pub(crate) fn u64_from(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Whole microseconds of `d`, for spans (saturating after half a million years).
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
