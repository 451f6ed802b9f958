//! The demo's regions as producers meet them: a gate in front of each region's log that
//! takes a write only while the region leads (`RoleMachine::admit`) and only while it is up,
//! and one producer per region that writes where `region::Router` says, retrying a refused
//! batch until some region takes it (an ack is a flushed write).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use docfold::config::JobConfig;
use docfold::log::{LogError, LogWriter};
use docfold::lseq::Op;
use docfold::op::{Envelope, encode};
use docfold::region::lease::LeaseStore;
use docfold::region::leases::Leases;
use docfold::region::role::{Role, RoleMachine, WriteRefused};
use docfold::region::{Mode, Router};
use docfold::store::now_ms;

use super::REGIONS;

/// Ops per write: one batch, one flush, one ack.
const BATCH_OPS: usize = 50;
/// How long a refused producer waits before it asks the router again.
const RETRY: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Steady = 0,
    Outage = 1,
    Healed = 2,
}

/// One region of the demo and the gate in front of its log.
pub struct Region {
    pub name: &'static str,
    pub file: PathBuf,
    pub config: JobConfig,
    door: Mutex<Door>,
}

#[derive(Default)]
struct Door {
    /// `None` while the region is down.
    writer: Option<Box<dyn LogWriter>>,
    /// The region's role as its lease loop last left it (`None`: never started).
    role: Option<watch::Receiver<RoleMachine>>,
}

