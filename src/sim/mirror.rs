//! The simulated mirrors: one per (source, target) pair of regions. Pulling (as `docfold
//! mirror` and MirrorMaker 2 run today), the mirror is in the target region and fetches the
//! source's own topic; pushing (`MirrorMode::Push`, a design not built yet), it is in the
//! source region and sends new records across as they come, after a short linger. A fetch goes to
//! the source; with nothing new it waits there up to the long poll; the records come back
//! one way later, are written into the target's `<source>.doc-ops` and folded; the next fetch
//! leaves as soon as a response arrives (the consumer fetches ahead). A fetch that gets no
//! answer (a cut link, a region down) is retried with the mirror's own backoff; a restarted
//! target resumes from its checkpoint, the last offset copied: repeats, never gaps.

use std::time::Duration;

use super::engine::{Event, Sim};
use super::producers::doc_id_len;
use super::{MirrorMode, Settings, SimError};
use crate::config::RegionConfig;
use crate::mirror::copy::{RETRY_FIRST, RETRY_MAX};

/// A fetch request's bytes on the wire.
const FETCH_BYTES: usize = 64;
/// A fetch response's bytes besides its records.
const RESPONSE_BYTES: usize = 48;
/// A record's bytes besides key and value (offset delta, timestamp delta, lengths).
const RECORD_BYTES: usize = 12;

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(super) struct Mirror {
    pub source: usize,
    pub target: usize,
    /// The offset the next fetch asks for.
    next: usize,
    /// The checkpoint: every record below it is in the target's log.
    copied: usize,
    /// Bumped when the target restarts: events of an earlier fetch loop are dropped.
    generation: u64,
    /// A fetch is waiting at the source for records (pull), or a push is due (push).
    parked: bool,
    backoff_ms: i64,
}

impl Mirror {
    /// Every mirror of the run, each checked by the real mirror's rules (peers, no loops).
    pub fn all(s: &Settings) -> Result<Vec<Mirror>, SimError> {
        let config = |r: usize| RegionConfig {
            name: s.net.regions[r].clone(),
            peers: s.net.regions.iter().filter(|p| **p != s.net.regions[r]).cloned().collect(),
            ..RegionConfig::default()
        };
        let n = s.net.regions.len();
        let mut mirrors = Vec::new();
        for target in 0..n {
            for source in (0..n).filter(|&source| source != target) {
                crate::mirror::check(&config(source), &config(target), "doc-ops")
                    .map_err(|e| SimError::Settings(e.to_string()))?;
                mirrors.push(Mirror {
                    source,
                    target,
                    next: 0,
                    copied: 0,
                    generation: 0,
                    parked: false,
                    backoff_ms: ms(RETRY_FIRST),
                });
            }
        }
        Ok(mirrors)
    }
}

