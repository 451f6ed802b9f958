//! `docfold mirror`: another region's op topic into this region's log (`mirror::copy`).

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use docfold::config::{JobConfig, RegionConfig};
use docfold::log::{LogReader, LogWriter, Topic};
use docfold::mirror::copy::{Mirror, run};
use docfold::mirror::{check, mirrored_topic};
use docfold::store::Store;

use super::{ConfigArg, runtime};

#[derive(Debug, Args)]
pub struct MirrorArgs {
    /// The source region's job file: its log and `[region]`.
    #[arg(long)]
    from: PathBuf,
    /// This (the target) region's job file: the log the copies go to, the store that keeps
    /// the mirror's checkpoints.
    #[command(flatten)]
    config: ConfigArg,
    /// One-way delay of the link: copy a record this long after its timestamp.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Stop once every partition is copied to its end.
    #[arg(long)]
    exit_when_idle: bool,
    /// Flush the target and move the checkpoints at most this often (0: after every round).
    /// A mirror run in the source region, pushing across to a far target, sets a few hundred
    /// ms: its copies cross once as they are sent instead of waiting a round trip a round.
    #[arg(long, default_value_t = 0)]
    checkpoint_ms: u64,
    /// Serve Prometheus metrics (the replication lag) here, e.g. `127.0.0.1:9899`; only
    /// loopback unless the target's `metrics.allow_remote`.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
}

fn region(config: &JobConfig, which: &str) -> anyhow::Result<RegionConfig> {
    config.region.clone().with_context(|| format!("the {which} job file has no [region] section"))
}

/// A checked mirror link (peers, never a mirrored topic): the source region's op topic
/// read, `<source>.<topic>` of the target's log written.
pub(super) struct Link {
    pub mirror: Mirror,
    pub reader: Box<dyn LogReader>,
    pub writer: Box<dyn LogWriter>,
    /// The target topic's partitions.
    pub partitions: u32,
    pub from: RegionConfig,
    pub to: RegionConfig,
}

/// Opens the link from `source`'s log into `target`'s, delayed `delay_ms` one way.
pub(super) fn open_link(source: &JobConfig, target: &JobConfig, delay_ms: u64) -> anyhow::Result<Link> {
    let (from, to) = (region(source, "source (--from)")?, region(target, "target (--config)")?);
    check(&from, &to, &source.log.topic)?;
    let topic = mirrored_topic(&from.name, &source.log.topic);
    let reader = Topic::open(source, &source.log.topic, false)?.reader()?;
    let target_topic = Topic::open(target, &topic, true)?;
    let writer = target_topic.writer(target)?;
    let mirror = Mirror {
        job: target.job.clone(),
        source_region: from.name.clone(),
        topic,
        delay_ms: i64::try_from(delay_ms).unwrap_or(i64::MAX),
        batch: target.pipeline.batch,
        checkpoint_every: Duration::ZERO,
        target_region: to.name.clone(),
        residency: to.residency.clone(),
    };
    Ok(Link { mirror, reader, writer, partitions: target_topic.partitions(), from, to })
}

impl MirrorArgs {
    pub fn run(self) -> anyhow::Result<bool> {
        let source = JobConfig::load(&self.from)?;
        let target = self.config.load()?;
        let Link { mirror, mut reader, mut writer, partitions, from, to } =
            open_link(&source, &target, self.delay_ms)?;
        let mirror = Mirror { checkpoint_every: Duration::from_millis(self.checkpoint_ms), ..mirror };
        let runtime = runtime()?;
        let copied = runtime.block_on(async {
            if let Some(addr) = self.metrics_listen {
                if !addr.ip().is_loopback() && !target.metrics.allow_remote {
                    anyhow::bail!("--metrics-listen {addr} is reachable from other hosts; set metrics.allow_remote = true in the target's config to mean it");
                }
                docfold::telemetry::serve_metrics(addr).await.map_err(anyhow::Error::msg)?;
            }
            let store = Store::open(target.store.url.expose()).await?;
            let cancel = CancellationToken::new();
            let on_signal = cancel.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                on_signal.cancel();
            });
            let target = (writer.as_mut(), partitions);
            let copied = run(&mirror, reader.as_mut(), target, &store, self.exit_when_idle, &cancel).await?;
            anyhow::Ok(copied)
        })?;
        println!("mirror {} → {} ({})", from.name, to.name, mirror.topic);
        println!("partition  from offset  next offset  records copied  withheld (residency)");
        for c in &copied {
            println!(
                "{:>9}  {:>11}  {:>11}  {:>14}  {:>20}",
                c.partition, c.from, c.next, c.records, c.withheld
            );
        }
        Ok(true)
    }
}
