//! Reading the embedded log: a cursor per partition, placed through the segments' indexes
//! (`index.rs`).

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};

use super::index::{self, Entry};
use super::{FileLog, Frame, corrupt, io_at, open_segment, read_frame};
use crate::log::{LogError, LogReader, Record, TimestampType};

/// Reads partitions; remembers where each one was left so sequential reads do not rescan.
pub struct FileReader {
    log: FileLog,
    cursors: Vec<Option<Cursor>>,
}

struct Cursor {
    next_offset: u64,
    base: u64,
    pos: u64,
    input: BufReader<File>,
}

impl FileReader {
    pub(super) fn new(log: FileLog) -> FileReader {
        FileReader { log, cursors: Vec::new() }
    }

    /// A cursor at `from` (or at the first record after it, when `from` was lost to a power
    /// loss), or None when `from` is past the end of the partition.
    fn seek(&self, partition: u32, from: u64) -> Result<Option<Cursor>, LogError> {
        let bases = self.log.segments(partition)?;
        let Some(&base) = bases.iter().rev().find(|&&b| b <= from) else {
            return Ok(None);
        };
        let path = self.log.segment_path(partition, base);
        let mut cursor = self.cursor_at(partition, base, |entries| index::for_offset(entries, from))?;
        while cursor.next_offset < from {
            match read_frame(&mut cursor.input).map_err(io_at(&path))? {
                Frame::Record { bytes, .. } => {
                    cursor.pos += bytes;
                    cursor.next_offset += 1;
                }
                Frame::Incomplete => {
                    let Some(next) = self.log.next_segment(partition, base)? else { return Ok(None) };
                    let path = self.log.segment_path(partition, next);
                    return Ok(Some(Cursor {
                        next_offset: next,
                        base: next,
                        pos: 0,
                        input: open_segment(&path)?,
                    }));
                }
                Frame::Corrupt(reason) => {
                    return Err(corrupt(partition, cursor.next_offset, &path, reason));
                }
            }
        }
        Ok(Some(cursor))
    }

    /// A cursor in the segment at `base`, at the index entry `pick` chooses, or at the
    /// segment's start when the frame there does not check out (a damaged index).
    fn cursor_at(
        &self,
        partition: u32,
        base: u64,
        pick: impl Fn(&[Entry]) -> Entry,
    ) -> Result<Cursor, LogError> {
        let path = self.log.segment_path(partition, base);
        let mut input = open_segment(&path)?;
        let len = input.get_ref().metadata().map_err(io_at(&path))?.len();
        let mut entry = pick(&index::load(&path, base, len));
        if entry.position > 0 {
            input.seek(SeekFrom::Start(entry.position)).map_err(io_at(&path))?;
            match read_frame(&mut input).map_err(io_at(&path))? {
                // Back over the frame, within what the buffer holds.
                Frame::Record { bytes, .. } => input.seek_relative(-(bytes as i64)).map_err(io_at(&path))?,
                _ => {
                    tracing::warn!(partition, segment = %path.display(), "the segment's index points at no frame; reading from the start");
                    entry = Entry::start(base);
                    input.seek(SeekFrom::Start(0)).map_err(io_at(&path))?;
                }
            }
        }
        Ok(Cursor { next_offset: entry.offset, base, pos: entry.position, input })
    }
}

impl LogReader for FileReader {
    fn partitions(&self) -> u32 {
        self.log.partitions
    }

    fn read(&mut self, partition: u32, from: u64, max: usize, out: &mut Vec<Record>) -> Result<(), LogError> {
        self.log.partition_dir(partition)?;
        if self.cursors.len() <= partition as usize {
            self.cursors.resize_with(partition as usize + 1, || None);
        }
        let reusable = matches!(&self.cursors[partition as usize], Some(c) if c.next_offset == from);
        if !reusable {
            self.cursors[partition as usize] = self.seek(partition, from)?;
        }
        let Some(mut cursor) = self.cursors[partition as usize].take() else {
            return Ok(());
        };
        let result = self.read_at(partition, &mut cursor, max, out);
        self.cursors[partition as usize] = Some(cursor);
        result
    }

