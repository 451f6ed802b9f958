//! A producer's writer in home mode: each record goes to the log of the region that takes its
//! document's writes (`Router::route_doc`), by a view of the document's home no older than
//! two thirds of the ttl, and every region's log it wrote to is flushed at least every third
//! of the ttl. So a record routed to an old home is durable before a moved document's new
//! home takes any write (`home::decide_move` waits the ttl + the skew bound).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::home::{Home, Seen, first_home, group_scope, place};
use super::lease::{Lease, LeaseStore};
use super::leases::Leases;
use super::residency::check;
use super::{RouteError, Router};
use crate::config::RegionConfig;
use crate::log::{LogError, LogWriter, Record};
use crate::store::now_ms;

/// Opens the log writer of a region, by name.
pub type OpenLog = Box<dyn FnMut(&str) -> Result<Box<dyn LogWriter>, LogError> + Send>;

pub struct HomeWriter {
    rt: tokio::runtime::Handle,
    leases: Leases,
    job: String,
    region: RegionConfig,
    router: Router,
    open: OpenLog,
    /// Views of documents' homes, by document.
    homes: HashMap<String, Seen>,
    /// Group leases by home region, and when each was read.
    groups: HashMap<String, (Option<Lease>, i64)>,
    writers: BTreeMap<String, Box<dyn LogWriter>>,
    flushed: Instant,
    /// Where the last record went: (region, the document's home epoch, when it was handed
    /// to that region's log).
    last: Option<(String, u64, Instant)>,
}

impl HomeWriter {
    /// A writer for producers in region `local` of `job` (`region.mode` is `home`).
    pub fn new(
        rt: tokio::runtime::Handle,
        leases: Leases,
        job: &str,
        region: RegionConfig,
        local: &str,
        open: OpenLog,
    ) -> HomeWriter {
        let router = Router { mode: region.mode, local: local.into() };
        HomeWriter {
            rt,
            leases,
            job: job.into(),
            region,
            router,
            open,
            homes: HashMap::new(),
            groups: HashMap::new(),
            writers: BTreeMap::new(),
            flushed: Instant::now(),
            last: None,
        }
    }

    /// Where the last appended record went: the region, the epoch of its document's home,
    /// and when it was handed to the region's log (after any wait for a move).
    pub fn last_route(&self) -> Option<(&str, u64, Instant)> {
        self.last.as_ref().map(|(region, epoch, at)| (region.as_str(), *epoch, *at))
    }

    fn ttl(&self) -> i64 {
        i64::try_from(self.region.ttl_ms).unwrap_or(i64::MAX)
    }

    /// The document's home as seen now, read again (placed, if it has no home) when the
    /// view has run out.
    fn home(&mut self, doc_id: &str) -> Result<Seen, LogError> {
        let now = now_ms();
        if let Some(seen) = self.homes.get(doc_id).filter(|s| now < s.valid_until_ms) {
            return Ok(seen.clone());
        }
        let first = first_home(&self.region.home, &self.region.residency, doc_id, &self.router.local);
        let placed = self.rt.block_on(place(&self.leases, &self.job, doc_id, &first, now));
        let seen = Seen::new(placed.map_err(route_error)?, now, self.ttl());
        self.homes.insert(doc_id.into(), seen.clone());
        Ok(seen)
    }

    /// The group lease of `home`, read again after a third of the ttl.
    fn group(&mut self, home: &Home) -> Result<Option<Lease>, LogError> {
        let now = now_ms();
        if let Some((lease, _)) = self.groups.get(&home.region).filter(|(_, at)| now - at < self.ttl() / 3) {
            return Ok(lease.clone());
        }
        let scope = group_scope(&self.job, &home.region);
        let lease = self.rt.block_on(self.leases.read(&scope)).map_err(route_error)?;
        self.groups.insert(home.region.clone(), (lease.clone(), now));
        Ok(lease)
    }

    fn writer(&mut self, region: &str) -> Result<&mut Box<dyn LogWriter>, LogError> {
        if !self.writers.contains_key(region) {
            let writer = (self.open)(region)?;
            self.writers.insert(region.to_string(), writer);
        }
        Ok(self.writers.get_mut(region).expect("opened above"))
    }
}

fn route_error(error: impl std::fmt::Display) -> LogError {
    LogError::Route(error.to_string())
}

impl LogWriter for HomeWriter {
    /// Appends to the log of the region that takes the document's writes; while the
    /// document moves, flushes what it holds and waits for the new home.
    fn append(&mut self, key: &[u8], value: &[u8]) -> Result<(), LogError> {
        let doc_id = String::from_utf8_lossy(key).into_owned();
        if self.flushed.elapsed() >= Duration::from_millis(self.region.ttl_ms / 3) {
            self.flush()?;
        }
        loop {
            let seen = self.home(&doc_id)?;
            let group = self.group(&seen.home)?;
            let to = match self.router.route_doc(&doc_id, &seen, group.as_ref(), now_ms()) {
                Ok(to) => to.to_string(),
                Err(RouteError::Moving { in_ms, to, .. }) => {
                    tracing::warn!(doc_id, to, in_ms, "the document is moving: waiting for its new home");
                    self.flush()?;
                    std::thread::sleep(Duration::from_millis(u64::try_from(in_ms).unwrap_or(0)));
                    continue;
                }
                Err(RouteError::Stale { .. }) => continue,
                Err(other) => return Err(route_error(other)),
            };
            check(&self.region.residency, key, &to).map_err(route_error)?;
            let at = Instant::now();
            self.writer(&to)?.append(key, value)?;
            self.last = Some((to, seen.home.epoch, at));
            return Ok(());
        }
    }

    fn copy(&mut self, _partition: u32, _record: &Record) -> Result<(), LogError> {
        Err(LogError::Route("a home-mode producer only appends; the mirror copies".into()))
    }

    fn flush(&mut self) -> Result<(), LogError> {
        for writer in self.writers.values_mut() {
            writer.flush()?;
        }
        self.flushed = Instant::now();
        Ok(())
    }
}
