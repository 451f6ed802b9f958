//! The embedded log: one folder per topic, one folder per partition, segment files named by
//! their first offset (`00000000000000000000.seg`). Each record is a frame
//! `[body length u32][crc32c of body u32][timestamp i64][key length u32][key][value]`
//! (little endian); offsets are implicit (segment base + position). A writer holds a lock
//! file per partition; on opening it truncates a torn tail (a crash mid-write) and reports it,
//! and refuses a partition whose damage has valid records after it (`repair.rs`). No offset
//! is handed out twice, even across a power loss (`reserve.rs`): offsets lost that way leave a
//! gap between segments, which readers step over. Each segment has a sparse index
//! (`index.rs`), so a read from any offset or time starts near its record.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub use crate::config::Fsync;

use super::{LogError, LogWriter, Record, partition_for};

mod index;
mod reader;
mod repair;
mod reserve;

use index::IndexWriter;
pub use reader::FileReader;
pub use repair::{Damage, Repair};
use reserve::Reservation;

const HEADER: usize = 8;
/// Largest frame body: a 4 MiB op plus a 256-byte key fit with room to spare.
pub const MAX_BODY: usize = 16 << 20;
const SEGMENT_SUFFIX: &str = ".seg";

/// A topic of the embedded log.
#[derive(Clone, Debug)]
pub struct FileLog {
    dir: PathBuf,
    topic: Arc<str>,
    partitions: u32,
}

/// What a writer found lost when it opened a partition: a torn tail it cut off (a crash
/// mid-write), or records acknowledged before a power loss took them (`offset..resumes_at`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    pub partition: u32,
    pub segment: PathBuf,
    /// The first offset lost, if any was: the end of the records on disk.
    pub offset: u64,
    /// Torn bytes cut off.
    pub bytes: u64,
    /// The offset the next record gets: `offset`, unless offsets from `offset` on had been
    /// handed out before the loss (they are never handed out again).
    pub resumes_at: u64,
}

impl FileLog {
    /// Creates the topic, or checks an existing one has `partitions` partitions.
    pub fn create(root: &Path, topic: &str, partitions: u32) -> Result<FileLog, LogError> {
        let dir = root.join(topic);
        match FileLog::open(root, topic) {
            Ok(log) if log.partitions == partitions => return Ok(log),
            Ok(log) => {
                return Err(LogError::Io {
                    path: dir.display().to_string(),
                    source: io::Error::other(format!(
                        "topic exists with {} partitions, not {partitions}; the embedded log cannot repartition",
                        log.partitions
                    )),
                });
            }
            Err(LogError::NoSuchTopic { .. }) => {}
            Err(e) => return Err(e),
        }
        for p in 0..partitions {
            fs::create_dir_all(dir.join(p.to_string())).map_err(io_at(&dir))?;
        }
        let meta = dir.join("partitions");
        fs::write(&meta, format!("{partitions}\n")).map_err(io_at(&meta))?;
        Ok(FileLog { dir, topic: topic.into(), partitions })
    }

