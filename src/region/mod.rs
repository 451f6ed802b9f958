//! Regions: the leadership lease and its fencing epoch (`lease`), a region's role
//! (`role`), and where producers write (`Router`). Those decisions are pure; the lease
//! store backends (`sql`, `dynamodb`, chosen by URL in `leases`) only read and
//! compare-and-set, and `runtime` drives the role machine with the wall clock.

pub mod dynamodb;
pub mod lease;
pub mod leases;
pub mod residency;
pub mod role;
pub mod runtime;
pub mod sql;

use lease::Lease;

/// How regions share writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One leader region accepts writes; standbys fold the mirrored topics.
    ActivePassive,
    /// Every region accepts writes; the CRDT merges.
    ActiveActive,
}

/// Where a producer or a reader in region `local` goes.
#[derive(Clone, Debug)]
pub struct Router {
    pub mode: Mode,
    pub local: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("no region holds the leadership lease: promote one with `docfold region promote REGION`")]
    NoLeader,
}

impl Router {
    /// The region whose log takes the write, given the lease as last seen at `now_ms`.
    pub fn route<'a>(&'a self, lease: Option<&'a Lease>, now_ms: i64) -> Result<&'a str, RouteError> {
        match self.mode {
            Mode::ActiveActive => Ok(&self.local),
            Mode::ActivePassive => match lease {
                Some(lease) if now_ms < lease.expires_ms => Ok(&lease.holder),
                _ => Err(RouteError::NoLeader),
            },
        }
    }

    /// The region whose projections and cache a reader uses: its own when every region
    /// serves reads (active-active, or `standby_reads`), else the leader's.
    pub fn read_from<'a>(
        &'a self,
        lease: Option<&'a Lease>,
        now_ms: i64,
        standby_reads: bool,
    ) -> Result<&'a str, RouteError> {
        if standby_reads || self.mode == Mode::ActiveActive {
            Ok(&self.local)
        } else {
            self.route(lease, now_ms)
        }
    }
}
