//! A segment's sparse index (`<base>.idx` beside `<base>.seg`), as Kafka keeps its offset
//! and time indexes: one entry per `INTERVAL` bytes of frames, each `[offset u64][position
//! u64][max timestamp before it i64]` (little endian). A reader finds a record's offset, or
//! the first record stamped after a time, by reading from the nearest entry instead of from
//! the segment's start.
//!
//! The index is a hint, never the truth: a writer flushes it after the frames, opening a
//! partition it writes the last segment's index again from the frames, `docfold log
//! repair` rewrites it, and a reader uses only the entries that are in order and inside the
//! segment (a missing or damaged index costs a scan, never a wrong answer: where no whole
//! frame is at an entry's position, as when an entry got ahead of its frame, the reader
//! goes back to the segment's start).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::{Frame, read_frame};

/// Bytes of frames between two entries: a lookup reads at most about this much past its
/// entry (plus one frame).
const INTERVAL: u64 = 4096;
const ENTRY: usize = 24;

/// Where a frame starts, and the largest timestamp of the segment's frames before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    pub offset: u64,
    pub position: u64,
    pub max_timestamp_before: i64,
}

impl Entry {
    /// The implicit entry of a segment's first frame.
    pub fn start(base: u64) -> Entry {
        Entry { offset: base, position: 0, max_timestamp_before: i64::MIN }
    }
}

/// The index file of the segment at `segment` (`….seg` → `….idx`).
pub(super) fn path_of(segment: &Path) -> PathBuf {
    segment.with_extension("idx")
}

/// Appends a segment's entries as its frames are written.
pub(super) struct IndexWriter {
    out: BufWriter<File>,
    /// The position of the last entry (the implicit one at 0 to begin with).
    last: u64,
    max_timestamp: i64,
}

impl IndexWriter {
    /// A new, empty index for `segment` (an old one is replaced).
    pub fn create(segment: &Path) -> io::Result<IndexWriter> {
        let file = OpenOptions::new().create(true).write(true).truncate(true).open(path_of(segment))?;
        Ok(IndexWriter { out: BufWriter::with_capacity(16 << 10, file), last: 0, max_timestamp: i64::MIN })
    }

    /// Notes the frame about to be written at `position` with `offset` and `timestamp_ms`.
    pub fn note(&mut self, offset: u64, position: u64, timestamp_ms: i64) -> io::Result<()> {
        if position >= self.last + INTERVAL {
            self.out.write_all(&offset.to_le_bytes())?;
            self.out.write_all(&position.to_le_bytes())?;
            self.out.write_all(&self.max_timestamp.to_le_bytes())?;
            self.last = position;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp_ms);
        Ok(())
    }

    /// Writes what is buffered; with `durable`, to the disk (a sealed segment's index).
    pub fn flush(&mut self, durable: bool) -> io::Result<()> {
        self.out.flush()?;
        if durable {
            self.out.get_ref().sync_data()?;
        }
        Ok(())
    }
}

/// Writes the index of the segment at `segment` (base `base`) anew from its frames (after
/// a repair rewrote them).
pub(super) fn rebuild(segment: &Path, base: u64) -> io::Result<()> {
    let mut input = io::BufReader::new(File::open(segment)?);
    let mut index = IndexWriter::create(segment)?;
    let (mut offset, mut position) = (base, 0);
    while let Frame::Record { timestamp_ms, bytes, .. } = read_frame(&mut input)? {
        index.note(offset, position, timestamp_ms)?;
        offset += 1;
        position += bytes;
    }
    index.flush(true)
}

/// The usable entries of the segment at `segment` (base `base`, `segment_len` bytes), the
/// implicit first one included: those in order (offsets, positions and timestamps growing)
/// and inside the segment; none past a damaged or torn one.
pub(super) fn load(segment: &Path, base: u64, segment_len: u64) -> Vec<Entry> {
    let mut entries = vec![Entry::start(base)];
    let mut bytes = Vec::new();
    if File::open(path_of(segment)).and_then(|mut f| f.read_to_end(&mut bytes)).is_err() {
        return entries;
    }
    for chunk in bytes.chunks_exact(ENTRY) {
        let word = |at: usize| <[u8; 8]>::try_from(&chunk[at..at + 8]).expect("8 bytes");
        let entry = Entry {
            offset: u64::from_le_bytes(word(0)),
            position: u64::from_le_bytes(word(8)),
            max_timestamp_before: i64::from_le_bytes(word(16)),
        };
        let last = entries[entries.len() - 1];
        let in_order = entry.offset > last.offset
            && entry.position >= last.position + INTERVAL
            && entry.position < segment_len
            && entry.max_timestamp_before >= last.max_timestamp_before;
        if !in_order {
            break;
        }
        entries.push(entry);
    }
    entries
}

/// The last entry at or before `offset`.
pub(super) fn for_offset(entries: &[Entry], offset: u64) -> Entry {
    let after = entries.partition_point(|e| e.offset <= offset);
    entries[after.saturating_sub(1)]
}

/// The last entry every frame before which is stamped at or before `time_ms`: the first
/// frame stamped after it is at or after this entry.
pub(super) fn for_time(entries: &[Entry], time_ms: i64) -> Entry {
    let after = entries.partition_point(|e| e.max_timestamp_before <= time_ms);
    entries[after.saturating_sub(1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: u64) -> Vec<Entry> {
        (0..n)
            .map(|i| Entry {
                offset: 10 * i,
                position: INTERVAL * i,
                max_timestamp_before: 100 * i as i64 - 1,
            })
            .map(|e| if e.position == 0 { Entry::start(0) } else { e })
            .collect()
    }

    #[test]
    fn lookups_take_the_last_entry_at_or_before() {
        let e = entries(5);
        assert_eq!(for_offset(&e, 0).offset, 0);
        assert_eq!(for_offset(&e, 25).offset, 20);
        assert_eq!(for_offset(&e, 1_000).offset, 40);
        assert_eq!(for_time(&e, i64::MIN).offset, 0);
        assert_eq!(for_time(&e, 199).offset, 20);
        assert_eq!(for_time(&e, 198).offset, 10);
    }

    #[test]
    fn a_damaged_or_torn_index_keeps_only_its_good_prefix() {
        let dir = std::env::temp_dir().join(format!("docfold-index-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let segment = dir.join("00000000000000000000.seg");
        let mut writer = IndexWriter::create(&segment).expect("index");
        for (i, position) in [0, 100, 5_000, 9_100, 13_200].into_iter().enumerate() {
            writer.note(i as u64, position, 7).expect("note");
        }
        writer.flush(false).expect("flush");
        let full = load(&segment, 0, 20_000);
        assert_eq!(full.iter().map(|e| e.position).collect::<Vec<_>>(), [0, 5_000, 9_100, 13_200]);
        assert_eq!(load(&segment, 0, 10_000).len(), 3, "entries past the segment's end are dropped");
        let mut bytes = std::fs::read(path_of(&segment)).expect("read");
        bytes.truncate(bytes.len() - 5);
        bytes[ENTRY + 15] ^= 0xff;
        std::fs::write(path_of(&segment), &bytes).expect("write");
        assert_eq!(load(&segment, 0, 20_000).len(), 2, "a damaged entry ends the index");
        std::fs::remove_dir_all(&dir).expect("clean");
        assert_eq!(load(&segment, 0, 20_000), [Entry::start(0)], "no index: the implicit entry");
    }
}