    pub fn open(root: &Path, topic: &str) -> Result<FileLog, LogError> {
        let dir = root.join(topic);
        let meta = dir.join("partitions");
        let text = match fs::read_to_string(&meta) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(LogError::NoSuchTopic {
                    topic: topic.to_string(),
                    location: root.display().to_string(),
                });
            }
            Err(e) => return Err(LogError::Io { path: meta.display().to_string(), source: e }),
        };
        let partitions = text.trim().parse::<u32>().ok().filter(|&n| n > 0).ok_or_else(|| LogError::Io {
            path: meta.display().to_string(),
            source: io::Error::other(format!("expected a partition count, found {:?}", text.trim())),
        })?;
        Ok(FileLog { dir, topic: topic.into(), partitions })
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    pub fn writer(&self, fsync: Fsync, segment_bytes: u64) -> FileWriter {
        FileWriter { log: self.clone(), fsync, segment_bytes, open: Vec::new(), truncations: Vec::new() }
    }

    pub fn reader(&self) -> FileReader {
        FileReader::new(self.clone())
    }

    fn partition_dir(&self, partition: u32) -> Result<PathBuf, LogError> {
        if partition >= self.partitions {
            return Err(LogError::NoSuchPartition { partition, partitions: self.partitions });
        }
        Ok(self.dir.join(partition.to_string()))
    }

    /// Segment base offsets of a partition, ascending.
    fn segments(&self, partition: u32) -> Result<Vec<u64>, LogError> {
        let dir = self.partition_dir(partition)?;
        let mut bases = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_at(&dir))? {
            let name = entry.map_err(io_at(&dir))?.file_name();
            if let Some(base) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX)) {
                bases.extend(base.parse::<u64>().ok());
            }
        }
        bases.sort_unstable();
        Ok(bases)
    }

    /// Takes the partition's writer lock (held while the returned file is open).
    fn lock_partition(&self, partition: u32) -> Result<File, LogError> {
        let dir = self.partition_dir(partition)?;
        let lock_path = dir.join("writer.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_at(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(LogError::Locked {
                partition,
                path: dir.display().to_string(),
                lock: lock_path.display().to_string(),
            });
        }
        Ok(lock)
    }

    /// The base of the first segment after the one at `base`: the next record's offset once
    /// the segment at `base` is read to its end (a later segment exists only once it is sealed).
    fn next_segment(&self, partition: u32, base: u64) -> Result<Option<u64>, LogError> {
        Ok(self.segments(partition)?.into_iter().find(|&b| b > base))
    }

    fn segment_path(&self, partition: u32, base: u64) -> PathBuf {
        self.dir.join(partition.to_string()).join(format!("{base:020}{SEGMENT_SUFFIX}"))
    }
}

fn corrupt(partition: u32, offset: u64, path: &Path, reason: String) -> LogError {
    LogError::Corrupt { partition, offset, path: path.display().to_string(), reason }
}

