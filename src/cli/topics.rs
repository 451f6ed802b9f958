//! `docfold topics apply` and `docfold setup`: what the real engines need before a job runs.
//! The topic settings are `topics/*.toml` (compiled in; `--dir` reads another folder), given
//! the job's configured topic names: `doc-ops` is `log.topic`, `doc-invalidations` is
//! `invalidations.topic`, `doc-ops-dlq` is `dead_letters.topic`. Idempotent.

use anyhow::Context;
use clap::Subcommand;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use docfold::config::{JobConfig, LogLocation, RegionConfig};
use docfold::log::file::FileLog;
use docfold::log::kafka::KafkaLog;
use docfold::mirror::mirrored_topic;
use docfold::region::leases::Leases;
use docfold::sink::objects::Objects;
use docfold::sink::projection::ProjectionStore;

use super::sinks::open_projections;
use super::{ConfigArg, runtime};

/// The shipped topic files, so the commands work from any folder.
const SHIPPED: [(&str, &str); 3] = [
    ("topics/doc-ops.toml", include_str!("../../topics/doc-ops.toml")),
    ("topics/doc-invalidations.toml", include_str!("../../topics/doc-invalidations.toml")),
    ("topics/doc-ops-dlq.toml", include_str!("../../topics/doc-ops-dlq.toml")),
];

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create the job's topics (existing topics are left as they are).
    Apply(TopicArgs),
}

#[derive(Debug, clap::Args)]
pub struct TopicArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Folder of topic files (default: the shipped `topics/`, compiled in).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Cap the replication factor (a single-broker development cluster needs 1).
    #[arg(long)]
    max_replication: Option<i32>,
}

/// One `topics/*.toml` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: u32,
    pub replication: i32,
    /// Kafka topic configs (`cleanup.policy`, `retention.ms`, …).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

fn parse_spec(path: &str, text: &str) -> anyhow::Result<TopicSpec> {
    let spec: TopicSpec = toml::from_str(text).with_context(|| format!("topic file {path}"))?;
    anyhow::ensure!(spec.partitions > 0, "topic file {path}: field `partitions` must be at least 1");
    Ok(spec)
}

fn read_specs(dir: Option<&Path>) -> anyhow::Result<Vec<TopicSpec>> {
    let Some(dir) = dir else {
        return SHIPPED.iter().map(|(path, text)| parse_spec(path, text)).collect();
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading topic folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            parse_spec(&path.display().to_string(), &text)
        })
        .collect()
}

/// The specs under the job's names, none when the job turns that topic off. The op and
/// invalidation topics get `log.partitions`, so they stay co-partitioned. With `[region]`,
/// the op topic comes once more per peer, `<peer>.<log.topic>`, for the mirror's copies,
/// which keep the source's timestamps (CreateTime, not the broker's append time).
fn for_job(mut spec: TopicSpec, config: &JobConfig) -> Vec<TopicSpec> {
    let name = match spec.name.as_str() {
        "doc-ops" => config.log.topic.clone(),
        "doc-invalidations" => config.invalidations.topic.clone(),
        "doc-ops-dlq" => config.dead_letters.topic.clone(),
        _ => return vec![spec],
    };
    if spec.name != "doc-ops-dlq" {
        spec.partitions = config.log.partitions;
    }
    let mirrors = match (&config.region, spec.name.as_str()) {
        (Some(region), "doc-ops") => region.peers.clone(),
        _ => Vec::new(),
    };
    spec.name = name;
    if spec.name.is_empty() {
        return Vec::new();
    }
    let mirrored: Vec<TopicSpec> = mirrors
        .iter()
        .map(|peer| {
            let mut config = spec.config.clone();
            config.insert("message.timestamp.type".into(), "CreateTime".into());
            let name = mirrored_topic(peer, &spec.name);
            TopicSpec { name, partitions: spec.partitions, replication: spec.replication, config }
        })
        .collect();
    [spec].into_iter().chain(mirrored).collect()
}

impl TopicArgs {
    fn apply(&self, config: &JobConfig) -> anyhow::Result<()> {
        let specs = read_specs(self.dir.as_deref())?.into_iter().flat_map(|s| for_job(s, config));
        match config.log_location().map_err(anyhow::Error::msg)? {
            LogLocation::File(root) => {
                for spec in specs {
                    FileLog::create(&root, &spec.name, spec.partitions)?;
                    println!(
                        "topic {}: {} partitions in {}",
                        spec.name,
                        spec.partitions,
                        root.join(&spec.name).display()
                    );
                }
            }
            LogLocation::Kafka(brokers) => runtime()?.block_on(async {
                for spec in specs {
                    let replication =
                        self.max_replication.map_or(spec.replication, |cap| spec.replication.min(cap));
                    let configs: Vec<(String, String)> = spec.config.clone().into_iter().collect();
                    let shape = (spec.partitions, replication);
                    KafkaLog::create_topic(&brokers, &spec.name, shape, &configs, &config.log.kafka.pairs())
                        .await?;
                    println!(
                        "topic {}: {} partitions, replication {replication} on {brokers}",
                        spec.name, spec.partitions
                    );
                }
                anyhow::Ok(())
            })?,
        }
        Ok(())
    }

    /// `docfold setup`: the topics (with `[region]`, the peers' mirrored ones too), the
    /// projection table, the S3 bucket and the lease store (each unless it exists), and a
    /// check that object storage answers.
    pub fn setup(self) -> anyhow::Result<bool> {
        let config = self.config.load()?;
        if let Some(region) = &config.region {
            check_peers(region, self.config.path())?;
        }
        self.apply(&config)?;
        runtime()?.block_on(async {
            if !config.projection.url.is_empty() {
                open_projections(&config).await?.backend().create().await?;
                println!("projection table ready: {}", config.projection.url);
            }
            if Objects::create_bucket(&config.objects).await? {
                println!("bucket created: {}", config.objects.url);
            }
            let objects = Objects::open(&config.objects)?;
            objects
                .list(&"ops".into())
                .await
                .with_context(|| format!("object storage {} does not answer", config.objects.url))?;
            println!("object storage ready: {}", config.objects.url);
            if let Some(region) = &config.region {
                // Opening it migrates the SQL table or creates the DynamoDB one.
                Leases::of(region).await.with_context(|| format!("lease store {}", region.leases))?;
                println!("lease store ready: {}", region.leases);
            }
            anyhow::Ok(())
        })?;
        Ok(true)
    }
}

/// The peers' job files beside `path` (`<peer>.toml`, where they are) agree with this
/// region on what must be the same everywhere (`RegionConfig::disagreement`).
fn check_peers(region: &RegionConfig, path: Option<&Path>) -> anyhow::Result<()> {
    let folder = path.and_then(Path::parent).unwrap_or(Path::new(""));
    for peer in &region.peers {
        let file = folder.join(format!("{peer}.toml"));
        if !file.exists() {
            continue;
        }
        let theirs =
            JobConfig::load(&file)?.region.with_context(|| format!("{} has no [region]", file.display()))?;
        if let Some((setting, why)) = region.disagreement(&theirs) {
            anyhow::bail!("{setting}: {why} ({})", file.display());
        }
    }
    Ok(())
}

impl TopicsCommand {
    pub fn run(self) -> anyhow::Result<bool> {
        let TopicsCommand::Apply(args) = self;
        let config = args.config.load()?;
        args.apply(&config)?;
        Ok(true)
    }
}
