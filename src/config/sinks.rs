//! Config of the sinks: where projections, the archive, disaster-recovery snapshots,
//! invalidations and dead letters go. Defaults are the embedded setup.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::Url;

/// Object storage shared by the archive, the disaster-recovery snapshots and projection
/// texts too large for a DynamoDB item.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectsConfig {
    /// `file://DIR` (embedded) or `s3://BUCKET[/PREFIX]`.
    pub url: Url,
    /// S3: endpoint override, e.g. `http://127.0.0.1:9000` for a local S3 server.
    /// Credentials and region come from the environment (`AWS_ACCESS_KEY_ID`, …).
    pub endpoint: Option<String>,
    /// S3: the AWS region (default: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`).
    pub aws_region: Option<String>,
}

/// The Parquet archive of every op (`ops/date=…/partition=…/<first>-<last>.parquet`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    pub enabled: bool,
    /// A partition's file is written once its rows reach this many bytes (before compression)…
    pub max_file_bytes: u64,
    /// …or this long after its first row arrived, even when the partition has gone idle.
    pub max_file_age_ms: u64,
    /// Files larger than this are uploaded in parts of this size (multipart upload).
    pub part_bytes: usize,
}

/// Full document states written to object storage for disaster recovery and audit.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotsConfig {
    /// How often each partition writes the documents changed since its last manifest;
    /// 0 turns them off.
    pub interval_ms: u64,
    /// Manifests kept per partition (the newest); older ones, and the document states only
    /// they name, are deleted after each export.
    pub keep: usize,
    /// Documents read and written per batch by an export or a restore (their memory is
    /// one batch of states).
    pub batch_docs: usize,
    /// At most this many documents (rounded up to whole batches) exported per flush: an
    /// export of many documents goes on over several flushes instead of holding one up.
    /// The drain at shutdown finishes an export whole.
    pub docs_per_flush: usize,
}

/// The read model: one item per document with its text and version.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectionConfig {
    /// `sqlite://PATH` (embedded), `dynamodb://TABLE`, or empty for none.
    pub url: Url,
    /// DynamoDB: endpoint override, e.g. `http://127.0.0.1:8000` for DynamoDB Local.
    pub endpoint: Option<String>,
    /// DynamoDB: the AWS region (default from the environment, else `us-east-1`).
    pub aws_region: Option<String>,
    /// Texts longer than this (UTF-8 bytes) are written to object storage and the item
    /// holds a pointer (DynamoDB items are limited to 400 KB).
    pub inline_max_bytes: usize,
    /// Writes in flight at once.
    pub concurrency: usize,
    /// Who writes the table: `"region"` (each region its own table, the default) or
    /// `"leader"` (one DynamoDB global table for every region: only the lease holder
    /// writes, each item carries its epoch, and a write is refused over a newer epoch or a
    /// version at least as high).
    pub writer: ProjectionWriter,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProjectionWriter {
    #[default]
    Region,
    Leader,
}

/// Cache invalidations after each projection write.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InvalidationsConfig {
    /// Topic on the job's log (compacted on Kafka); empty for none.
    pub topic: String,
    /// `redis://HOST:PORT[/DB]` of the regional cache, or `rediss://…` for TLS; absent for
    /// none.
    pub redis: Option<Url>,
    /// `rediss://`: a PEM file of the certificate authorities to trust instead of the
    /// system's (a private CA). Relative to the config file's folder.
    pub redis_ca_file: Option<PathBuf>,
    /// The cache keeps document `D` at `<key_prefix>D` (a hash with `text` and `version`).
    pub key_prefix: String,
    /// Invalidations are published on this channel.
    pub channel: String,
    /// Warm the cache instead of only dropping stale entries: each flush writes the new
    /// text and version into the hash (never over a newer version). A standby region that
    /// preloads serves reads from a full cache the moment it is promoted.
    pub preload: bool,
    /// Texts longer than this (bytes) are not preloaded; their entry is dropped as without
    /// `preload`, and readers go to the projection.
    pub preload_max_bytes: usize,
}

/// Records that cannot be folded, with the reason, source partition and offset.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLettersConfig {
    /// Topic on the job's log; empty to only log and count them.
    pub topic: String,
    /// A letter larger than this keeps its value in object storage (`dead-letters/…`) and
    /// a pointer in the topic: librdkafka's `message.max.bytes` is 1 MB, an op may be 4 MiB.
    pub max_inline_bytes: usize,
    /// Dead letters held while their topic is unavailable count towards the partition's
    /// unflushed bound: past this many bytes the partition stops reading until they are sent.
    pub max_buffered_bytes: usize,
}

impl Default for ObjectsConfig {
    fn default() -> Self {
        ObjectsConfig { url: "file://docfold-data/objects".into(), endpoint: None, aws_region: None }
    }
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            enabled: true,
            max_file_bytes: 64 << 20,
            max_file_age_ms: 300_000,
            part_bytes: 8 << 20,
        }
    }
}

impl Default for SnapshotsConfig {
    fn default() -> Self {
        SnapshotsConfig { interval_ms: 3_600_000, keep: 24, batch_docs: 256, docs_per_flush: 2_048 }
    }
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        ProjectionConfig {
            url: "sqlite://docfold-data/projections.db".into(),
            endpoint: None,
            aws_region: None,
            inline_max_bytes: 350_000,
            concurrency: 16,
            writer: ProjectionWriter::Region,
        }
    }
}

impl Default for InvalidationsConfig {
    fn default() -> Self {
        InvalidationsConfig {
            topic: "doc-invalidations".into(),
            redis: None,
            redis_ca_file: None,
            key_prefix: "docfold:doc:".into(),
            channel: "docfold:invalidations".into(),
            preload: false,
            preload_max_bytes: 64 << 10,
        }
    }
}

impl Default for DeadLettersConfig {
    fn default() -> Self {
        DeadLettersConfig {
            topic: "doc-ops-dlq".into(),
            max_inline_bytes: 900 << 10,
            max_buffered_bytes: 64 << 20,
        }
    }
}

/// Checks the sink sections; `Err((field, message))`.
pub(super) fn validate(
    objects: &ObjectsConfig,
    archive: &ArchiveConfig,
    snapshots: &SnapshotsConfig,
    projection: &ProjectionConfig,
) -> Result<(), (&'static str, String)> {
    crate::sink::objects::ObjectsUrl::parse(objects.url.expose())
        .map_err(|e| ("objects.url", e.to_string()))?;
    if archive.max_file_bytes == 0 || archive.max_file_age_ms == 0 {
        return Err((
            "archive.max_file_bytes",
            "max_file_bytes and max_file_age_ms must be at least 1".into(),
        ));
    }
    if archive.part_bytes < 5 << 20 {
        return Err(("archive.part_bytes", "must be at least 5 MiB (S3's smallest part)".into()));
    }
    crate::sink::projection::ProjectionUrl::parse(projection.url.expose())
        .map_err(|e| ("projection.url", e.to_string()))?;
    if projection.inline_max_bytes == 0 || projection.inline_max_bytes > 380_000 {
        return Err(("projection.inline_max_bytes", "must be between 1 and 380000".into()));
    }
    if snapshots.keep == 0 {
        return Err(("snapshots.keep", "must be at least 1".into()));
    }
    if snapshots.batch_docs == 0 || snapshots.docs_per_flush == 0 {
        let field =
            if snapshots.batch_docs == 0 { "snapshots.batch_docs" } else { "snapshots.docs_per_flush" };
        return Err((field, "must be at least 1".into()));
    }
    if projection.concurrency == 0 {
        return Err(("projection.concurrency", "must be at least 1".into()));
    }
    Ok(())
}
