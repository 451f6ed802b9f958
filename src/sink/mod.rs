//! Where folded state goes besides the state store: projections (the read model), the
//! Parquet archive of every op, disaster-recovery snapshots in object storage, cache
//! invalidations and dead letters. Each is idempotent and monotonic (DESIGN.md invariant
//! 3), so a replay after a crash re-emits effects harmlessly; the checkpoint moves only
//! after every sink has taken a flush's output.

pub mod archive;
pub mod dead_letter;
pub mod invalidate;
pub mod objects;
pub mod projection;
pub mod snapshots;
mod topic;

use std::time::Duration;

pub use topic::TopicSink;

use crate::config::JobConfig;
use crate::log::LogWriter;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The backend did not answer or answered with a transient failure (throttling, 5xx,
    /// connection refused): retried with backoff, nothing is lost meanwhile.
    #[error("{sink} unavailable: {message}")]
    Unavailable { sink: &'static str, message: String },
    /// The backend refused the request for good (missing table or bucket, no permission).
    #[error("{sink} refused: {message}")]
    Refused { sink: &'static str, message: String },
    /// What was read back is not what docfold writes.
    #[error("{sink}: unreadable data: {message}")]
    Corrupt { sink: &'static str, message: String },
    #[error("sink config: {0}")]
    Config(String),
}

impl SinkError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Unavailable { .. })
    }

    /// Which sink failed (for metrics and logs).
    pub fn sink(&self) -> &'static str {
        match self {
            SinkError::Unavailable { sink, .. }
            | SinkError::Refused { sink, .. }
            | SinkError::Corrupt { sink, .. } => sink,
            SinkError::Config(_) => "config",
        }
    }

    pub(crate) fn from_object_store(what: &str, error: object_store::Error) -> SinkError {
        use object_store::Error as E;
        let message = format!("{what}: {error}");
        match error {
            E::Generic { .. } | E::JoinError { .. } => {
                SinkError::Unavailable { sink: "object storage", message }
            }
            _ => SinkError::Refused { sink: "object storage", message },
        }
    }

    pub(crate) fn from_log(sink: &'static str, error: crate::log::LogError) -> SinkError {
        use crate::log::LogError as E;
        let message = error.to_string();
        match error {
            E::Io { .. } | E::Kafka(_) | E::Locked { .. } => SinkError::Unavailable { sink, message },
            _ => SinkError::Refused { sink, message },
        }
    }
}

/// What one flush of a partition hands every sink: the documents it changed and the bad
/// records it set aside.
pub struct Changes<'a> {
    pub partition: u32,
    /// (document id, folded document), by id.
    pub docs: &'a [(&'a str, &'a crate::fold::Doc)],
    pub dead: &'a [dead_letter::DeadLetter],
    /// When the oldest op in `docs` was folded (for the delay metrics).
    pub folded_at: Option<std::time::Instant>,
    /// The partition's replay generation (`store::Owner::generation`): projections and
    /// caches keep the newest (generation, version).
    pub generation: u64,
}

/// One effect of a flush, written before the checkpoint moves. Idempotent and monotonic:
/// a retry, or a replay after a crash, writes it again harmlessly. A flush runs the job's
/// sinks in the order of [`Sinks::effects`]; adding a sink changes no flush code.
pub trait Sink: Send + Sync {
    /// For logs and metrics.
    fn name(&self) -> &'static str;
    /// Writes this flush's share of `changes`; returns how many items it wrote.
    fn write<'a>(
        &'a self,
        changes: &'a Changes<'a>,
    ) -> futures::future::BoxFuture<'a, Result<u64, SinkError>>;
}

/// Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
/// Jitter"): the n-th retry waits a random time in [0, min(cap, base·2ⁿ)].
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff { base, cap, attempt: 0 }
    }

    /// The wait before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.base.saturating_mul(1 << self.attempt.min(20)).min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rand::random::<f64>())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Retries since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// The AWS SDK's shared config: credentials from the environment, the region given (else
/// the environment's, else `us-east-1`), and an endpoint override for local servers.
pub async fn aws_config(endpoint: Option<&str>, region: Option<String>) -> aws_config::SdkConfig {
    use aws_config::meta::region::RegionProviderChain;
    let region = RegionProviderChain::first_try(region.map(aws_config::Region::new))
        .or_default_provider()
        .or_else("us-east-1");
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).region(region);
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}

/// A writer for `topic` on the job's log (a missing embedded topic is created with the
/// log's partition count).
pub fn topic_writer(config: &JobConfig, topic: &str) -> Result<Box<dyn LogWriter>, crate::log::LogError> {
    crate::log::Topic::open(config, topic, true)?.writer(config)
}

/// Every configured sink, shared by the partitions' workers (cheap to clone).
#[derive(Clone)]
pub struct Sinks {
    pub objects: objects::Objects,
    pub projections: Option<std::sync::Arc<projection::Projections>>,
    pub invalidator: invalidate::Invalidator,
    pub dead_letters: dead_letter::DeadLetters,
    /// The archive's settings when it is on.
    pub archive: Option<crate::config::ArchiveConfig>,
    /// Disaster-recovery snapshots: how often (0: never), how many kept, batch size.
    pub snapshots: crate::config::SnapshotsConfig,
}

impl Sinks {
    /// The sinks a flush writes before its checkpoint, in order: dead letters (durable
    /// before the checkpoint passes them), projections, then the invalidations that
    /// announce them. (The archive and the snapshots are the partition's own: their
    /// progress is part of the checkpoint, so the flush writes them itself.)
    pub fn effects(&self) -> Vec<&dyn Sink> {
        let mut effects: Vec<&dyn Sink> = vec![&self.dead_letters];
        if let Some(projections) = &self.projections {
            effects.push(projections.as_ref());
        }
        if !self.invalidator.is_off() {
            effects.push(&self.invalidator);
        }
        effects
    }

    /// Opens the sinks `config` names. Remote backends connect lazily, so one that is down
    /// now is retried like any later outage.
    pub async fn open(config: &JobConfig) -> Result<Sinks, SinkError> {
        let objects = objects::Objects::open(&config.objects)?;
        let projections = projection::Projections::open(&config.projection, objects.clone()).await?;
        Ok(Sinks {
            projections: projections.map(std::sync::Arc::new),
            invalidator: invalidate::Invalidator::open(config)?,
            dead_letters: dead_letter::DeadLetters::open(config, objects.clone())?,
            archive: config.archive.enabled.then(|| config.archive.clone()),
            snapshots: config.snapshots.clone(),
            objects,
        })
    }
}
