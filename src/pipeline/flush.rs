//! A partition's flush: effects first, then the checkpoint (it travels with the output).
//! 1. dead letters are made durable;
//! 2. projections of the changed documents are written (conditional on the version);
//! 3. invalidations announce them (topic and Redis);
//! 4. a due archive file is uploaded;
//! 5. snapshots and the checkpoint (fold and archive offsets) commit in one transaction;
//! 6. a due disaster-recovery export runs (from the store, after the commit).
//!
//! A backend that is unavailable fails the flush: it is retried with backoff and jitter
//! while the partition keeps folding, until memory or the archive's buffer is over its
//! bound — then the partition stops reading until a flush goes through. Every step is
//! idempotent, so a retry (or a replay after a crash) repeats effects harmlessly.

use metrics::{counter, gauge, histogram};
use std::time::{Duration, Instant};

use super::{PartitionWorker, PipelineError};
use crate::fold::snapshot;
use crate::sink::invalidate::Invalidation;
use crate::sink::projection::{Body, Projection};
use crate::sink::snapshots;
use crate::store::{Checkpoint, DocWrite, now_ms};
use crate::telemetry::{
    ARCHIVE_FILES, ARCHIVE_ROWS, CHECKPOINT_AGE, DOCS_IN_MEMORY, FLUSH_SECONDS, INVALIDATION_DELAY,
    PROJECTION_WRITES, SINK_FAILING, SINK_FAILURES,
};

/// How long the final flush (shutdown, rebalance) keeps retrying an unavailable backend.
const FINAL_FLUSH_PATIENCE: Duration = Duration::from_secs(60);

impl PartitionWorker {
    /// Flushes when enough ops or time have passed, memory is over its bound, or an
    /// archive file is due — unless a failed flush is waiting for its retry.
    pub async fn flush_if_due(&mut self) -> Result<(), PipelineError> {
        let age = self.last_flush.elapsed();
        gauge!(CHECKPOINT_AGE, "partition" => self.label.clone()).set(age.as_secs_f64());
        if self.retry_at.is_some_and(|at| Instant::now() < at) && !self.over_bound() {
            return Ok(());
        }
        let moved = self.summary.next_offset != self.flushed_offset;
        let due = moved
            && (self.ops_since_flush >= self.job.settings.flush_ops
                || age >= Duration::from_millis(self.job.settings.flush_interval_ms))
            || self.fold.len() > self.job.settings.max_docs_in_memory
            || self.dead_bytes > self.job.sinks.dead_letters.max_buffered_bytes
            || self.archive.as_ref().is_some_and(|a| a.is_due())
            || self.retry_at.is_some();
        if due { self.flush().await } else { Ok(()) }
    }

    /// Memory held for unflushed work (documents, archive rows, dead letters) is past its
    /// bound: reading must wait.
    fn over_bound(&self) -> bool {
        self.fold.len() > 2 * self.job.settings.max_docs_in_memory
            || self.archive.as_ref().is_some_and(|a| a.is_over_bound())
            || self.dead_bytes > self.job.sinks.dead_letters.max_buffered_bytes
    }

