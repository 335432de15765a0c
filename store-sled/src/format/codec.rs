//! What every value shares: the checksum that starts it, a strict reader (every length checked,
//! nothing panics on bad bytes) and the writers of varints and length-prefixed bytes.

use uuid::Uuid;

use super::CRC_LEN;
use crate::num::u64_from;

/// A big-endian `u64` from the first 8 bytes of `bytes` (callers pass at least 8).
pub(super) fn be_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

// Checksums: every value starts with a CRC-32 (little-endian) over the key and the rest of the
// value, so a value moved under another key is caught as well as flipped bits.

/// The CRC-32 of `key` followed by `body`.
pub(super) fn crc(key: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(body);
    hasher.finalize()
}

/// The little-endian checksum stored at the start of `value` (at least [`CRC_LEN`] bytes).
pub(super) fn stored_crc(value: &[u8]) -> u32 {
    let mut stored = [0u8; CRC_LEN];
    stored.copy_from_slice(&value[..CRC_LEN]);
    u32::from_le_bytes(stored)
}

/// Fills in the checksum of `value` (whose first [`CRC_LEN`] bytes are reserved) for `key`.
pub(super) fn seal(key: &[u8], mut value: Vec<u8>) -> Vec<u8> {
    let sum = crc(key, &value[CRC_LEN..]);
    value[..CRC_LEN].copy_from_slice(&sum.to_le_bytes());
    value
}

/// Checks the checksum of `value` stored under `key` and returns the bytes after it.
pub(super) fn unseal<'a>(key: &[u8], value: &'a [u8]) -> Result<&'a [u8], String> {
    if value.len() < CRC_LEN {
        return Err(format!("value of {} bytes is too short", value.len()));
    }
    let stored = stored_crc(value);
    let body = &value[CRC_LEN..];
    let computed = crc(key, body);
    if stored != computed {
        return Err(format!(
            "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    Ok(body)
}

/// A small strict reader: every length is checked, nothing panics on bad bytes.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    /// The bytes not read yet.
    pub(super) fn rest(&self) -> &'a [u8] {
        self.bytes
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err(format!(
                "truncated: wanted {n} bytes, {} left",
                self.bytes.len()
            ));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut b = [0u8; N];
        b.copy_from_slice(self.take(N)?);
        Ok(b)
    }

    pub(super) fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(super) fn u32_le(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(super) fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A big-endian `i64` (timestamps: written as `i64::to_be_bytes`).
    pub(super) fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    pub(super) fn uuid(&mut self) -> Result<Uuid, String> {
        Ok(Uuid::from_bytes(self.array()?))
    }

    pub(super) fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            value |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    pub(super) fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| format!("length {len} too large"))?;
        self.take(len)
    }

    pub(super) fn string(&mut self) -> Result<String, String> {
        let raw = self.bytes()?;
        String::from_utf8(raw.to_vec()).map_err(|_| "text is not UTF-8".to_owned())
    }

    pub(super) fn end(&self) -> Result<(), String> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(format!("{} unexpected trailing bytes", self.bytes.len()))
        }
    }
}

/// Appends `n` as an unsigned LEB128 varint.
pub(super) fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    loop {
        // The low byte of `n`; its top bit is replaced by the continuation flag.
        let low = n.to_le_bytes()[0] & 0x7F;
        n >>= 7;
        if n == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// Appends `bytes` with their length as a varint before them.
pub(super) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, u64_from(bytes.len()));
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for n in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, n);
            assert_eq!(Reader::new(&out).varint().unwrap(), n);
        }
        assert!(Reader::new(&[0x80; 11]).varint().is_err());
        assert!(Reader::new(&[0x80]).varint().is_err());
    }
}
