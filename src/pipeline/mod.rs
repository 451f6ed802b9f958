//! The running job: one worker per partition between the log and the store. Sources: the
//! embedded file log (every partition in this process) and Kafka (partitions assigned by the
//! consumer group; a partition moves with its checkpoint on a rebalance).

mod batches;
mod file;
mod flush;
mod kafka;
mod worker;

use tokio_util::sync::CancellationToken;

use crate::config::{JobConfig, PipelineConfig};
use crate::fold::snapshot::SnapshotError;
use crate::log::{LogError, Topic};
use crate::sink::{SinkError, Sinks};
use crate::store::{Store, StoreError};

pub use worker::{PartitionSummary, PartitionWorker};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("stored state of document {doc_id:?} cannot be read: {error}")]
    Snapshot { doc_id: String, error: SnapshotError },
    #[error("config: {0}")]
    Config(String),
    #[error("partition task failed: {0}")]
    Task(String),
    /// The stored checkpoint and the log disagree: folding on would skip records or fold
    /// offsets that now hold other records. The partition stops; nothing is skipped.
    #[error("{}", out_of_range(*.partition, *.checkpoint, *.earliest, *.end))]
    CheckpointOutOfRange { partition: u32, checkpoint: u64, earliest: u64, end: u64 },
}

fn out_of_range(partition: u32, checkpoint: u64, earliest: u64, end: u64) -> String {
    if checkpoint > end {
        format!(
            "partition {partition}: the checkpoint is at offset {checkpoint} but the log ends at {end}: records \
             the store has folded are gone from the log (a truncated file log, an unclean leader election, a \
             recreated topic). Nothing was skipped. Restore the state store from the snapshots (`docfold \
             snapshots restore`) into a fresh store, or rebuild it, before running again"
        )
    } else {
        format!(
            "partition {partition}: the checkpoint is at offset {checkpoint} but the log starts at {earliest}: \
             records {checkpoint}..{earliest} were removed (retention, a recreated topic) before they were \
             folded and archived. Nothing was skipped. Rebuild them from the Parquet archive, or restore from \
             the snapshots (`docfold snapshots restore`), before running again"
        )
    }
}

/// Checks that `offsets` (a worker's checkpoints) lie within the partition's log,
/// `earliest..=end`.
pub(crate) fn check_in_log(
    partition: u32,
    offsets: impl IntoIterator<Item = u64>,
    earliest: u64,
    end: u64,
) -> Result<(), PipelineError> {
    match offsets.into_iter().find(|&offset| offset < earliest || offset > end) {
        Some(checkpoint) => Err(PipelineError::CheckpointOutOfRange { partition, checkpoint, earliest, end }),
        None => Ok(()),
    }
}

impl PipelineError {
    /// Whether retrying later may succeed (a backend is unreachable or throttling).
    pub fn is_retryable(&self) -> bool {
        match self {
            PipelineError::Store(e) => e.is_retryable(),
            PipelineError::Sink(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// A newer owner claimed the partition: this worker steps down (not a failure of the
    /// process; the new owner goes on).
    pub fn is_fenced(&self) -> bool {
        matches!(self, PipelineError::Store(StoreError::Fenced { .. }))
    }

    /// Which backend failed, for logs and metrics.
    pub fn backend(&self) -> &'static str {
        match self {
            PipelineError::Store(_) => "state store",
            PipelineError::Sink(e) => e.sink(),
            PipelineError::Log(_) => "log",
            _ => "pipeline",
        }
    }
}

/// How `run` ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// Until cancelled (Ctrl-C, SIGTERM).
    Cancelled,
    /// Until every partition has nothing more to read (or cancelled) — for batch runs,
    /// tests and the demo. Kafka: nothing arrived for this many milliseconds.
    Idle { idle_ms: u64 },
}

/// What every partition worker of a job shares (cheap to clone).
#[derive(Clone)]
pub struct Job {
    /// The job's name: checkpoints and documents are kept per job.
    pub name: String,
    pub store: Store,
    pub sinks: Sinks,
    pub settings: PipelineConfig,
    /// Cancelled on shutdown: ends every wait and retry loop.
    pub cancel: CancellationToken,
}

impl Job {
    /// Waits `delay`, or less when the job is cancelled.
    pub async fn pause(&self, delay: std::time::Duration) {
        tokio::select! {
            () = self.cancel.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Runs the job until `until`; drains and writes final checkpoints on the way out.
pub async fn run(
    config: &JobConfig,
    until: Until,
    cancel: CancellationToken,
) -> Result<Vec<PartitionSummary>, PipelineError> {
    let store = Store::open(config.store.url.expose()).await?;
    let job = Job {
        name: config.job.clone(),
        store: store.clone(),
        sinks: Sinks::open(config).await?,
        settings: config.pipeline.clone(),
        cancel,
    };
    let summaries = match crate::log::Topic::open(config, &config.log.topic, false)? {
        Topic::File(log) => file::run(job, log, until).await,
        Topic::Kafka(log) => kafka::run(config, job, log, until).await,
    };
    store.close().await;
    let mut summaries = summaries?;
    summaries.sort_by_key(|s| s.partition);
    Ok(summaries)
}
