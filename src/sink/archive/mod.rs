//! The Parquet archive of every op, for analysts: per partition and source topic, files
//! `ops/date=YYYY-MM-DD/partition=P/[<topic>.]<first>-<last>.parquet` whose offset ranges
//! tile the topic's partition (`first` and `last` are the first and last records the file
//! covers; records that are not ops, the dead letters, have no rows). The job's own topic
//! has no name prefix; a peer region's mirrored topic does (`eu-west-1.doc-ops.…`), and
//! every row names its topic in `source_topic`. The topic is in the file name, not in a
//! `topic=` folder, so the folders keep one Hive layout (DuckDB and Athena refuse a mix)
//! and archives written before regions stay readable as they are. The date is the ingest
//! date of the file's first record, so it is the same after a crash.
//!
//! Progress is part of the checkpoint: every record before it is in a written file. After a
//! crash the partition re-reads from there; a file written before the crash but after the
//! last checkpoint is found by name and adopted, not written twice, so each (topic,
//! partition, offset) is in exactly one file.

pub mod read;
mod rows;

use bytes::Bytes;
use object_store::path::Path as Key;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub use rows::SCHEMA;
use rows::{Rows, encode};

use super::SinkError;
use super::objects::Objects;
use crate::config::ArchiveConfig;
use crate::log::Record;
use crate::op::Envelope;

/// The partition's folder for the day of `ingest_ms`.
fn folder(partition: u32, ingest_ms: i64) -> Key {
    let day = chrono::DateTime::from_timestamp_millis(ingest_ms).unwrap_or_default().format("%Y-%m-%d");
    Key::from_iter(["ops".to_string(), format!("date={day}"), format!("partition={partition}")])
}

/// Digits of an offset in a file name.
const DIGITS: usize = 20;

/// The file of records `first..=last` of `topic` (stored name: `""` for the job's own).
fn file_name(topic: &str, first: u64, last: u64) -> String {
    let prefix = if topic.is_empty() { String::new() } else { format!("{topic}.") };
    format!("{prefix}{first:0DIGITS$}-{last:0DIGITS$}.parquet")
}

/// `(topic, first, last)` of a file name written by [`file_name`].
fn parse_file_name(name: &str) -> Option<(&str, u64, u64)> {
    let stem = name.strip_suffix(".parquet")?;
    let range = stem.len().checked_sub(2 * DIGITS + 1).and_then(|at| stem.get(at..))?;
    let topic = stem[..stem.len() - range.len()].strip_suffix('.').unwrap_or("");
    let (first, last) = range.split_once('-')?;
    Some((topic, first.parse().ok()?, last.parse().ok()?))
}

/// For each (stored topic, partition) with archive files, the offset after the last
/// record they cover. Lists the whole archive: for disaster recovery, not the hot path.
pub async fn written_through(objects: &Objects) -> Result<BTreeMap<(String, u32), u64>, SinkError> {
    let mut ends = BTreeMap::new();
    for key in objects.list(&Key::from("ops")).await? {
        let partition =
            key.parts().find_map(|part| part.as_ref().strip_prefix("partition=")?.parse::<u32>().ok());
        if let (Some(partition), Some((topic, _, last))) =
            (partition, key.filename().and_then(parse_file_name))
        {
            let end = ends.entry((topic.to_string(), partition)).or_insert(0);
            *end = (*end).max(last + 1);
        }
    }
    Ok(ends)
}

/// An encoded file waiting for its upload (kept across failed attempts).
struct Pending {
    key: Key,
    bytes: Bytes,
    first: u64,
    last: u64,
    rows: usize,
}

/// What an upload wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedFile {
    pub key: String,
    pub first: u64,
    pub last: u64,
    pub rows: usize,
    pub bytes: usize,
}

/// The archive writer of one source topic of a partition.
pub struct PartitionArchive {
    partition: u32,
    /// The topic's stored name (`""` for the job's own): the prefix of its file names.
    topic: String,
    objects: Objects,
    settings: ArchiveConfig,
    rows: Rows,
    /// First record of the open file: offset, ingest time, and when it arrived here.
    open: Option<(u64, i64, Instant)>,
    /// The next record the archive has not seen.
    next: u64,
    pending: Option<Pending>,
    /// Whether a file may already exist for the next record (true after a restart until a
    /// look finds none).
    look_for_written: bool,
}

impl PartitionArchive {
    /// Starts at `progress`, the archive offset of the topic's checkpoint in `partition`.
    pub fn new(
        (topic, partition): (&str, u32),
        objects: Objects,
        settings: ArchiveConfig,
        progress: u64,
    ) -> PartitionArchive {
        PartitionArchive {
            partition,
            topic: topic.into(),
            objects,
            settings,
            rows: Rows::default(),
            open: None,
            next: progress,
            pending: None,
            look_for_written: true,
        }
    }

