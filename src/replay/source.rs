//! A replay's source: the log (file or Kafka, through `LogReader`) or the Parquet archive
//! (`sink::archive::read`), read in ranges of one partition.

use std::sync::Arc;
use tokio::sync::mpsc;

use super::{ReplayError, ReplaySource, refused};
use crate::config::JobConfig;
use crate::log::{LogReader, Record, Topic};
use crate::sink::archive::read::{self, ArchiveFile};
use crate::sink::objects::Objects;

/// Records of a job's own topic, read from the log or rebuilt from the archive.
pub enum Reader {
    /// Taken while a blocking call runs on the blocking pool.
    Log(Option<Box<dyn LogReader>>),
    Archive {
        objects: Objects,
        topic: Arc<str>,
        files: Option<(u32, Vec<ArchiveFile>)>,
    },
}

impl Reader {
    pub fn open(config: &JobConfig, topic: &Topic, source: ReplaySource) -> Result<Reader, ReplayError> {
        Ok(match source {
            ReplaySource::Log => Reader::Log(Some(topic.reader()?)),
            ReplaySource::Archive => Reader::Archive {
                objects: Objects::open(&config.objects)?,
                topic: Arc::from(config.log.topic.as_str()),
                files: None,
            },
        })
    }

    /// Runs `call` with the log reader on the blocking pool.
    async fn blocking<T: Send + 'static>(
        slot: &mut Option<Box<dyn LogReader>>,
        call: impl FnOnce(&mut dyn LogReader) -> Result<T, crate::log::LogError> + Send + 'static,
    ) -> Result<T, ReplayError> {
        let mut reader = slot.take().expect("the reader is put back after each call");
        let (reader, result) = tokio::task::spawn_blocking(move || {
            let result = call(reader.as_mut());
            (reader, result)
        })
        .await
        .map_err(|e| crate::pipeline::PipelineError::Task(e.to_string()))?;
        *slot = Some(reader);
        Ok(result?)
    }

    /// The archive's files of `partition` (listed once per partition).
    async fn files(
        objects: &Objects,
        cached: &mut Option<(u32, Vec<ArchiveFile>)>,
        partition: u32,
    ) -> Result<Vec<ArchiveFile>, ReplayError> {
        if cached.as_ref().is_none_or(|(p, _)| *p != partition) {
            let files = read::files(objects, partition).await?;
            if let Some(pair) = files.windows(2).find(|pair| pair[1].first != pair[0].last + 1) {
                return Err(refused(format!(
                    "partition {partition}: the archive has no file for offsets {}..{} ({} is followed by {})",
                    pair[0].last + 1,
                    pair[1].first,
                    pair[0].key,
                    pair[1].key
                )));
            }
            *cached = Some((partition, files));
        }
        Ok(cached.as_ref().map(|(_, files)| files.clone()).unwrap_or_default())
    }

    /// The offsets the source holds of `partition`: `earliest..end`.
    pub async fn range(&mut self, partition: u32) -> Result<(u64, u64), ReplayError> {
        match self {
            Reader::Log(slot) => {
                Self::blocking(slot, move |r| Ok((r.earliest_offset(partition)?, r.end_offset(partition)?)))
                    .await
            }
            Reader::Archive { objects, files, .. } => {
                let files = Self::files(objects, files, partition).await?;
                Ok(match (files.first(), files.last()) {
                    (Some(first), Some(last)) => (first.first, last.last + 1),
                    _ => (0, 0),
                })
            }
        }
    }

    /// The first offset of `partition` stamped after `time_ms`, the end when none is.
    pub async fn offset_after(&mut self, partition: u32, time_ms: i64) -> Result<u64, ReplayError> {
        match self {
            Reader::Log(slot) => Self::blocking(slot, move |r| r.offset_after(partition, time_ms)).await,
            Reader::Archive { .. } => {
                let (earliest, end) = self.range(partition).await?;
                let mut next = earliest;
                while next < end {
                    let (records, after) = self.read(partition, next, end, usize::MAX).await?;
                    if let Some(record) = records.iter().find(|r| r.timestamp_ms > time_ms) {
                        return Ok(record.offset);
                    }
                    if after == next {
                        break;
                    }
                    next = after;
                }
                Ok(end)
            }
        }
    }

    /// Records of `partition` from `from` (up to `max` from the log; the rest of a file
    /// from the archive), none at or past `to`, and the offset to read next (`from` when
    /// the source has nothing more). Offsets in between without a record (the archive has
    /// no rows for dead letters) are passed over.
    pub async fn read(
        &mut self,
        partition: u32,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<(Vec<Record>, u64), ReplayError> {
        let (mut records, next) = match self {
            Reader::Log(slot) => {
                let max = max.min(usize::try_from(to - from).unwrap_or(usize::MAX));
                Self::blocking(slot, move |r| {
                    let mut records = Vec::with_capacity(max.min(1 << 16));
                    // The range was within the log when planned.
                    r.read_before_end(partition, from, max, &mut records)?;
                    let next = records.last().map_or(from, |last| last.offset + 1);
                    Ok((records, next))
                })
                .await?
            }
            Reader::Archive { objects, topic, files } => {
                let files = Self::files(objects, files, partition).await?;
                let Some(file) = files.into_iter().find(|f| f.last >= from) else {
                    return Ok((Vec::new(), from));
                };
                let Some(bytes) = objects.get(&file.key).await? else {
                    return Err(refused(format!(
                        "archive file {} is gone (listed, then not found)",
                        file.key
                    )));
                };
                let (topic, next) = (topic.clone(), file.last + 1);
                let records = tokio::task::spawn_blocking(move || read::records(&file.key, bytes, &topic))
                    .await
                    .map_err(|e| crate::pipeline::PipelineError::Task(e.to_string()))??;
                (records, next)
            }
        };
        records.retain(|r| r.offset >= from && r.offset < to);
        Ok((records, next.min(to)))
    }

    /// Reads `from..to` of `partition` on a task of its own, one batch of `max` ahead of
    /// the caller, who folds a batch while the next is read: each as [`Self::read`] gives
    /// it. The batches end with the range, with the source (when it has nothing more), or
    /// after an error; dropping the [`ReadAhead`] stops the reading.
    pub fn read_ahead(mut self, partition: u32, (from, to): (u64, u64), max: usize) -> ReadAhead {
        let (batches, receiver) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            let mut next = from;
            while next < to {
                let batch = self.read(partition, next, to, max).await;
                let after = match &batch {
                    Ok((_, after)) if *after == next => break, // the source has nothing more
                    Ok((_, after)) => Some(*after),
                    Err(_) => None,
                };
                let sent = batches.send(batch).await.is_ok();
                match after {
                    Some(after) if sent => next = after,
                    _ => break,
                }
            }
        });
        ReadAhead { batches: receiver, task: Some(task) }
    }
}

/// A batch of records and the offset to read next.
type Batch = (Vec<Record>, u64);

/// Batches read ahead by [`Reader::read_ahead`].
pub struct ReadAhead {
    batches: mpsc::Receiver<Result<Batch, ReplayError>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ReadAhead {
    /// The next batch; `None` once the reading has ended. A reading task that failed (a
    /// panic) is an error, never a short range.
    pub async fn next(&mut self) -> Option<Result<Batch, ReplayError>> {
        if let Some(batch) = self.batches.recv().await {
            return Some(batch);
        }
        let ended = self.task.take()?.await;
        ended.err().map(|e| Err(crate::pipeline::PipelineError::Task(e.to_string()).into()))
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
