//! A partition's flush: effects first, then the checkpoint (it travels with the output).
//! 1. the job's sinks, in order ([`Sinks::effects`](crate::sink::Sinks::effects)): dead
//!    letters made durable, projections of the changed documents (conditional on the
//!    version), invalidations announcing them;
//! 2. a due archive file is uploaded (per source topic);
//! 3. snapshots and the checkpoints (fold and archive offsets of every source topic)
//!    commit in one transaction;
//! 4. a due disaster-recovery export runs (from the store, after the commit).
//!
//! A backend that is unavailable fails the flush: it is retried with backoff and jitter
//! while the partition keeps folding, until memory or the archive's buffer is over its
//! bound — then the partition stops reading until a flush goes through. Every step is
//! idempotent, so a retry (or a replay after a crash) repeats effects harmlessly.
//!
//! [`Flusher`] owns what only the flush needs (when it last ran, what waits for it, its
//! retries); the worker hands it the partition's fold and sources per call ([`Parts`]) and
//! takes back what it did ([`Flushed`]).

use std::time::{Duration, Instant};

use super::source::{self, Source};
use super::{Job, PipelineError};
use crate::config::PipelineConfig;
use crate::fold::{PartitionFold, Stored};
use crate::sink::dead_letter::DeadLetter;
use crate::sink::snapshots::{self, Export, Manifest};
use crate::sink::{Backoff, Changes};
use crate::store::{Checkpoint, DocWrite, Owner};
use crate::telemetry;
use std::collections::BTreeMap;

/// How long the final flush (shutdown, rebalance) keeps retrying an unavailable backend.
const FINAL_FLUSH_PATIENCE: Duration = Duration::from_secs(60);

/// The newest disaster-recovery manifest stays in memory between exports up to this many
/// documents (about 100 bytes each); a larger one is read from object storage per export.
const MANIFEST_CACHE_DOCS: usize = 20_000;

/// The partition a flush works on, lent by its worker for one call.
pub(super) struct Parts<'a> {
    pub job: &'a Job,
    pub owner: &'a Owner,
    pub fold: &'a mut PartitionFold,
    /// The source topics: their offsets are the checkpoints a flush writes.
    pub sources: &'a mut [Source],
}

impl Parts<'_> {
    fn archive_due(&self) -> bool {
        self.sources.iter().any(|s| s.archive.as_ref().is_some_and(|a| a.is_due()))
    }
}

