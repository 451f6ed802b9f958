//! A region as operators see it: its role, who holds the lease (epoch, expiry), where reads
//! go, and how far its fold and its mirrors of each peer are behind. Shown by
//! `docfold region status` and, for a job with a `[region]`, by `docfold status`.

use std::path::Path;

use docfold::config::{JobConfig, RegionConfig};
use docfold::region::home;
use docfold::region::lease::{Lease, LeaseStore};
use docfold::region::leases::Leases;
use docfold::region::{Mode, Router};
use docfold::store::now_ms;

use super::region::{describe, lags};

pub struct RegionView {
    region: RegionConfig,
    role: String,
    lease: Option<Lease>,
    expires_in: Option<i64>,
    /// Home mode: which region takes each home's documents' writes.
    homes: Vec<(String, Option<Lease>)>,
    reads: Result<String, String>,
    folded: Result<u64, String>,
    mirrored: Vec<(String, Result<u64, String>)>,
    now: i64,
}

impl RegionView {
    /// Reads the lease (and the homes' leases), the fold's and the mirrors' lag; `path` is
    /// the job file, beside which the peers' job files are.
    pub async fn load(
        job: &JobConfig,
        region: &RegionConfig,
        path: Option<&Path>,
    ) -> anyhow::Result<RegionView> {
        let scope = &job.job;
        let lease = Leases::of(region).await?.read(scope).await?;
        let now = now_ms();
        let (role, expires_in) = describe(lease.as_ref(), &region.name, now);
        let (folded, mirrored) = lags(job, path, &region.peers).await;
        let mut homes = Vec::new();
        if region.mode == Mode::Home {
            let leases = Leases::of(region).await?;
            for home in region.regions() {
                homes.push((home.to_string(), leases.read(&home::group_scope(scope, home)).await?));
            }
        }
        let role = if region.mode == Mode::Home {
            let ours =
                |l: &Option<Lease>| l.as_ref().is_some_and(|l| l.holder == region.name && l.expires_ms > now);
            let taken: Vec<&str> = homes.iter().filter(|(_, l)| ours(l)).map(|(h, _)| h.as_str()).collect();
            if taken.is_empty() {
                "a replica of every home (takes no home's writes)".to_string()
            } else {
                format!("takes the writes of {}'s documents", taken.join(", "))
            }
        } else {
            role.to_string()
        };
        let router = Router { mode: region.mode, local: region.name.clone() };
        let reads = router
            .read_from(lease.as_ref(), now, region.standby_reads)
            .map(|from| from.to_string())
            .map_err(|e| e.to_string());
        Ok(RegionView {
            region: region.clone(),
            role,
            lease,
            expires_in,
            homes,
            reads,
            folded,
            mirrored,
            now,
        })
    }

    fn taken_by(&self, lease: &Option<Lease>) -> String {
        match lease {
            Some(l) if l.expires_ms > self.now => format!("{} at epoch {}", l.holder, l.epoch),
            _ => "nobody".to_string(),
        }
    }

    fn shown(lag: &Result<u64, String>) -> serde_json::Value {
        match lag {
            Ok(records) => serde_json::json!(records),
            Err(reason) => serde_json::json!({ "unknown": reason }),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "region": self.region.name,
            "peers": self.region.peers,
            "mode": self.region.mode,
            "role": self.role,
            "holder": self.lease.as_ref().map(|l| &l.holder),
            "epoch": self.lease.as_ref().map(|l| l.epoch),
            "expires_in_ms": self.expires_in,
            "reads_from": self.reads.as_deref().ok(),
            "checkpoint_lag_records": Self::shown(&self.folded),
            "replication_lag_records": self.mirrored.iter().map(|(peer, lag)| (peer.clone(), Self::shown(lag))).collect::<serde_json::Map<_, _>>(),
            "home_writes_taken_by": self.homes.iter().map(|(home, lease)| (home.clone(), serde_json::json!(self.taken_by(lease)))).collect::<serde_json::Map<_, _>>(),
        })
    }

    pub fn print(&self) {
        println!("region:  {} (peers: {})", self.region.name, self.region.peers.join(", "));
        println!("role:    {}", self.role);
        for (home, lease) in &self.homes {
            println!("home:    the writes of {home}'s documents are taken by {}", self.taken_by(lease));
        }
        match &self.lease {
            _ if self.region.mode == Mode::Home => {}
            Some(l) => println!(
                "lease:   held by {} at epoch {}, {}",
                l.holder,
                l.epoch,
                self.expires_in.map_or("expired".into(), |ms| format!("expires in {ms} ms"))
            ),
            None => println!("lease:   never taken"),
        }
        match &self.reads {
            Ok(from) => println!("reads:   served by {from}"),
            Err(reason) => println!("reads:   nowhere: {reason}"),
        }
        println!("fold:    {} records not checkpointed", Self::shown(&self.folded));
        for (peer, lag) in &self.mirrored {
            println!("mirror:  {} records of {peer} not mirrored here", Self::shown(lag));
        }
    }
}
