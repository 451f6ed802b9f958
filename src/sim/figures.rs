//! What a simulated run measured: the recorder the events feed, and the figures it gives
//! at the end (latency spreads, RTO, RPO, convergence, bytes), as markdown.

use std::fmt::Write;

use super::engine::Sim;
use super::producers::{OpInfo, doc_id};
use super::{Fault, Strategy};
use crate::fold::{Folded, PartitionFold};
use crate::region::role::Change;

/// p50, p99 and max of some latencies, milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spread {
    pub count: usize,
    pub p50: u32,
    pub p99: u32,
    pub max: u32,
}

impl Spread {
    /// Sorts `samples` and reads the spread off them.
    fn of(samples: &mut [u32]) -> Spread {
        samples.sort_unstable();
        let at = |q: f64| samples.get(((samples.len().max(1) - 1) as f64 * q).round() as usize).copied();
        Spread {
            count: samples.len(),
            p50: at(0.5).unwrap_or(0),
            p99: at(0.99).unwrap_or(0),
            max: at(1.0).unwrap_or(0),
        }
    }
}

/// The 101 percentiles (0, 1, …, 100) of sorted samples: a CDF to draw.
fn percentiles(sorted: &[u32]) -> Vec<u32> {
    if sorted.is_empty() {
        return Vec::new();
    }
    (0..=100).map(|q| sorted[(sorted.len() - 1) * q / 100]).collect()
}

/// Fed by the events as they happen.
pub(super) struct Recorder {
    n: usize,
    pub events: u64,
    pub made: u64,
    pub acked: u64,
    /// Ops made and not yet acked.
    pub unacked: u64,
    /// Ops folded in every region.
    pub everywhere: u64,
    pub refused: u64,
    pub lease_bytes: usize,
    cross_bytes: u64,
    op_bytes: u64,
    /// Per op: the regions that folded it (a bit each), and when (ops × regions, -1: not yet).
    folded_mask: Vec<u8>,
    folded_at: Vec<i64>,
    /// Per op: in how many regions' projections it is.
    shown: Vec<u8>,
    ack: Vec<Vec<u32>>,
    visible: Vec<Vec<u32>>,
    late_visible: Vec<u32>,
    /// Acks per second of virtual time, per user region.
    timeline: Vec<Vec<u32>>,
    /// Append in one region → copied into another, per target region.
    lag: Vec<Vec<u32>>,
    /// (the failed region, ops acked and held by it alone when it went down or before it
    /// got its links back).
    failed: Option<(usize, u64)>,
    fault_at: Option<i64>,
    heal_at: Option<i64>,
    promotions: Vec<(i64, usize, u64)>,
}

impl Recorder {
    pub fn new(n: usize) -> Recorder {
        Recorder {
            n,
            events: 0,
            made: 0,
            acked: 0,
            unacked: 0,
            everywhere: 0,
            refused: 0,
            lease_bytes: 0,
            cross_bytes: 0,
            op_bytes: 0,
            folded_mask: Vec::new(),
            folded_at: Vec::new(),
            shown: Vec::new(),
            ack: vec![Vec::new(); n],
            visible: vec![Vec::new(); n],
            late_visible: Vec::new(),
            timeline: vec![Vec::new(); n],
            lag: vec![Vec::new(); n],
            failed: None,
            fault_at: None,
            heal_at: None,
            promotions: Vec::new(),
        }
    }

    pub fn made(&mut self, info: &OpInfo) {
        self.made += 1;
        self.unacked += 1;
        self.op_bytes += info.bytes.len() as u64;
        self.folded_mask.push(0);
        self.folded_at.extend(std::iter::repeat_n(-1, self.n));
        self.shown.push(0);
    }

    /// Bytes from region `a` to region `b` (nothing when they are one region).
    pub fn traffic(&mut self, a: usize, b: usize, bytes: usize) {
        if a != b {
            self.cross_bytes += bytes as u64;
        }
    }

