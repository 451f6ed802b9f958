//! The log: docfold's source of truth. A small blocking interface with two backends chosen
//! by URL scheme: `file://DIR` (embedded segment files) and `kafka://HOST:PORT` (rdkafka).
//! Readers address a partition by offset; the pipeline's group consumer for Kafka lives in
//! `pipeline` (it needs rebalance hooks, not just reads).

pub mod file;
pub mod kafka;
mod murmur2;

pub use murmur2::{murmur2, partition_for};

use std::sync::Arc;

use crate::config::{JobConfig, LogLocation};
use file::FileLog;
use kafka::KafkaLog;

/// A topic of the job's log (`log.url`): the embedded file log or Kafka.
#[derive(Clone, Debug)]
pub enum Topic {
    File(FileLog),
    Kafka(KafkaLog),
}

impl Topic {
    /// Opens topic `name` of the job's log. A missing embedded topic is created with
    /// `log.partitions` when `create` is set.
    pub fn open(config: &JobConfig, name: &str, create: bool) -> Result<Topic, LogError> {
        Ok(match config.log_location().map_err(LogError::BadUrl)? {
            LogLocation::File(dir) => Topic::File(match FileLog::open(&dir, name) {
                Err(LogError::NoSuchTopic { .. }) if create => {
                    FileLog::create(&dir, name, config.log.partitions)?
                }
                opened => opened?,
            }),
            LogLocation::Kafka(brokers) => {
                Topic::Kafka(KafkaLog::connect(&brokers, name, &config.log.kafka.pairs())?)
            }
        })
    }

    pub fn partitions(&self) -> u32 {
        match self {
            Topic::File(log) => log.partitions(),
            Topic::Kafka(log) => log.partitions(),
        }
    }

    pub fn writer(&self, config: &JobConfig) -> Result<Box<dyn LogWriter>, LogError> {
        Ok(match self {
            Topic::File(log) => Box::new(log.writer(config.log.fsync, config.log.segment_bytes)),
            Topic::Kafka(log) => Box::new(log.writer()?),
        })
    }

    pub fn reader(&self) -> Result<Box<dyn LogReader>, LogError> {
        Ok(match self {
            Topic::File(log) => Box::new(log.reader()),
            Topic::Kafka(log) => Box::new(log.reader()?),
        })
    }
}

/// One record of a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The topic it was read from: the job's own, or a peer region's mirrored one.
    pub topic: Arc<str>,
    pub offset: u64,
    /// The log's timestamp of the record, milliseconds since the Unix epoch; which time it
    /// is, `timestamp_type` says.
    pub timestamp_ms: i64,
    pub timestamp_type: TimestampType,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Kafka record headers, in order (a value may be null). The file log stores none: a
    /// copy into it keeps key, value and timestamp only.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Which time a record's timestamp is (Kafka's `message.timestamp.type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampType {
    /// When the log accepted the record: the file log always, Kafka topics with
    /// `message.timestamp.type = LogAppendTime` (docfold's topic files set it).
    LogAppend,
    /// When the producer made the record (Kafka's default, CreateTime): the producer's
    /// clock, not the log's.
    Create,
}

impl TimestampType {
    /// The name in the archive's `ingest_time_type` column.
    pub fn as_str(self) -> &'static str {
        match self {
            TimestampType::LogAppend => "log_append",
            TimestampType::Create => "create",
        }
    }
}

/// Appends keyed records; a key's records always go to the same partition
/// ([`partition_for`], the Java client's rule).
pub trait LogWriter: Send {
    /// Queues one record. It is durable (per the backend's policy) after [`LogWriter::flush`].
    fn append(&mut self, key: &[u8], value: &[u8]) -> Result<(), LogError>;
    /// Queues `record` for `partition` as it is: key, value and timestamp (the mirror's copy
    /// of another region's record).
    fn copy(&mut self, partition: u32, record: &Record) -> Result<(), LogError>;
    /// Makes every queued record durable, or says which could not be written.
    fn flush(&mut self) -> Result<(), LogError>;
}

/// Reads of a range known to hold records that may bring nothing before the range is
/// taken as gone ([`LogReader::read_before_end`]).
const EMPTY_READS: usize = 10;