/// What flush calls did, for the worker's summary.
#[derive(Debug, Default)]
pub(super) struct Flushed {
    pub flushes: u64,
    pub retries: u64,
    pub archive_files: u64,
    /// Items each sink wrote.
    pub written: Vec<(&'static str, u64)>,
}

/// A partition's flush state.
pub(super) struct Flusher {
    label: String,
    /// This partition's share of `pipeline.max_state_mb`, in bytes.
    max_state_bytes: usize,
    ops_since_flush: u64,
    /// When the oldest op not yet flushed was folded.
    unflushed_since: Option<Instant>,
    last_flush: Instant,
    /// The fold offsets the stored checkpoints hold, per source (the job's order).
    flushed: Vec<u64>,
    dead: Vec<DeadLetter>,
    /// Bytes of the raw records in `dead`.
    dead_bytes: usize,
    /// Disaster-recovery snapshots: the last manifest (`None` until read) and when, and
    /// the export under way.
    manifest: Option<Manifest>,
    export: Option<Export>,
    last_export: Instant,
    /// Retries of a failing flush, and when the next one may run.
    backoff: Backoff,
    retry_at: Option<Instant>,
}

impl Flusher {
    /// Partition `partition` of `partitions`, whose stored checkpoints are at `flushed`
    /// (per source).
    pub fn new(settings: &PipelineConfig, (partition, partitions): (u32, u32), flushed: Vec<u64>) -> Flusher {
        Flusher {
            label: partition.to_string(),
            max_state_bytes: (settings.max_state_mb << 20) / partitions.max(1) as usize,
            ops_since_flush: 0,
            unflushed_since: None,
            last_flush: Instant::now(),
            flushed,
            dead: Vec::new(),
            dead_bytes: 0,
            manifest: None,
            export: None,
            last_export: Instant::now(),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10)),
            retry_at: None,
        }
    }

    pub fn flushed_offsets(&self) -> &[u64] {
        &self.flushed
    }

    /// `ops` were folded, the first of them at `at`.
    pub fn folded(&mut self, ops: u64, at: Instant) {
        if ops > 0 {
            self.unflushed_since.get_or_insert(at);
        }
        self.ops_since_flush += ops;
    }

    /// Holds a dead letter of a record of `bytes` bytes until the next flush.
    pub fn dead_letter(&mut self, letter: DeadLetter, bytes: usize) {
        self.dead_bytes += bytes;
        self.dead.push(letter);
    }

    /// Flushes when enough ops or time have passed, memory is over its bound, or an
    /// archive file is due — unless a failed flush is waiting for its retry.
    pub async fn flush_if_due(&mut self, parts: Parts<'_>) -> Result<Flushed, PipelineError> {
        let age = self.last_flush.elapsed();
        telemetry::checkpoint_age(&self.label, age.as_secs_f64());
        if self.retry_at.is_some_and(|at| Instant::now() < at) && !self.over_bound(&parts) {
            return Ok(Flushed::default());
        }
        let settings = &parts.job.settings;
        let moved = parts.sources.iter().zip(&self.flushed).any(|(s, &flushed)| s.next_offset != flushed);
        let due = moved
            && (self.ops_since_flush >= settings.flush_ops
                || age >= Duration::from_millis(settings.flush_interval_ms))
            || parts.fold.len() > settings.max_docs_in_memory
            || self.over_state_bound(parts.fold)
            || self.dead_bytes > parts.job.sinks.dead_letters.max_buffered_bytes
            || parts.archive_due()
            || self.retry_at.is_some();
        if due { self.flush(parts).await } else { Ok(Flushed::default()) }
    }

    /// The documents in memory hold more than this partition's share of
    /// `pipeline.max_state_mb`: a flush is due (and evicts them once they are stored).
    pub fn over_state_bound(&self, fold: &PartitionFold) -> bool {
        fold.bytes() > self.max_state_bytes
    }

    /// Memory held for unflushed work (documents, archive rows, dead letters) is past its
    /// bound: reading must wait.
    fn over_bound(&self, parts: &Parts<'_>) -> bool {
        parts.fold.len() > 2 * parts.job.settings.max_docs_in_memory
            || parts.fold.bytes() > 2 * self.max_state_bytes
            || parts.sources.iter().any(|s| s.archive.as_ref().is_some_and(|a| a.is_over_bound()))
            || self.dead_bytes > parts.job.sinks.dead_letters.max_buffered_bytes
    }

    /// Flushes; an unavailable backend schedules a retry (or, over the memory bound,
    /// waits for it here).
    pub async fn flush(&mut self, mut parts: Parts<'_>) -> Result<Flushed, PipelineError> {
        let mut flushed = Flushed::default();
        loop {
            match self.try_flush(&mut parts, false, &mut flushed).await {
                Ok(()) => return Ok(flushed),
                Err(error) if error.is_retryable() => {
                    let delay = self.retry_later(&error, &mut flushed);
                    if !self.over_bound(&parts) || parts.job.cancel.is_cancelled() {
                        return Ok(flushed);
                    }
                    parts.job.pause(delay).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The last flush before the partition leaves this process: writes every buffered
    /// archive row too, retrying an unavailable backend for up to a minute.
    pub async fn flush_final(&mut self, mut parts: Parts<'_>) -> Result<Flushed, PipelineError> {
        let started = Instant::now();
        let mut flushed = Flushed::default();
        loop {
            match self.try_flush(&mut parts, true, &mut flushed).await {
                Ok(()) => return Ok(flushed),
                Err(error) if error.is_retryable() && started.elapsed() < FINAL_FLUSH_PATIENCE => {
                    let delay = self.retry_later(&error, &mut flushed);
                    tokio::time::sleep(delay).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn retry_later(&mut self, error: &PipelineError, flushed: &mut Flushed) -> Duration {
        let delay = self.backoff.next_delay();
        let backend = error.backend();
        tracing::warn!(partition = %self.label, backend, %error, attempt = self.backoff.attempts(), retry_in_ms = delay.as_millis() as u64, "flush failed; folding goes on, retrying");
        telemetry::sink_failure(backend);
        telemetry::sink_failing(&self.label, true);
        flushed.retries += 1;
        self.retry_at = Some(Instant::now() + delay);
        delay
    }

    async fn try_flush(
        &mut self,
        parts: &mut Parts<'_>,
        last: bool,
        flushed: &mut Flushed,
    ) -> Result<(), PipelineError> {
        let started = Instant::now();
        let job = parts.job;
        // A stale owner writes no effect (its checkpoint would be refused anyway).
        job.store.check_owner(parts.owner).await?;
        let docs: Vec<(&str, &crate::fold::Doc)> = parts.fold.dirty().collect();
        let changes = Changes {
            partition: parts.owner.partition,
            docs: &docs,
            dead: &self.dead,
            folded_at: self.unflushed_since,
            generation: parts.owner.generation,
        };
        for sink in job.sinks.effects() {
            let began = Instant::now();
            let written = sink.write(&changes).await?;
            telemetry::sink_seconds(sink.name(), began.elapsed().as_secs_f64());
            flushed.written.push((sink.name(), written));
        }
        telemetry::writes_coalesced(self.ops_since_flush.saturating_sub(docs.len() as u64));
        self.dead.clear();
        self.dead_bytes = 0;
        let writes: Vec<DocWrite> = docs
            .iter()
            .map(|(doc_id, doc)| DocWrite {
                doc_id,
                version: doc.version,
                offset: doc.offset,
                state: doc.to_store(),
            })
            .collect();
        let stored: Vec<(String, Stored)> = docs
            .iter()
            .zip(&writes)
            .map(|((id, doc), write)| (id.to_string(), doc.stored_after(&write.state)))
            .collect();
        if last || parts.archive_due() {
            // Checked again just before the uploads: a file with other boundaries than the
            // new owner's would duplicate rows.
            job.store.check_owner(parts.owner).await?;
        }
        for archive in parts.sources.iter_mut().filter_map(|s| s.archive.as_mut()) {
            if !(last || archive.is_due()) {
                continue;
            }
            if let Some(file) = archive.write().await? {
                tracing::debug!(partition = %self.label, key = file.key, rows = file.rows, bytes = file.bytes, "archive file written");
                telemetry::archive_file(file.rows, file.bytes);
                flushed.archive_files += 1;
            }
        }
        let checkpoints: Vec<(&str, Checkpoint)> =
            parts.sources.iter().map(|s| (s.stored.as_str(), s.checkpoint())).collect();
        job.store.commit(parts.owner, &checkpoints, &writes).await?;
        tracing::debug!(event = "checkpoint", partition = %self.label, position = source::position(parts.sources), docs = writes.len(), "checkpoint written");
        drop(writes);
        drop(docs);
        parts.fold.mark_stored(&stored);
        parts.fold.evict(job.settings.max_docs_in_memory, self.max_state_bytes);
        self.ops_since_flush = 0;
        self.unflushed_since = None;
        self.flushed = parts.sources.iter().map(|s| s.next_offset).collect();
        self.last_flush = Instant::now();
        flushed.flushes += 1;
        self.backoff.reset();
        self.retry_at = None;
        telemetry::sink_failing(&self.label, false);
        telemetry::flush_seconds(&self.label, started.elapsed().as_secs_f64());
        telemetry::docs_in_memory(&self.label, parts.fold.len());
        let sources: BTreeMap<String, u64> =
            parts.sources.iter().map(|s| (s.stored.clone(), s.next_offset)).collect();
        self.export_if_due(job, (parts.owner.partition, sources), last).await
    }

    /// Begins a disaster-recovery export of the partition at `sources` (the checkpoints
    /// just committed) when one is due, and takes the one under way a step further: up to
    /// `snapshots.docs_per_flush` documents per flush, all that is left at the drain
    /// (`last`: its packs would otherwise be named by no manifest). The drain begins no
    /// export that is not due, so a shutdown is not held up by every document changed since
    /// the last one (the log holds them). A failure is retried at the next flush, from
    /// where it stopped; the checkpoint is already safe.
    async fn export_if_due(
        &mut self,
        job: &Job,
        (partition, sources): (u32, BTreeMap<String, u64>),
        last: bool,
    ) -> Result<(), PipelineError> {
        let settings = &job.sinks.snapshots;
        let objects = &job.sinks.objects;
        let export = match &mut self.export {
            Some(export) => export,
            None if settings.interval_ms == 0
                || self.last_export.elapsed() < Duration::from_millis(settings.interval_ms) =>
            {
                return Ok(());
            }
            None => {
                let previous = match self.manifest.take() {
                    Some(manifest) => Some(manifest),
                    None => snapshots::latest_manifest(objects, partition).await?,
                };
                let position: u64 = sources.values().sum();
                if previous.as_ref().is_some_and(|m| m.next_offset == position) {
                    self.keep_manifest(previous);
                    self.last_export = Instant::now();
                    return Ok(());
                }
                self.export.insert(Export::new((job.name.as_str(), partition), sources, previous))
            }
        };
        let packs = if last { usize::MAX } else { settings.docs_per_flush.div_ceil(settings.batch_docs) };
        match export.step(objects, &job.store, settings.batch_docs, packs).await {
            Ok(None) => Ok(()),
            Ok(Some(manifest)) => {
                self.export = None;
                tracing::info!(
                    partition,
                    offset = manifest.next_offset,
                    docs = manifest.docs.len(),
                    "disaster-recovery snapshot written"
                );
                self.keep_manifest(Some(manifest));
                self.last_export = Instant::now();
                // The new manifest is written: older ones beyond `keep` are garbage now.
                match snapshots::collect_garbage(objects, partition, settings.keep).await {
                    Ok(deleted) => tracing::debug!(partition, deleted, "old snapshots deleted"),
                    Err(error) => {
                        tracing::warn!(partition, %error, "deleting old snapshots failed; retried after the next export")
                    }
                }
                Ok(())
            }
            Err(error) if error.is_retryable() => {
                tracing::warn!(partition, %error, offset = export.position(), "disaster-recovery snapshot failed; goes on at the next flush");
                telemetry::sink_failure(error.sink());
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Keeps the newest manifest for the next export, unless it is large: then the next
    /// export reads it again (memory stays bounded however many documents a partition has).
    fn keep_manifest(&mut self, manifest: Option<Manifest>) {
        self.manifest = manifest.filter(|m| m.docs.len() <= MANIFEST_CACHE_DOCS);
    }
}