    /// `op` was folded in region `r`; whether for the first time there.
    pub fn folded(&mut self, op: u32, r: usize, now: i64) -> bool {
        let mask = &mut self.folded_mask[op as usize];
        if *mask & (1 << r) != 0 {
            return false;
        }
        *mask |= 1 << r;
        self.folded_at[op as usize * self.n + r] = now;
        if mask.count_ones() as usize == self.n {
            self.everywhere += 1;
        }
        true
    }

    /// `op` is in region `r`'s projections and cache from `now`.
    pub fn visible(&mut self, op: u32, r: usize, now: i64, ops: &[OpInfo]) {
        let info = &ops[op as usize];
        let shown = &mut self.shown[op as usize];
        *shown += 1;
        let waited = (now - info.created_ms).max(0) as u32;
        if info.late {
            if *shown as usize == self.n {
                self.late_visible.push(waited);
            }
        } else if info.region != r {
            self.visible[r].push(waited);
        }
    }

    pub fn acked(&mut self, info: &OpInfo) {
        self.acked += 1;
        self.unacked -= 1;
        if !info.late {
            self.ack[info.region].push((info.acked_ms - info.created_ms) as u32);
            let second = (info.acked_ms / 1000) as usize;
            let timeline = &mut self.timeline[info.region];
            if timeline.len() <= second {
                timeline.resize(second + 1, 0);
            }
            timeline[second] += 1;
        }
    }

    /// Region `r` failed: the acked ops no other region has folded are at risk.
    pub fn alone(&mut self, r: usize, ops: &[OpInfo]) {
        let alone =
            ops.iter().zip(&self.folded_mask).filter(|(o, m)| o.acked_ms >= 0 && **m == 1 << r).count();
        self.failed = Some((r, alone as u64));
    }

    /// A mirror copied an op into region `r`, `waited` after its first append.
    pub fn replicated(&mut self, r: usize, waited: i64) {
        self.lag[r].push(waited.max(0) as u32);
    }

    pub fn cut(&mut self, now: i64) {
        self.fault_at = Some(now);
    }

    pub fn heal(&mut self, now: i64) {
        self.heal_at = Some(now);
    }

    pub fn role_change(&mut self, now: i64, r: usize, change: Option<Change>) {
        if let Some(Change::Promoted { epoch }) = change {
            self.promotions.push((now, r, epoch));
        }
    }

