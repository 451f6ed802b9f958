//! `docfold status`: where each partition of each source topic stands — the log's earliest
//! and end offsets, the fold's checkpoint and the archive's, how far the fold is behind in
//! records and in seconds (the age of the oldest record not folded), and the newest
//! disaster-recovery manifest; then whether each sink answers now, and for a job with a
//! `[region]` the region's role, lease and replication lag (`region_view`). Read from the
//! log, the stores and the sinks, so it works with or without a running `docfold run` (a
//! live one's flush failures are on its `/metrics`).

use serde::Serialize;

use docfold::config::{JobConfig, LogLocation};
use docfold::log::Topic;
use docfold::pipeline::{source_topics, stored_topic};
use docfold::sink::objects::Objects;
use docfold::sink::snapshots;
use docfold::store::{Store, now_ms};

use docfold::sink::invalidate::Invalidator;
use docfold::sink::projection::{ProjectionStore, Projections};

use super::region_view::RegionView;
use super::{ConfigArg, runtime};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print JSON: `partitions` (one object per partition of each source topic), `sinks`
    /// (each configured sink: "ok" or the error) and `region` (null without one).
    #[arg(long)]
    json: bool,
}

impl StatusArgs {
    pub fn run(self) -> anyhow::Result<bool> {
        let config = self.config.load()?;
        let runtime = runtime()?;
        let partitions = runtime.block_on(status(&config))?;
        let sinks = runtime.block_on(sink_health(&config));
        let region = match &config.region {
            Some(region) => Some(runtime.block_on(RegionView::load(&config, region, self.config.path()))?),
            None => None,
        };
        let healthy = sinks.iter().all(|(_, health)| health.is_ok());
        if self.json {
            let sinks: serde_json::Map<String, serde_json::Value> = sinks
                .into_iter()
                .map(|(sink, health)| {
                    (sink.to_string(), serde_json::json!(health.err().unwrap_or_else(|| "ok".into())))
                })
                .collect();
            let value = serde_json::json!({
                "partitions": partitions,
                "sinks": sinks,
                "region": region.as_ref().map(RegionView::json),
            });
            println!("{}", serde_json::to_string_pretty(&value)?);
            return Ok(healthy);
        }
        let optional = |value: Option<u64>| value.map_or("-".to_string(), |v| v.to_string());
        println!("job {} ({})", config.job, config.log.url);
        println!(
            "{:<24} {:>9} {:>10} {:>10} {:>10} {:>10} {:>11} {:>11} {:>12}",
            "topic",
            "partition",
            "earliest",
            "end",
            "checkpoint",
            "archived",
            "lag records",
            "lag seconds",
            "snapshot age"
        );
        for p in &partitions {
            println!(
                "{:<24} {:>9} {:>10} {:>10} {:>10} {:>10} {:>11} {:>11.1} {:>12}",
                p.topic,
                p.partition,
                p.earliest,
                p.end,
                optional(p.checkpoint),
                optional(p.archived),
                p.lag_records,
                p.lag_seconds,
                p.snapshot_age_seconds.map_or("-".to_string(), |s| format!("{s:.0} s")),
            );
        }
        for (sink, health) in &sinks {
            println!("sink {sink}: {}", health.as_ref().err().map_or("ok", String::as_str));
        }
        if let Some(region) = region {
            region.print();
        }
        Ok(healthy)
    }
}

/// Whether each configured sink answers now: a read of a key that does not exist, a
/// PING, a topic's metadata.
async fn sink_health(config: &JobConfig) -> Vec<(&'static str, Result<(), String>)> {
    let mut health = Vec::new();
    let objects = Objects::open(&config.objects);
    let probe = object_store::path::Path::from("docfold-status-probe");
    match &objects {
        Ok(objects) => {
            health.push(("object storage", objects.get(&probe).await.map(drop).map_err(|e| e.to_string())))
        }
        Err(e) => health.push(("object storage", Err(e.to_string()))),
    }
    if let Ok(objects) = objects
        && !config.projection.url.expose().is_empty()
    {
        let read = match Projections::open(&config.projection, objects).await {
            Ok(Some(projections)) => projections.backend().get("docfold-status-probe").await.map(drop),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        health.push(("projections", read.map_err(|e| e.to_string())));
    }
    match Invalidator::open(config) {
        Ok(invalidator) => {
            if let Some(answer) = invalidator.ping_cache().await {
                health.push(("invalidations cache", answer.map_err(|e| e.to_string())));
            }
        }
        Err(e) => health.push(("invalidations", Err(e.to_string()))),
    }
    // The embedded log makes a sink's topic when it first writes; Kafka's are made by setup.
    let kafka = matches!(config.log_location(), Ok(LogLocation::Kafka(_)));
    for (sink, topic) in [
        ("invalidations topic", &config.invalidations.topic),
        ("dead letters topic", &config.dead_letters.topic),
    ] {
        if kafka && !topic.is_empty() {
            health.push((sink, Topic::open(config, topic, false).map(drop).map_err(|e| e.to_string())));
        }
    }
    health
}

#[derive(Clone, Debug, Serialize)]
struct PartitionStatus {
    topic: String,
    partition: u32,
    /// The log's oldest record and the offset its next one will get.
    earliest: u64,
    end: u64,
    /// The next record to fold, and the next one the archive has not written (None: no
    /// checkpoint yet, the fold starts at the log's beginning).
    checkpoint: Option<u64>,
    archived: Option<u64>,
    /// Records between the checkpoint and the end, and the age of the oldest of them.
    lag_records: u64,
    lag_seconds: f64,
    /// The newest disaster-recovery manifest's position and age (seconds), if any.
    snapshot_offset: Option<u64>,
    snapshot_age_seconds: Option<f64>,
}

/// Every partition of every source topic of the job.
async fn status(config: &JobConfig) -> anyhow::Result<Vec<PartitionStatus>> {
    let store = Store::open(config.store.url.expose()).await?;
    let objects = (config.snapshots.interval_ms > 0).then(|| Objects::open(&config.objects)).transpose()?;
    let now = now_ms();
    let mut all = Vec::new();
    for (index, topic) in source_topics(config).iter().enumerate() {
        let mut reader = Topic::open(config, topic, false)?.reader()?;
        for partition in 0..reader.partitions() {
            let (earliest, end) = (reader.earliest_offset(partition)?, reader.end_offset(partition)?);
            let stored = store.source_checkpoints(&config.job, partition).await?;
            let held = stored.iter().find(|(t, _)| t == stored_topic(index, topic)).map(|(_, c)| *c);
            let next = held.map_or(earliest, |c| c.next_offset);
            let mut oldest = Vec::with_capacity(1);
            if next < end {
                reader.read(partition, next, 1, &mut oldest)?;
            }
            let lag_seconds = oldest.first().map_or(0.0, |r| (now - r.timestamp_ms).max(0) as f64 / 1000.0);
            let manifest = match (&objects, index) {
                (Some(objects), 0) => snapshots::latest_manifest(objects, partition).await?,
                _ => None,
            };
            all.push(PartitionStatus {
                topic: topic.clone(),
                partition,
                earliest,
                end,
                checkpoint: held.map(|c| c.next_offset),
                archived: held.map(|c| c.archived_offset),
                lag_records: end.saturating_sub(next),
                lag_seconds,
                snapshot_offset: manifest.as_ref().map(|m| m.next_offset),
                snapshot_age_seconds: manifest.map(|m| (now - m.created_ms).max(0) as f64 / 1000.0),
            });
        }
    }
    store.close().await;
    Ok(all)
}
