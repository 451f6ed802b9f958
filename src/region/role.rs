//! A region's role, a pure state machine driven by time and the lease store's answers:
//! standby → leader (it holds the lease) → demoted (it saw a higher epoch, or its lease ran
//! out) → standby again when it takes a new lease. The runtime drives it with the wall
//! clock and a real lease store, the simulator with virtual time; neither has its own copy.
//!
//! A leader accepts writes only while its lease runs (by its own clock); it renews every
//! ttl/3, so a lost renewal leaves a second try before the lease expires. A region
//! cut off from the lease store stops accepting writes when its lease runs out, and no
//! other region takes the lease before ttl + the skew bound: never two leaders at once.

use super::lease::{Answer, Claim, Lease};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Standby,
    Leader,
    /// Was leader; saw a higher epoch or let its lease lapse. Acts as a standby.
    Demoted,
}

/// A write that reached a region which does not lead (a producer routed by a lease it saw
/// before a failover): refused, never taken at a stale epoch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", refusal(.region, *.role, .lease.as_ref()))]
pub struct WriteRefused {
    pub region: String,
    pub role: Role,
    /// The lease as the region last saw it.
    pub lease: Option<Lease>,
}

fn refusal(region: &str, role: Role, lease: Option<&Lease>) -> String {
    let was = if role == Role::Demoted { "no longer leads" } else { "does not lead" };
    match lease {
        Some(l) if l.holder != region => format!(
            "region {region} {was}: the lease is {}'s at epoch {}; write there (`docfold region status`)",
            l.holder, l.epoch
        ),
        Some(l) => format!(
            "region {region} {was}: its lease at epoch {} ran out and is not renewed; no region takes writes until one is promoted",
            l.epoch
        ),
        None => {
            format!("region {region} {was}: it knows of no lease (none was taken, or it has not read it yet)")
        }
    }
}

/// The timing and policy of one region's machine.
#[derive(Clone, Debug)]
pub struct RoleSettings {
    pub region: String,
    pub ttl_ms: i64,
    /// The most two regions' clocks may differ: a lease is taken from another region only
    /// when it expired by more than this.
    pub skew_ms: i64,
    /// Take the lease when it is free (its holder failed to renew), without an operator.
    pub auto_failover: bool,
    /// The region that takes the lease when there has never been one.
    pub initial_leader: String,
}

impl RoleSettings {
    /// `(now, ttl, skew)` as `lease::claim` takes them.
    pub fn times(&self, now_ms: i64) -> (i64, i64, i64) {
        (now_ms, self.ttl_ms, self.skew_ms)
    }
}

/// How often a region's lease loop polls its machine: a thirtieth of the ttl, 10 ms to 1 s.
pub fn poll_interval_ms(ttl_ms: i64) -> i64 {
    (ttl_ms / 30).clamp(10, 1_000)
}

/// What the machine wants from the lease store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Claim(Claim),
    /// Read the lease (a standby watching its leader).
    Read,
}

/// A transition worth an event (a log line, a metric, a line in the simulator's report).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Promoted { epoch: u64 },
    Demoted { epoch: u64, reason: &'static str },
}

#[derive(Clone, Debug)]
pub struct RoleMachine {
    settings: RoleSettings,
    role: Role,
    /// Our lease while we lead.
    held: Option<Lease>,
    /// The lease as last seen, whoever holds it.
    seen: Option<Lease>,
    /// When the store was last asked (`None`: never).
    asked_ms: Option<i64>,
}

