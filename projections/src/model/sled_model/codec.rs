//! The bytes of the sled read model's own keys and values: batch records, checkpoints and dead
//! letters (the projection's data is its handler's bytes, stored as given).
//!
//! Every value of the model's own starts with its format version and a CRC-32:
//! `[format: u32 BE][crc: u32 BE][body]`, the CRC over the key, the format and the body. A
//! format above [`FORMAT`] is reported as such before anything else is read (a newer build may
//! lay out the rest differently), never misread.
//!
//! Keys start with the projection's name and a zero byte (names have no control characters):
//! a batch record's and a checkpoint's then hold the partition (u32 BE), a dead letter's the
//! event id (16 bytes).

use annals::{EventId, Position, RecordedEvent, Timestamp};

use crate::{DeadLetter, DeadLetterKind, PartitionKey};

/// The format of the values this build writes and reads.
pub(super) const FORMAT: u32 = 1;

/// What [`open`] found in a value.
pub(super) enum Opened<'a> {
    /// A value of this build's format: its body.
    Body(&'a [u8]),
    /// A value written in a newer format.
    Newer(u32),
}

fn crc(key: &[u8], format: [u8; 4], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(&format);
    hasher.update(body);
    hasher.finalize()
}

/// `body` under `key`, with the format and the checksum in front.
pub(super) fn seal(key: &[u8], body: &[u8]) -> Vec<u8> {
    let format = FORMAT.to_be_bytes();
    let mut value = Vec::with_capacity(8 + body.len());
    value.extend_from_slice(&format);
    value.extend_from_slice(&crc(key, format, body).to_be_bytes());
    value.extend_from_slice(body);
    value
}

/// The body of a value [`seal`]ed under `key`; `Err` says what is wrong with it.
pub(super) fn open<'a>(key: &[u8], value: &'a [u8]) -> Result<Opened<'a>, String> {
    let (Some(format), Some(stored)) = (value.get(..4), value.get(4..8)) else {
        return Err(format!("a value of {} bytes is too short", value.len()));
    };
    let format: [u8; 4] = format.try_into().map_err(|_| "unreadable format")?;
    let version = u32::from_be_bytes(format);
    if version > FORMAT {
        return Ok(Opened::Newer(version));
    }
    if version != FORMAT {
        return Err(format!("unknown format {version}"));
    }
    let body = &value[8..];
    let stored = u32::from_be_bytes(stored.try_into().map_err(|_| "unreadable checksum")?);
    if stored != crc(key, format, body) {
        return Err("checksum mismatch".to_owned());
    }
    Ok(Opened::Body(body))
}

/// The key of a partition's batch record and checkpoint.
pub(super) fn partition_key(key: &PartitionKey) -> Vec<u8> {
    let stored = key.stored_name();
    let name = stored.as_bytes();
    let mut bytes = Vec::with_capacity(name.len() + 5);
    bytes.extend_from_slice(name);
    bytes.push(0);
    bytes.extend_from_slice(&key.partition.to_be_bytes());
    bytes
}

/// The prefix of every key of `projection`.
pub(super) fn projection_prefix(projection: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(projection.len() + 1);
    bytes.extend_from_slice(projection.as_bytes());
    bytes.push(0);
    bytes
}

/// The key of `projection`'s dead letter of event `id`.
pub(super) fn letter_key(projection: &str, id: EventId) -> Vec<u8> {
    let mut bytes = projection_prefix(projection);
    bytes.extend_from_slice(id.as_uuid().as_bytes());
    bytes
}

/// The projection's name at the start of a key, if it is readable.
pub(super) fn projection_of(key: &[u8]) -> Option<&str> {
    let end = key.iter().position(|b| *b == 0)?;
    std::str::from_utf8(&key[..end]).ok()
}

