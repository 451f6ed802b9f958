//! Regions: the leadership lease and its fencing epoch (`lease`), a region's role
//! (`role`), and where producers write (`Router`). Those decisions are pure; the lease
//! store backends (`sql`, `dynamodb`, chosen by URL in `leases`) only read and
//! compare-and-set, and `runtime` drives the role machine with the wall clock.

pub mod dynamodb;
pub mod home;
pub mod home_writer;
pub mod lease;
pub mod leases;
pub mod residency;
pub mod role;
pub mod runtime;
pub mod sql;

use home::Seen;
use lease::Lease;

/// How regions share writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One leader region accepts writes; standbys fold the mirrored topics.
    ActivePassive,
    /// Every region accepts writes; the CRDT merges.
    ActiveActive,
    /// A document's writes go to its home region (`home`); the others fold them as replicas.
    Home,
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
    #[error(
        "no region takes the writes of home {home}'s documents: its group lease is not held (is `docfold run` running in {home}? with auto_failover another region takes it after the ttl)"
    )]
    HomeDown { home: String },
    #[error("document {doc_id:?} is moving to region {to}, which takes its writes in {in_ms} ms")]
    Moving { doc_id: String, to: String, in_ms: i64 },
    #[error("this view of document {doc_id:?}'s home is older than the lease ttl: read it again")]
    Stale { doc_id: String },
}

impl Router {
    /// The region whose log takes the write, given the lease as last seen at `now_ms`.
    /// In home mode `lease` is the group lease of the document's home (`route_doc`).
    pub fn route<'a>(&'a self, lease: Option<&'a Lease>, now_ms: i64) -> Result<&'a str, RouteError> {
        match self.mode {
            Mode::ActiveActive => Ok(&self.local),
            Mode::ActivePassive | Mode::Home => match lease {
                Some(lease) if now_ms < lease.expires_ms => Ok(&lease.holder),
                _ => Err(RouteError::NoLeader),
            },
        }
    }

    /// Home mode: the region whose log takes a write to `doc_id`, given a view of its home
    /// and the home's group lease (`home::group_scope`) as last seen at `now_ms`.
    pub fn route_doc<'a>(
        &'a self,
        doc_id: &str,
        seen: &Seen,
        group: Option<&'a Lease>,
        now_ms: i64,
    ) -> Result<&'a str, RouteError> {
        if now_ms >= seen.valid_until_ms {
            return Err(RouteError::Stale { doc_id: doc_id.into() });
        }
        if now_ms < seen.home.since_ms {
            let (to, in_ms) = (seen.home.region.clone(), seen.home.since_ms - now_ms);
            return Err(RouteError::Moving { doc_id: doc_id.into(), to, in_ms });
        }
        self.route(group, now_ms).map_err(|_| RouteError::HomeDown { home: seen.home.region.clone() })
    }

    /// The region whose projections and cache a reader uses: its own when every region
    /// serves reads (active-active, home mode's warm replicas, or `standby_reads`), else the
    /// leader's.
    pub fn read_from<'a>(
        &'a self,
        lease: Option<&'a Lease>,
        now_ms: i64,
        standby_reads: bool,
    ) -> Result<&'a str, RouteError> {
        if standby_reads || self.mode != Mode::ActivePassive {
            Ok(&self.local)
        } else {
            self.route(lease, now_ms)
        }
    }
}