    /// The figures once the run is over.
    pub fn figures(&mut self, sim: &Sim) -> Result<Figures, crate::fold::BadRecord> {
        let (n, ops) = (self.n, &sim.ops);
        let all = (1u16 << n) - 1;
        let lost = ops
            .iter()
            .zip(&self.folded_mask)
            .filter(|(o, m)| o.acked_ms >= 0 && u16::from(**m) != all)
            .count();
        let last_folded = |op: usize| (0..n).map(|r| self.folded_at[op * n + r]).max().unwrap_or(-1);
        let killed = self.failed.map(|(r, _)| r);
        let rto_ms = self.fault_at.zip(self.heal_at).map(|(from, to)| {
            ops.iter()
                .filter(|o| !o.late && o.created_ms >= from && o.created_ms < to && Some(o.region) != killed)
                .map(|o| if o.acked_ms >= 0 { o.acked_ms - o.created_ms } else { sim.now - o.created_ms })
                .max()
                .unwrap_or(0)
        });
        let converge_ms = self.heal_at.map(|heal| {
            (0..ops.len())
                .filter(|&op| ops[op].acked_ms >= 0 && ops[op].acked_ms <= heal)
                .map(|op| last_folded(op) - heal)
                .max()
                .unwrap_or(0)
                .max(0)
        });
        let (identical, diverged) = compare(sim, &self.folded_mask)?;
        let distinct = self.made.max(1) as f64;
        let mut ack_all: Vec<u32> = self.ack.concat();
        let mut visible_all: Vec<u32> = self.visible.concat();
        let ack: Vec<Spread> = self.ack.iter_mut().map(|s| Spread::of(s)).collect();
        let visible: Vec<Spread> = self.visible.iter_mut().map(|s| Spread::of(s)).collect();
        let (ack_all_spread, visible_all_spread) = (Spread::of(&mut ack_all), Spread::of(&mut visible_all));
        let s = sim.s;
        Ok(Figures {
            strategy: s.strategy,
            scenario: s.scenario.name.clone(),
            users: s.users,
            docs: s.docs,
            seed: s.seed,
            regions: s.net.regions.clone(),
            users_per_region: (0..n).map(|r| sim.users.iter().filter(|u| u.region == r).count()).collect(),
            ops: self.made,
            events: self.events,
            end_ms: sim.now,
            ack_cdf: self.ack.iter().map(|s| percentiles(s)).collect(),
            visible_cdf: self.visible.iter().map(|s| percentiles(s)).collect(),
            ack,
            visible,
            ack_all: ack_all_spread,
            visible_all: visible_all_spread,
            ack_all_cdf: percentiles(&ack_all),
            visible_all_cdf: percentiles(&visible_all),
            late: (!self.late_visible.is_empty()).then(|| Spread::of(&mut self.late_visible)),
            rto_ms,
            at_risk: self.failed.map(|(_, alone)| alone),
            lag: self.lag.iter_mut().map(|s| Spread::of(s)).collect(),
            lost: lost as u64,
            converge_ms,
            bytes_per_op: self.cross_bytes as f64 / distinct,
            op_bytes: self.op_bytes as f64 / distinct,
            refused: self.refused,
            identical,
            diverged,
            promotions: self.promotions.iter().map(|&(t, r, e)| (t, s.net.regions[r].clone(), e)).collect(),
            timeline: std::mem::take(&mut self.timeline),
            faults: s.scenario.faults.clone(),
        })
    }
}

/// Whether every region holds the same text of every document, and that text is the
/// reference fold's (every op taken anywhere, folded once in op order); how many differ.
fn compare(sim: &Sim, folded_mask: &[u8]) -> Result<(bool, usize), crate::fold::BadRecord> {
    let mut reference = PartitionFold::new();
    for (i, op) in sim.ops.iter().enumerate().filter(|(i, _)| folded_mask[*i] != 0) {
        if let Folded::NeedDoc(id) = reference.fold(i as u64 + 1, &op.bytes)? {
            reference.insert(id, crate::fold::Doc::default());
            reference.fold(i as u64 + 1, &op.bytes)?;
        }
    }
    let diverged = (0..sim.s.docs as u32)
        .map(doc_id)
        .filter(|id| {
            let want = reference.get(id).map(|d| d.state.text());
            sim.regions.iter().any(|r| r.fold.get(id).map(|d| d.state.text()) != want)
        })
        .count();
    Ok((diverged == 0, diverged))
}

/// One run's figures.
#[derive(Clone, Debug)]
pub struct Figures {
    pub strategy: Strategy,
    pub scenario: String,
    pub users: usize,
    pub docs: usize,
    pub seed: u64,
    pub regions: Vec<String>,
    pub users_per_region: Vec<usize>,
    pub ops: u64,
    pub events: u64,
    /// Virtual time at the end of the run.
    pub end_ms: i64,
    /// Write ack (edit → ack at the producer) per user region.
    pub ack: Vec<Spread>,
    /// Edit → in this region's projections, for edits made in other regions.
    pub visible: Vec<Spread>,
    pub ack_all: Spread,
    pub visible_all: Spread,
    /// Percentiles 0..=100 of the above, per region and over all regions.
    pub ack_cdf: Vec<Vec<u32>>,
    pub visible_cdf: Vec<Vec<u32>>,
    pub ack_all_cdf: Vec<u32>,
    pub visible_all_cdf: Vec<u32>,
    /// Replication: an op's first append → copied into this region's log by a mirror.
    pub lag: Vec<Spread>,
    /// Returning offline users' ops: return → visible in every region.
    pub late: Option<Spread>,
    /// The longest a write of a user in a surviving region waited during the fault.
    pub rto_ms: Option<i64>,
    /// Acked ops held only by the failed region when it went down (or was cut off).
    pub at_risk: Option<u64>,
    /// Acked ops missing from some region at the end.
    pub lost: u64,
    /// From the heal until every op acked before it is folded in every region.
    pub converge_ms: Option<i64>,
    pub bytes_per_op: f64,
    pub op_bytes: f64,
    pub refused: u64,
    pub identical: bool,
    pub diverged: usize,
    pub promotions: Vec<(i64, String, u64)>,
    pub timeline: Vec<Vec<u32>>,
    pub faults: Vec<Fault>,
}

