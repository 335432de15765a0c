//! Segment files' names and headers, frames, and positional I/O.

use std::fs::File;
use std::io;
use std::path::Path;

use annals::Error;

use super::*;

/// The file name of the segment starting at `first`.
pub(crate) fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

pub(super) fn header(first: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&SEGMENT_VERSION.to_be_bytes());
    out.extend_from_slice(&first.to_be_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

pub(super) fn check_header(bytes: &[u8], first: u64) -> std::result::Result<(), String> {
    if bytes.len() < 24 {
        return Err("the segment header is cut short".into());
    }
    if &bytes[..8] != MAGIC {
        return Err("the segment header's magic is wrong".into());
    }
    let crc = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    if crc32fast::hash(&bytes[..20]) != crc {
        return Err("the segment header fails its checksum".into());
    }
    let version = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != SEGMENT_VERSION {
        return Err(format!("unknown segment version {version}"));
    }
    let named = u64::from_be_bytes(bytes[12..20].try_into().unwrap_or([0; 8]));
    if named != first {
        return Err(format!(
            "the header names first position {named}, the file name {first}"
        ));
    }
    Ok(())
}

pub(super) fn frame(kind: u8, payload: &[&[u8]]) -> Vec<u8> {
    let body_len: usize = 1 + payload.iter().map(|p| p.len()).sum::<usize>();
    let len = u32::try_from(body_len).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(8 + body_len);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; CRC_LEN]);
    out.push(kind);
    for part in payload {
        out.extend_from_slice(part);
    }
    let crc = frame_crc(&out);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The frame's checksum: over its length and the first [`FRAME_CHECKED`] bytes of its body
/// (kind, first and last positions of a commit; all of a seal). A commit record's own bytes
/// carry checksums of their own — its header one, each event body one — so a damaged event
/// fails alone, and reads of the record's other events go on.
pub(super) fn frame_crc(frame: &[u8]) -> u32 {
    let end = frame.len().min(8 + FRAME_CHECKED);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&frame[..4]);
    hasher.update(&frame[8..end]);
    hasher.finalize()
}

/// Body bytes the frame checksum covers.
pub(super) const FRAME_CHECKED: usize = 17;

pub(super) fn commit_frame(first: u64, last: u64, value: &[u8]) -> Vec<u8> {
    frame(
        KIND_COMMIT,
        &[&first.to_be_bytes(), &last.to_be_bytes(), value],
    )
}

pub(super) fn seal_frame(last: u64) -> Vec<u8> {
    frame(KIND_SEAL, &[&last.to_be_bytes()])
}

#[cfg(unix)]
pub(super) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(unix)]
pub(super) fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
pub(super) fn read_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += u64_from(n);
            }
        }
    }
    Ok(())
}

#[cfg(windows)]
pub(super) fn write_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_write(buf, offset)? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => {
                buf = &buf[n..];
                offset += u64_from(n);
            }
        }
    }
    Ok(())
}

/// Makes a directory's entries (a file created, removed or renamed) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

pub(super) fn io_error(what: &str, error: &io::Error) -> Error {
    Error::backend("sled", format!("{what}: {error}"))
}

/// What a frame holds.
pub(super) enum Parsed {
    Commit(u64, u64),
    Seal(u64),
    End,
}

/// Parses the frame at the start of `bytes` (which must hold it whole): its length and kind.
pub(super) fn parse_frame(bytes: &[u8]) -> std::result::Result<(usize, Parsed), String> {
    if bytes.len() < 8 {
        return Err("the frame head is cut short".into());
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if len == 0 {
        return if crc == 0 {
            Ok((8, Parsed::End))
        } else {
            Err("a frame of length 0 with a checksum".into())
        };
    }
    let Some(body) = bytes.get(8..8 + len) else {
        return Err(format!(
            "a frame of {len} bytes runs past the end of the file"
        ));
    };
    if frame_crc(&bytes[..8 + len]) != crc {
        return Err("the frame fails its checksum".into());
    }
    let word = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().unwrap_or([0; 8]));
    match body[0] {
        KIND_COMMIT if body.len() > 17 => {
            let (first, last) = (word(1), word(9));
            if first == 0 || first > last {
                return Err(format!("a commit frame names positions {first} to {last}"));
            }
            Ok((8 + len, Parsed::Commit(first, last)))
        }
        KIND_SEAL if body.len() == 9 => Ok((8 + len, Parsed::Seal(word(1)))),
        kind => Err(format!("unknown frame kind {kind} ({len} bytes)")),
    }
}