/// A segment opened for reading.
fn open_segment(path: &Path) -> Result<BufReader<File>, LogError> {
    Ok(BufReader::with_capacity(256 << 10, File::open(path).map_err(io_at(path))?))
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> LogError + '_ {
    move |source| LogError::Io { path: path.display().to_string(), source }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// What reading one frame found.
enum Frame {
    Record {
        timestamp_ms: i64,
        key: Vec<u8>,
        value: Vec<u8>,
        bytes: u64,
    },
    /// The file ends inside the frame (being written, or torn by a crash).
    Incomplete,
    Corrupt(String),
}

fn read_frame(input: &mut impl Read) -> io::Result<Frame> {
    let mut header = [0u8; HEADER];
    if !read_full(input, &mut header)? {
        return Ok(Frame::Incomplete);
    }
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if !(12..=MAX_BODY).contains(&len) {
        return Ok(Frame::Corrupt(format!("frame length {len} out of range")));
    }
    let mut body = vec![0u8; len];
    if !read_full(input, &mut body)? {
        return Ok(Frame::Incomplete);
    }
    if crc32c::crc32c(&body) != crc {
        return Ok(Frame::Corrupt("checksum mismatch".into()));
    }
    let timestamp_ms = i64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
    let key_len = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")) as usize;
    if key_len > len - 12 {
        return Ok(Frame::Corrupt(format!("key length {key_len} past the frame")));
    }
    let value = body.split_off(12 + key_len);
    let key = body[12..].to_vec();
    Ok(Frame::Record { timestamp_ms, key, value, bytes: (HEADER + len) as u64 })
}

/// Fills `buf`; false when the input ended first (nothing or part of it was read).
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn write_frame(out: &mut impl Write, timestamp_ms: i64, key: &[u8], value: &[u8]) -> io::Result<u64> {
    let mut body = Vec::with_capacity(12 + key.len() + value.len());
    body.extend_from_slice(&timestamp_ms.to_le_bytes());
    body.extend_from_slice(&(key.len() as u32).to_le_bytes());
    body.extend_from_slice(key);
    body.extend_from_slice(value);
    out.write_all(&(body.len() as u32).to_le_bytes())?;
    out.write_all(&crc32c::crc32c(&body).to_le_bytes())?;
    out.write_all(&body)?;
    Ok((HEADER + body.len()) as u64)
}

/// Appends to every partition of a topic (opened on first use).
pub struct FileWriter {
    log: FileLog,
    fsync: Fsync,
    segment_bytes: u64,
    open: Vec<Option<PartitionWriter>>,
    truncations: Vec<Truncation>,
}

struct PartitionWriter {
    out: BufWriter<File>,
    index: IndexWriter,
    path: PathBuf,
    segment_len: u64,
    next_offset: u64,
    last_sync: Instant,
    reservation: Reservation,
    /// Held for the writer's life: the lock is the file's.
    _lock: File,
}

impl FileWriter {
    /// Torn tails cut off while opening partitions so far.
    pub fn truncations(&self) -> &[Truncation] {
        &self.truncations
    }

    /// Appends to `partition` (bypassing the key's partition); returns the record's offset.
    pub fn append_to(&mut self, partition: u32, key: &[u8], value: &[u8]) -> Result<u64, LogError> {
        self.append_at(partition, now_ms(), key, value)
    }

    fn append_at(
        &mut self,
        partition: u32,
        timestamp_ms: i64,
        key: &[u8],
        value: &[u8],
    ) -> Result<u64, LogError> {
        let body = 12 + key.len() + value.len();
        if body > MAX_BODY {
            return Err(LogError::TooLarge { bytes: body, limit: MAX_BODY });
        }
        let segment_bytes = self.segment_bytes;
        let log = self.log.clone();
        let writer = self.partition(partition)?;
        if writer.segment_len >= segment_bytes {
            let next = writer.next_offset;
            roll(writer, log.segment_path(partition, next))?;
        }
        writer.reservation.cover(writer.next_offset).map_err(io_at(&writer.path))?;
        let at = (writer.next_offset, writer.segment_len);
        writer.index.note(at.0, at.1, timestamp_ms).map_err(io_at(&writer.path))?;
        writer.segment_len +=
            write_frame(&mut writer.out, timestamp_ms, key, value).map_err(io_at(&writer.path))?;
        writer.next_offset += 1;
        Ok(writer.next_offset - 1)
    }

    fn partition(&mut self, partition: u32) -> Result<&mut PartitionWriter, LogError> {
        if self.open.len() <= partition as usize {
            self.open.resize_with(partition as usize + 1, || None);
        }
        if self.open[partition as usize].is_none() {
            let writer = self.open_partition(partition)?;
            self.open[partition as usize] = Some(writer);
        }
        Ok(self.open[partition as usize].as_mut().expect("opened above"))
    }

    fn open_partition(&mut self, partition: u32) -> Result<PartitionWriter, LogError> {
        let lock = self.log.lock_partition(partition)?;
        let segments = self.log.segments(partition)?;
        // Sealed segments without an index (written before segments had one): index them once.
        for &sealed in segments.iter().rev().skip(1) {
            let path = self.log.segment_path(partition, sealed);
            if !index::path_of(&path).exists() {
                index::rebuild(&path, sealed).map_err(io_at(&path))?;
                tracing::info!(partition, segment = %path.display(), "segment indexed");
            }
        }
        let base = segments.last().copied().unwrap_or(0);
        let path = self.log.segment_path(partition, base);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_at(&path))?;
        let mut input = BufReader::new(&file);
        let (mut valid, mut count) = (0u64, 0u64);
        // The index is written again from the frames: what a crash left of it may be short.
        let mut index = IndexWriter::create(&path).map_err(io_at(&path))?;
        while let Frame::Record { bytes, timestamp_ms, .. } = read_frame(&mut input).map_err(io_at(&path))? {
            index.note(base + count, valid, timestamp_ms).map_err(io_at(&path))?;
            valid += bytes;
            count += 1;
        }
        let len = file.metadata().map_err(io_at(&path))?.len();
        if len > valid {
            // Only a torn tail may be cut: damage with valid records after it is corruption.
            let mut tail = Vec::with_capacity((len - valid) as usize);
            input.seek(SeekFrom::Start(valid)).map_err(io_at(&path))?;
            input.read_to_end(&mut tail).map_err(io_at(&path))?;
            if let Some(at) = repair::next_valid_frame(&tail) {
                let reason = format!("a damaged frame of {at} bytes with valid records after it");
                return Err(corrupt(partition, base + count, &path, reason));
            }
            file.set_len(valid).map_err(io_at(&path))?;
            file.sync_all().map_err(io_at(&path))?;
        }
        let on_disk = base + count;
        let dir = self.log.partition_dir(partition)?;
        let reservation = Reservation::open(&dir).map_err(io_at(&dir))?;
        let resumes_at = reservation.reserved().max(on_disk);
        if len > valid || resumes_at > on_disk {
            let bytes = len - valid;
            let truncation =
                Truncation { partition, segment: path.clone(), offset: on_disk, bytes, resumes_at };
            tracing::warn!(partition, segment = %path.display(), offset = on_disk, bytes, resumes_at, "found records lost by a crash or power loss");
            self.truncations.push(truncation);
        }
        let mut out = BufWriter::with_capacity(256 << 10, file);
        out.seek(SeekFrom::End(0)).map_err(io_at(&path))?;
        let mut writer = PartitionWriter {
            out,
            index,
            path,
            segment_len: valid,
            next_offset: on_disk,
            last_sync: Instant::now(),
            reservation,
            _lock: lock,
        };
        if resumes_at > on_disk {
            // Offsets up to the mark were handed out and lost: continue past them.
            roll(&mut writer, self.log.segment_path(partition, resumes_at))?;
            writer.next_offset = resumes_at;
        }
        Ok(writer)
    }
}

