//! The running job: one worker per partition between the log and the store. Sources: the
//! embedded file log (every partition in this process) and Kafka (partitions assigned by the
//! consumer group; a partition moves with its checkpoint on a rebalance).

mod batches;
mod file;
mod flush;
mod kafka;
mod source;
mod worker;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{JobConfig, PipelineConfig};
use crate::fold::snapshot::SnapshotError;
use crate::log::{LogError, Topic};
use crate::sink::projection::LeaderGate;
use crate::sink::{SinkError, Sinks};
use crate::store::{LOCAL_TOPIC, Store, StoreError};

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
    #[error("{}", out_of_range(.topic, *.partition, *.checkpoint, (*.earliest, *.end)))]
    CheckpointOutOfRange { topic: String, partition: u32, checkpoint: u64, earliest: u64, end: u64 },
    /// A source topic does not have the partition count of the job's own topic: a document
    /// would be on different partition numbers in them.
    #[error(
        "source topic {topic} has {partitions} partitions, but {local} has {expected}: mirrored topics must keep the partition count (create them with `docfold setup`)"
    )]
    NotCoPartitioned { topic: String, partitions: u32, local: String, expected: u32 },
    /// The consumer group gave this member partition p of some source topics only: folding
    /// it would fold half of its documents' ops.
    #[error(
        "the consumer group assigned partition {partition} without its partition of {missing}: every member must use partition.assignment.strategy = range (docfold sets it), so that a partition number's topics go to one member"
    )]
    SplitAssignment { partition: u32, missing: String },
}

fn out_of_range(topic: &str, partition: u32, checkpoint: u64, (earliest, end): (u64, u64)) -> String {
    if checkpoint > end {
        format!(
            "topic {topic} partition {partition}: the checkpoint is at offset {checkpoint} but the log ends at {end}: records \
             the store has folded are gone from the log (a truncated file log, an unclean leader election, a \
             recreated topic). Nothing was skipped. Restore the state store from the snapshots (`docfold \
             snapshots restore`) into a fresh store, or rebuild it, before running again"
        )
    } else {
        format!(
            "topic {topic} partition {partition}: the checkpoint is at offset {checkpoint} but the log starts at {earliest}: \
             records {checkpoint}..{earliest} were removed (retention, a recreated topic) before they were \
             folded and archived. Nothing was skipped. Rebuild them from the Parquet archive, or restore from \
             the snapshots (`docfold snapshots restore`), before running again"
        )
    }
}

/// Checks that `offsets` (a worker's checkpoints of one source topic) lie within the
/// topic's partition, `earliest..=end`.
pub(crate) fn check_in_log(
    (topic, partition): (&str, u32),
    offsets: impl IntoIterator<Item = u64>,
    earliest: u64,
    end: u64,
) -> Result<(), PipelineError> {
    match offsets.into_iter().find(|&offset| offset < earliest || offset > end) {
        Some(checkpoint) => Err(PipelineError::CheckpointOutOfRange {
            topic: topic.into(),
            partition,
            checkpoint,
            earliest,
            end,
        }),
        None => Ok(()),
    }
}

/// The topics a job folds: its own (`log.topic`) first, then each peer region's mirror of
/// theirs (`<peer>.<topic>`, which `docfold mirror` or MirrorMaker 2 fills).
pub fn source_topics(config: &JobConfig) -> Vec<String> {
    let peers = config.region.iter().flat_map(|region| region.peers.iter());
    let mirrored = peers.map(|peer| crate::mirror::mirrored_topic(peer, &config.log.topic));
    std::iter::once(config.log.topic.clone()).chain(mirrored).collect()
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
    /// The topics it folds ([`source_topics`]): its own first.
    pub sources: Arc<[Arc<str>]>,
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

/// The job's source topics, opened: all on the embedded log or all on Kafka.
enum Sources {
    File(Vec<crate::log::file::FileLog>),
    Kafka(Vec<crate::log::kafka::KafkaLog>),
}

/// How the source topic at `index` of [`source_topics`] is named in the checkpoints: the
/// job's own as [`LOCAL_TOPIC`], a mirrored one by its name.
pub fn stored_topic(index: usize, topic: &str) -> &str {
    if index == 0 { LOCAL_TOPIC } else { topic }
}

/// Opens every source topic (`names`, [`source_topics`]) and checks they have the job's
/// partition count.
fn open_sources(config: &JobConfig, names: &[Arc<str>]) -> Result<Sources, PipelineError> {
    let (mut file, mut kafka) = (Vec::new(), Vec::new());
    for (index, name) in names.iter().enumerate() {
        // A mirrored topic of the embedded log is created when missing (a peer that has
        // not been mirrored yet); on Kafka, `docfold setup` creates them.
        let topic = Topic::open(config, name, index > 0)?;
        let expected = match (file.first(), kafka.first()) {
            (Some(log), _) => crate::log::file::FileLog::partitions(log),
            (_, Some(log)) => crate::log::kafka::KafkaLog::partitions(log),
            _ => topic.partitions(),
        };
        if topic.partitions() != expected {
            let (local, partitions) = (config.log.topic.clone(), topic.partitions());
            return Err(PipelineError::NotCoPartitioned {
                topic: name.to_string(),
                partitions,
                local,
                expected,
            });
        }
        match topic {
            Topic::File(log) => file.push(log),
            Topic::Kafka(log) => kafka.push(log),
        }
    }
    // One log URL: every topic is on the same backend.
    Ok(if kafka.is_empty() { Sources::File(file) } else { Sources::Kafka(kafka) })
}

/// Runs the job until `until`; drains and writes final checkpoints on the way out.
pub async fn run(
    config: &JobConfig,
    until: Until,
    cancel: CancellationToken,
) -> Result<Vec<PartitionSummary>, PipelineError> {
    run_leading(config, until, cancel, None).await
}

/// [`run`], writing projections only while `leader` admits (`projection.writer = "leader"`).
pub async fn run_leading(
    config: &JobConfig,
    until: Until,
    cancel: CancellationToken,
    leader: Option<LeaderGate>,
) -> Result<Vec<PartitionSummary>, PipelineError> {
    let store = Store::open(config.store.url.expose()).await?;
    let sinks = Sinks::open(config).await?;
    if let (Some(gate), Some(projections)) = (leader, &sinks.projections) {
        projections.write_as_leader(gate);
    }
    let sources: Arc<[Arc<str>]> = source_topics(config).into_iter().map(Arc::from).collect();
    let job = Job {
        name: config.job.clone(),
        sources: sources.clone(),
        store: store.clone(),
        sinks,
        settings: config.pipeline.clone(),
        cancel,
    };
    let summaries = match open_sources(config, &sources)? {
        Sources::File(logs) => file::run(job, logs, until).await,
        Sources::Kafka(logs) => kafka::run(config, job, logs, until).await,
    };
    store.close().await;
    let mut summaries = summaries?;
    summaries.sort_by_key(|s| s.partition);
    Ok(summaries)
}