    /// The next record the archive wants.
    pub fn next_offset(&self) -> u64 {
        self.next
    }

    /// Every record before this offset is in a written file.
    pub fn progress(&self) -> u64 {
        match (&self.pending, &self.open) {
            (Some(pending), _) => pending.first,
            (None, Some((first, _, _))) => *first,
            (None, None) => self.next,
        }
    }

    /// Bytes of rows held in memory (the open file and the pending upload).
    pub fn buffered_bytes(&self) -> u64 {
        self.rows.bytes() + self.pending.as_ref().map_or(0, |p| p.bytes.len() as u64)
    }

    /// When a file may already exist for the record at `offset` (after a restart), looks
    /// for it; if one is found, its records are skipped. Call before [`Self::push`].
    pub async fn skip_written(&mut self, offset: u64, ingest_ms: i64) -> Result<(), SinkError> {
        if !self.look_for_written || self.open.is_some() || offset < self.next {
            return Ok(());
        }
        let prefix = folder(self.partition, ingest_ms);
        let found = self.objects.list(&prefix).await?.into_iter().find_map(|key| {
            let (topic, first, last) = parse_file_name(key.filename()?)?;
            (topic == self.topic && first == offset).then_some(last)
        });
        match found {
            Some(last) => {
                tracing::info!(
                    partition = self.partition,
                    topic = self.topic,
                    first = offset,
                    last,
                    "archive file already written; adopted"
                );
                self.next = last + 1;
            }
            None => self.look_for_written = false,
        }
        Ok(())
    }

    /// Adds `record`, decoded as `envelope` (`None`: not an op, so no rows).
    pub fn push(&mut self, record: &Record, envelope: Option<&Envelope>) {
        if record.offset < self.next {
            return;
        }
        self.open.get_or_insert((record.offset, record.timestamp_ms, Instant::now()));
        if let Some(envelope) = envelope {
            self.rows.push(self.partition, record, envelope);
        }
        self.next = record.offset + 1;
    }

    /// Whether the open file is full or old enough to write.
    pub fn is_due(&self) -> bool {
        self.pending.is_some()
            || self.open.is_some_and(|(_, _, since)| {
                self.rows.bytes() >= self.settings.max_file_bytes
                    || since.elapsed() >= Duration::from_millis(self.settings.max_file_age_ms)
            })
    }

    /// Whether rows have piled up (uploads failing): the partition should stop reading.
    pub fn is_over_bound(&self) -> bool {
        self.buffered_bytes() > 2 * self.settings.max_file_bytes
    }

    /// Closes the open file (if any) and uploads it; retries a pending upload first.
    /// Returns the file written, if one was.
    pub async fn write(&mut self) -> Result<Option<ArchivedFile>, SinkError> {
        if self.pending.is_none()
            && let Some((first, ingest_ms, _)) = self.open.take()
        {
            if self.rows.is_empty() {
                return Ok(None); // only dead letters: nothing to archive
            }
            let rows = self.rows.len();
            let batch = self.rows.finish();
            let bytes = tokio::task::spawn_blocking(move || encode(&batch))
                .await
                .map_err(|e| SinkError::Corrupt { sink: "archive", message: e.to_string() })?
                .map_err(|e| SinkError::Corrupt {
                    sink: "archive",
                    message: format!("encoding Parquet: {e}"),
                })?;
            let last = self.next - 1;
            let key = folder(self.partition, ingest_ms).join(file_name(&self.topic, first, last));
            self.pending = Some(Pending { key, bytes: bytes.into(), first, last, rows });
        }
        let Some(pending) = &self.pending else { return Ok(None) };
        self.objects.put(&pending.key, pending.bytes.clone(), self.settings.part_bytes).await?;
        let pending = self.pending.take().expect("checked above");
        Ok(Some(ArchivedFile {
            key: pending.key.to_string(),
            first: pending.first,
            last: pending.last,
            rows: pending.rows,
            bytes: pending.bytes.len(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_sort_by_offset_and_parse_back() {
        let (a, b) = (file_name("", 9, 120), file_name("", 121, 5_000));
        assert!(a < b);
        assert_eq!(parse_file_name(&a), Some(("", 9, 120)));
        let mirrored = file_name("eu-west-1.doc-ops", 7, 8);
        assert_eq!(mirrored, "eu-west-1.doc-ops.00000000000000000007-00000000000000000008.parquet");
        assert_eq!(parse_file_name(&mirrored), Some(("eu-west-1.doc-ops", 7, 8)));
        assert_eq!(parse_file_name("x.parquet"), None);
        assert_eq!(parse_file_name("eu-west-1.00000000000000000007-0000000000000000000x.parquet"), None);
        assert_eq!(folder(3, 86_400_000).to_string(), "ops/date=1970-01-02/partition=3");
    }
}