impl Sim<'_> {
    /// The mirror sends a fetch for its next offset.
    pub fn fetch(&mut self, m: usize, generation: u64) {
        let Mirror { source, target, .. } = self.mirrors[m];
        if generation != self.mirrors[m].generation || !self.regions[target].up {
            return;
        }
        self.rec.traffic(target, source, FETCH_BYTES);
        match self.delay(target, source) {
            Some(d) => self.at(self.now + d, Event::FetchAt { mirror: m, generation }),
            None => self.fetch_failed(m),
        }
    }

    /// No answer: the mirror notices after the timeout, then backs off (as `mirror::copy`).
    fn fetch_failed(&mut self, m: usize) {
        let mirror = &mut self.mirrors[m];
        let wait = self.s.timing.timeout_ms + mirror.backoff_ms;
        mirror.backoff_ms = (mirror.backoff_ms * 2).min(ms(RETRY_MAX));
        let generation = mirror.generation;
        self.at(self.now + wait, Event::Fetch { mirror: m, generation });
    }

    /// The fetch reaches the source: answered at once if there are records, else parked.
    pub fn fetch_at(&mut self, m: usize, generation: u64) {
        let Mirror { source, target, next, .. } = self.mirrors[m];
        if generation != self.mirrors[m].generation {
            return;
        }
        if !self.regions[source].up || self.cut(source, target) {
            return self.fetch_failed(m);
        }
        if self.regions[source].log.len() > next {
            self.respond(m);
        } else {
            self.mirrors[m].parked = true;
            self.at(self.now + self.s.timing.fetch_wait_ms, Event::FetchExpired { mirror: m, generation });
        }
    }

    /// Records were appended to region `s`'s log: parked fetches answer now (pull), or a
    /// push is made due (push).
    pub fn wake_mirrors(&mut self, s: usize) {
        if self.s.mirror == MirrorMode::Push {
            return self.wake_pushes(s);
        }
        for m in 0..self.mirrors.len() {
            if self.mirrors[m].source == s && self.mirrors[m].parked {
                self.respond(m);
            }
        }
    }

    pub fn fetch_expired(&mut self, m: usize, generation: u64) {
        if generation == self.mirrors[m].generation && self.mirrors[m].parked {
            self.respond(m);
        }
    }

    /// The source answers the fetch with what it has from the requested offset.
    fn respond(&mut self, m: usize) {
        let mirror = &mut self.mirrors[m];
        mirror.parked = false;
        let Mirror { source, target, next: from, generation, .. } = *mirror;
        let to = self.regions[source].log.len().min(from + self.s.timing.fetch_max);
        let records: usize = self.regions[source].log[from..to]
            .iter()
            .map(|&op| {
                self.ops[op as usize].bytes.len() + doc_id_len(self.ops[op as usize].doc) + RECORD_BYTES
            })
            .sum();
        self.rec.traffic(source, target, RESPONSE_BYTES + records);
        match self.delay(source, target) {
            Some(d) => self.at(self.now + d, Event::Fetched { mirror: m, from, to, generation }),
            None => self.fetch_failed(m),
        }
    }

    /// The response reaches the target: the records are written (after the copy time) and
    /// the next fetch leaves at once.
    pub fn fetched(&mut self, m: usize, from: usize, to: usize, generation: u64) {
        let mirror = &mut self.mirrors[m];
        if generation != mirror.generation || !self.regions[mirror.target].up {
            return;
        }
        mirror.next = to;
        mirror.backoff_ms = ms(RETRY_FIRST);
        if to > from {
            self.at(self.now + self.s.timing.copy_ms, Event::Copied { mirror: m, from, to, generation });
        }
        self.at(self.now, Event::Fetch { mirror: m, generation });
    }

    /// The batch is in the target's log (folded there) and the checkpoint moves.
    pub fn copied(&mut self, m: usize, from: usize, to: usize, generation: u64) -> Result<(), SimError> {
        let Mirror { source, target, .. } = self.mirrors[m];
        if generation != self.mirrors[m].generation || !self.regions[target].up {
            return Ok(());
        }
        for i in from..to {
            let op = self.regions[source].log[i];
            if self.fold_into(target, op)? {
                self.rec.replicated(target, self.now - self.ops[op as usize].appended_ms);
            }
        }
        self.mirrors[m].copied = to;
        Ok(())
    }

    /// Push mode: records were appended to region `s`'s log; each of its mirrors that has no
    /// push due sends what is new after the linger.
    fn wake_pushes(&mut self, s: usize) {
        for m in 0..self.mirrors.len() {
            let mirror = &mut self.mirrors[m];
            if mirror.source == s && !mirror.parked {
                mirror.parked = true;
                let generation = mirror.generation;
                self.at(self.now + self.s.timing.push_linger_ms, Event::Push { mirror: m, generation });
            }
        }
    }

    /// Push mode: the mirror, at the source, sends what its source has from its next offset
    /// straight to the target (one crossing); it goes on at once while more is there.
    pub fn push(&mut self, m: usize, generation: u64) {
        let Mirror { source, target, next: from, .. } = self.mirrors[m];
        if generation != self.mirrors[m].generation || !self.regions[source].up {
            return;
        }
        self.mirrors[m].parked = false;
        let len = self.regions[source].log.len();
        let to = len.min(from + self.s.timing.fetch_max);
        if to == from {
            return;
        }
        self.rec.traffic(source, target, RESPONSE_BYTES + self.record_bytes(source, from, to));
        match self.delay(source, target) {
            Some(d) => {
                let mirror = &mut self.mirrors[m];
                (mirror.next, mirror.backoff_ms) = (to, ms(RETRY_FIRST));
                let copied = Event::Copied { mirror: m, from, to, generation };
                self.at(self.now + d + self.s.timing.copy_ms, copied);
                if to < len {
                    self.mirrors[m].parked = true;
                    self.at(self.now, Event::Push { mirror: m, generation });
                }
            }
            None => {
                let mirror = &mut self.mirrors[m];
                let wait = self.s.timing.timeout_ms + mirror.backoff_ms;
                mirror.backoff_ms = (mirror.backoff_ms * 2).min(ms(RETRY_MAX));
                mirror.parked = true;
                self.at(self.now + wait, Event::Push { mirror: m, generation });
            }
        }
    }

    /// Region `r` stops: the fetches and pushes in flight of every mirror into or out of it
    /// are forgotten.
    pub fn stop_mirrors(&mut self, r: usize) {
        for mirror in self.mirrors.iter_mut().filter(|m| m.target == r || m.source == r) {
            mirror.generation += 1;
            mirror.parked = false;
        }
    }

    /// Region `r` starts again: every mirror into or out of it resumes from its checkpoint.
    pub fn restart_mirrors(&mut self, r: usize) {
        for m in 0..self.mirrors.len() {
            let mirror = &mut self.mirrors[m];
            if mirror.target == r || mirror.source == r {
                mirror.generation += 1;
                (mirror.next, mirror.parked, mirror.backoff_ms) = (mirror.copied, false, ms(RETRY_FIRST));
                let generation = mirror.generation;
                self.at(self.now, self.mirror_step(m, generation));
            }
        }
    }

    /// The event that moves mirror `m` on: a fetch (pull) or a push.
    pub fn mirror_step(&self, mirror: usize, generation: u64) -> Event {
        match self.s.mirror {
            MirrorMode::Pull => Event::Fetch { mirror, generation },
            MirrorMode::Push => Event::Push { mirror, generation },
        }
    }

    /// The bytes of records `from..to` of region `s`'s log on the wire.
    fn record_bytes(&self, s: usize, from: usize, to: usize) -> usize {
        self.regions[s].log[from..to]
            .iter()
            .map(|&op| {
                self.ops[op as usize].bytes.len() + doc_id_len(self.ops[op as usize].doc) + RECORD_BYTES
            })
            .sum()
    }
}
