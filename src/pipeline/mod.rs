//! The running job: one worker per partition between the log and the store. Sources: the
//! embedded file log (every partition in this process) and Kafka (partitions assigned by the
//! consumer group; a partition moves with its checkpoint on a rebalance).

mod file;
mod kafka;
mod worker;

use tokio_util::sync::CancellationToken;

use crate::config::{JobConfig, LogLocation};
use crate::fold::snapshot::SnapshotError;
use crate::log::LogError;
use crate::store::{Store, StoreError};

pub use worker::{PartitionSummary, PartitionWorker};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored state of document {doc_id:?} cannot be read: {error}")]
    Snapshot { doc_id: String, error: SnapshotError },
    #[error("config: {0}")]
    Config(String),
    #[error("partition task failed: {0}")]
    Task(String),
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
    let location = config.log_location().map_err(PipelineError::Config)?;
    let summaries = match location {
        LogLocation::File(dir) => {
            let log = crate::log::file::FileLog::open(&dir, &config.log.topic)?;
            file::run(config, log, store.clone(), until, cancel).await
        }
        LogLocation::Kafka(brokers) => kafka::run(config, &brokers, store.clone(), until, cancel).await,
    };
    store.close().await;
    let mut summaries = summaries?;
    summaries.sort_by_key(|s| s.partition);
    Ok(summaries)
}
