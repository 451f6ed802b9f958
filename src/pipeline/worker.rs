//! One partition's worker: folds batches of records, loads cold documents from the store,
//! feeds the archive, and flushes (by op count, by time, when memory is over its bound, or
//! when an archive file is due): sinks first, then snapshots with the checkpoint in one
//! transaction (`flush.rs`).

use metrics::{counter, histogram};
use std::time::Instant;

use super::PipelineError;
use crate::config::PipelineConfig;
use crate::fold::{BadRecord, Doc, Folded, PartitionFold, snapshot};
use crate::log::Record;
use crate::sink::archive::PartitionArchive;
use crate::sink::dead_letter::DeadLetter;
use crate::sink::snapshots::Manifest;
use crate::sink::{Backoff, Sinks};
use crate::store::Store;
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
    pub(super) job: String,
    pub(super) store: Store,
    pub(super) sinks: Sinks,
    pub(super) settings: PipelineConfig,
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
    pub async fn start(
        store: Store,
        sinks: Sinks,
        job: &str,
        partition: u32,
        settings: PipelineConfig,
    ) -> Result<Self, PipelineError> {
        let checkpoint = store.checkpoint(job, partition).await?;
        let start = checkpoint.map_or(0, |c| c.next_offset);
        let archive = sinks.archive.clone().map(|archive| {
            let progress = checkpoint.map_or(0, |c| c.archived_offset);
            PartitionArchive::new(partition, sinks.objects.clone(), archive, progress)
        });
        tracing::info!(partition, offset = start, archive = ?archive.as_ref().map(|a| a.progress()), "partition starts at its checkpoint");
        Ok(PartitionWorker {
            job: job.into(),
            store,
            sinks,
            settings,
            fold: PartitionFold::new(),
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
            manifest: None,
            last_export: Instant::now(),
            backoff: Backoff::new(std::time::Duration::from_millis(100), std::time::Duration::from_secs(10)),
            retry_at: None,
        })
    }

    /// The next offset the worker needs: the fold's, or the archive's when it is behind.
    pub fn next_offset(&self) -> u64 {
        let fold = self.summary.next_offset;
        self.archive.as_ref().map_or(fold, |a| a.next_offset().min(fold))
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
        let reason = match error {
            BadRecord::Decode(_) => "undecodable",
            BadRecord::Refused(_) => "refused",
        };
        tracing::warn!(partition, offset = record.offset, %error, "bad message sent to the dead letters");
        counter!(BAD_MESSAGES, "partition" => self.label.clone(), "reason" => reason).increment(1);
        self.summary.bad += 1;
        self.dead.push(DeadLetter::new(
            &self.sinks.source_topic,
            partition,
            record,
            reason,
            error.to_string(),
        ));
    }

    async fn load(&mut self, doc_id: &str) -> Result<Doc, PipelineError> {
        let Some(stored) = self.store.load_doc(&self.job, doc_id).await? else {
            return Ok(Doc::default());
        };
        self.summary.docs_loaded += 1;
        let state = snapshot::decode(&stored.state)
            .map_err(|error| PipelineError::Snapshot { doc_id: doc_id.into(), error })?;
        Ok(Doc { state, version: stored.version, offset: stored.offset, region: String::new() })
    }
}
