//! `docfold region status | promote | demote`: the leadership lease of a job's regions, as
//! operators see and move it. The decisions are `region::lease`'s; this only asks.

use anyhow::{Context, bail};
use clap::Subcommand;

use std::path::Path;

use docfold::config::{JobConfig, RegionConfig};
use docfold::region::lease::{Answer, Claim, Lease, LeaseStore, claim};
use docfold::region::leases::Leases;
use docfold::region::{Mode, Router};
use docfold::store::now_ms;

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
}

fn region_of(config: &ConfigArg) -> anyhow::Result<(RegionConfig, String)> {
    let job = config.load()?;
    let region = job.region.context("the config has no [region] section: this job runs in one region")?;
    Ok((region, job.job))
}

/// The lease seen from `region`: its role and when the lease runs out.
fn describe(lease: Option<&Lease>, region: &str, now: i64) -> (&'static str, Option<i64>) {
    match lease {
        Some(l) if l.expires_ms > now && l.holder == region => ("leader", Some(l.expires_ms - now)),
        Some(l) if l.expires_ms > now => ("standby", Some(l.expires_ms - now)),
        _ => ("standby (no region leads)", None),
    }
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
    };
    let router = Router { mode: region.mode, local: local.into() };
    let to = router.route(lease.as_ref(), now_ms())?.to_string();
    if to == region.name {
        return Ok((to, config.clone()));
    }
    let file = path.and_then(Path::parent).unwrap_or(Path::new("")).join(format!("{to}.toml"));
    let routed = JobConfig::load(&file).with_context(|| format!("the job file of region {to}"))?;
    Ok((to, routed))
}

impl RegionCommand {
    pub fn run(self) -> anyhow::Result<bool> {
        runtime()?.block_on(self.run_async())
    }

    async fn run_async(self) -> anyhow::Result<bool> {
        match self {
            RegionCommand::Status { config, json } => {
                let (region, scope) = region_of(&config)?;
                let lease = Leases::of(&region).await?.read(&scope).await?;
                let now = now_ms();
                let (role, expires_in) = describe(lease.as_ref(), &region.name, now);
                if json {
                    let value = serde_json::json!({
                        "region": region.name,
                        "peers": region.peers,
                        "mode": region.mode,
                        "role": role,
                        "holder": lease.as_ref().map(|l| &l.holder),
                        "epoch": lease.as_ref().map(|l| l.epoch),
                        "expires_in_ms": expires_in,
                    });
                    println!("{value}");
                } else {
                    println!("region:  {} (peers: {})", region.name, region.peers.join(", "));
                    println!("role:    {role}");
                    match &lease {
                        Some(l) => println!(
                            "lease:   held by {} at epoch {}, {}",
                            l.holder,
                            l.epoch,
                            expires_in.map_or("expired".into(), |ms| format!("expires in {ms} ms"))
                        ),
                        None => println!("lease:   never taken"),
                    }
                }
                Ok(true)
            }
            RegionCommand::Promote { region: target, force, config } => {
                let (region, scope) = region_of(&config)?;
                if !region.regions().contains(&target.as_str()) {
                    bail!(
                        "{target:?} is not a region of this job (regions: {})",
                        region.regions().join(", ")
                    );
                }
                let leases = Leases::of(&region).await?;
                let want = if force { Claim::Force } else { Claim::Acquire };
                let times = region.role().times(now_ms());
                match claim(&leases, &scope, &target, want, times).await? {
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
            RegionCommand::Demote { config } => {
                let (region, scope) = region_of(&config)?;
                let leases = Leases::of(&region).await?;
                let lease = leases.read(&scope).await?;
                let Some(lease) = lease.filter(|l| l.holder == region.name && l.expires_ms > now_ms()) else {
                    eprintln!("{} does not lead: nothing to release", region.name);
                    return Ok(false);
                };
                let times = region.role().times(now_ms());
                match claim(&leases, &scope, &region.name, Claim::Release { epoch: lease.epoch }, times)
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
