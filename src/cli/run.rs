//! `docfold run`: the stream processor.

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use docfold::config::ProjectionWriter;
use docfold::config::{JobConfig, LogLocation};
use docfold::pipeline::{self, PartitionSummary, Until};
use docfold::region::Mode;
use docfold::region::home::group_scope;
use docfold::region::leases::Leases;
use docfold::region::role::RoleMachine;
use docfold::region::runtime::keep_role;
use docfold::sink::projection::LeaderGate;
use docfold::store::now_ms;
use std::sync::Arc;

use super::{ConfigArg, file_topic, runtime};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Stop once every partition is caught up (embedded log: nothing left to read; Kafka:
    /// nothing arrived for --idle-ms), after writing final checkpoints.
    #[arg(long)]
    exit_when_idle: bool,
    /// Kafka: how long without messages, while partitions are assigned, counts as idle.
    #[arg(long, default_value_t = 10_000)]
    idle_ms: u64,
}

impl RunArgs {
    pub fn run(self) -> anyhow::Result<bool> {
        let config = self.config.load()?;
        let until =
            if self.exit_when_idle { Until::Idle { idle_ms: self.idle_ms } } else { Until::Cancelled };
        let summaries = runtime()?.block_on(run_job(&config, until))?;
        print_summaries(&summaries);
        // Bad records do not fail a clean drain: they are in the dead letters.
        let bad: u64 = summaries.iter().map(|s| s.bad).sum();
        if bad > 0 {
            let topic = &config.dead_letters.topic;
            let place = if topic.is_empty() {
                "the log only (dead_letters.topic is empty)".into()
            } else {
                format!("topic {topic}")
            };
            println!("{bad} bad record{} went to the dead letters: {place}", if bad == 1 { "" } else { "s" });
        }
        Ok(true)
    }
}

/// Runs the job until `until` or Ctrl-C / SIGTERM (which drain and checkpoint first).
pub async fn run_job(config: &JobConfig, until: Until) -> anyhow::Result<Vec<PartitionSummary>> {
    if let Some(addr) = config.metrics.listen {
        docfold::telemetry::serve_metrics(addr).await.map_err(anyhow::Error::msg)?;
        tracing::info!(%addr, "serving Prometheus metrics at /metrics and health at /health");
    }
    if let LogLocation::File(dir) = config.log_location().map_err(anyhow::Error::msg)? {
        file_topic(config, &dir)?;
    }
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: draining partitions");
        on_signal.cancel();
    });
    let mut leader: Option<LeaderGate> = None;
    // The lease scopes this region keeps a role in: the job's (active-passive), or every home
    // region's group (home mode: each home takes its own first; any region takes a lost one's).
    let mut roles = Vec::new();
    if let Some(region) = &config.region {
        let scopes = match region.mode {
            Mode::ActivePassive => vec![(config.job.clone(), region.role())],
            Mode::Home => (region.regions().into_iter())
                .map(|home| (group_scope(&config.job, home), region.home_role(home)))
                .collect(),
            Mode::ActiveActive => Vec::new(),
        };
        for (scope, settings) in scopes {
            let leases = Leases::of(region).await.context("the region lease store")?;
            let (view, seen) = tokio::sync::watch::channel(RoleMachine::new(settings));
            if config.projection.writer == ProjectionWriter::Leader {
                leader = Some(Arc::new(move || seen.borrow().admit(now_ms())));
            }
            roles.push(tokio::spawn(keep_role(leases, scope, view, cancel.clone())));
        }
    }
    let summaries =
        pipeline::run_leading(config, until, cancel.clone(), leader).await.context("the pipeline stopped");
    cancel.cancel();
    for role in roles {
        role.await.context("the region role task")?;
    }
    summaries
}

pub(super) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub fn print_summaries(summaries: &[PartitionSummary]) {
    println!("partition  from offset  next offset  ops folded  bad  docs loaded  checkpoints");
    for s in summaries {
        println!(
            "{:>9}  {:>11}  {:>11}  {:>10}  {:>3}  {:>11}  {:>11}",
            s.partition, s.start_offset, s.next_offset, s.folded, s.bad, s.docs_loaded, s.flushes
        );
    }
}