/// Milliseconds as people read them: `840 ms`, `3.3 s`.
pub(super) fn secs(ms: i64) -> String {
    if ms < 1_000 { format!("{ms} ms") } else { format!("{:.1} s", ms as f64 / 1000.0) }
}

impl Figures {
    /// The run as markdown: the same figures, the same text, for the same seed.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "### {} · {} · {} users, {} documents, seed {}\n",
            self.strategy.label(),
            self.scenario,
            self.users,
            self.docs,
            self.seed
        );
        let _ = writeln!(
            out,
            "| region | users | write ack p50 / p99 | edit → visible here from other regions p50 / p99 |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for (r, name) in self.regions.iter().enumerate() {
            let (a, v) = (self.ack[r], self.visible[r]);
            let _ = writeln!(
                out,
                "| {name} | {} | {} / {} ms | {} / {} ms |",
                self.users_per_region[r], a.p50, a.p99, v.p50, v.p99
            );
        }
        let _ = writeln!(
            out,
            "| all | {} | {} / {} ms | {} / {} ms |\n",
            self.users, self.ack_all.p50, self.ack_all.p99, self.visible_all.p50, self.visible_all.p99
        );
        let _ = writeln!(out, "| figure | value |\n|---|---|");
        let row = |out: &mut String, name: &str, value: String| {
            let _ = writeln!(out, "| {name} | {value} |");
        };
        row(
            &mut out,
            "ops",
            format!("{} ({} events, {} of virtual time)", self.ops, self.events, secs(self.end_ms)),
        );
        if let Some(rto) = self.rto_ms {
            row(
                &mut out,
                "RTO: longest write wait of users in surviving regions during the fault",
                secs(rto),
            );
        }
        if let Some(at_risk) = self.at_risk {
            row(
                &mut out,
                "RPO: acked ops held only by the failed region (at risk until the heal)",
                at_risk.to_string(),
            );
        }
        row(&mut out, "RPO: acked ops missing from a region after the heal", self.lost.to_string());
        if let Some(converge) = self.converge_ms {
            row(&mut out, "convergence after the heal", secs(converge));
        }
        if let Some(late) = self.late {
            row(
                &mut out,
                "offline ops: return → visible in every region p50 / p99",
                format!("{} / {} ms ({} ops)", late.p50, late.p99, late.count),
            );
        }
        row(
            &mut out,
            "cross-region bytes per op",
            format!("{:.0} (an encoded op is {:.0} bytes)", self.bytes_per_op, self.op_bytes),
        );
        row(&mut out, "writes refused by a gate (retried elsewhere)", self.refused.to_string());
        let promotions: Vec<String> =
            self.promotions.iter().map(|(t, r, e)| format!("{r} epoch {e} at {}", secs(*t))).collect();
        row(
            &mut out,
            "promotions",
            if promotions.is_empty() { "none".into() } else { promotions.join("; ") },
        );
        let same = if self.identical {
            "yes: every region holds the reference fold's text of every document".to_string()
        } else {
            format!("**no: {} documents differ**", self.diverged)
        };
        row(&mut out, "converged", same);
        out
    }
}
