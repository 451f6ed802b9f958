//! `docfold projections …` and `docfold snapshots restore`: the sinks an operator touches.

use anyhow::Context;
use clap::Subcommand;

use docfold::config::JobConfig;
use docfold::log::Topic;
use docfold::sink::objects::Objects;
use docfold::sink::projection::{Body, ProjectionStore, Projections};
use docfold::sink::snapshots;
use docfold::store::Store;

use super::{ConfigArg, runtime};

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Create the projection table (schemas/dynamodb/projections.json) if it does not exist.
    Create {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print a document's projection: version, length, region and text.
    Show {
        doc_id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotsCommand {
    /// Rebuild the state store from the newest disaster-recovery manifest of each
    /// partition; `docfold run` then replays the log from there.
    Restore {
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub(super) async fn open_projections(config: &JobConfig) -> anyhow::Result<Projections> {
    let objects = Objects::open(&config.objects)?;
    Projections::open(&config.projection, objects)
        .await?
        .context("no projections configured (projection.url is empty)")
}

impl ProjectionsCommand {
    pub fn run(self) -> anyhow::Result<bool> {
        match self {
            ProjectionsCommand::Create { config } => {
                let config = config.load()?;
                runtime()?.block_on(async {
                    anyhow::Ok(open_projections(&config).await?.backend().create().await?)
                })?;
                println!("projection table ready: {}", config.projection.url);
                Ok(true)
            }
            ProjectionsCommand::Show { doc_id, config } => {
                let config = config.load()?;
                let found = runtime()?.block_on(async {
                    anyhow::Ok(open_projections(&config).await?.get_text(&doc_id).await?)
                })?;
                let Some((item, text)) = found else {
                    anyhow::bail!("no projection of {doc_id:?} in {}", config.projection.url);
                };
                println!("doc:     {doc_id}");
                println!("version: {}", item.version);
                println!("length:  {} characters", item.chars);
                println!("region:  {}", item.region);
                if let Body::Pointer(key) = &item.body {
                    println!("text at: {key} (too large for an item)");
                }
                println!("---");
                println!("{text}");
                Ok(true)
            }
        }
    }
}

/// How many partitions the job's topic has.
fn partitions(config: &JobConfig) -> anyhow::Result<u32> {
    Ok(Topic::open(config, &config.log.topic, false)?.partitions())
}

impl SnapshotsCommand {
    pub fn run(self) -> anyhow::Result<bool> {
        let SnapshotsCommand::Restore { config } = self;
        let config = config.load()?;
        let partitions = partitions(&config)?;
        let restored = runtime()?.block_on(async {
            let objects = Objects::open(&config.objects)?;
            let store = Store::open(config.store.url.expose()).await?;
            let batch = config.snapshots.batch_docs;
            let restored = snapshots::restore(&objects, &store, (&config.job, partitions), batch, |done| {
                println!(
                    "partition {}: {} documents, checkpoint at offset {}",
                    done.partition, done.docs, done.next_offset
                );
            })
            .await;
            store.close().await;
            anyhow::Ok(restored?)
        })?;
        if restored.is_empty() {
            anyhow::bail!("no snapshot manifest under {}/snapshots/manifests", config.objects.url);
        }
        println!("restored {} of {partitions} partitions into {}", restored.len(), config.store.url);
        Ok(true)
    }
}