impl RoleMachine {
    pub fn new(settings: RoleSettings) -> RoleMachine {
        RoleMachine { settings, role: Role::Standby, held: None, seen: None, asked_ms: None }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn settings(&self) -> &RoleSettings {
        &self.settings
    }

    /// The lease as last seen (ours while leading).
    pub fn lease(&self) -> Option<&Lease> {
        self.held.as_ref().or(self.seen.as_ref())
    }

    /// Our epoch while we lead: every effect this region writes as leader carries it.
    pub fn epoch(&self) -> Option<u64> {
        self.held.as_ref().map(|l| l.epoch)
    }

    /// Whether this region may accept writes at `now_ms`.
    pub fn accepts_writes(&self, now_ms: i64) -> bool {
        self.role == Role::Leader && self.held.as_ref().is_some_and(|l| now_ms < l.expires_ms)
    }

    /// The gate in front of this region's log: a write is taken at our epoch while we lead
    /// (the epoch it is taken at is returned), and refused otherwise with the lease as this
    /// region last saw it, so the writer knows where to go.
    pub fn admit(&self, now_ms: i64) -> Result<u64, WriteRefused> {
        match &self.held {
            Some(held) if self.accepts_writes(now_ms) => Ok(held.epoch),
            _ => Err(WriteRefused {
                region: self.settings.region.clone(),
                role: self.role,
                lease: self.seen.clone(),
            }),
        }
    }

    /// Advances time: a leader whose lease ran out steps down. Returns what to ask the lease
    /// store now, if anything, and the change that happened.
    pub fn poll(&mut self, now_ms: i64) -> (Option<Request>, Option<Change>) {
        let mut change = None;
        if let Some(held) = &self.held
            && now_ms >= held.expires_ms
        {
            change =
                Some(Change::Demoted { epoch: held.epoch, reason: "lease expired before it was renewed" });
            self.role = Role::Demoted;
            self.held = None;
        }
        let interval = (self.settings.ttl_ms / 3).max(1);
        if self.asked_ms.is_some_and(|at| now_ms - at < interval) {
            return (None, change);
        }
        self.asked_ms = Some(now_ms);
        let request = match (&self.held, &self.seen) {
            (Some(held), _) => Request::Claim(Claim::Renew { epoch: held.epoch }),
            // Ours from before a restart, or handed to us by force: take it up once it has
            // run out (`lease::decide`).
            (None, Some(seen)) if seen.holder == self.settings.region => Request::Claim(Claim::Acquire),
            (None, Some(seen))
                if self.settings.auto_failover && seen.is_free(now_ms, self.settings.skew_ms) =>
            {
                Request::Claim(Claim::Acquire)
            }
            (None, None) if self.settings.initial_leader == self.settings.region => {
                Request::Claim(Claim::Acquire)
            }
            _ => Request::Read,
        };
        (Some(request), change)
    }

    /// The lease store answered a claim.
    pub fn on_answer(&mut self, answer: Answer) -> Option<Change> {
        match answer {
            Answer::Ours(lease) => {
                let promoted = self.held.as_ref().is_none_or(|held| held.epoch != lease.epoch);
                self.role = Role::Leader;
                self.seen = Some(lease.clone());
                self.held = Some(lease.clone());
                promoted.then_some(Change::Promoted { epoch: lease.epoch })
            }
            Answer::Theirs(lease) => {
                self.seen = lease;
                self.step_down(
                    "the lease is no longer ours at this epoch (lapsed, or another region took it)",
                )
            }
            Answer::Released => {
                self.seen = None;
                self.step_down("released")
            }
        }
    }

    /// A read of the lease (no claim): a leader that sees another epoch steps down.
    pub fn on_read(&mut self, lease: Option<Lease>) -> Option<Change> {
        let ours = self.held.as_ref().is_some_and(|held| {
            lease.as_ref().is_some_and(|l| l.holder == held.holder && l.epoch == held.epoch)
        });
        self.seen = lease;
        if ours || self.held.is_none() { None } else { self.step_down("another region holds the lease") }
    }

    fn step_down(&mut self, reason: &'static str) -> Option<Change> {
        let held = self.held.take()?;
        self.role = Role::Demoted;
        Some(Change::Demoted { epoch: held.epoch, reason })
    }
}
