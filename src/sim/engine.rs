//! The simulator's state and its event loop: a queue ordered by (virtual time, sequence
//! number), the regions (up or down, their role machines, their fold), the faults, and the
//! flush that makes folded ops visible. Producers, the lease witness and the mirrors are in
//! their own files, as methods of the same `Sim`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustc_hash::{FxHashMap, FxHashSet};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::figures::{Figures, Recorder};
use super::leases::Witness;
use super::mirror::Mirror;
use super::producers::{OpInfo, User};
use super::{Fault, Settings, SimError, Strategy};
use crate::fold::{Folded, PartitionFold};
use crate::region::lease::{Answer, Lease};
use crate::region::role::{Request, RoleMachine};

/// One region.
pub(super) struct Region {
    pub up: bool,
    /// This region's clock minus the true (virtual) time, within the skew bound.
    pub clock_offset_ms: i64,
    /// Its own topic (`doc-ops`): the ops it took, in offset order.
    pub log: Vec<u32>,
    /// Its role per lease scope (none in active-active).
    pub machines: Vec<RoleMachine>,
    pub fold: PartitionFold,
    /// Positions handed to the fold (the partition position, see `fold::Doc::offset`).
    pub position: u64,
    /// Ops folded since the last flush.
    pub unflushed: Vec<u32>,
}

pub(super) enum Event {
    Edit(u32),
    Send(u32),
    Arrive { op: u32, region: usize, attempt: u32 },
    Reply { op: u32, attempt: u32, acked: bool },
    Timeout { op: u32, attempt: u32 },
    Flush(usize),
    LeaseTick(usize),
    LeaseAt { region: usize, scope: usize, request: Request, asked_ms: i64 },
    LeaseAnswer { region: usize, scope: usize, answer: LeaseReply },
    Fetch { mirror: usize, generation: u64 },
    Push { mirror: usize, generation: u64 },
    FetchAt { mirror: usize, generation: u64 },
    FetchExpired { mirror: usize, generation: u64 },
    Fetched { mirror: usize, from: usize, to: usize, generation: u64 },
    Copied { mirror: usize, from: usize, to: usize, generation: u64 },
    FaultStarts(usize),
    FaultEnds(usize),
    OfflineReturn,
    StopUsers,
}

pub(super) enum LeaseReply {
    Claimed(Answer),
    Read(Option<Lease>),
}

pub(super) struct Sim<'s> {
    pub s: &'s Settings,
    pub now: i64,
    queue: BinaryHeap<Reverse<(i64, u64)>>,
    events: FxHashMap<u64, Event>,
    next_seq: u64,
    pub rng: StdRng,
    pub regions: Vec<Region>,
    pub ops: Vec<OpInfo>,
    pub users: Vec<User>,
    pub witness: Witness,
    pub mirrors: Vec<Mirror>,
    /// Cut links, as (lower, higher) region index; the lease witness is index `regions.len()`.
    cuts: FxHashSet<(usize, usize)>,
    pub editing: bool,
    pub rec: Recorder,
}

