//! Damage in a segment: telling a torn tail (a crash mid-write: nothing valid after it, safe
//! to cut) from a damaged frame with valid records after it (a flipped bit, a bad sector:
//! cutting would delete good records), and `docfold log repair`, which keeps every valid
//! record of a damaged segment and puts one placeholder record where the damage was, so the
//! offsets of the records after it stay what they were.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{FileLog, Frame, HEADER, MAX_BODY, index, io_at, read_frame, write_frame};
use crate::log::LogError;

/// Where the first frame that checks out starts in `bytes` after position 0, if any: a
/// length in range, the whole body present, and its checksum right.
pub(super) fn next_valid_frame(bytes: &[u8]) -> Option<usize> {
    (1..bytes.len().saturating_sub(HEADER)).find(|&at| {
        let header = &bytes[at..at + HEADER];
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        (12..=MAX_BODY).contains(&len)
            && at + HEADER + len <= bytes.len()
            && crc32c::crc32c(&bytes[at + HEADER..at + HEADER + len]) == crc
    })
}

/// One damaged stretch of a segment, as repaired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The offset the placeholder record holds.
    pub offset: u64,
    pub bytes: u64,
    /// Whether the damaged frame's length still pointed at the next valid frame, so it was
    /// exactly one record (otherwise it counts as one, and later offsets may have moved).
    pub one_record: bool,
}

/// What [`FileLog::repair`] did to one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repair {
    pub partition: u32,
    pub segment: PathBuf,
    /// The damaged original, kept for inspection.
    pub moved_to: PathBuf,
    /// Valid records kept.
    pub records: u64,
    pub damage: Vec<Damage>,
    /// Bytes of a torn tail after the last valid record, dropped.
    pub torn_tail: u64,
}

/// The records of a segment's bytes: valid frames as they are, each damaged stretch before
/// a valid frame as one placeholder (empty key; the damaged bytes as its value, so the fold
/// dead-letters it with the raw bytes), a torn tail dropped.
fn rebuild(bytes: &[u8], base: u64) -> (Vec<u8>, u64, Vec<Damage>, u64) {
    let (mut out, mut records, mut damage) = (Vec::with_capacity(bytes.len()), 0u64, Vec::new());
    let mut at = 0;
    while at < bytes.len() {
        let mut input = &bytes[at..];
        if let Ok(Frame::Record { bytes: len, .. }) = read_frame(&mut input) {
            out.extend_from_slice(&bytes[at..at + len as usize]);
            records += 1;
            at += len as usize;
            continue;
        }
        let Some(skip) = next_valid_frame(&bytes[at..]) else {
            return (out, records, damage, (bytes.len() - at) as u64);
        };
        let stretch = &bytes[at..at + skip];
        let claimed =
            u32::from_le_bytes(stretch[..4.min(stretch.len())].try_into().unwrap_or([0; 4])) as usize;
        let value = &stretch[..stretch.len().min(MAX_BODY - 12)];
        write_frame(&mut out, 0, b"", value).expect("writing to memory");
        damage.push(Damage {
            offset: base + records,
            bytes: skip as u64,
            one_record: HEADER + claimed == skip,
        });
        records += 1;
        at += skip;
    }
    (out, records, damage, 0)
}

impl FileLog {
    /// Repairs every damaged segment of `partition` (the writer's lock must be free): the
    /// original is copied to `<partition>/damaged/`, then replaced atomically by its valid
    /// records with a placeholder for each damaged stretch. Segments without damage are left
    /// as they are; a torn tail at the end of the last segment is dropped.
    pub fn repair(&self, partition: u32) -> Result<Vec<Repair>, LogError> {
        let _lock = self.lock_partition(partition)?;
        let mut repairs = Vec::new();
        for base in self.segments(partition)? {
            let path = self.segment_path(partition, base);
            let bytes = fs::read(&path).map_err(io_at(&path))?;
            let (rebuilt, records, damage, torn_tail) = rebuild(&bytes, base);
            if damage.is_empty() && torn_tail == 0 {
                continue;
            }
            let aside = path.parent().expect("a partition folder").join("damaged");
            fs::create_dir_all(&aside).map_err(io_at(&aside))?;
            let moved_to = aside.join(format!(
                "{}.{}",
                path.file_name().expect("a segment name").to_string_lossy(),
                super::now_ms()
            ));
            fs::copy(&path, &moved_to).map_err(io_at(&moved_to))?;
            replace(&path, &rebuilt)?;
            index::rebuild(&path, base).map_err(io_at(&path))?;
            tracing::warn!(partition, segment = %path.display(), records, damaged = damage.len(), torn_tail, "segment repaired");
            repairs.push(Repair { partition, segment: path, moved_to, records, damage, torn_tail });
        }
        Ok(repairs)
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename (all or nothing).
fn replace(path: &Path, bytes: &[u8]) -> Result<(), LogError> {
    let temporary = path.with_extension("repairing");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&temporary)
        .map_err(io_at(&temporary))?;
    file.write_all(bytes).map_err(io_at(&temporary))?;
    file.sync_all().map_err(io_at(&temporary))?;
    fs::rename(&temporary, path).map_err(io_at(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(values: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for value in values {
            write_frame(&mut out, 7, b"k", value).expect("memory");
        }
        out
    }

    #[test]
    fn a_flipped_bit_becomes_one_placeholder_and_keeps_the_offsets() {
        let mut bytes = frames(&[b"zero", b"one", b"two"]);
        let second = frames(&[b"zero"]).len();
        bytes[second + HEADER + 13] ^= 0x10; // inside the value of record 1
        let (rebuilt, records, damage, torn) = rebuild(&bytes, 100);
        assert_eq!((records, torn), (3, 0));
        assert_eq!(damage, [Damage { offset: 101, bytes: frames(&[b"one"]).len() as u64, one_record: true }]);
        assert_eq!(&rebuilt[..second], &bytes[..second], "valid frames are kept byte for byte");
        assert!(rebuilt.ends_with(&frames(&[b"two"])));
    }

    #[test]
    fn a_torn_tail_is_no_damage() {
        let bytes = frames(&[b"zero", b"one"]);
        let torn = &bytes[..bytes.len() - 2];
        assert_eq!(next_valid_frame(&torn[frames(&[b"zero"]).len()..]), None);
        let (_, records, damage, tail) = rebuild(torn, 0);
        assert_eq!((records, damage.len(), tail), (1, 0, frames(&[b"one"]).len() as u64 - 2));
    }
}
