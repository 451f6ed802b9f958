//! The lease witness: one store every region reaches (one way `net.lease_one_way_ms`), with
//! the lease rows of every scope. A region's role machine polls on its own clock; its claims
//! run the real `region::lease::claim` (read, `decide`, compare-and-set) at the witness,
//! which answers one way later. The read and the compare-and-set happen at one instant
//! here, where a real store takes a round trip for each.

use rand::Rng;
use std::collections::BTreeMap;
use std::sync::Mutex;

use super::engine::{Event, LeaseReply, Sim};
use crate::region::lease::{Lease, LeaseError, LeaseStore, Replaced, claim};
use crate::region::role::{Request, poll_interval_ms};

/// A lease request's or answer's bytes on the wire.
const LEASE_BYTES: usize = 96;

/// The witness's rows, by scope.
#[derive(Default)]
pub(super) struct Witness(Mutex<BTreeMap<String, Lease>>);

impl LeaseStore for Witness {
    async fn read(&self, scope: &str) -> Result<Option<Lease>, LeaseError> {
        Ok(self.0.lock().expect("witness").get(scope).cloned())
    }

    async fn replace(
        &self,
        scope: &str,
        expected: Option<&Lease>,
        new: &Lease,
    ) -> Result<Replaced, LeaseError> {
        let mut rows = self.0.lock().expect("witness");
        let current = rows.get(scope);
        if current != expected {
            return Ok(Replaced::Conflict(current.cloned()));
        }
        rows.insert(scope.to_string(), new.clone());
        Ok(Replaced::Written)
    }
}

impl Sim<'_> {
    /// The name of lease scope `scope`: the job's, or a home region's documents'.
    fn scope_name(&self, scope: usize) -> &str {
        if self.regions[0].machines.len() == 1 { "job" } else { &self.s.net.regions[scope] }
    }

    fn witness_delay(&mut self) -> i64 {
        self.s.net.lease_one_way_ms + self.rng.random_range(0..=self.s.net.jitter_ms)
    }

    /// Region `r`'s lease loop (`region::runtime::keep_role`'s tick).
    pub fn lease_tick(&mut self, r: usize) {
        if !self.regions[r].up {
            return;
        }
        let clock = self.clock(r);
        for scope in 0..self.regions[r].machines.len() {
            let (request, change) = self.regions[r].machines[scope].poll(clock);
            self.rec.role_change(self.now, r, change);
            if let Some(request) = request
                && !self.cut(r, self.regions.len())
            {
                let d = self.witness_delay();
                self.rec.lease_bytes += LEASE_BYTES;
                self.at(self.now + d, Event::LeaseAt { region: r, scope, request, asked_ms: clock });
            }
        }
        let ttl = self.s.timing.ttl_ms as i64;
        self.at(self.now + poll_interval_ms(ttl), Event::LeaseTick(r));
    }

    /// A request reaches the witness: a claim runs there, a read reads.
    pub fn lease_at(&mut self, r: usize, scope: usize, request: Request, asked_ms: i64) {
        let (name, times) =
            (self.s.net.regions[r].clone(), self.regions[r].machines[scope].settings().times(asked_ms));
        let scope_name = self.scope_name(scope).to_string();
        let answer = match request {
            Request::Claim(c) => {
                futures::executor::block_on(claim(&self.witness, &scope_name, &name, c, times))
                    .map(LeaseReply::Claimed)
            }
            Request::Read => {
                futures::executor::block_on(self.witness.read(&scope_name)).map(LeaseReply::Read)
            }
        };
        let answer = answer.expect("the witness always answers");
        let d = self.witness_delay();
        self.rec.lease_bytes += LEASE_BYTES;
        self.at(self.now + d, Event::LeaseAnswer { region: r, scope, answer });
    }

    /// The answer reaches the region (lost if it went down or was cut off meanwhile).
    pub fn lease_answer(&mut self, r: usize, scope: usize, answer: LeaseReply) {
        if !self.regions[r].up || self.cut(r, self.regions.len()) {
            return;
        }
        let machine = &mut self.regions[r].machines[scope];
        let change = match answer {
            LeaseReply::Claimed(answer) => machine.on_answer(answer),
            LeaseReply::Read(lease) => machine.on_read(lease),
        };
        self.rec.role_change(self.now, r, change);
    }
}