/// The writes of a batch record to one sled tree: set each key to its value, or remove it
/// (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Group {
    /// The sled tree's full name.
    pub(super) tree: String,
    pub(super) writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<(), String> {
    let len = u32::try_from(len).map_err(|_| format!("a part of {len} bytes is too long"))?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

/// A batch record's body: the group count, then each group as `[tree len][tree][write
/// count]` and its writes, each `[0 set | 1 remove][key len][key]([value len][value])`;
/// lengths and counts u32 BE.
pub(super) fn encode_groups(groups: &[Group]) -> Result<Vec<u8>, String> {
    let size: usize = groups
        .iter()
        .map(|g| {
            8 + g.tree.len()
                + g.writes
                    .iter()
                    .map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, Vec::len))
                    .sum::<usize>()
        })
        .sum();
    let mut out = Vec::with_capacity(4 + size);
    put_len(&mut out, groups.len())?;
    for group in groups {
        put_len(&mut out, group.tree.len())?;
        out.extend_from_slice(group.tree.as_bytes());
        put_len(&mut out, group.writes.len())?;
        for (key, value) in &group.writes {
            out.push(u8::from(value.is_none()));
            put_len(&mut out, key.len())?;
            out.extend_from_slice(key);
            if let Some(value) = value {
                put_len(&mut out, value.len())?;
                out.extend_from_slice(value);
            }
        }
    }
    Ok(out)
}

/// Reads what [`encode_groups`] wrote.
pub(super) fn decode_groups(body: &[u8]) -> Result<Vec<Group>, String> {
    let mut reader = Reader(body);
    let count = reader.len()?;
    let mut groups = Vec::with_capacity(count.min(body.len()));
    for _ in 0..count {
        let tree = reader.part()?;
        let tree = String::from_utf8(tree.to_vec()).map_err(|_| "a tree name is not UTF-8")?;
        let writes_count = reader.len()?;
        let mut writes = Vec::with_capacity(writes_count.min(reader.0.len()));
        for _ in 0..writes_count {
            let remove = match reader.take(1)? {
                [0] => false,
                [1] => true,
                other => return Err(format!("unknown write {other:?}")),
            };
            let key = reader.part()?.to_vec();
            let value = if remove {
                None
            } else {
                Some(reader.part()?.to_vec())
            };
            writes.push((key, value));
        }
        groups.push(Group { tree, writes });
    }
    if !reader.0.is_empty() {
        return Err(format!("{} bytes after the last write", reader.0.len()));
    }
    Ok(groups)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("cut short".to_owned());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn len(&mut self) -> Result<usize, String> {
        let bytes: [u8; 4] = self.take(4)?.try_into().map_err(|_| "cut short")?;
        usize::try_from(u32::from_be_bytes(bytes)).map_err(|_| "a length beyond memory".to_owned())
    }

    fn part(&mut self) -> Result<&'a [u8], String> {
        let len = self.len()?;
        self.take(len)
    }

    fn u64(&mut self) -> Result<u64, String> {
        let bytes: [u8; 8] = self.take(8)?.try_into().map_err(|_| "cut short")?;
        Ok(u64::from_be_bytes(bytes))
    }
}

/// A checkpoint's body: the position's two parts, u64 BE.
pub(super) fn checkpoint_body(position: Position) -> Vec<u8> {
    let mut body = Vec::with_capacity(16);
    body.extend_from_slice(&position.commit().to_be_bytes());
    body.extend_from_slice(&position.prepare().to_be_bytes());
    body
}

/// Reads what [`checkpoint_body`] wrote.
pub(super) fn decode_checkpoint(body: &[u8]) -> Result<Position, String> {
    let mut reader = Reader(body);
    let commit = reader.u64()?;
    let prepare = reader.u64()?;
    if !reader.0.is_empty() {
        return Err("bytes after the position".to_owned());
    }
    Ok(Position::new(commit, prepare))
}

/// A dead letter's body: the order it was set aside in (u64 BE), then the letter as JSON.
pub(super) fn letter_body(seq: u64, letter: &DeadLetter) -> Result<Vec<u8>, String> {
    let kind = match letter.kind {
        DeadLetterKind::Parked => "parked",
        DeadLetterKind::Skipped => "skipped",
    };
    let json = serde_json::json!({
        "partition": letter.partition,
        "kind": kind,
        "reason": letter.reason,
        "at": letter.at.unix_micros(),
        "event": serde_json::to_value(&letter.event).map_err(|e| e.to_string())?,
    });
    let mut body = seq.to_be_bytes().to_vec();
    serde_json::to_writer(&mut body, &json).map_err(|e| e.to_string())?;
    Ok(body)
}

