//! Which partition a stream belongs to.

use annals::StreamId;

/// The partition of `stream` among `count` partitions: the 64-bit FNV-1a hash of the stream
/// id's UTF-8 bytes, modulo `count` (and 0 when `count` is 0 or 1).
///
/// **This function is part of the data contract.** Checkpoints and parked events are kept per
/// partition, so a stream must land in the same partition in every release, on every
/// platform: the hash is fixed here, computed on bytes (no `Hash` trait, no random seed, no
/// pointer width), and pinned by tests.
///
/// ```
/// use annals::StreamId;
/// use annals_projections::partition_of;
///
/// let stream = StreamId::new("account-42")?;
/// assert!(partition_of(&stream, 16) < 16);
/// assert_eq!(partition_of(&stream, 1), 0);
/// # Ok::<(), annals::Error>(())
/// ```
pub fn partition_of(stream: &StreamId, count: u32) -> u32 {
    if count <= 1 {
        return 0;
    }
    let hash = fnv1a(stream.as_str().as_bytes());
    // The remainder is below `count`, a u32: it always fits.
    u32::try_from(hash % u64::from(count)).unwrap_or(0)
}

/// FNV-1a, 64 bits (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> StreamId {
        StreamId::new(s).unwrap()
    }

    #[test]
    fn the_hash_is_fnv1a_64() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn partitions_never_change_between_releases() {
        // Pinned: a change here moves streams between partitions and breaks every stored
        // checkpoint. Do not edit these numbers; they are the data contract.
        let pinned = [
            ("account-1", 16, 6),
            ("account-42", 16, 5),
            ("order-7f3a", 16, 7),
            ("account-1", 7, 4),
            ("ünïcødé-1", 16, 2),
        ];
        for (stream, count, partition) in pinned {
            assert_eq!(
                partition_of(&sid(stream), count),
                partition,
                "{stream} among {count}"
            );
        }
    }

    #[test]
    fn every_partition_is_used() {
        let mut seen = [false; 16];
        for n in 0..1000 {
            let p = partition_of(&sid(&format!("account-{n}")), 16);
            seen[usize::try_from(p).unwrap()] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
