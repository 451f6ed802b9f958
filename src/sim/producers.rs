//! Simulated users and their producers: each user types bursts into one document (Zipf
//! popularity, mostly documents homed in its own region), its region's editor for that
//! document makes real LSEQ ops, and the producer writes each where `region::Router` says,
//! behind the target region's gate (`RoleMachine::admit`), retrying a refused, lost or
//! unanswered write until it is acked.

use rand::Rng;
use rand_distr::{Distribution, Exp, Zipf};

use super::engine::{Event, Sim};
use super::{SimError, Strategy};
use crate::lseq::Replica;
use crate::op::{Envelope, encode};
use crate::region::home::{Home, Seen};
use crate::region::{Mode, Router};

/// Virtual time 0 on the editors' clocks (2026-12-01T00:00Z), for the ops' client time.
const EPOCH_MS: i64 = 1_796_083_200_000;
/// A produce request's bytes on the wire besides the record (headers, batch framing).
pub(super) const REQUEST_BYTES: usize = 72;
/// An ack's or a refusal's bytes.
pub(super) const REPLY_BYTES: usize = 48;

pub(super) struct User {
    pub region: usize,
    pub doc: u32,
    /// This user's editing session of the document (its own site): it types at its caret.
    editor: Replica,
    caret: usize,
    /// Keystrokes left in the current burst.
    left: u32,
}

/// One op made by a user, and what became of it.
pub(super) struct OpInfo {
    pub doc: u32,
    /// The user's region.
    pub region: usize,
    pub created_ms: i64,
    /// Made offline, sent when its user returns.
    pub late: bool,
    pub bytes: Vec<u8>,
    attempt: u32,
    sent_ms: i64,
    /// `-1` until acked.
    pub acked_ms: i64,
    /// When a region's log first took it (`-1`: not yet).
    pub appended_ms: i64,
}

pub(super) fn doc_id(doc: u32) -> String {
    format!("doc-{doc:05}")
}

/// `doc_id(doc).len()` without making the string.
pub(super) fn doc_id_len(doc: u32) -> usize {
    4 + doc.checked_ilog10().map_or(1, |d| d as usize + 1).max(5)
}

