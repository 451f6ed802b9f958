//! One partition's worker: folds batches of records, loads cold documents from the store,
//! feeds the archive, and flushes (by op count, by time, when memory is over its bound, or
//! when an archive file is due): sinks first, then snapshots with the checkpoint in one
//! transaction (`flush.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::flush::{Flushed, Flusher, Parts};
use super::source::{self, Source};
use super::{Job, PipelineError};
use crate::fold::{BadRecord, Doc, Folded, PartitionFold, Stored, snapshot};
use crate::log::Record;
use crate::sink::Backoff;
use crate::sink::archive::PartitionArchive;
use crate::sink::dead_letter::DeadLetter;
use crate::store::{HEARTBEAT_EVERY, Owner};
use crate::telemetry;

/// An op whose editor made it this long before the log took it is late (an editor that was
/// offline): each batch that merges some says so in the logs.
const LATE_MS: i64 = 10_000;

/// Cold documents loaded per query before a batch is folded.
const PREFETCH_STEP: usize = 256;

/// What a partition's worker did in this process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionSummary {
    pub partition: u32,
    /// Where it started (the stored checkpoints) and where it is: the partition's position,
    /// the sum of its source topics' offsets (the log offset with one source topic).
    pub start_offset: u64,
    pub next_offset: u64,
    pub folded: u64,
    pub bad: u64,
    pub docs_loaded: u64,
    pub flushes: u64,
    /// Flush attempts that failed on an unavailable backend and were retried.
    pub retries: u64,
    pub archive_files: u64,
    /// Items each sink wrote (projections: stale ones skipped by the condition not counted).
    pub written: BTreeMap<&'static str, u64>,
}

pub struct PartitionWorker {
    job: Job,
    /// This worker's claim of the partition: every commit carries it.
    owner: Owner,
    fold: PartitionFold,
    /// The job's source topics, in the job's order (its own first).
    sources: Vec<Source>,
    summary: PartitionSummary,
    flusher: Flusher,
    /// When the store last heard from this owner (a commit or a heartbeat).
    heard: Instant,
}

impl PartitionWorker {
    /// Loads the partition's checkpoints: the worker folds each source topic from there
    /// (and the archive from its own progress, which may be behind).
    pub async fn start(job: &Job, (partition, partitions): (u32, u32)) -> Result<Self, PipelineError> {
        job.store.expect_partitions(partitions)?;
        let owner = job.store.claim(&job.name, partition).await?;
        Self::start_owned(job, partitions, owner).await
    }

    /// [`Self::start`] for a partition `owner` has already claimed (a replay's guarded claim).
    pub async fn start_owned(job: &Job, partitions: u32, owner: Owner) -> Result<Self, PipelineError> {
        let partition = owner.partition;
        job.store.expect_partitions(partitions)?;
        let stored = job.store.source_checkpoints(&job.name, partition).await?;
        let mut sources = Vec::with_capacity(job.sources.len());
        for (index, topic) in job.sources.iter().enumerate() {
            let name = super::stored_topic(index, topic).to_string();
            let checkpoint = stored.iter().find(|(t, _)| *t == name).map(|(_, c)| *c).unwrap_or_default();
            let archive = job.sinks.archive.clone().map(|archive| {
                let objects = job.sinks.objects.clone();
                PartitionArchive::new((&name, partition), objects, archive, checkpoint.archived_offset)
            });
            tracing::info!(partition, %topic, offset = checkpoint.next_offset, epoch = owner.epoch, archive = ?archive.as_ref().map(|a| a.progress()), "partition starts at its checkpoint");
            sources.push(Source {
                topic: topic.clone(),
                stored: name,
                next_offset: checkpoint.next_offset,
                archive,
            });
        }
        let start = source::position(&sources);
        let flushed = sources.iter().map(|s| s.next_offset).collect();
        Ok(PartitionWorker {
            job: job.clone(),
            owner,
            fold: PartitionFold::for_partition(partition, partitions),
            sources,
            summary: PartitionSummary {
                partition,
                start_offset: start,
                next_offset: start,
                ..Default::default()
            },
            flusher: Flusher::new(&job.settings, (partition, partitions), flushed),
            heard: Instant::now(),
        })
    }

    /// The next offset the worker needs of each source topic (the job's order).
    pub fn next_offsets(&self) -> Vec<(Arc<str>, u64)> {
        self.sources.iter().map(|s| (s.topic.clone(), s.needed())).collect()
    }

    /// Refuses to go on when a source topic's checkpoints (fold and archive) are not
    /// within its log's `earliest..=end`: records were removed before they were folded, or
    /// the log lost records the store has folded.
    pub fn check_in_log(&self, topic: &str, earliest: u64, end: u64) -> Result<(), PipelineError> {
        let Some(source) = self.sources.iter().find(|s| &*s.topic == topic) else { return Ok(()) };
        let archived = source.archive.as_ref().map(|a| a.next_offset());
        let offsets = [source.next_offset].into_iter().chain(archived);
        super::check_in_log((topic, self.summary.partition), offsets, earliest, end)
    }

