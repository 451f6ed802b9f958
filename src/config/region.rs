//! `[region]`: this job's region among its peers, how regions share writes, and the
//! leadership lease (`region::lease`). Absent: one region, no lease.

use serde::{Deserialize, Serialize};

use super::Url;
use crate::region::Mode;
use crate::region::home::HomeRule;
use crate::region::residency::{Residency, check};
use crate::region::role::RoleSettings;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegionConfig {
    /// This region's name; its log's mirrors elsewhere are `<name>.<log.topic>`.
    pub name: String,
    /// The other regions, by name.
    pub peers: Vec<String>,
    /// `"active-passive"` (one leader takes writes), `"active-active"`, or `"home"` (a
    /// document's writes go to its home region).
    pub mode: Mode,
    /// The lease store every region reaches: `sqlite://PATH` (one machine),
    /// `postgres://…` or `dynamodb://TABLE` (in one AWS region, not a global table).
    pub leases: Url,
    /// DynamoDB lease store: endpoint override, e.g. `http://127.0.0.1:8000`.
    pub leases_endpoint: Option<String>,
    /// DynamoDB lease store: the AWS region (default from the environment).
    pub aws_region: Option<String>,
    /// Standbys serve reads (projections, cache) from their own fold of the mirrored topics.
    pub standby_reads: bool,
    /// A standby takes the lease when its leader fails to renew it, without an operator.
    pub auto_failover: bool,
    /// How long a lease runs; the leader renews every third of it.
    pub ttl_ms: u64,
    /// The most two regions' clocks may differ.
    pub skew_ms: u64,
    /// The region that leads when no lease was ever taken (default: the first by name).
    pub initial_leader: Option<String>,
    /// Documents kept inside some regions (`[[region.residency]] prefix = "eu/"
    /// regions = ["eu-west-1"]`); the first matching rule decides.
    pub residency: Vec<Residency>,
    /// Home mode: where documents are first homed (`[[region.home]] prefix = "eu/"
    /// region = "eu-west-1"`; the first matching rule decides, else the first writer's region).
    pub home: Vec<HomeRule>,
}

impl Default for RegionConfig {
    fn default() -> Self {
        RegionConfig {
            name: String::new(),
            peers: Vec::new(),
            mode: Mode::ActivePassive,
            leases: Url::default(),
            leases_endpoint: None,
            aws_region: None,
            standby_reads: true,
            auto_failover: false,
            ttl_ms: 10_000,
            skew_ms: 1_000,
            initial_leader: None,
            residency: Vec::new(),
            home: Vec::new(),
        }
    }
}

impl RegionConfig {
    /// Every region, this one included, sorted.
    pub fn regions(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self.peers.iter().map(String::as_str).chain([self.name.as_str()]).collect();
        all.sort_unstable();
        all
    }

    /// The role machine's settings.
    pub fn role(&self) -> RoleSettings {
        let first = self.regions().first().map_or(String::new(), |r| r.to_string());
        RoleSettings {
            region: self.name.clone(),
            ttl_ms: i64::try_from(self.ttl_ms).unwrap_or(i64::MAX),
            skew_ms: i64::try_from(self.skew_ms).unwrap_or(i64::MAX),
            auto_failover: self.auto_failover,
            initial_leader: self.initial_leader.clone().unwrap_or(first),
        }
    }

    /// The role machine's settings for the group lease of `home`'s documents (home mode):
    /// the home itself takes it first.
    pub fn home_role(&self, home: &str) -> RoleSettings {
        RoleSettings { initial_leader: home.to_string(), ..self.role() }
    }

