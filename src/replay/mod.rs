//! Replay: fold a range of a job's partitions again, from the log or from the Parquet
//! archive (when the log's retention has passed), into
//! - a **fresh state store** (a rebuild: sinks off). Its checkpoints are the replay's
//!   progress, so the same command after an interrupt goes on where it stopped. One
//!   document (`--doc`) starts at the range's start each time and leaves the checkpoint as
//!   it found it: the checkpoint speaks for every document of the partition;
//! - the **live store and sinks** (a repair): each partition is claimed only when no live
//!   owner holds it (`store::ReplayClaim`), its generation goes up by one, and its
//!   checkpoint moves back to the start. The fold is idempotent, so the state is unchanged,
//!   while every document the range touches is projected and announced again with the new
//!   generation, which the sinks' guard puts above any version. A live replay ends where
//!   the live job had got to; should it stop before, `docfold run` goes on from its
//!   checkpoint with the new generation, which finishes the repair. With one document
//!   (`--doc`), only its records are folded and only it is projected and announced again;
//!   the other documents' records in the range were folded before, so the checkpoint
//!   passes over them and ends where it was.
//!
//! Each partition runs the pipeline's own worker (`PartitionWorker`): the same fold,
//! flushes and checkpoint transaction as `docfold run`, fed from a bounded range.

mod source;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::JobConfig;
use crate::log::{LogError, Topic};
use crate::pipeline::{Job, PartitionSummary, PartitionWorker, PipelineError};
use crate::sink::{SinkError, Sinks};
use crate::store::{LIVE_FOR, LOCAL_TOPIC, Owner, ReplayClaim, Store, StoreError};
pub use source::Reader;

/// One end of the range to replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// An offset of the partition (`from`: the first record; `to`: the first record not
    /// replayed).
    Offset(u64),
    /// A time (ms since the epoch): `from` the first record stamped at or after it, `to`
    /// every record stamped at or before it.
    Time(i64),
}

/// Where the records come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplaySource {
    Log,
    Archive,
}

/// Where the fold goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A state store other than the job's (a URL): documents and checkpoints only.
    Fresh(String),
    /// The job's store and sinks, with a new generation.
    Live,
}

/// What to replay.
#[derive(Clone, Debug)]
pub struct Request {
    /// Partitions of the job's topic; empty for all.
    pub partitions: Vec<u32>,
    /// Only this document's records (the rest of its partition's range is passed over).
    pub doc: Option<String>,
    pub from: Option<Bound>,
    pub to: Option<Bound>,
    pub source: ReplaySource,
    pub target: Target,
    /// Claim partitions even from a live owner (it is fenced off).
    pub force: bool,
}

/// One partition's share of a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub partition: u32,
    /// The range asked for, `from..to`, within what the source holds.
    pub from: u64,
    pub to: u64,
    /// Where this run begins: `from`, or where an interrupted replay into the same fresh
    /// store had got to.
    pub start: u64,
}

impl Step {
    pub fn records(&self) -> u64 {
        self.to.saturating_sub(self.start)
    }
}

/// What a replay would do ([`plan`]) before it does it ([`replay`]).
#[derive(Clone, Debug)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// The state store written (redacted).
    pub store: String,
    /// Whether projections, invalidations, the archive and snapshots are written.
    pub sinks: bool,
}

