//! One partition's worker: folds batches of records, loads cold documents from the store,
//! feeds the archive, and flushes (by op count, by time, when memory is over its bound, or
//! when an archive file is due): sinks first, then snapshots with the checkpoint in one
//! transaction (`flush.rs`).

use metrics::{counter, histogram};
use std::time::{Duration, Instant};

use super::{Job, PipelineError};
use crate::fold::{BadRecord, Doc, Folded, PartitionFold, snapshot};
use crate::log::Record;
use crate::sink::Backoff;
use crate::sink::archive::PartitionArchive;
use crate::sink::dead_letter::DeadLetter;
use crate::sink::snapshots::Manifest;
use crate::store::Owner;
use crate::telemetry::{BAD_MESSAGES, FOLD_SECONDS, OPS_FOLDED};

/// What a partition's worker did in this process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionSummary {
    pub partition: u32,
    /// Where it started (the stored checkpoint) and the next offset it would read.
    pub start_offset: u64,
    pub next_offset: u64,
    pub folded: u64,
    pub bad: u64,
    pub docs_loaded: u64,
    pub flushes: u64,
    /// Flush attempts that failed on an unavailable backend and were retried.
    pub retries: u64,
    pub archive_files: u64,
    /// Projection items written (stale ones skipped by the condition not counted).
    pub projection_writes: u64,
}

pub struct PartitionWorker {
    pub(super) job: Job,
    /// This worker's claim of the partition: every commit carries it.
    pub(super) owner: Owner,
    pub(super) fold: PartitionFold,
    pub(super) summary: PartitionSummary,
    pub(super) label: String,
    pub(super) ops_since_flush: u64,
    /// When the oldest op not yet flushed was folded.
    pub(super) unflushed_since: Option<Instant>,
    pub(super) last_flush: Instant,
    /// The offset the stored checkpoint holds.
    pub(super) flushed_offset: u64,
    pub(super) archive: Option<PartitionArchive>,
    pub(super) dead: Vec<DeadLetter>,
    /// Bytes of the raw records in `dead`.
    pub(super) dead_bytes: usize,
    /// Disaster-recovery snapshots: the last manifest (`None` until read) and when.
    pub(super) manifest: Option<Manifest>,
    pub(super) last_export: Instant,
    /// Retries of a failing flush, and when the next one may run.
    pub(super) backoff: Backoff,
    pub(super) retry_at: Option<Instant>,
}

impl PartitionWorker {
    /// Loads the partition's checkpoint: the worker folds from there (and the archive from
    /// its own progress, which may be behind).
    pub async fn start(job: &Job, (partition, partitions): (u32, u32)) -> Result<Self, PipelineError> {
        let owner = job.store.claim(&job.name, partition).await?;
        let checkpoint = job.store.checkpoint(&job.name, partition).await?;
        let start = checkpoint.map_or(0, |c| c.next_offset);
        let archive = job.sinks.archive.clone().map(|archive| {
            let progress = checkpoint.map_or(0, |c| c.archived_offset);
            PartitionArchive::new(partition, job.sinks.objects.clone(), archive, progress)
        });
        tracing::info!(partition, offset = start, epoch = owner.epoch, archive = ?archive.as_ref().map(|a| a.progress()), "partition starts at its checkpoint");
        Ok(PartitionWorker {
            job: job.clone(),
            owner,
            fold: PartitionFold::for_partition(partition, partitions),
            summary: PartitionSummary {
                partition,
                start_offset: start,
                next_offset: start,
                ..Default::default()
            },
            label: partition.to_string(),
            ops_since_flush: 0,
            unflushed_since: None,
            last_flush: Instant::now(),
            flushed_offset: start,
            archive,
            dead: Vec::new(),
            dead_bytes: 0,
            manifest: None,
            last_export: Instant::now(),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            retry_at: None,
        })
    }

    /// The next offset the worker needs: the fold's, or the archive's when it is behind.
    pub fn next_offset(&self) -> u64 {
        let fold = self.summary.next_offset;
        self.archive.as_ref().map_or(fold, |a| a.next_offset().min(fold))
    }

    /// Refuses to go on when the checkpoints (fold and archive) are not within the log's
    /// `earliest..=end`: records were removed before they were folded, or the log lost
    /// records the store has folded.
    pub fn check_in_log(&self, earliest: u64, end: u64) -> Result<(), PipelineError> {
        let archived = self.archive.as_ref().map(|a| a.next_offset());
        let offsets = [self.summary.next_offset].into_iter().chain(archived);
        super::check_in_log(self.summary.partition, offsets, earliest, end)
    }