impl<'s> Sim<'s> {
    pub fn new(s: &'s Settings) -> Result<Sim<'s>, SimError> {
        let n = s.net.regions.len();
        if !(2..=8).contains(&n)
            || s.net.one_way_ms.len() != n
            || s.net.one_way_ms.iter().any(|row| row.len() != n)
        {
            return Err(SimError::Settings("2 to 8 regions, with an n × n one-way matrix".into()));
        }
        if s.users == 0 || s.docs < n {
            return Err(SimError::Settings(format!("at least one user and {n} documents")));
        }
        s.scenario.check(&s.net.regions).map_err(SimError::Settings)?;
        let scopes = match s.strategy {
            Strategy::Aa => 0,
            Strategy::Ap => 1,
            Strategy::Home => n,
        };
        let skew = i64::try_from(s.timing.skew_ms).unwrap_or(0);
        let regions = (0..n)
            .map(|r| Region {
                up: true,
                // Clocks apart by up to the skew bound: the first region slow, the last fast.
                clock_offset_ms: skew * (2 * r as i64 - (n as i64 - 1)) / (2 * (n as i64 - 1)).max(1),
                log: Vec::new(),
                machines: (0..scopes).map(|scope| RoleMachine::new(s.role(r, scope))).collect(),
                fold: PartitionFold::new(),
                position: 0,
                unflushed: Vec::new(),
            })
            .collect();
        let mut sim = Sim {
            s,
            now: 0,
            queue: BinaryHeap::new(),
            events: FxHashMap::default(),
            next_seq: 0,
            rng: StdRng::seed_from_u64(s.seed),
            regions,
            ops: Vec::new(),
            users: Vec::new(),
            witness: Witness::default(),
            mirrors: Mirror::all(s)?,
            cuts: FxHashSet::default(),
            editing: true,
            rec: Recorder::new(n),
        };
        sim.start_users();
        sim.make_offline_ops()?;
        for r in 0..n {
            sim.at(0, Event::LeaseTick(r));
            sim.at(s.timing.flush_ms, Event::Flush(r));
        }
        if s.mirror == super::MirrorMode::Pull {
            for m in 0..sim.mirrors.len() {
                sim.at(0, Event::Fetch { mirror: m, generation: 0 });
            }
        }
        for (i, fault) in s.scenario.faults.iter().enumerate() {
            let (at, until) = fault.window();
            sim.at(at, Event::FaultStarts(i));
            sim.at(until, Event::FaultEnds(i));
        }
        if let Some(offline) = &s.scenario.offline {
            sim.at(offline.returns_at_ms, Event::OfflineReturn);
        }
        sim.at(s.scenario.duration_ms, Event::StopUsers);
        Ok(sim)
    }

    /// Schedules `event` at virtual time `at`.
    pub fn at(&mut self, at: i64, event: Event) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse((at.max(self.now), seq)));
        self.events.insert(seq, event);
    }

    pub fn run(mut self) -> Result<Figures, SimError> {
        let end = self.s.scenario.duration_ms + self.s.timing.drain_ms;
        while let Some(Reverse((at, seq))) = self.queue.pop() {
            if at > end || (!self.editing && self.quiet()) {
                break;
            }
            self.now = at;
            self.rec.events += 1;
            let event = self.events.remove(&seq).expect("every queued sequence number has its event");
            self.handle(event)?;
        }
        let mut rec = std::mem::replace(&mut self.rec, Recorder::new(0));
        Ok(rec.figures(&self)?)
    }

    fn handle(&mut self, event: Event) -> Result<(), SimError> {
        match event {
            Event::Edit(user) => self.edit(user)?,
            Event::Send(op) => self.send(op),
            Event::Arrive { op, region, attempt } => self.arrive(op, region, attempt)?,
            Event::Reply { op, attempt, acked } => self.reply(op, attempt, acked),
            Event::Timeout { op, attempt } => self.timed_out(op, attempt),
            Event::Flush(r) => self.flush(r),
            Event::LeaseTick(r) => self.lease_tick(r),
            Event::LeaseAt { region, scope, request, asked_ms } => {
                self.lease_at(region, scope, request, asked_ms)
            }
            Event::LeaseAnswer { region, scope, answer } => self.lease_answer(region, scope, answer),
            Event::Fetch { mirror, generation } => self.fetch(mirror, generation),
            Event::Push { mirror, generation } => self.push(mirror, generation),
            Event::FetchAt { mirror, generation } => self.fetch_at(mirror, generation),
            Event::FetchExpired { mirror, generation } => self.fetch_expired(mirror, generation),
            Event::Fetched { mirror, from, to, generation } => self.fetched(mirror, from, to, generation),
            Event::Copied { mirror, from, to, generation } => self.copied(mirror, from, to, generation)?,
            Event::FaultStarts(i) => self.fault(i, true),
            Event::FaultEnds(i) => self.fault(i, false),
            Event::OfflineReturn => self.offline_return(),
            Event::StopUsers => self.editing = false,
        }
        Ok(())
    }

    /// Every acked op folded in every region, and nothing left to send.
    fn quiet(&self) -> bool {
        self.rec.acked == self.rec.everywhere && self.rec.unacked == 0
    }

    /// A region's clock now.
    pub fn clock(&self, region: usize) -> i64 {
        self.now + self.regions[region].clock_offset_ms
    }

    /// One-way delay of a message from `a` to `b` (with jitter), or `None` when it cannot go:
    /// the link is cut or either end is down.
    pub fn delay(&mut self, a: usize, b: usize) -> Option<i64> {
        if !self.regions[a].up {
            return None;
        }
        self.reach(a, b)
    }

    /// One-way delay of a message between a user in region `a`'s area and region `b`:
    /// `None` when `b` is down or the link is cut.
    pub fn reach(&mut self, a: usize, b: usize) -> Option<i64> {
        if !self.regions[b].up || self.cut(a, b) {
            return None;
        }
        if a == b {
            return Some(1);
        }
        let jitter = self.rng.random_range(0..=self.s.net.jitter_ms);
        Some(self.s.net.one_way_ms[a][b] + jitter)
    }

    fn set_cut(&mut self, links: &[(usize, usize)], cut: bool) {
        if cut {
            self.rec.cut(self.now);
        } else {
            self.rec.heal(self.now);
        }
        for &(a, b) in links {
            let link = (a.min(b), a.max(b));
            if cut {
                self.cuts.insert(link)
            } else {
                self.cuts.remove(&link)
            };
        }
    }

    /// Whether the link between `a` and `b` is cut (`b` = `regions.len()`: the lease witness).
    pub fn cut(&self, a: usize, b: usize) -> bool {
        self.cuts.contains(&(a.min(b), a.max(b)))
    }

    /// Appends `op` to region `r`'s own log and folds it there.
    pub fn append(&mut self, r: usize, op: u32) -> Result<(), SimError> {
        self.regions[r].log.push(op);
        let info = &mut self.ops[op as usize];
        if info.appended_ms < 0 {
            info.appended_ms = self.now;
        }
        self.fold_into(r, op)?;
        self.wake_mirrors(r);
        Ok(())
    }

    /// Folds `op` into region `r` (a repeat changes nothing: the fold dedupes by op id);
    /// whether `r` had not folded it before.
    pub fn fold_into(&mut self, r: usize, op: u32) -> Result<bool, SimError> {
        let region = &mut self.regions[r];
        region.position += 1;
        let bytes = &self.ops[op as usize].bytes;
        if let Folded::NeedDoc(doc_id) = region.fold.fold(region.position, bytes)? {
            region.fold.insert(doc_id, crate::fold::Doc::default());
            region.fold.fold(region.position, bytes)?;
        }
        let first = self.rec.folded(op, r, self.now);
        if first {
            self.regions[r].unflushed.push(op);
        }
        Ok(first)
    }

    /// The flush window: what was folded becomes visible in projections and caches.
    fn flush(&mut self, r: usize) {
        if !self.regions[r].up {
            return;
        }
        let unflushed = std::mem::take(&mut self.regions[r].unflushed);
        for op in unflushed {
            self.rec.visible(op, r, self.now, &self.ops);
        }
        self.regions[r].fold.mark_clean();
        self.at(self.now + self.s.timing.flush_ms, Event::Flush(r));
    }

    fn fault(&mut self, i: usize, starts: bool) {
        let (s, fault) = (self.s, self.s.scenario.faults[i].clone());
        let index = |name: &str| s.net.regions.iter().position(|r| r == name).expect("checked scenario");
        match fault {
            Fault::Kill { region, .. } => {
                let r = index(&region);
                if starts {
                    self.rec.alone(r, &self.ops);
                    self.rec.cut(self.now);
                    self.regions[r].up = false;
                    self.stop_mirrors(r);
                } else {
                    self.rec.heal(self.now);
                    let region = &mut self.regions[r];
                    region.up = true;
                    // A new process: no role until it reads the lease again.
                    let scopes = region.machines.len();
                    region.machines =
                        (0..scopes).map(|scope| RoleMachine::new(self.s.role(r, scope))).collect();
                    self.at(self.now, Event::LeaseTick(r));
                    self.at(self.now, Event::Flush(r));
                    self.restart_mirrors(r);
                }
            }
            Fault::Cut { a, b, .. } => self.set_cut(&[(index(&a), index(&b))], starts),
            Fault::Isolate { region, .. } => {
                let r = index(&region);
                if !starts {
                    // What it took while cut off is in its log alone until the links are back.
                    self.rec.alone(r, &self.ops);
                }
                let links: Vec<(usize, usize)> =
                    (0..=self.regions.len()).filter(|&o| o != r).map(|o| (r, o)).collect();
                self.set_cut(&links, starts);
            }
        }
    }
}