    /// The next offset to fold of `topic`, if it is a source.
    pub fn fold_offset(&self, topic: &str) -> Option<u64> {
        self.sources.iter().find(|s| &*s.topic == topic).map(|s| s.next_offset)
    }

    /// The offsets the stored checkpoints hold, per source topic.
    pub fn flushed_offsets(&self) -> Vec<(Arc<str>, u64)> {
        let flushed = self.flusher.flushed_offsets().iter();
        self.sources.iter().zip(flushed).map(|(s, &offset)| (s.topic.clone(), offset)).collect()
    }

    pub fn summary(&self) -> &PartitionSummary {
        &self.summary
    }

    /// Flushes when it is due (`flush.rs` says when); an idle owner sends its heartbeat.
    pub async fn flush_if_due(&mut self) -> Result<(), PipelineError> {
        let (flusher, parts) = self.parts();
        let flushed = flusher.flush_if_due(parts).await?;
        self.count(flushed);
        if self.heard.elapsed() >= HEARTBEAT_EVERY {
            match self.job.store.heartbeat(&self.owner).await {
                Ok(()) => self.heard = Instant::now(),
                Err(error) if error.is_retryable() => {
                    tracing::warn!(partition = self.owner.partition, %error, "heartbeat failed; retrying at the next")
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    /// The last flush before the partition leaves this process (every archive row too);
    /// then the partition is released, so a replay may claim it at once.
    pub async fn flush_final(&mut self) -> Result<(), PipelineError> {
        let (flusher, parts) = self.parts();
        let flushed = flusher.flush_final(parts).await?;
        self.count(flushed);
        if let Err(error) = self.job.store.release(&self.owner).await {
            tracing::warn!(partition = self.owner.partition, %error, "the partition was not released: a replay waits for its heartbeat to age");
        }
        Ok(())
    }

    /// The flusher, and what it flushes.
    fn parts(&mut self) -> (&mut Flusher, Parts<'_>) {
        let parts =
            Parts { job: &self.job, owner: &self.owner, fold: &mut self.fold, sources: &mut self.sources };
        (&mut self.flusher, parts)
    }

    fn count(&mut self, flushed: Flushed) {
        if flushed.flushes > 0 {
            self.heard = Instant::now();
        }
        let summary = &mut self.summary;
        summary.flushes += flushed.flushes;
        summary.retries += flushed.retries;
        summary.archive_files += flushed.archive_files;
        for (sink, items) in flushed.written {
            *summary.written.entry(sink).or_default() += items;
        }
    }

    /// Folds a batch (records already folded and archived, e.g. redelivered, are skipped).
    /// Records may come from any of the source topics.
    pub async fn handle(&mut self, records: &[Record]) -> Result<(), PipelineError> {
        let started = Instant::now();
        self.prefetch(records).await?;
        self.fold.set_now(crate::store::now_ms());
        let (mut folded, mut late, mut latest) = (0, 0u64, 0i64);
        for record in records {
            let at = self.source_of(record)?;
            let source = &mut self.sources[at];
            let to_fold = record.offset >= source.next_offset;
            let mut to_archive = false;
            if let Some(archive) = &mut source.archive
                && record.offset >= archive.next_offset()
            {
                archive.skip_written(record.offset, record.timestamp_ms).await?;
                to_archive = record.offset >= archive.next_offset();
            }
            if !to_fold && !to_archive {
                continue;
            }
            let outcome = if to_fold {
                // The other sources' offsets plus this record's: the partition's position.
                let others = source::position(&self.sources) - self.sources[at].next_offset;
                self.fold_record(others + record.offset, record).await?
            } else {
                self.fold.decode(&record.value).map(drop).map_err(BadRecord::from)
            };
            let decoded = matches!(outcome, Ok(()) | Err(BadRecord::Refused(_)));
            match outcome {
                Ok(()) if to_fold => {
                    folded += 1;
                    let made = self.fold.last_envelope().client_time_ms;
                    if made > 0 && record.timestamp_ms - made > LATE_MS {
                        late += 1;
                        latest = latest.max(record.timestamp_ms - made);
                    }
                }
                Ok(()) => {}
                Err(error) if to_fold => self.dead_letter(record, error),
                Err(_) => {} // dead-lettered when it was folded
            }
            let source = &mut self.sources[at];
            if to_archive && let Some(archive) = &mut source.archive {
                archive.push(record, decoded.then(|| self.fold.last_envelope()));
            }
            if to_fold {
                source.next_offset = record.offset + 1;
            }
            if self.flusher.over_state_bound(&self.fold) {
                // Large documents: flush (and evict) now, not at the end of the batch.
                self.count_folded(folded, started);
                folded = 0;
                self.flush_if_due().await?;
            }
        }
        self.count_folded(folded, started);
        if late > 0 {
            let partition = self.summary.partition;
            tracing::info!(
                event = "late_ops",
                partition,
                count = late,
                max_late_ms = latest,
                "late ops merged"
            );
        }
        let label = self.summary.partition.to_string();
        telemetry::fold_seconds(&label, started.elapsed().as_secs_f64());
        self.flush_if_due().await
    }

    /// Moves `topic`'s next offset to `next_offset` over records the caller chose not to
    /// fold (a replay of one document): the checkpoint then says they were seen. The
    /// archive's progress stays.
    pub fn pass(&mut self, topic: &str, next_offset: u64) {
        if let Some(source) = self.sources.iter_mut().find(|s| &*s.topic == topic) {
            source.next_offset = source.next_offset.max(next_offset);
            self.summary.next_offset = source::position(&self.sources);
        }
    }

    /// Counts `folded` ops of a batch begun at `started`.
    fn count_folded(&mut self, folded: u64, started: Instant) {
        self.summary.next_offset = source::position(&self.sources);
        self.summary.folded += folded;
        self.flusher.folded(folded, started);
        telemetry::ops_folded(&self.summary.partition.to_string(), folded);
    }

    /// Which source a record came from.
    fn source_of(&self, record: &Record) -> Result<usize, PipelineError> {
        self.sources.iter().position(|s| s.topic == record.topic).ok_or_else(|| {
            let sources: Vec<&str> = self.sources.iter().map(|s| &*s.topic).collect();
            PipelineError::Task(format!(
                "partition {}: a record of topic {:?}, which is not one of the job's source topics ({})",
                self.summary.partition,
                record.topic,
                sources.join(", ")
            ))
        })
    }

    /// Folds one record at the partition's `position`, loading its document first when it
    /// is cold.
    async fn fold_record(
        &mut self,
        position: u64,
        record: &Record,
    ) -> Result<Result<(), BadRecord>, PipelineError> {
        loop {
            match self.fold.fold(position, &record.value) {
                Ok(Folded::Applied { .. }) => return Ok(Ok(())),
                Ok(Folded::NeedDoc(doc_id)) => {
                    let doc = self.load(&[&doc_id]).await?.remove(&doc_id).unwrap_or_default();
                    self.fold.insert(doc_id, doc);
                }
                Err(bad) => return Ok(Err(bad)),
            }
        }
    }

    fn dead_letter(&mut self, record: &Record, error: BadRecord) {
        let partition = self.summary.partition;
        let reason = error.reason();
        tracing::warn!(event = "dead_letter", partition, offset = record.offset, reason, %error, "bad message sent to the dead letters");
        telemetry::bad_message(&partition.to_string(), reason);
        self.summary.bad += 1;
        let letter = DeadLetter::new(&record.topic, partition, record, reason, error.to_string());
        self.flusher.dead_letter(letter, record.key.len() + record.value.len());
    }

    /// Loads the cold documents among the records' keys (a key is its op's document id) with
    /// a few queries, before the records are folded one by one: documents the store does not
    /// have start empty. A key that is not its op's document only costs an idle entry.
    async fn prefetch(&mut self, records: &[Record]) -> Result<(), PipelineError> {
        let mut cold: Vec<&str> = Vec::new();
        let mut asked = rustc_hash::FxHashSet::default();
        for record in records {
            let folded = self
                .sources
                .iter()
                .find(|s| s.topic == record.topic)
                .is_none_or(|s| record.offset < s.next_offset);
            if let (false, Ok(id)) = (folded, std::str::from_utf8(&record.key))
                && !id.is_empty()
                && self.fold.get(id).is_none()
                && asked.insert(id)
            {
                cold.push(id);
            }
        }
        // In steps, stopping at the memory bound (the rest load as their records come).
        for step in cold.chunks(PREFETCH_STEP) {
            if self.flusher.over_state_bound(&self.fold) {
                break;
            }
            let mut loaded = self.load(step).await?;
            for &id in step {
                let doc = loaded.remove(id).unwrap_or_default();
                self.fold.insert(id.to_string(), doc);
            }
        }
        Ok(())
    }

    /// Loads cold documents (those the store has); an unavailable store is retried with
    /// backoff (the partition waits) until it answers or the job is cancelled.
    async fn load(&mut self, doc_ids: &[&str]) -> Result<rustc_hash::FxHashMap<String, Doc>, PipelineError> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let stored = loop {
            match self.job.store.partition_docs(&self.job.name, self.owner.partition, doc_ids).await {
                Ok(stored) => break stored,
                Err(error) if error.is_retryable() && !self.job.cancel.is_cancelled() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(partition = self.summary.partition, %error, retry_in_ms = delay.as_millis() as u64, "loading documents failed; retrying");
                    self.summary.retries += 1;
                    self.job.pause(delay).await;
                }
                Err(error) => return Err(error.into()),
            }
        };
        self.summary.docs_loaded += stored.len() as u64;
        stored
            .into_iter()
            .map(|(doc_id, stored)| match snapshot::decode(&stored.state) {
                Ok(state) => {
                    let on_disk = Stored {
                        full: stored.state.len() as u64,
                        deltas: stored.delta_bytes,
                        offset: stored.offset,
                    };
                    let doc = Doc {
                        state,
                        version: stored.version,
                        offset: stored.offset,
                        stored: Some(on_disk),
                        ..Doc::default()
                    };
                    Ok((doc_id, doc))
                }
                Err(error) => Err(PipelineError::Snapshot { doc_id, error }),
            })
            .collect()
    }
}
