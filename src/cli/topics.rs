//! `docfold topics apply`: creates the topics described in `topics/*.toml`.

use anyhow::Context;
use clap::Subcommand;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use docfold::config::LogLocation;
use docfold::log::file::FileLog;
use docfold::log::kafka::KafkaLog;

use super::{ConfigArg, runtime};

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create every topic of the folder (existing topics are left as they are).
    Apply {
        #[command(flatten)]
        config: ConfigArg,
        /// Folder of topic files.
        #[arg(long, default_value = "topics")]
        dir: PathBuf,
        /// Cap the replication factor (a single-broker development cluster needs 1).
        #[arg(long)]
        max_replication: Option<i32>,
    },
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

fn read_specs(dir: &Path) -> anyhow::Result<Vec<TopicSpec>> {
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
            let spec: TopicSpec =
                toml::from_str(&text).with_context(|| format!("topic file {}", path.display()))?;
            anyhow::ensure!(
                spec.partitions > 0,
                "topic file {}: field `partitions` must be at least 1",
                path.display()
            );
            Ok(spec)
        })
        .collect()
}

impl TopicsCommand {
    pub fn run(self) -> anyhow::Result<bool> {
        let TopicsCommand::Apply { config, dir, max_replication } = self;
        let config = config.load()?;
        let specs = read_specs(&dir)?;
        match config.log_location().map_err(anyhow::Error::msg)? {
            LogLocation::File(root) => {
                for spec in &specs {
                    FileLog::create(&root, &spec.name, spec.partitions)?;
                    println!(
                        "{}: {} partitions in {}",
                        spec.name,
                        spec.partitions,
                        root.join(&spec.name).display()
                    );
                }
            }
            LogLocation::Kafka(brokers) => runtime()?.block_on(async {
                for spec in &specs {
                    let replication =
                        max_replication.map_or(spec.replication, |cap| spec.replication.min(cap));
                    let configs: Vec<(String, String)> = spec.config.clone().into_iter().collect();
                    KafkaLog::create_topic(&brokers, &spec.name, spec.partitions, replication, &configs)
                        .await?;
                    println!(
                        "{}: {} partitions, replication {replication} on {brokers}",
                        spec.name, spec.partitions
                    );
                }
                anyhow::Ok(())
            })?,
        }
        Ok(true)
    }
}