impl Plan {
    pub fn records(&self) -> u64 {
        self.steps.iter().map(Step::records).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

fn refused(message: impl Into<String>) -> ReplayError {
    ReplayError::Refused(message.into())
}

/// Checks the request against the job, the source and the target, and says per partition
/// which records the replay would fold.
pub async fn plan(config: &JobConfig, request: &Request) -> Result<Plan, ReplayError> {
    if crate::pipeline::source_topics(config).len() > 1 {
        return Err(refused(format!(
            "job {} folds several source topics (mirrored regions): replay reads the job's own topic only",
            config.job
        )));
    }
    let store_url = match &request.target {
        Target::Fresh(url) if url == config.store.url.expose() => {
            return Err(refused(
                "the target is the job's own state store: pass --live to replay into the live store and sinks",
            ));
        }
        Target::Fresh(url) => url.clone(),
        Target::Live => config.store.url.expose().to_string(),
    };
    let topic = Topic::open(config, &config.log.topic, false)?;
    let partitions = topic.partitions();
    let chosen: Vec<u32> = match &request.doc {
        _ if !request.partitions.is_empty() => request.partitions.clone(),
        Some(doc) => vec![crate::log::partition_for(doc.as_bytes(), partitions)],
        None => (0..partitions).collect(),
    };
    if let Some(&p) = chosen.iter().find(|&&p| p >= partitions) {
        return Err(refused(format!(
            "partition {p} does not exist: topic {} has {partitions}",
            config.log.topic
        )));
    }
    let mut reader = Reader::open(config, &topic, request.source)?;
    let store = Store::open(&store_url).await?;
    let mut steps = Vec::with_capacity(chosen.len());
    for partition in chosen {
        let step = plan_partition(config, request, &store, &mut reader, partition).await;
        steps.push(match step {
            Ok(step) => step,
            Err(error) => {
                store.close().await;
                return Err(error);
            }
        });
    }
    store.close().await;
    let store = crate::config::redact_url(&store_url);
    Ok(Plan { steps, store, sinks: request.target == Target::Live })
}

async fn plan_partition(
    config: &JobConfig,
    request: &Request,
    store: &Store,
    reader: &mut Reader,
    partition: u32,
) -> Result<Step, ReplayError> {
    let (earliest, end) = reader.range(partition).await?;
    let from = match request.from {
        None => earliest,
        Some(Bound::Offset(offset)) => offset,
        Some(Bound::Time(ms)) => reader.offset_after(partition, ms.saturating_sub(1)).await?,
    };
    let mut to = match request.to {
        None => end,
        Some(Bound::Offset(offset)) => offset.min(end),
        Some(Bound::Time(ms)) => reader.offset_after(partition, ms).await?,
    };
    let source = match request.source {
        ReplaySource::Log => format!("the log (topic {})", config.log.topic),
        ReplaySource::Archive => "the archive".to_string(),
    };
    if request.from.is_none() && earliest > 0 && request.target != Target::Live {
        let hint = match request.source {
            ReplaySource::Log => "replay from the archive (--source archive), or ",
            ReplaySource::Archive => "",
        };
        return Err(refused(format!(
            "partition {partition}: {source} starts at offset {earliest}, so a rebuild would miss records 0..{earliest}: {hint}pass --from {earliest} to rebuild from there on"
        )));
    }
    if from < earliest && from < to {
        let hint = match request.source {
            ReplaySource::Log => "; replay from the archive (--source archive)",
            ReplaySource::Archive => "",
        };
        return Err(refused(format!(
            "partition {partition}: {source} holds offsets {earliest}..{end}, so records {from}..{earliest} cannot be replayed{hint}"
        )));
    }
    let checkpoint = store.checkpoint(&config.job, partition).await?.map(|c| c.next_offset);
    let start = match (&request.target, checkpoint) {
        // The live job has folded up to its checkpoint: the replay ends there.
        (Target::Live, held) => {
            to = to.min(held.unwrap_or(0));
            from
        }
        // One document starts at `from` and leaves the checkpoint as it found it (`replay`).
        (Target::Fresh(_), _) if request.doc.is_some() => from,
        (Target::Fresh(_), None | Some(0)) => from,
        (Target::Fresh(_), Some(held)) if held >= from => held.min(to.max(from)),
        (Target::Fresh(_), Some(held)) => {
            return Err(refused(format!(
                "partition {partition}: the target store has folded it up to offset {held}, before --from {from}: replay into a fresh store"
            )));
        }
    };
    Ok(Step { partition, from, to: to.max(from), start })
}

/// The job's config for the target: a fresh store gets no sink; the live one gets no dead
/// letters (its range ends at the live job's checkpoint, so the live job sent them).
fn target_config(config: &JobConfig, target: &Target) -> JobConfig {
    let mut config = config.clone();
    config.dead_letters.topic.clear();
    if let Target::Fresh(url) = target {
        config.store.url = url.as_str().into();
        config.projection.url = "".into();
        config.archive.enabled = false;
        config.snapshots.interval_ms = 0;
        config.invalidations.topic.clear();
        config.invalidations.redis = None;
    }
    config
}

/// Runs the plan: each partition on its own task, from its step's start to its end (or
/// until `cancel`: each partition then drains and writes its checkpoint). `progress` counts
/// the records read.
pub async fn replay(
    config: &JobConfig,
    request: &Request,
    plan: &Plan,
    progress: Arc<AtomicU64>,
    cancel: CancellationToken,
) -> Result<Vec<PartitionSummary>, ReplayError> {
    let target = target_config(config, &request.target);
    let store = Store::open(target.store.url.expose()).await?;
    let topic = Topic::open(config, &config.log.topic, false)?;
    let job = Job {
        name: config.job.clone(),
        sources: Arc::from([Arc::from(config.log.topic.as_str())]),
        store: store.clone(),
        sinks: Sinks::open(&target).await?,
        settings: target.pipeline.clone(),
        cancel: cancel.clone(),
    };
    let mut readers = Vec::new();
    for _ in plan.steps.iter().filter(|s| s.records() > 0) {
        readers.push(Reader::open(config, &topic, request.source)?);
    }
    let owners = match claim_all(&job, plan, request).await {
        Ok(owners) => owners,
        Err(error) => {
            store.close().await;
            return Err(error);
        }
    };
    let partitions = topic.partitions();
    let mut tasks = JoinSet::new();
    for ((step, owner), reader) in owners.into_iter().zip(readers) {
        let (job, progress, doc) = (job.clone(), progress.clone(), request.doc.clone());
        let live = request.target == Target::Live;
        tasks.spawn(async move {
            job.store.expect_partitions(partitions)?;
            let held = job.store.checkpoint(&job.name, step.partition).await?.map(|c| c.next_offset);
            if held != Some(step.start) {
                job.store.reset_checkpoint(&owner, LOCAL_TOPIC, step.start).await?;
            }
            let worker = PartitionWorker::start_owned(&job, partitions, owner.clone()).await?;
            let batch = job.settings.batch;
            let topic: &str = &job.sources[0];
            let replayed = replay_partition(
                worker,
                (reader, batch, topic),
                &step,
                doc.as_deref(),
                &progress,
                &job.cancel,
            )
            .await;
            if doc.is_none() || live {
                return replayed;
            }
            // A fresh store's checkpoint says which records every document holds: one
            // document's replay must not move it past its neighbours' records.
            let restored = async {
                job.store.reset_checkpoint(&owner, LOCAL_TOPIC, held.unwrap_or(0)).await?;
                job.store.release(&owner).await
            };
            let restored = restored.await.map_err(ReplayError::from);
            replayed.and_then(|summary| restored.map(|()| summary))
        });
    }
    let mut summaries = Vec::new();
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(|e| PipelineError::Task(e.to_string()).into()).and_then(|r| r) {
            Ok(summary) => summaries.push(summary),
            Err(error) => {
                cancel.cancel();
                failure.get_or_insert(error);
            }
        }
    }
    store.close().await;
    summaries.sort_by_key(|s| s.partition);
    failure.map_or(Ok(summaries), Err)
}

/// Claims every partition with records to replay before any is touched: when one is
/// refused (a live owner), those already claimed are released and nothing has changed.
async fn claim_all(job: &Job, plan: &Plan, request: &Request) -> Result<Vec<(Step, Owner)>, ReplayError> {
    let claim = ReplayClaim {
        live_for: LIVE_FOR,
        new_generation: request.target == Target::Live,
        force: request.force,
    };
    let mut owners: Vec<(Step, Owner)> = Vec::new();
    for step in plan.steps.iter().filter(|s| s.records() > 0) {
        match job.store.claim_for_replay(&job.name, step.partition, claim).await {
            Ok(owner) => owners.push((step.clone(), owner)),
            Err(error) => {
                for (_, owner) in &owners {
                    if let Err(error) = job.store.release(owner).await {
                        tracing::warn!(partition = owner.partition, %error, "releasing a partition claimed for the replay");
                    }
                }
                return Err(error.into());
            }
        }
    }
    Ok(owners)
}

async fn replay_partition(
    mut worker: PartitionWorker,
    (reader, batch, topic): (Reader, usize, &str),
    step: &Step,
    doc: Option<&str>,
    progress: &AtomicU64,
    cancel: &CancellationToken,
) -> Result<PartitionSummary, ReplayError> {
    let mut next = step.start;
    let mut batches = reader.read_ahead(step.partition, (step.start, step.to), batch);
    while !cancel.is_cancelled() {
        let Some(received) = batches.next().await else { break };
        let (mut records, after) = received?;
        let read = after - next;
        next = after;
        if let Some(doc) = doc {
            records.retain(|r| r.key == doc.as_bytes());
        }
        if !records.is_empty() {
            worker.handle(&records).await?;
        }
        // Other documents' records were passed over, not lost: the range is done up to here.
        worker.pass(topic, next);
        progress.fetch_add(read, Ordering::Relaxed);
    }
    worker.flush_final().await?;
    if next < step.to && !cancel.is_cancelled() {
        return Err(refused(format!(
            "partition {}: the source has no records from offset {next} on, before the replay's end {} (removed since the plan?); the store holds what was replayed up to there",
            step.partition, step.to
        )));
    }
    Ok(worker.summary().clone())
}
