//! Job configuration (`jobs/*.toml`): typed, unknown fields rejected, checked before any I/O.
//! Every field has a default, so an empty file (or none) is the embedded setup under
//! `./docfold-data`.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

mod region;
mod secret;
mod sinks;

pub use region::RegionConfig;
pub use secret::{ClientSettings, Url, is_secret_setting, redact_url};
pub use sinks::{
    ArchiveConfig, DeadLettersConfig, InvalidationsConfig, ObjectsConfig, ProjectionConfig, ProjectionWriter,
    SnapshotsConfig,
};

/// When the embedded log's writer calls fsync (`log.fsync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Fsync {
    /// On every flush: nothing acknowledged is lost on power failure.
    Always,
    /// At most every this many milliseconds (a process crash loses nothing; power loss may
    /// lose the last interval).
    IntervalMs(u64),
    /// Leave it to the OS.
    Never,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobConfig {
    /// The job's name: checkpoints and snapshots are kept per job.
    pub job: String,
    pub log: LogConfig,
    pub store: StoreConfig,
    pub pipeline: PipelineConfig,
    pub metrics: MetricsConfig,
    pub objects: ObjectsConfig,
    pub archive: ArchiveConfig,
    pub snapshots: SnapshotsConfig,
    pub projection: ProjectionConfig,
    pub invalidations: InvalidationsConfig,
    pub dead_letters: DeadLettersConfig,
    /// This job's region among several (`[region]`); absent: one region.
    pub region: Option<RegionConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `file://DIR` (embedded) or `kafka://HOST:PORT[,HOST:PORT…]`.
    pub url: Url,
    pub topic: String,
    /// Partitions of the embedded log's topic when docfold creates it.
    pub partitions: u32,
    /// Embedded log: when to fsync (`"always"`, `"never"` or `{ interval_ms = N }`).
    pub fsync: Fsync,
    /// Embedded log: segment size before rolling to a new file.
    pub segment_bytes: u64,
    /// Kafka consumer group of `docfold run`.
    pub group: String,
    /// Extra librdkafka properties (e.g. `"security.protocol" = "SSL"`); secret ones
    /// (`sasl.password`, …) are never printed.
    pub kafka: ClientSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` (embedded) or `postgres://USER[:PASSWORD]@HOST:PORT/DB` (the password
    /// is never printed).
    pub url: Url,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Write snapshots + checkpoint at least this often while there is work…
    pub flush_interval_ms: u64,
    /// …and after this many ops in a partition.
    pub flush_ops: u64,
    /// Documents kept in memory per partition; colder ones are evicted (their state is stored).
    pub max_docs_in_memory: usize,
    /// MiB of document states the job keeps in memory, shared evenly by its partitions:
    /// past its share a partition flushes and evicts its least recently used documents,
    /// however few they are (one pasted book is as large as thousands of notes).
    pub max_state_mb: usize,
    /// Records read per batch.
    pub batch: usize,
    /// Kafka: a partition's records are handed to its worker at least this often, however
    /// busy the other partitions are.
    pub batch_ms: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics on this address (e.g. `127.0.0.1:9898`); off when absent.
    pub listen: Option<SocketAddr>,
    /// Allow `listen` on an address other hosts reach (by default only loopback).
    pub allow_remote: bool,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig::in_dir(Path::new("docfold-data"))
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            url: "file://docfold-data/log".into(),
            topic: "doc-ops".into(),
            partitions: 8,
            fsync: Fsync::IntervalMs(200),
            segment_bytes: 64 << 20,
            group: "docfold".into(),
            kafka: ClientSettings::default(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { url: "sqlite://docfold-data/state.db".into() }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            flush_interval_ms: 1000,
            flush_ops: 100_000,
            max_docs_in_memory: 50_000,
            max_state_mb: 1024,
            batch: 2048,
            batch_ms: 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: field `{field}`: {message}")]
    Invalid { path: PathBuf, field: &'static str, message: String },
}

/// Where the log lives, from `log.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogLocation {
    File(PathBuf),
    Kafka(String),
}

impl JobConfig {
    /// Everything embedded under `dir`.
    pub fn in_dir(dir: &Path) -> JobConfig {
        JobConfig {
            job: "main".into(),
            log: LogConfig {
                url: format!("file://{}", dir.join("log").display()).into(),
                ..LogConfig::default()
            },
            store: StoreConfig { url: format!("sqlite://{}", dir.join("state.db").display()).into() },
            pipeline: PipelineConfig::default(),
            metrics: MetricsConfig::default(),
            objects: ObjectsConfig {
                url: format!("file://{}", dir.join("objects").display()).into(),
                ..ObjectsConfig::default()
            },
            archive: ArchiveConfig::default(),
            snapshots: SnapshotsConfig::default(),
            projection: ProjectionConfig {
                url: format!("sqlite://{}", dir.join("projections.db").display()).into(),
                ..ProjectionConfig::default()
            },
            invalidations: InvalidationsConfig::default(),
            dead_letters: DeadLettersConfig::default(),
            region: None,
        }
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<JobConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let parse_error =
            |e: toml::de::Error| ConfigError::Parse { path: path.into(), message: e.to_string() };
        let mut config: JobConfig = toml::from_str(&text).map_err(parse_error)?;
        config.validate(path)?;
        let written: toml::Table = toml::from_str(&text).map_err(parse_error)?;
        config.rebase(&written, path.parent().unwrap_or(Path::new("")));
        Ok(config)
    }

    /// Makes the relative paths of the `file://` and `sqlite://` URLs (and of the other
    /// files) written in a config file relative to `dir`, the file's folder, so a job runs the same from any working
    /// folder. Defaults (not written) stay relative to the working folder.
    fn rebase(&mut self, written: &toml::Table, dir: &Path) {
        let urls = [
            ("log", &mut self.log.url),
            ("store", &mut self.store.url),
            ("objects", &mut self.objects.url),
            ("projection", &mut self.projection.url),
        ];
        let region = self.region.as_mut().map(|r| ("region", &mut r.leases));
        for (section, url) in urls.into_iter().chain(region) {
            let field = if section == "region" { "leases" } else { "url" };
            if written.get(section).and_then(|s| s.get(field)).is_none() {
                continue;
            }
            let Some((scheme @ ("file" | "sqlite"), path)) = url.scheme() else { continue };
            if !path.is_empty() && Path::new(path).is_relative() && !path.starts_with(':') {
                *url = format!("{scheme}://{}", dir.join(path).display()).into();
            }
        }
        if let Some(ca) = &mut self.invalidations.redis_ca_file {
            *ca = dir.join(&*ca);
        }
    }

    /// Checks values (no I/O). `path` names the file in errors.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field, message: &str| {
            Err(ConfigError::Invalid { path: path.into(), field, message: message.into() })
        };
        if self.job.is_empty() {
            return invalid("job", "must not be empty");
        }
        if let Err(message) = self.log_location() {
            return invalid("log.url", &message);
        }
        if self.log.topic.is_empty() {
            return invalid("log.topic", "must not be empty");
        }
        if self.log.partitions == 0 {
            return invalid("log.partitions", "must be at least 1");
        }
        if self.log.segment_bytes < 4096 {
            return invalid("log.segment_bytes", "must be at least 4096");
        }
        if let Err(e) = crate::store::Backend::of(self.store.url.expose()) {
            return invalid("store.url", &e.to_string());
        }
        if self.pipeline.flush_interval_ms == 0 || self.pipeline.flush_ops == 0 {
            return invalid(
                "pipeline.flush_interval_ms",
                "flush_interval_ms and flush_ops must be at least 1",
            );
        }
        if self.pipeline.max_docs_in_memory == 0 {
            return invalid("pipeline.max_docs_in_memory", "must be at least 1");
        }
        if self.pipeline.max_state_mb == 0 {
            return invalid("pipeline.max_state_mb", "must be at least 1");
        }
        if self.pipeline.batch == 0 {
            return invalid("pipeline.batch", "must be at least 1");
        }
        if self.pipeline.batch_ms == 0 {
            return invalid("pipeline.batch_ms", "must be at least 1");
        }
        if let Some(addr) = self.metrics.listen
            && !addr.ip().is_loopback()
            && !self.metrics.allow_remote
        {
            return invalid(
                "metrics.listen",
                &format!("{addr} is reachable from other hosts; set metrics.allow_remote = true to mean it"),
            );
        }
        let redis_tls =
            self.invalidations.redis.as_ref().is_some_and(|url| url.expose().starts_with("rediss://"));
        if self.invalidations.redis_ca_file.is_some() && !redis_tls {
            return invalid("invalidations.redis_ca_file", "applies to a rediss:// (TLS) redis URL only");
        }
        if let Some(region) = &self.region {
            region.validate().or_else(|(field, message)| invalid(field, &message))?;
        }
        if self.projection.writer == ProjectionWriter::Leader {
            let dynamodb = self.projection.url.expose().starts_with("dynamodb://");
            let leads = self.region.as_ref().is_some_and(|r| r.mode == crate::region::Mode::ActivePassive);
            if !dynamodb || !leads {
                return invalid(
                    "projection.writer",
                    "\"leader\" needs a dynamodb:// projection table (the global table) and [region] with mode = \"active-passive\" (a lease holder to write it)",
                );
            }
        }
        sinks::validate(&self.objects, &self.archive, &self.snapshots, &self.projection)
            .or_else(|(field, message)| invalid(field, &message))
    }

    pub fn log_location(&self) -> Result<LogLocation, String> {
        match self.log.url.scheme() {
            Some(("file", dir)) if !dir.is_empty() => Ok(LogLocation::File(dir.into())),
            Some(("kafka", brokers)) if !brokers.is_empty() => Ok(LogLocation::Kafka(brokers.into())),
            _ => Err(format!("{:?}: expected file://DIR or kafka://HOST:PORT", self.log.url)),
        }
    }
}