#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("region {0} is down")]
    Down(&'static str),
    #[error(transparent)]
    NotLeader(#[from] WriteRefused),
    #[error(transparent)]
    Log(#[from] LogError),
}

impl Region {
    pub fn new(name: &'static str, file: PathBuf, config: JobConfig) -> Region {
        Region { name, file, config, door: Mutex::default() }
    }

    /// The region is up: writes reach `writer`, judged by the role `role` shows.
    pub fn open_door(&self, writer: Box<dyn LogWriter>, role: watch::Receiver<RoleMachine>) {
        *self.door.lock().expect("door") = Door { writer: Some(writer), role: Some(role) };
    }

    /// The region is down: its log is unreachable (the writer and its locks are dropped).
    pub fn close_door(&self) {
        self.door.lock().expect("door").writer = None;
    }

    /// The epoch this region leads at, if it takes writes now.
    pub async fn leads(&self) -> Option<u64> {
        self.door.lock().expect("door").role.as_ref()?.borrow().admit(now_ms()).ok()
    }

    /// Whether the region's lease loop has read the lease since it started.
    pub async fn has_seen_lease(&self) -> Option<()> {
        let door = self.door.lock().expect("door");
        door.role.as_ref().and_then(|role| role.borrow().lease().map(|_| ()))
    }

    pub fn role_name(&self) -> &'static str {
        let door = self.door.lock().expect("door");
        match door.role.as_ref().map(|role| role.borrow().role()) {
            Some(Role::Leader) => "leader",
            Some(Role::Standby) => "standby",
            Some(Role::Demoted) => "demoted",
            None => "never up",
        }
    }

    /// Appends and flushes `records` if this region takes writes; returns the epoch.
    fn write(&self, records: &[(String, Vec<u8>)]) -> Result<u64, Refused> {
        let mut door = self.door.lock().expect("door");
        let Door { writer: Some(writer), role: Some(role) } = &mut *door else {
            return Err(Refused::Down(self.name));
        };
        let epoch = role.borrow().admit(now_ms())?;
        for (key, value) in records {
            writer.append(key.as_bytes(), value)?;
        }
        writer.flush()?;
        Ok(epoch)
    }
}

/// What the producers got, shared with the demo's driver.
#[derive(Default)]
struct Tally {
    /// Ops acked per phase.
    acked: [u64; 3],
    refused: [u64; 3],
    /// The epoch of the killed leader: an ack at a higher one is the new leader's.
    killed_epoch: Option<u64>,
    /// The first ack at a higher epoch than the killed leader's: (region, epoch, when).
    first_after_kill: Option<(String, u64, Instant)>,
    stale_refusal: Option<String>,
}

pub struct Producers {
    pub regions: Vec<Region>,
    leases: Leases,
    ops: Arc<[Op]>,
    copies: usize,
    rate: u64,
    phase: AtomicUsize,
    /// The next write of the producer in this region goes to it, whatever the router says
    /// (a client that still believes its own region leads).
    stale: Vec<AtomicBool>,
    tally: Mutex<Tally>,
}

impl Producers {
    pub async fn new(
        regions: Vec<Region>,
        ops: &Arc<[Op]>,
        copies: usize,
        rate: u64,
    ) -> anyhow::Result<Arc<Producers>> {
        let settings = regions[0].config.region.as_ref().ok_or_else(|| anyhow::anyhow!("[region]"))?;
        let leases = Leases::of(settings).await?;
        let stale = regions.iter().map(|_| AtomicBool::new(false)).collect();
        Ok(Arc::new(Producers {
            regions,
            leases,
            ops: ops.clone(),
            copies,
            rate,
            phase: AtomicUsize::new(Phase::Steady as usize),
            stale,
            tally: Mutex::default(),
        }))
    }

    /// Every producer's documents: `<region>-<i>`.
    pub fn doc_ids(&self) -> Vec<String> {
        REGIONS.iter().flat_map(|r| (0..self.copies).map(move |i| format!("{r}-{i}"))).collect()
    }

    pub fn spawn(self: &Arc<Self>) -> Vec<JoinHandle<anyhow::Result<()>>> {
        (0..self.regions.len()).map(|i| tokio::spawn(self.clone().produce(i))).collect()
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as usize, Ordering::SeqCst);
    }

    /// The leader at `epoch` was killed: the first ack at a higher epoch ends the outage.
    pub fn killed(&self, epoch: u64) {
        self.tally.lock().expect("tally").killed_epoch = Some(epoch);
    }

    pub fn send_one_to(&self, region: usize) {
        self.stale[region].store(true, Ordering::SeqCst);
    }

    pub fn acked(&self, phase: Phase) -> u64 {
        self.tally.lock().expect("tally").acked[phase as usize]
    }

    pub fn refused(&self, phase: Phase) -> u64 {
        self.tally.lock().expect("tally").refused[phase as usize]
    }

    pub async fn first_write_after_kill(&self) -> Option<(String, u64, Instant)> {
        self.tally.lock().expect("tally").first_after_kill.clone()
    }

    pub fn stale_refusal(&self) -> Option<String> {
        self.tally.lock().expect("tally").stale_refusal.clone()
    }

    /// The producer in region `index`: the trace's ops to its documents at `rate`.
    async fn produce(self: Arc<Self>, index: usize) -> anyhow::Result<()> {
        let origin = self.regions[index].name;
        let router = Router { mode: Mode::ActivePassive, local: origin.into() };
        let doc_ids: Vec<String> = (0..self.copies).map(|i| format!("{origin}-{i}")).collect();
        // A batch every BATCH_OPS / rate; after an outage the producer goes on at its rate
        // (no burst to catch up), so the run lasts its length plus the outage.
        let mut pace =
            tokio::time::interval(Duration::from_micros((BATCH_OPS as u64 * 1_000_000 / self.rate).max(1)));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut route: Option<usize> = None;
        for chunk in self.ops.chunks(BATCH_OPS) {
            pace.tick().await;
            let records: Vec<(String, Vec<u8>)> = chunk
                .iter()
                .flat_map(|op| {
                    doc_ids.iter().map(|doc| {
                        (doc.clone(), encode(&Envelope::new(doc.as_str(), origin, now_ms(), op.clone())))
                    })
                })
                .collect();
            loop {
                let stale = self.stale[index].swap(false, Ordering::SeqCst);
                let target = match (stale, route) {
                    (true, _) => index,
                    (false, Some(target)) => target,
                    (false, None) => {
                        let lease = self.leases.read(&self.regions[index].config.job).await?;
                        match router.route(lease.as_ref(), now_ms()) {
                            Ok(to) => self.regions.iter().position(|r| r.name == to).unwrap_or(index),
                            Err(_) => {
                                self.refuse(None);
                                tokio::time::sleep(RETRY).await;
                                continue;
                            }
                        }
                    }
                };
                let region = &self.regions[target];
                match tokio::task::block_in_place(|| region.write(&records)) {
                    Ok(epoch) => {
                        route = Some(target);
                        self.ack(chunk.len() as u64 * self.copies as u64, region.name, epoch);
                        break;
                    }
                    Err(refused) => {
                        self.refuse(stale.then(|| refused.to_string()));
                        route = None;
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        }
        Ok(())
    }

    fn ack(&self, ops: u64, region: &str, epoch: u64) {
        let phase = self.phase.load(Ordering::SeqCst);
        let mut tally = self.tally.lock().expect("tally");
        tally.acked[phase] += ops;
        if tally.killed_epoch.is_some_and(|killed| epoch > killed) && tally.first_after_kill.is_none() {
            tally.first_after_kill = Some((region.to_string(), epoch, Instant::now()));
        }
    }

    fn refuse(&self, stale: Option<String>) {
        let phase = self.phase.load(Ordering::SeqCst);
        let mut tally = self.tally.lock().expect("tally");
        tally.refused[phase] += 1;
        if stale.is_some() {
            tally.stale_refusal = stale;
        }
    }
}