/// Reads partitions by offset.
pub trait LogReader: Send {
    fn partitions(&self) -> u32;
    /// Appends to `out` up to `max` records of `partition` starting at offset `from`; fewer
    /// (or none) when the partition has no more yet.
    fn read(&mut self, partition: u32, from: u64, max: usize, out: &mut Vec<Record>) -> Result<(), LogError>;
    /// Like [`LogReader::read`], but never waits: what has already arrived (a Kafka reader
    /// fetches assigned partitions ahead), else nothing. For a reader that goes round the
    /// partitions and should not idle on one while another has records (the mirror).
    fn read_ready(
        &mut self,
        partition: u32,
        from: u64,
        max: usize,
        out: &mut Vec<Record>,
    ) -> Result<(), LogError> {
        self.read(partition, from, max, out)
    }
    /// [`Self::read`] from an offset known to be before the end: a read that brings nothing
    /// yet (a Kafka fetch waits up to a second, longer under load) is tried again, up to
    /// ten times. Nothing then: the offsets from `from` on were lost (a gap).
    fn read_before_end(
        &mut self,
        partition: u32,
        from: u64,
        max: usize,
        out: &mut Vec<Record>,
    ) -> Result<(), LogError> {
        let before = out.len();
        for _ in 0..EMPTY_READS {
            self.read(partition, from, max, out)?;
            if out.len() > before {
                break;
            }
        }
        Ok(())
    }
    /// The offset the next appended record of `partition` will get.
    fn end_offset(&mut self, partition: u32) -> Result<u64, LogError>;
    /// The offset of the oldest record `partition` still holds (retention removes older
    /// ones); the end offset when it holds none.
    fn earliest_offset(&mut self, partition: u32) -> Result<u64, LogError>;
    /// The first offset of `partition` whose record is stamped after `time_ms` (ms since
    /// the epoch), the end when none is: a binary search over the records' timestamps,
    /// which only grow where the log stamps them (the file log; Kafka topics with
    /// `LogAppendTime`, as `docfold setup` makes them; with `CreateTime` the producers'
    /// clocks decide). About log₂(records) reads of one record.
    ///
    /// Kafka's own lookup (`offsetsForTimes`) is not used: tansu answers it wrong (measured
    /// against 3,000 records' stamps: offset 421 where the first later record was 1,342),
    /// and a search over the records themselves is right on every broker.
    fn offset_after(&mut self, partition: u32, time_ms: i64) -> Result<u64, LogError> {
        let (mut low, mut high) = (self.earliest_offset(partition)?, self.end_offset(partition)?);
        let mut probe = Vec::with_capacity(1);
        while low < high {
            let mid = low + (high - low) / 2;
            probe.clear();
            self.read_before_end(partition, mid, 1, &mut probe)?;
            match probe.first() {
                // Offsets from `mid` to the record's are gaps: nothing to fold there.
                Some(record) if record.timestamp_ms <= time_ms => low = record.offset + 1,
                _ => high = mid,
            }
        }
        Ok(low)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log I/O on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(
        "partition {partition} is corrupt at offset {offset} ({path}): {reason}; `docfold log repair` keeps every valid record"
    )]
    Corrupt { partition: u32, offset: u64, path: String, reason: String },
    #[error("partition {partition} does not exist (the topic has {partitions})")]
    NoSuchPartition { partition: u32, partitions: u32 },
    #[error("topic {topic} does not exist in {location}; create it with `docfold topics apply`")]
    NoSuchTopic { topic: String, location: String },
    #[error("partition {partition} of {path} is held by another writer (lock file {lock})")]
    Locked { partition: u32, path: String, lock: String },
    #[error("record of {bytes} bytes is over the log's limit of {limit}")]
    TooLarge { bytes: usize, limit: usize },
    #[error("kafka: {0}")]
    Kafka(String),
    /// The broker or the client refused for good (too large, not allowed): not retried.
    #[error("kafka refused: {0}")]
    Refused(String),
    #[error("log URL {0}")]
    BadUrl(String),
    /// A producer's record has no region to go to now (home mode: `region::home_writer`).
    #[error("{0}")]
    Route(String),
}
