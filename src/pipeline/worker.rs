//! One partition's worker: folds batches of records, loads cold documents from the store,
//! and writes snapshots with the checkpoint (by op count and by time), evicting cold
//! documents to stay within `max_docs_in_memory`.

use metrics::{counter, gauge, histogram};
use std::time::{Duration, Instant};

use super::PipelineError;
use crate::config::PipelineConfig;
use crate::fold::{BadRecord, Doc, Folded, PartitionFold, snapshot};
use crate::log::Record;
use crate::store::{DocWrite, Store};
use crate::telemetry::{
    BAD_MESSAGES, CHECKPOINT_AGE, DOCS_IN_MEMORY, FLUSH_SECONDS, FOLD_SECONDS, OPS_FOLDED,
};

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
}

pub struct PartitionWorker {
    job: String,
    store: Store,
    settings: PipelineConfig,
    fold: PartitionFold,
    summary: PartitionSummary,
    label: String,
    ops_since_flush: u64,
    last_flush: Instant,
    /// The offset the stored checkpoint holds.
    flushed_offset: u64,
}

impl PartitionWorker {
    /// Loads the partition's checkpoint: the worker folds from there.
    pub async fn start(
        store: Store,
        job: &str,
        partition: u32,
        settings: PipelineConfig,
    ) -> Result<Self, PipelineError> {
        let start = store.checkpoint(job, partition).await?.unwrap_or(0);
        tracing::info!(partition, offset = start, "partition starts at its checkpoint");
        Ok(PartitionWorker {
            job: job.into(),
            store,
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
            last_flush: Instant::now(),
            flushed_offset: start,
        })
    }

    pub fn next_offset(&self) -> u64 {
        self.summary.next_offset
    }

    pub fn summary(&self) -> &PartitionSummary {
        &self.summary
    }

    /// Folds a batch (records before the next offset, e.g. redelivered, are skipped).
    pub async fn handle(&mut self, records: &[Record]) -> Result<(), PipelineError> {
        let started = Instant::now();
        let partition = self.summary.partition;
        let mut folded = 0;
        let from = self.summary.next_offset;
        for record in records.iter().filter(|r| r.offset >= from) {
            loop {
                match self.fold.fold(record.offset, &record.value) {
                    Ok(Folded::Applied { .. }) => folded += 1,
                    Ok(Folded::NeedDoc(doc_id)) => {
                        let doc = self.load(&doc_id).await?;
                        self.fold.insert(doc_id, doc);
                        continue;
                    }
                    Err(error) => {
                        let reason = match error {
                            BadRecord::Decode(_) => "undecodable",
                            BadRecord::Refused(_) => "refused",
                        };
                        tracing::warn!(partition, offset = record.offset, %error, "bad message skipped");
                        counter!(BAD_MESSAGES, "partition" => self.label.clone(), "reason" => reason)
                            .increment(1);
                        self.summary.bad += 1;
                    }
                }
                break;
            }
            self.summary.next_offset = record.offset + 1;
        }
        self.summary.folded += folded;
        self.ops_since_flush += folded;
        counter!(OPS_FOLDED, "partition" => self.label.clone()).increment(folded);
        histogram!(FOLD_SECONDS, "partition" => self.label.clone()).record(started.elapsed().as_secs_f64());
        self.flush_if_due().await
    }

    async fn load(&mut self, doc_id: &str) -> Result<Doc, PipelineError> {
        let Some(stored) = self.store.load_doc(&self.job, doc_id).await? else {
            return Ok(Doc::default());
        };
        self.summary.docs_loaded += 1;
        let state = snapshot::decode(&stored.state)
            .map_err(|error| PipelineError::Snapshot { doc_id: doc_id.into(), error })?;
        Ok(Doc { state, version: stored.version, offset: stored.offset })
    }

    /// Flushes when enough ops or time have passed, or memory is over its bound.
    pub async fn flush_if_due(&mut self) -> Result<(), PipelineError> {
        let age = self.last_flush.elapsed();
        gauge!(CHECKPOINT_AGE, "partition" => self.label.clone()).set(age.as_secs_f64());
        let moved = self.summary.next_offset != self.flushed_offset;
        let due = moved
            && (self.ops_since_flush >= self.settings.flush_ops
                || age >= Duration::from_millis(self.settings.flush_interval_ms))
            || self.fold.len() > self.settings.max_docs_in_memory;
        if due { self.flush().await } else { Ok(()) }
    }

    /// Writes every changed document and the checkpoint in one transaction, then evicts.
    pub async fn flush(&mut self) -> Result<(), PipelineError> {
        let started = Instant::now();
        let docs: Vec<DocWrite> = self
            .fold
            .dirty()
            .map(|(doc_id, doc)| DocWrite {
                doc_id,
                version: doc.version,
                offset: doc.offset,
                state: snapshot::encode(&doc.state),
            })
            .collect();
        let partition = self.summary.partition;
        self.store.commit(&self.job, partition, self.summary.next_offset, &docs).await?;
        tracing::debug!(
            partition,
            offset = self.summary.next_offset,
            docs = docs.len(),
            "checkpoint written"
        );
        drop(docs);
        self.fold.mark_clean();
        self.fold.evict(self.settings.max_docs_in_memory);
        self.ops_since_flush = 0;
        self.flushed_offset = self.summary.next_offset;
        self.last_flush = Instant::now();
        self.summary.flushes += 1;
        histogram!(FLUSH_SECONDS, "partition" => self.label.clone()).record(started.elapsed().as_secs_f64());
        gauge!(DOCS_IN_MEMORY, "partition" => self.label.clone()).set(self.fold.len() as f64);
        Ok(())
    }
}
