//! `docfold region status | promote | demote`: the leadership lease of a job's regions, as
//! operators see and move it. The decisions are `region::lease`'s; this only asks.

use anyhow::{Context, bail};
use clap::Subcommand;

use std::path::{Path, PathBuf};

use docfold::config::{JobConfig, RegionConfig};
use docfold::log::Topic;
use docfold::mirror::mirrored_topic;
use docfold::pipeline;
use docfold::region::home::{self, Moved};
use docfold::region::lease::{Answer, Claim, Lease, LeaseStore, claim};
use docfold::region::leases::Leases;
use docfold::region::residency::check;
use docfold::region::{Mode, Router};
use docfold::store::{Store, now_ms};

use super::region_view::RegionView;
use super::{ConfigArg, runtime};

#[derive(Debug, Subcommand)]
pub enum RegionCommand {
    /// This region, its peers, who holds the lease (epoch, expiry) and this region's role.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// One JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Make REGION the leader: it takes the lease if it is free (or already its own);
    /// `--force` takes it from a live holder (epoch + 1 fences the old one off).
    Promote {
        region: String,
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Give up this region's lease (a planned hand-over): it is free at once.
    Demote {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Home mode: make REGION the home of document DOC_ID. Producers routed by the old home
    /// stop within the lease ttl; the new home takes writes after the ttl + the skew bound.
    MoveDoc {
        doc_id: String,
        region: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// The job and its `[region]` (the lease scope is the job's name).
fn region_of(config: &ConfigArg) -> anyhow::Result<(JobConfig, RegionConfig)> {
    let job = config.load()?;
    let region =
        job.region.clone().context("the config has no [region] section: this job runs in one region")?;
    Ok((job, region))
}

/// The lease seen from `region`: its role and when the lease runs out.
pub(super) fn describe(lease: Option<&Lease>, region: &str, now: i64) -> (&'static str, Option<i64>) {
    match lease {
        Some(l) if l.expires_ms > now && l.holder == region => ("leader", Some(l.expires_ms - now)),
        Some(l) if l.expires_ms > now => ("standby", Some(l.expires_ms - now)),
        _ => ("standby (no region leads)", None),
    }
}

/// The job file of region `region`: `<region>.toml` beside the job file at `path`.
pub fn peer_file(path: Option<&Path>, region: &str) -> PathBuf {
    path.and_then(Path::parent).unwrap_or(Path::new("")).join(format!("{region}.toml"))
}

/// Where a producer in region `local` writes: the region the router names (from the lease
/// as it is now) and its job file, `<region>.toml` beside `path` (`config` itself when it is
/// this region's).
pub async fn route(
    config: &JobConfig,
    path: Option<&Path>,
    local: &str,
) -> anyhow::Result<(String, JobConfig)> {
    let region = config.region.as_ref().context("the config has no [region] section")?;
    let lease = match region.mode {
        Mode::ActivePassive => Leases::of(region).await?.read(&config.job).await?,
        Mode::ActiveActive => None,
        Mode::Home => bail!("home mode routes each document to its home (`region::home_writer`)"),
    };
    let router = Router { mode: region.mode, local: local.into() };
    let to = router.route(lease.as_ref(), now_ms())?.to_string();
    if to == region.name {
        return Ok((to, config.clone()));
    }
    let routed =
        JobConfig::load(&peer_file(path, &to)).with_context(|| format!("the job file of region {to}"))?;
    Ok((to, routed))
}

/// Records the fold of this region has not checkpointed yet (every source topic, every
/// partition), and per peer the records of its topic not yet mirrored here (the peer's log
/// read through its job file `<peer>.toml` beside `path`).
pub(super) async fn lags(
    config: &JobConfig,
    path: Option<&Path>,
    peers: &[String],
) -> (Result<u64, String>, Vec<(String, Result<u64, String>)>) {
    let store = match Store::open(config.store.url.expose()).await {
        Ok(store) => store,
        Err(e) => {
            let unknown = Err(e.to_string());
            return (unknown.clone(), peers.iter().map(|p| (p.clone(), unknown.clone())).collect());
        }
    };
    // Records of `topic` in `config`'s log past `checkpoints` (by partition).
    let behind = |config: &JobConfig, topic: &str, checkpoints: Vec<u64>| -> Result<u64, String> {
        let topic = Topic::open(config, topic, false).map_err(|e| e.to_string())?;
        let mut reader = topic.reader().map_err(|e| e.to_string())?;
        let ends: Result<Vec<u64>, _> =
            tokio::task::block_in_place(|| (0..topic.partitions()).map(|p| reader.end_offset(p)).collect());
        let ends = ends.map_err(|e| e.to_string())?;
        Ok(ends
            .iter()
            .enumerate()
            .map(|(p, end)| end.saturating_sub(checkpoints.get(p).copied().unwrap_or(0)))
            .sum())
    };
    let folded = match store.checkpoints(&config.job).await {
        Ok(checkpoints) => (pipeline::source_topics(config).iter().enumerate())
            .map(|(index, topic)| {
                let stored = pipeline::stored_topic(index, topic);
                let mut by_partition = vec![0; config.log.partitions as usize];
                for (partition, _, next) in checkpoints.iter().filter(|(_, t, _)| t == stored) {
                    if let Some(slot) = by_partition.get_mut(*partition as usize) {
                        *slot = *next;
                    }
                }
                behind(config, topic, by_partition)
            })
            .sum(),
        Err(e) => Err(e.to_string()),
    };
    let mut mirrored = Vec::new();
    for peer in peers {
        let lag = async {
            let source = JobConfig::load(&peer_file(path, peer)).map_err(|e| e.to_string())?;
            let topic = mirrored_topic(peer, &source.log.topic);
            let mut checkpoints = Vec::new();
            for partition in 0..source.log.partitions {
                let next = store
                    .mirror_checkpoint(&config.job, &topic, partition)
                    .await
                    .map_err(|e| e.to_string())?;
                checkpoints.push(next.unwrap_or(0));
            }
            behind(&source, &source.log.topic, checkpoints)
        };
        mirrored.push((peer.clone(), lag.await));
    }
    store.close().await;
    (folded, mirrored)
}

impl RegionCommand {
    pub fn run(self) -> anyhow::Result<bool> {
        runtime()?.block_on(self.run_async())
    }

    async fn run_async(self) -> anyhow::Result<bool> {
        match self {
            RegionCommand::Status { config: arg, json } => {
                let (job, region) = region_of(&arg)?;
                let view = RegionView::load(&job, &region, arg.path()).await?;
                if json {
                    println!("{}", view.json());
                } else {
                    view.print();
                }
                Ok(true)
            }
            RegionCommand::Promote { region: target, force, config } => {
                let (job, region) = region_of(&config)?;
                let scope = &job.job;
                if !region.regions().contains(&target.as_str()) {
                    bail!(
                        "{target:?} is not a region of this job (regions: {})",
                        region.regions().join(", ")
                    );
                }
                let leases = Leases::of(&region).await?;
                let want = if force { Claim::Force } else { Claim::Acquire };
                let times = region.role().times(now_ms());
                let before =
                    leases.read(scope).await?.filter(|l| l.holder != target && l.expires_ms > times.0);
                match claim(&leases, scope, &target, want, times).await? {
                    Answer::Ours(lease) if force && before.is_some() => {
                        let old = before.map(|l| l.holder).unwrap_or_default();
                        println!(
                            "{target} holds the lease at epoch {}: {old} is fenced (its renewals are refused) and {target} takes writes once {old}'s lease has run out, in {} ms",
                            lease.epoch,
                            lease.expires_ms - times.0
                        );
                        Ok(true)
                    }
                    Answer::Ours(lease) => {
                        println!(
                            "{target} leads at epoch {} (lease expires in {} ms unless renewed)",
                            lease.epoch,
                            lease.expires_ms - times.0
                        );
                        Ok(true)
                    }
                    Answer::Theirs(Some(lease)) => {
                        eprintln!(
                            "{} holds the lease at epoch {} for {} ms more: `docfold region demote` there, or --force",
                            lease.holder,
                            lease.epoch,
                            lease.expires_ms - times.0
                        );
                        Ok(false)
                    }
                    other => bail!("the lease store answered {other:?}"),
                }
            }
            RegionCommand::MoveDoc { doc_id, region: to, config } => {
                let (job, region) = region_of(&config)?;
                if region.mode != Mode::Home {
                    bail!("documents have homes only in mode = \"home\" (this job runs {:?})", region.mode);
                }
                if !region.regions().contains(&to.as_str()) {
                    bail!("{to:?} is not a region of this job (regions: {})", region.regions().join(", "));
                }
                check(&region.residency, doc_id.as_bytes(), &to)?;
                let leases = Leases::of(&region).await?;
                let times = region.role().times(now_ms());
                match home::move_doc(&leases, &job.job, &doc_id, &to, times).await? {
                    Moved::Already(home) => {
                        println!("{doc_id} already lives in {to} (epoch {})", home.epoch);
                        Ok(true)
                    }
                    Moved::To { home, from } => {
                        let from = from
                            .map_or("no home yet".into(), |h| format!("{} at epoch {}", h.region, h.epoch));
                        println!(
                            "{doc_id}: home {to} at epoch {} (was {from}); {to} takes its writes in {} ms",
                            home.epoch,
                            (home.since_ms - times.0).max(0)
                        );
                        Ok(true)
                    }
                }
            }
            RegionCommand::Demote { config } => {
                let (job, region) = region_of(&config)?;
                let scope = &job.job;
                let leases = Leases::of(&region).await?;
                let lease = leases.read(scope).await?;
                let Some(lease) = lease.filter(|l| l.holder == region.name && l.expires_ms > now_ms()) else {
                    eprintln!("{} does not lead: nothing to release", region.name);
                    return Ok(false);
                };
                let times = region.role().times(now_ms());
                match claim(&leases, scope, &region.name, Claim::Release { epoch: lease.epoch }, times)
                    .await?
                {
                    Answer::Released => {
                        println!(
                            "{} released the lease (epoch {}): no region leads",
                            region.name, lease.epoch
                        );
                        Ok(true)
                    }
                    other => {
                        eprintln!("{} lost the lease before releasing it: {other:?}", region.name);
                        Ok(false)
                    }
                }
            }
        }
    }
}