    fn end_offset(&mut self, partition: u32) -> Result<u64, LogError> {
        let Some(base) = self.log.segments(partition)?.last().copied() else {
            return Ok(0);
        };
        let path = self.log.segment_path(partition, base);
        let mut cursor = self.cursor_at(partition, base, |entries| entries[entries.len() - 1])?;
        while let Frame::Record { .. } = read_frame(&mut cursor.input).map_err(io_at(&path))? {
            cursor.next_offset += 1;
        }
        Ok(cursor.next_offset)
    }

    /// The segment whose first record is the last stamped at or before `time_ms`, then its
    /// index entry past which the first later record is; read from there.
    fn offset_after(&mut self, partition: u32, time_ms: i64) -> Result<u64, LogError> {
        let bases = self.log.segments(partition)?;
        let first_stamp = |base: u64| -> Result<i64, LogError> {
            let path = self.log.segment_path(partition, base);
            match read_frame(&mut open_segment(&path)?).map_err(io_at(&path))? {
                Frame::Record { timestamp_ms, .. } => Ok(timestamp_ms),
                // An empty segment (just rolled) holds no record stamped at or before it.
                Frame::Incomplete => Ok(i64::MAX),
                Frame::Corrupt(reason) => Err(corrupt(partition, base, &path, reason)),
            }
        };
        let (mut low, mut high) = (0, bases.len());
        while low < high {
            let mid = low + (high - low) / 2;
            if first_stamp(bases[mid])? <= time_ms { low = mid + 1 } else { high = mid }
        }
        let Some(&base) = low.checked_sub(1).and_then(|at| bases.get(at)) else {
            return Ok(bases.first().copied().unwrap_or(0));
        };
        let path = self.log.segment_path(partition, base);
        let mut cursor = self.cursor_at(partition, base, |entries| index::for_time(entries, time_ms))?;
        loop {
            match read_frame(&mut cursor.input).map_err(io_at(&path))? {
                Frame::Record { timestamp_ms, .. } if timestamp_ms > time_ms => return Ok(cursor.next_offset),
                Frame::Record { .. } => cursor.next_offset += 1,
                Frame::Incomplete => return Ok(bases.get(low).copied().unwrap_or(cursor.next_offset)),
                Frame::Corrupt(reason) => return Err(corrupt(partition, cursor.next_offset, &path, reason)),
            }
        }
    }

    fn earliest_offset(&mut self, partition: u32) -> Result<u64, LogError> {
        Ok(self.log.segments(partition)?.first().copied().unwrap_or(0))
    }
}

impl FileReader {
    fn read_at(
        &self,
        partition: u32,
        cursor: &mut Cursor,
        max: usize,
        out: &mut Vec<Record>,
    ) -> Result<(), LogError> {
        let mut path = self.log.segment_path(partition, cursor.base);
        let mut read = 0;
        while read < max {
            match read_frame(&mut cursor.input).map_err(io_at(&path))? {
                Frame::Record { timestamp_ms, key, value, bytes } => {
                    out.push(Record {
                        topic: self.log.topic.clone(),
                        offset: cursor.next_offset,
                        timestamp_ms,
                        timestamp_type: TimestampType::LogAppend,
                        key,
                        value,
                        headers: Vec::new(),
                    });
                    cursor.pos += bytes;
                    cursor.next_offset += 1;
                    read += 1;
                }
                Frame::Incomplete => {
                    // The end for now: rewind past the partial frame; maybe the writer rolled on
                    // (to the next offset, or past offsets a power loss took).
                    cursor.input.seek(SeekFrom::Start(cursor.pos)).map_err(io_at(&path))?;
                    let rolled = self.log.segment_path(partition, cursor.next_offset);
                    let next = if cursor.base != cursor.next_offset && rolled.exists() {
                        Some(cursor.next_offset)
                    } else {
                        self.log.next_segment(partition, cursor.base)?
                    };
                    let Some(next) = next else { return Ok(()) };
                    cursor.base = next;
                    cursor.next_offset = next;
                    cursor.pos = 0;
                    path = self.log.segment_path(partition, next);
                    cursor.input = open_segment(&path)?;
                }
                Frame::Corrupt(reason) => {
                    return Err(corrupt(partition, cursor.next_offset, &path, reason));
                }
            }
        }
        Ok(())
    }
}
