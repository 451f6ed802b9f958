//! The running job: one worker per partition between the log and the store. Sources: the
//! embedded file log (every partition in this process) and Kafka (partitions assigned by the
//! consumer group; a partition moves with its checkpoint on a rebalance).

mod file;
mod flush;
mod kafka;
mod worker;

use tokio_util::sync::CancellationToken;

use crate::config::{JobConfig, LogLocation};
use crate::fold::snapshot::SnapshotError;
use crate::log::LogError;
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

/// Runs the job until `until`; drains and writes final checkpoints on the way out.
pub async fn run(
    config: &JobConfig,
    until: Until,
    cancel: CancellationToken,
) -> Result<Vec<PartitionSummary>, PipelineError> {
    let store = Store::open(&config.store.url).await?;
    let sinks = Sinks::open(config).await?;
    let location = config.log_location().map_err(PipelineError::Config)?;
    let summaries = match location {
        LogLocation::File(dir) => {
            let log = crate::log::file::FileLog::open(&dir, &config.log.topic)?;
            file::run(config, log, store.clone(), sinks, until, cancel).await
        }
        LogLocation::Kafka(brokers) => {
            kafka::run(config, &brokers, store.clone(), sinks, until, cancel).await
        }
    };
    store.close().await;
    let mut summaries = summaries?;
    summaries.sort_by_key(|s| s.partition);
    Ok(summaries)
}