    /// Flushes; an unavailable backend schedules a retry (or, over the memory bound,
    /// waits for it here).
    pub async fn flush(&mut self) -> Result<(), PipelineError> {
        loop {
            match self.try_flush(false).await {
                Ok(()) => return Ok(()),
                Err(error) if error.is_retryable() => {
                    let delay = self.retry_later(&error);
                    if !self.over_bound() || self.job.cancel.is_cancelled() {
                        return Ok(());
                    }
                    self.pause(delay).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The last flush before the partition leaves this process: writes every buffered
    /// archive row too, retrying an unavailable backend for up to a minute.
    pub async fn flush_final(&mut self) -> Result<(), PipelineError> {
        let started = Instant::now();
        loop {
            match self.try_flush(true).await {
                Ok(()) => return Ok(()),
                Err(error) if error.is_retryable() && started.elapsed() < FINAL_FLUSH_PATIENCE => {
                    let delay = self.retry_later(&error);
                    tokio::time::sleep(delay).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn retry_later(&mut self, error: &PipelineError) -> Duration {
        let delay = self.backoff.next_delay();
        let backend = error.backend();
        tracing::warn!(partition = self.summary.partition, backend, %error, attempt = self.backoff.attempts(), retry_in_ms = delay.as_millis() as u64, "flush failed; folding goes on, retrying");
        counter!(SINK_FAILURES, "sink" => backend).increment(1);
        gauge!(SINK_FAILING, "partition" => self.label.clone()).set(1.0);
        self.summary.retries += 1;
        self.retry_at = Some(Instant::now() + delay);
        delay
    }

    async fn try_flush(&mut self, last: bool) -> Result<(), PipelineError> {
        let started = Instant::now();
        let partition = self.summary.partition;
        // A stale owner writes no effect (its checkpoint would be refused anyway).
        self.job.store.check_owner(&self.owner).await?;
        if !self.dead.is_empty() {
            self.job.sinks.dead_letters.send(&self.dead).await?;
            self.dead.clear();
            self.dead_bytes = 0;
        }
        let changed: Vec<(&str, &crate::fold::Doc)> = self.fold.dirty().collect();
        if let Some(projections) = &self.job.sinks.projections
            && !changed.is_empty()
        {
            let updated_ms = now_ms();
            let items = changed
                .iter()
                .map(|(doc_id, doc)| Projection {
                    doc_id: doc_id.to_string(),
                    body: Body::Text(doc.state.text()),
                    version: doc.version,
                    chars: doc.state.len() as u64,
                    updated_ms,
                    region: doc.region.clone(),
                })
                .collect();
            let written = projections.put(items).await?;
            counter!(PROJECTION_WRITES, "outcome" => "written").increment(written.written);
            self.summary.projection_writes += written.written;
            counter!(PROJECTION_WRITES, "outcome" => "stale").increment(written.stale);
        }
        if !self.job.sinks.invalidator.is_off() && !changed.is_empty() {
            let items: Vec<Invalidation> = changed
                .iter()
                .map(|(doc_id, doc)| Invalidation {
                    doc_id: doc_id.to_string(),
                    version: doc.version,
                    region: doc.region.clone(),
                })
                .collect();
            self.job.sinks.invalidator.send(&items).await?;
            if let Some(since) = self.unflushed_since {
                histogram!(INVALIDATION_DELAY).record(since.elapsed().as_secs_f64());
            }
        }
        let docs: Vec<DocWrite> = changed
            .iter()
            .map(|(doc_id, doc)| DocWrite {
                doc_id,
                version: doc.version,
                offset: doc.offset,
                state: snapshot::encode(&doc.state),
            })
            .collect();
        let archive_due = self.archive.as_ref().is_some_and(|a| last || a.is_due());
        if archive_due {
            // Checked again just before the upload: a file with other boundaries than the
            // new owner's would duplicate rows.
            self.job.store.check_owner(&self.owner).await?;
        }
        if let Some(archive) = &mut self.archive
            && archive_due
            && let Some(file) = archive.write().await?
        {
            tracing::debug!(
                partition,
                key = file.key,
                rows = file.rows,
                bytes = file.bytes,
                "archive file written"
            );
            counter!(ARCHIVE_FILES).increment(1);
            counter!(ARCHIVE_ROWS).increment(file.rows as u64);
            self.summary.archive_files += 1;
        }
        let next_offset = self.summary.next_offset;
        let archived_offset = self.archive.as_ref().map_or(next_offset, |a| a.progress());
        let checkpoint = Checkpoint { next_offset, archived_offset };
        self.job.store.commit(&self.owner, checkpoint, &docs).await?;
        tracing::debug!(
            partition,
            offset = next_offset,
            archived_offset,
            docs = docs.len(),
            "checkpoint written"
        );
        drop(docs);
        drop(changed);
        self.fold.mark_clean();
        self.fold.evict(self.job.settings.max_docs_in_memory);
        self.ops_since_flush = 0;
        self.unflushed_since = None;
        self.flushed_offset = next_offset;
        self.last_flush = Instant::now();
        self.summary.flushes += 1;
        self.backoff.reset();
        self.retry_at = None;
        gauge!(SINK_FAILING, "partition" => self.label.clone()).set(0.0);
        histogram!(FLUSH_SECONDS, "partition" => self.label.clone()).record(started.elapsed().as_secs_f64());
        gauge!(DOCS_IN_MEMORY, "partition" => self.label.clone()).set(self.fold.len() as f64);
        self.export_if_due(last).await
    }

    /// Writes a disaster-recovery snapshot when one is due (a failure is retried at the
    /// next flush; the checkpoint is already safe).
    async fn export_if_due(&mut self, last: bool) -> Result<(), PipelineError> {
        let Some(interval) = self.job.sinks.snapshot_interval else { return Ok(()) };
        if self.last_export.elapsed() < interval && !last {
            return Ok(());
        }
        let partition = self.summary.partition;
        let previous = match self.manifest.take() {
            Some(manifest) => Some(manifest),
            None => snapshots::latest_manifest(&self.job.sinks.objects, partition).await?,
        };
        if previous.as_ref().is_some_and(|m| m.next_offset == self.flushed_offset) {
            self.manifest = previous;
            self.last_export = Instant::now();
            return Ok(());
        }
        let store = &self.job.store;
        let manifest = snapshots::export(
            &self.job.sinks.objects,
            store,
            &self.job.name,
            partition,
            self.flushed_offset,
            previous.clone(),
        )
        .await;
        match manifest {
            Ok(manifest) => {
                tracing::info!(
                    partition,
                    offset = manifest.next_offset,
                    docs = manifest.docs.len(),
                    "disaster-recovery snapshot written"
                );
                self.manifest = Some(manifest);
                self.last_export = Instant::now();
                // The new manifest is written: older ones beyond `keep` are garbage now.
                let (objects, keep) = (&self.job.sinks.objects, self.job.sinks.snapshots_keep);
                match snapshots::collect_garbage(objects, partition, keep).await {
                    Ok(deleted) => tracing::debug!(partition, deleted, "old snapshots deleted"),
                    Err(error) => {
                        tracing::warn!(partition, %error, "deleting old snapshots failed; retried after the next export")
                    }
                }
                Ok(())
            }
            Err(error) if error.is_retryable() => {
                self.manifest = previous;
                tracing::warn!(partition, %error, "disaster-recovery snapshot failed; retried at the next flush");
                counter!(SINK_FAILURES, "sink" => error.sink()).increment(1);
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }
}
