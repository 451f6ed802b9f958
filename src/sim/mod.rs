//! The region simulator (`docfold sim regions`): a deterministic discrete-event run of
//! several regions under virtual time. It drives the code the real runtime runs, not a copy
//! of it: `region::Router` routes every write, a `region::role::RoleMachine` per region and
//! lease scope takes, renews and loses leases decided by `region::lease::decide` at a
//! witness, `RoleMachine::admit` is the gate in front of each region's log, the mirror's
//! rules name and check the mirrored topics (`mirror::check`) and its backoff is the
//! mirror's, and each region folds every op with `fold::PartitionFold` (real LSEQ ops, made
//! by `lseq::Replica` editors and encoded with `op::encode`). What is modelled is only the
//! I/O: links (one-way delay, seeded jitter, cuts), a broker's append and fetch (a long
//! poll), a store's flush window.
//!
//! One seed gives one run, byte for byte: events are ordered by (time, sequence number), and
//! nothing reads a wall clock or an unseeded hash.

pub(crate) mod charts;
mod engine;
pub mod figures;
mod leases;
mod mirror;
mod producers;
pub mod report;
mod scenario;

pub use figures::Figures;
pub use scenario::{Fault, Offline, Scenario};

use crate::config::RegionConfig;
use crate::region::role::RoleSettings;

/// How regions share writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Strategy {
    /// Active-passive: one leader region takes every write; standbys fold the mirrors.
    Ap,
    /// Active-active: every region takes its own users' writes; the CRDT merges.
    Aa,
    /// A home region per document: a document's writes go to the holder of its home's lease.
    Home,
}

impl Strategy {
    pub const ALL: [Strategy; 3] = [Strategy::Ap, Strategy::Aa, Strategy::Home];

    pub fn label(self) -> &'static str {
        match self {
            Strategy::Ap => "active-passive",
            Strategy::Aa => "active-active",
            Strategy::Home => "home region per document",
        }
    }
}

/// Where the mirrors run and how records cross.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum MirrorMode {
    /// In the target region, fetching (what `docfold mirror` does by default, and
    /// MirrorMaker 2).
    #[default]
    Pull,
    /// In the source region, sending new records across after a linger (`docfold mirror
    /// --checkpoint-ms` run at the source: the flush and the checkpoint every few hundred ms).
    Push,
}

/// One simulated run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub strategy: Strategy,
    pub mirror: MirrorMode,
    pub users: usize,
    pub docs: usize,
    pub seed: u64,
    pub scenario: Scenario,
    pub net: Net,
    pub timing: Timing,
    pub behaviour: Behaviour,
}

impl Settings {
    /// The defaults of the report: three regions, 100,000 users over 20,000 documents.
    pub fn new(strategy: Strategy, scenario: Scenario) -> Settings {
        Settings {
            strategy,
            mirror: MirrorMode::Pull,
            users: 100_000,
            docs: 20_000,
            seed: 1,
            scenario,
            net: Net::default(),
            timing: Timing::default(),
            behaviour: Behaviour::default(),
        }
    }

    /// The role machine's settings of `region` for lease `scope` (led first by `leader`).
    fn role(&self, region: usize, leader: usize) -> RoleSettings {
        let config = RegionConfig {
            name: self.net.regions[region].clone(),
            peers: self.net.regions.iter().filter(|r| **r != self.net.regions[region]).cloned().collect(),
            ttl_ms: self.timing.ttl_ms,
            skew_ms: self.timing.skew_ms,
            auto_failover: true,
            initial_leader: Some(self.net.regions[leader].clone()),
            ..RegionConfig::default()
        };
        config.role()
    }
}

/// The regions and the links between them.
#[derive(Clone, Debug)]
pub struct Net {
    pub regions: Vec<String>,
    /// One-way delay between regions, milliseconds (symmetric).
    pub one_way_ms: Vec<Vec<i64>>,
    /// Each message is delayed by up to this much more (uniform, seeded).
    pub jitter_ms: i64,
    /// One-way delay from every region to the lease store (a witness).
    pub lease_one_way_ms: i64,
}

impl Default for Net {
    /// Half the measured public round trips (REGIONS.md), as the real-engine tests use.
    fn default() -> Net {
        Net {
            regions: ["us-east-1", "eu-west-1", "ap-southeast-1"].map(String::from).to_vec(),
            one_way_ms: vec![vec![0, 35, 110], vec![35, 0, 80], vec![110, 80, 0]],
            jitter_ms: 5,
            lease_one_way_ms: 10,
        }
    }
}

/// The time things take inside a region, and the lease's timing.
#[derive(Clone, Debug)]
pub struct Timing {
    /// A produce into a region's own log until its ack (acks = all within the region).
    pub local_ack_ms: i64,
    /// The mirror writing a fetched batch into the target log.
    pub copy_ms: i64,
    /// The mirror's long poll: a fetch with nothing to return waits this long at the source.
    pub fetch_wait_ms: i64,
    /// Records per fetch (or push), all partitions together (about 5 MB of ops).
    pub fetch_max: usize,
    /// A pushing mirror waits this long after a new record to send it with what follows.
    pub push_linger_ms: i64,
    /// `pipeline.flush_interval_ms`: projections and caches are written this often.
    pub flush_ms: i64,
    pub ttl_ms: u64,
    pub skew_ms: u64,
    /// A request with no answer this long is given up and retried (the client's timeout).
    pub timeout_ms: i64,
    /// A producer refused (or told there is no leader) asks the router again this much later.
    pub retry_ms: i64,
    /// After the users stop, the run goes on this long at most for the regions to catch up.
    pub drain_ms: i64,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            local_ack_ms: 4,
            copy_ms: 2,
            fetch_wait_ms: 50,
            fetch_max: 50_000,
            push_linger_ms: 5,
            flush_ms: 100,
            ttl_ms: 3_000,
            skew_ms: 300,
            timeout_ms: 1_000,
            retry_ms: 100,
            drain_ms: 30_000,
        }
    }
}

/// How simulated users edit.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// Mean pause between typing bursts (exponential).
    pub think_mean_ms: f64,
    /// Keystrokes per burst, uniform in this range.
    pub burst: (u32, u32),
    /// Time between keystrokes in a burst, uniform in this range.
    pub key_ms: (i64, i64),
    /// Share of keystrokes that are backspaces.
    pub delete_share: f64,
    /// Share of users who edit a document homed in their own region.
    pub locality: f64,
    /// Zipf exponent of document popularity.
    pub zipf_s: f64,
}

impl Default for Behaviour {
    fn default() -> Behaviour {
        Behaviour {
            think_mean_ms: 60_000.0,
            burst: (5, 40),
            key_ms: (120, 400),
            delete_share: 0.1,
            locality: 0.9,
            zipf_s: 1.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("sim: {0}")]
    Settings(String),
    #[error("sim: the fold refused a generated op: {0}")]
    Fold(#[from] crate::fold::BadRecord),
    #[error("sim: an editor could not make an op: {0}")]
    Edit(#[from] crate::lseq::EditError),
}

/// Runs one simulation to the end and returns its figures.
pub fn run(settings: &Settings) -> Result<Figures, SimError> {
    engine::Sim::new(settings)?.run()
}