    /// Waits `delay`, or less when the job is cancelled.
    pub(super) async fn pause(&self, delay: Duration) {
        tokio::select! {
            () = self.job.cancel.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }

    /// The offset the stored checkpoint holds.
    pub fn flushed_offset(&self) -> u64 {
        self.flushed_offset
    }

    pub fn summary(&self) -> &PartitionSummary {
        &self.summary
    }

    /// Folds a batch (records already folded and archived, e.g. redelivered, are skipped).
    pub async fn handle(&mut self, records: &[Record]) -> Result<(), PipelineError> {
        let started = Instant::now();
        let mut folded = 0;
        for record in records {
            let to_fold = record.offset >= self.summary.next_offset;
            let mut to_archive = false;
            if let Some(archive) = &mut self.archive
                && record.offset >= archive.next_offset()
            {
                archive.skip_written(record.offset, record.timestamp_ms).await?;
                to_archive = record.offset >= archive.next_offset();
            }
            if !to_fold && !to_archive {
                continue;
            }
            let outcome = if to_fold {
                self.fold_record(record).await?
            } else {
                self.fold.decode(&record.value).map(drop).map_err(BadRecord::from)
            };
            let decoded = matches!(outcome, Ok(()) | Err(BadRecord::Refused(_)));
            match outcome {
                Ok(()) if to_fold => folded += 1,
                Ok(()) => {}
                Err(error) if to_fold => self.dead_letter(record, error),
                Err(_) => {} // dead-lettered when it was folded
            }
            if to_archive && let Some(archive) = &mut self.archive {
                archive.push(record.offset, record.timestamp_ms, decoded.then(|| self.fold.last_envelope()));
            }
            if to_fold {
                self.summary.next_offset = record.offset + 1;
            }
        }
        if folded > 0 {
            self.unflushed_since.get_or_insert(started);
        }
        self.summary.folded += folded;
        self.ops_since_flush += folded;
        counter!(OPS_FOLDED, "partition" => self.label.clone()).increment(folded);
        histogram!(FOLD_SECONDS, "partition" => self.label.clone()).record(started.elapsed().as_secs_f64());
        self.flush_if_due().await
    }

    /// Folds one record, loading its document first when it is cold.
    async fn fold_record(&mut self, record: &Record) -> Result<Result<(), BadRecord>, PipelineError> {
        loop {
            match self.fold.fold(record.offset, &record.value) {
                Ok(Folded::Applied { .. }) => return Ok(Ok(())),
                Ok(Folded::NeedDoc(doc_id)) => {
                    let doc = self.load(&doc_id).await?;
                    self.fold.insert(doc_id, doc);
                }
                Err(bad) => return Ok(Err(bad)),
            }
        }
    }

    fn dead_letter(&mut self, record: &Record, error: BadRecord) {
        let partition = self.summary.partition;
        let reason = error.reason();
        tracing::warn!(partition, offset = record.offset, %error, "bad message sent to the dead letters");
        counter!(BAD_MESSAGES, "partition" => self.label.clone(), "reason" => reason).increment(1);
        self.summary.bad += 1;
        self.dead_bytes += record.key.len() + record.value.len();
        self.dead.push(DeadLetter::new(
            &self.job.sinks.source_topic,
            partition,
            record,
            reason,
            error.to_string(),
        ));
    }

    /// Loads a cold document; an unavailable store is retried with backoff (the partition
    /// waits) until it answers or the job is cancelled.
    async fn load(&mut self, doc_id: &str) -> Result<Doc, PipelineError> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let stored = loop {
            match self.job.store.load_doc(&self.job.name, doc_id).await {
                Ok(stored) => break stored,
                Err(error) if error.is_retryable() && !self.job.cancel.is_cancelled() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(partition = self.summary.partition, %error, retry_in_ms = delay.as_millis() as u64, "loading a document failed; retrying");
                    self.summary.retries += 1;
                    self.pause(delay).await;
                }
                Err(error) => return Err(error.into()),
            }
        };
        let Some(stored) = stored else {
            return Ok(Doc::default());
        };
        self.summary.docs_loaded += 1;
        let state = snapshot::decode(&stored.state)
            .map_err(|error| PipelineError::Snapshot { doc_id: doc_id.into(), error })?;
        Ok(Doc { state, version: stored.version, offset: stored.offset, region: String::new() })
    }
}