/// Reads what [`letter_body`] wrote: the order, and the letter.
pub(super) fn decode_letter(body: &[u8]) -> Result<(u64, DeadLetter), String> {
    let mut reader = Reader(body);
    let seq = reader.u64()?;
    let json: serde_json::Value = serde_json::from_slice(reader.0).map_err(|e| e.to_string())?;
    let partition = json["partition"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .ok_or("no partition")?;
    let kind = match json["kind"].as_str() {
        Some("parked") => DeadLetterKind::Parked,
        Some("skipped") => DeadLetterKind::Skipped,
        other => return Err(format!("unknown kind {other:?}")),
    };
    let reason = json["reason"].as_str().ok_or("no reason")?.to_owned();
    let at = Timestamp::from_unix_micros(json["at"].as_i64().ok_or("no time")?);
    let event: RecordedEvent =
        serde_json::from_value(json["event"].clone()).map_err(|e| format!("its event: {e}"))?;
    Ok((
        seq,
        DeadLetter {
            partition,
            event,
            kind,
            reason,
            at,
        },
    ))
}

/// The key of the effect mark of `projection`'s partition (shared by its generations).
pub(super) fn effect_key(projection: &str, partition: u32) -> Vec<u8> {
    let mut bytes = projection_prefix(&format!("{projection}\u{1f}effects"));
    bytes.extend_from_slice(&partition.to_be_bytes());
    bytes
}

/// A generations record as a body.
pub(super) fn generations_body(g: &crate::Generations, last: u32) -> Vec<u8> {
    serde_json::json!({
        "active": g.active,
        "building": g.building,
        "swapped_at": g.swapped_at.map(|p| [p.commit(), p.prepare()]),
        "swapped_micros": g.swapped_time.map(Timestamp::unix_micros),
        "kept": g.kept,
        "last": last,
        "partitions": g.partitions,
        "building_partitions": g.building_partitions,
    })
    .to_string()
    .into_bytes()
}

/// Reads what [`generations_body`] wrote: the generations and the last number used.
pub(super) fn decode_generations(body: &[u8]) -> Result<(crate::Generations, u32), String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let n = |field: &str| v[field].as_u64().and_then(|n| u32::try_from(n).ok());
    let active = n("active").ok_or("no active generation")?;
    let swapped_at = v["swapped_at"]
        .as_array()
        .and_then(|a| Some(Position::new(a.first()?.as_u64()?, a.get(1)?.as_u64()?)));
    let generations = crate::Generations {
        active,
        building: n("building"),
        swapped_at,
        swapped_time: v["swapped_micros"]
            .as_i64()
            .map(Timestamp::from_unix_micros),
        kept: v["kept"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|g| g.as_u64().and_then(|g| u32::try_from(g).ok()))
                    .collect()
            })
            .unwrap_or_default(),
        partitions: n("partitions"),
        building_partitions: n("building_partitions"),
    };
    Ok((generations, n("last").unwrap_or(active)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_caught() {
        let groups = vec![
            Group {
                tree: "projections/data/t".to_owned(),
                writes: vec![
                    (b"k".to_vec(), Some(b"v".to_vec())),
                    (b"gone".to_vec(), None),
                ],
            },
            Group {
                tree: "projections/checkpoints".to_owned(),
                writes: vec![(vec![0, 1], None)],
            },
        ];
        let body = encode_groups(&groups).unwrap();
        assert_eq!(decode_groups(&body).unwrap(), groups);
        let value = seal(b"key", &body);
        assert!(matches!(open(b"key", &value), Ok(Opened::Body(b)) if b == body));
        assert!(open(b"other key", &value).is_err());
        for i in 0..value.len() {
            let mut flipped = value.clone();
            flipped[i] ^= 0x10;
            assert!(
                !matches!(open(b"key", &flipped), Ok(Opened::Body(_))),
                "byte {i}"
            );
        }
        let mut newer = value.clone();
        newer[..4].copy_from_slice(&(FORMAT + 1).to_be_bytes());
        assert!(matches!(open(b"key", &newer), Ok(Opened::Newer(v)) if v == FORMAT + 1));
        assert!(decode_groups(&body[..body.len() - 1]).is_err());
    }

    #[test]
    fn checkpoints_round_trip() {
        let p = Position::new(7, 3);
        assert_eq!(decode_checkpoint(&checkpoint_body(p)).unwrap(), p);
    }
}