    /// What `peer` (another region's `[region]` of the same job) must agree on with this
    /// one, else regions could each believe they lead: the setting and why, or `None`.
    pub fn disagreement(&self, peer: &RegionConfig) -> Option<(&'static str, String)> {
        let (ours, theirs) = (self.role().initial_leader, peer.role().initial_leader);
        if !peer.regions().contains(&self.name.as_str()) {
            Some(("region.peers", format!("region {} does not list {} as a peer", peer.name, self.name)))
        } else if self.mode != peer.mode {
            Some((
                "region.mode",
                format!("{} runs {:?}, {} runs {:?}", self.name, self.mode, peer.name, peer.mode),
            ))
        } else if self.mode != Mode::ActiveActive && self.lease_store() != peer.lease_store() {
            let why = format!(
                "{} and {} name different lease stores ({} and {}): each store would grant its own leader",
                self.name,
                peer.name,
                self.lease_store(),
                peer.lease_store()
            );
            Some(("region.leases", why))
        } else if self.residency != peer.residency {
            let why = format!(
                "{} and {} name different residency rules: a mirror or a producer could put a resident document where it may not live",
                self.name, peer.name
            );
            Some(("region.residency", why))
        } else if self.home != peer.home {
            let why = format!(
                "{} and {} name different home rules: their producers would place one document in two homes",
                self.name, peer.name
            );
            Some(("region.home", why))
        } else if self.mode == Mode::ActivePassive && ours != theirs {
            let why = format!(
                "{} names {ours} as the initial leader and {} names {theirs}: name one region in every job file",
                self.name, peer.name
            );
            Some(("region.initial_leader", why))
        } else {
            None
        }
    }

    /// The lease store whatever route a region takes to it (regions may reach one database
    /// through different hosts or proxies): the PostgreSQL database, the DynamoDB table and
    /// its AWS region, the SQLite file.
    fn lease_store(&self) -> String {
        match self.leases.scheme() {
            Some(("postgres" | "postgresql", rest)) => {
                let database = rest.split('?').next().unwrap_or(rest).rsplit('/').next().unwrap_or(rest);
                format!("PostgreSQL database {database}")
            }
            Some(("dynamodb", table)) => {
                format!(
                    "DynamoDB table {table} in {}",
                    self.aws_region.as_deref().unwrap_or("the default AWS region")
                )
            }
            _ => self.leases.to_string(),
        }
    }

    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        let name_ok = |name: &str| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !name_ok(&self.name) {
            return Err((
                "region.name",
                format!("{:?}: letters, digits, '-' and '_' only, not empty", self.name),
            ));
        }
        if let Some(peer) = self.peers.iter().find(|p| !name_ok(p)) {
            return Err(("region.peers", format!("{peer:?}: letters, digits, '-' and '_' only, not empty")));
        }
        let regions = self.regions();
        if regions.windows(2).any(|w| w[0] == w[1]) {
            return Err(("region.peers", "names each region once, not this one".into()));
        }
        if let Some(leader) = &self.initial_leader
            && !regions.contains(&leader.as_str())
        {
            return Err(("region.initial_leader", format!("{leader:?} is neither region.name nor a peer")));
        }
        if self.mode != Mode::ActiveActive {
            match self.leases.scheme() {
                Some(("sqlite" | "postgres" | "postgresql" | "dynamodb", rest)) if !rest.is_empty() => {}
                _ => {
                    return Err((
                        "region.leases",
                        "active-passive and home mode need a lease store: sqlite://PATH, postgres://… or dynamodb://TABLE"
                            .into(),
                    ));
                }
            }
        }
        if !self.home.is_empty() && self.mode != Mode::Home {
            return Err(("region.home", "home rules need mode = \"home\"".into()));
        }
        for rule in &self.home {
            if rule.prefix.is_empty() || !regions.contains(&rule.region.as_str()) {
                return Err((
                    "region.home",
                    format!(
                        "prefix {:?}: each rule needs a prefix and one of this job's regions",
                        rule.prefix
                    ),
                ));
            }
            if let Err(resident) = check(&self.residency, rule.prefix.as_bytes(), &rule.region) {
                return Err(("region.home", format!("a home rule breaks a residency rule: {resident}")));
            }
        }
        for rule in &self.residency {
            if rule.prefix.is_empty() || rule.regions.is_empty() {
                return Err(("region.residency", "each rule needs a prefix and at least one region".into()));
            }
            if let Some(unknown) = rule.regions.iter().find(|r| !regions.contains(&r.as_str())) {
                return Err((
                    "region.residency",
                    format!("{unknown:?} (prefix {:?}) is neither region.name nor a peer", rule.prefix),
                ));
            }
        }
        if self.ttl_ms < 300 || self.skew_ms >= self.ttl_ms {
            return Err(("region.ttl_ms", "must be at least 300 and more than region.skew_ms".into()));
        }
        Ok(())
    }
}