/// Seals the writer's segment and continues in a new one at `path` (named by its base).
fn roll(writer: &mut PartitionWriter, path: PathBuf) -> Result<(), LogError> {
    sync(writer, Fsync::Always).map_err(io_at(&writer.path))?;
    writer.index.flush(true).map_err(io_at(&writer.path))?;
    let file = OpenOptions::new().create_new(true).write(true).open(&path).map_err(io_at(&path))?;
    writer.index = IndexWriter::create(&path).map_err(io_at(&path))?;
    writer.out = BufWriter::with_capacity(256 << 10, file);
    writer.path = path;
    writer.segment_len = 0;
    writer.last_sync = Instant::now();
    Ok(())
}

fn sync(writer: &mut PartitionWriter, fsync: Fsync) -> io::Result<()> {
    // Frames first: an entry never points past what is written.
    writer.out.flush()?;
    writer.index.flush(false)?;
    let due = match fsync {
        Fsync::Always => true,
        Fsync::IntervalMs(ms) => writer.last_sync.elapsed().as_millis() >= u128::from(ms),
        Fsync::Never => false,
    };
    if due {
        writer.out.get_ref().sync_data()?;
        writer.last_sync = Instant::now();
    }
    Ok(())
}

impl LogWriter for FileWriter {
    fn append(&mut self, key: &[u8], value: &[u8]) -> Result<(), LogError> {
        self.append_to(partition_for(key, self.log.partitions), key, value).map(drop)
    }

    fn copy(&mut self, partition: u32, record: &Record) -> Result<(), LogError> {
        self.append_at(partition, record.timestamp_ms, &record.key, &record.value).map(drop)
    }

    fn flush(&mut self) -> Result<(), LogError> {
        let fsync = self.fsync;
        for writer in self.open.iter_mut().flatten() {
            sync(writer, fsync).map_err(io_at(&writer.path))?;
        }
        Ok(())
    }
}

impl Drop for FileWriter {
    /// A clean close: every record on disk, then the exact reservation mark.
    fn drop(&mut self) {
        for writer in self.open.iter_mut().flatten() {
            let closed =
                sync(writer, Fsync::Always).and_then(|()| writer.reservation.close_at(writer.next_offset));
            if let Err(e) = closed {
                tracing::error!(error = %e, segment = %writer.path.display(), "embedded log writer could not close cleanly");
            }
        }
    }
}