impl Sim<'_> {
    /// Places the users (round robin over regions), picks their documents and schedules each
    /// one's first keystroke; offline users make their ops now and send them on return.
    pub fn start_users(&mut self) {
        let n = self.regions.len();
        let per_home = self.s.docs / n;
        let b = &self.s.behaviour;
        let zipf = Zipf::new(per_home as f64, b.zipf_s).expect("at least one document per region");
        let offline = self.s.scenario.offline.as_ref().map_or(0, |o| o.users.min(self.s.users));
        for u in 0..self.s.users {
            let region = u % n;
            let home = if self.rng.random_bool(b.locality) { region } else { self.rng.random_range(0..n) };
            let rank = zipf.sample(&mut self.rng) as usize - 1;
            let doc = (rank * n + home) as u32;
            let editor = Replica::new(u64::from(doc), u as u64 + 1);
            self.users.push(User { region, doc, editor, caret: 0, left: 0 });
            if u >= self.s.users - offline {
                continue;
            }
            // Each user starts with a pause, as between bursts: the load is steady from the start.
            let first = Exp::new(1.0 / b.think_mean_ms).expect("a positive mean").sample(&mut self.rng);
            self.at(first as i64, Event::Edit(u as u32));
        }
    }

    /// The offline users' ops, made at the start with their old editor time.
    pub fn make_offline_ops(&mut self) -> Result<(), SimError> {
        let Some(offline) = self.s.scenario.offline.clone() else { return Ok(()) };
        for u in self.s.users - offline.users.min(self.s.users)..self.s.users {
            for _ in 0..offline.ops_each {
                let client_ms = offline.returns_at_ms - offline.away_ms;
                self.make_op(u, offline.returns_at_ms, client_ms, true)?;
            }
        }
        Ok(())
    }

    /// A keystroke of `user`: one op, sent at once; the next keystroke or the next burst.
    pub fn edit(&mut self, user: u32) -> Result<(), SimError> {
        if !self.editing {
            return Ok(());
        }
        let u = user as usize;
        let b = &self.s.behaviour;
        if self.users[u].left == 0 {
            // A new burst, somewhere in what this user wrote.
            self.users[u].left = self.rng.random_range(b.burst.0..=b.burst.1);
            let len = self.users[u].editor.len();
            self.users[u].caret = self.rng.random_range(0..=len);
        }
        let op = self.make_op(u, self.now, self.now, false)?;
        self.send(op);
        self.users[u].left -= 1;
        let next = if self.users[u].left > 0 {
            self.rng.random_range(b.key_ms.0..=b.key_ms.1)
        } else {
            let think = Exp::new(1.0 / b.think_mean_ms).expect("a positive mean");
            think.sample(&mut self.rng) as i64
        };
        self.at(self.now + next.max(1), Event::Edit(user));
        Ok(())
    }

    /// One keystroke of user `u`: a letter at its caret, or a backspace.
    fn make_op(&mut self, u: usize, created_ms: i64, client_ms: i64, late: bool) -> Result<u32, SimError> {
        let backspace = self.rng.random_bool(self.s.behaviour.delete_share);
        let letter = char::from(b'a' + self.rng.random_range(0..26u8));
        let user = &mut self.users[u];
        let (region, doc, caret) = (user.region, user.doc, user.caret.min(user.editor.len()));
        let op = if backspace && caret > 0 {
            user.caret = caret - 1;
            user.editor.local_edit(caret - 1, 1, "")?
        } else {
            user.caret = caret + 1;
            user.editor.local_edit(caret, 0, letter.encode_utf8(&mut [0; 4]))?
        };
        let envelope =
            Envelope::new(doc_id(doc), self.s.net.regions[region].clone(), EPOCH_MS + client_ms, op);
        let index = self.ops.len() as u32;
        self.ops.push(OpInfo {
            doc,
            region,
            created_ms,
            late,
            bytes: encode(&envelope),
            attempt: 0,
            sent_ms: 0,
            acked_ms: -1,
            appended_ms: -1,
        });
        self.rec.made(&self.ops[index as usize]);
        Ok(index)
    }

    /// Where region `u`'s producers write a document's op now: `region::Router` on the lease
    /// of the document's scope as `u` last saw it (`None`: no leader; try again later). In
    /// home mode the document's home is fixed (document `d` lives in region `d mod n`), and
    /// its scope is that home's group lease.
    fn route(&self, u: usize, doc: u32) -> Option<usize> {
        let mode = match self.s.strategy {
            Strategy::Ap => Mode::ActivePassive,
            Strategy::Aa => Mode::ActiveActive,
            Strategy::Home => Mode::Home,
        };
        let router = Router { mode, local: self.s.net.regions[u].clone() };
        let lease = self.scope(doc).and_then(|scope| self.regions[u].machines[scope].lease());
        let target = match self.scope(doc).filter(|_| mode == Mode::Home) {
            Some(home) => {
                // A fixed home has always taken writes (the regions' clocks start skewed, some
                // below zero).
                let region = self.s.net.regions[home].clone();
                let seen =
                    Seen { home: Home { region, epoch: 1, since_ms: i64::MIN }, valid_until_ms: i64::MAX };
                router.route_doc(&doc.to_string(), &seen, lease, self.clock(u))
            }
            None => router.route(lease, self.clock(u)),
        };
        let target = target.ok()?;
        self.s.net.regions.iter().position(|r| r == target)
    }

    /// The lease scope that decides where a document's writes go: the job's (active-passive),
    /// its home region's (home), none (active-active: every region takes writes).
    fn scope(&self, doc: u32) -> Option<usize> {
        match self.s.strategy {
            Strategy::Aa => None,
            Strategy::Ap => Some(0),
            Strategy::Home => Some(doc as usize % self.regions.len()),
        }
    }

    /// Sends (or sends again) an op. A user reaches the service through its own region, or,
    /// while that region is down, through the nearest one that is up (a global accelerator's
    /// health check); the write itself goes from the user straight to the region the router
    /// names.
    pub fn send(&mut self, op: u32) {
        let info = &self.ops[op as usize];
        let (u, doc) = (info.region, info.doc);
        let Some(entry) = self.entry(u) else {
            self.at(self.now + self.s.timing.timeout_ms, Event::Send(op));
            return;
        };
        let Some(target) = self.route(entry, doc) else {
            self.at(self.now + self.s.timing.retry_ms, Event::Send(op));
            return;
        };
        let info = &mut self.ops[op as usize];
        info.attempt += 1;
        info.sent_ms = self.now;
        let (attempt, bytes) = (info.attempt, info.bytes.len() + REQUEST_BYTES);
        self.rec.traffic(u, target, bytes);
        match self.reach(u, target) {
            Some(d) => self.at(self.now + d, Event::Arrive { op, region: target, attempt }),
            None => self.at(self.now + self.s.timing.timeout_ms, Event::Timeout { op, attempt }),
        }
    }

    /// The region through which users of region `u` reach the service now.
    fn entry(&self, u: usize) -> Option<usize> {
        if self.regions[u].up {
            return Some(u);
        }
        (0..self.regions.len())
            .filter(|&r| self.regions[r].up)
            .min_by_key(|&r| (self.s.net.one_way_ms[u][r], r))
    }

    /// A write reaches region `t`: the gate takes it (appended, folded, acked) or refuses it.
    pub fn arrive(&mut self, op: u32, t: usize, attempt: u32) -> Result<(), SimError> {
        let (u, doc, sent_ms) = {
            let info = &self.ops[op as usize];
            (info.region, info.doc, info.sent_ms)
        };
        let lost_at = sent_ms + self.s.timing.timeout_ms;
        if self.reach(u, t).is_none() {
            self.at(lost_at, Event::Timeout { op, attempt });
            return Ok(());
        }
        let clock = self.clock(t);
        let acked = self.scope(doc).is_none_or(|scope| self.regions[t].machines[scope].admit(clock).is_ok());
        let mut after = 0;
        if acked {
            self.append(t, op)?;
            after = self.s.timing.local_ack_ms;
        } else {
            self.rec.refused += 1;
        }
        self.rec.traffic(t, u, REPLY_BYTES);
        match self.reach(u, t) {
            Some(d) => self.at(self.now + after + d, Event::Reply { op, attempt, acked }),
            None => self.at(lost_at, Event::Timeout { op, attempt }),
        }
        Ok(())
    }

    /// The answer reaches the producer: acked, or refused (ask the router again soon).
    pub fn reply(&mut self, op: u32, attempt: u32, acked: bool) {
        let info = &mut self.ops[op as usize];
        if info.attempt != attempt || info.acked_ms >= 0 {
            return;
        }
        if acked {
            info.acked_ms = self.now;
            self.rec.acked(&self.ops[op as usize]);
        } else {
            self.at(self.now + self.s.timing.retry_ms, Event::Send(op));
        }
    }

    /// No answer in time: send again (the op may have been taken; the fold dedupes it).
    pub fn timed_out(&mut self, op: u32, attempt: u32) {
        let info = &self.ops[op as usize];
        if info.attempt == attempt && info.acked_ms < 0 {
            self.send(op);
        }
    }

    pub fn offline_return(&mut self) {
        let late: Vec<u32> = (0..self.ops.len() as u32).filter(|&op| self.ops[op as usize].late).collect();
        for op in late {
            self.send(op);
        }
    }
}
