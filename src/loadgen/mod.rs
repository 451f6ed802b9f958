//! The load generator's model (pure: `cli/loadgen.rs` drives it with the clock, the log and
//! the invalidation topic). Users edit documents chosen by Zipf popularity: typing bursts at
//! a caret, pastes, backspaces, think time between bursts; a share of them start offline and
//! send what they wrote when they come back. Users of one document share its editor (one
//! [`Replica`] per document, not per user), so memory grows with documents and text, not
//! with users. Each op's version increment is known, so the run can tell from an
//! invalidation's version which ops it covers ([`Visibility`]).

pub mod capacity;
pub mod report;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Zipf};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::lseq::{EditError, Op, Replica, doc_seed};

/// How users behave, and how many there are.
#[derive(Clone, Debug)]
pub struct Settings {
    pub users: u32,
    pub docs: u32,
    /// Ops per second from all users together (open loop: the think time is set to make it).
    pub rate: u32,
    /// Zipf exponent of document popularity.
    pub zipf_s: f64,
    /// Share of keystrokes that are backspaces.
    pub delete_share: f64,
    /// Share of bursts that are one paste instead of typing.
    pub paste_share: f64,
    /// Share of users who start offline, and how long they stay away.
    pub offline_share: f64,
    pub offline_ms: u64,
    pub seed: u64,
    /// Document ids are `<prefix><n>`.
    pub prefix: String,
}

/// Keystrokes per typing burst, and the time between two of them.
const BURST: (u32, u32) = (3, 20);
const KEY_MS: u64 = 150;
/// Characters per paste.
const PASTE: (usize, usize) = (20, 400);

impl Settings {
    /// The mean think time between bursts that makes `rate` ops per second from `users`.
    pub fn think_mean_ms(&self) -> Result<f64, String> {
        for (name, value) in [("--users", self.users), ("--docs", self.docs), ("--rate", self.rate)] {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if !(0.0..=1.0).contains(&self.offline_share) {
            return Err(format!(
                "--offline-share is a share of the users, from 0 to 1 (not {})",
                self.offline_share
            ));
        }
        if !(self.zipf_s > 0.0 && self.zipf_s.is_finite()) {
            return Err(format!("--zipf must be a positive exponent (not {})", self.zipf_s));
        }
        let burst = f64::from(BURST.0 + BURST.1) / 2.0;
        let cycle_ms = f64::from(self.users) * 1000.0 / f64::from(self.rate.max(1)) * burst;
        let think = cycle_ms - (burst - 1.0) * KEY_MS as f64;
        if think <= 0.0 {
            return Err(format!(
                "{} users typing a key every {KEY_MS} ms in bursts cannot make {} ops/s: use more users or a lower rate",
                self.users, self.rate
            ));
        }
        Ok(think)
    }
}

#[derive(Clone, Copy)]
struct User {
    doc: u32,
    caret: u32,
    /// Keystrokes left in the current burst.
    left: u16,
    /// Offline from the start until `Settings::offline_ms`.
    offline: bool,
}

/// One op to publish.
#[derive(Debug)]
pub struct Edit {
    pub doc: u32,
    pub op: Op,
    /// When its user made it (ms of the run); earlier than now for an offline user's op.
    pub made_ms: u64,
    /// Characters it inserts plus characters it deletes: what it adds to the document's
    /// version (`fold::Doc::version`), whenever and however often it arrives.
    pub increment: u64,
    /// Made offline, sent when its user came back.
    pub late: bool,
}

/// Every user's session and every document's editor.
pub struct Sessions {
    settings: Settings,
    think: Exp<f64>,
    users: Vec<User>,
    editors: Vec<Option<Replica>>,
    /// (due ms, user): each user's next keystroke.
    due: BinaryHeap<Reverse<(u64, u32)>>,
    /// Ops made offline, until their users return.
    held: Vec<Edit>,
    rng: SmallRng,
}

impl Sessions {
    pub fn new(settings: Settings) -> Result<Sessions, String> {
        let think = Exp::new(1.0 / settings.think_mean_ms()?).map_err(|e| e.to_string())?;
        let zipf = Zipf::new(f64::from(settings.docs), settings.zipf_s).map_err(|e| e.to_string())?;
        let mut rng = SmallRng::seed_from_u64(settings.seed);
        let offline = (f64::from(settings.users) * settings.offline_share) as u32;
        let mut users = Vec::with_capacity(settings.users as usize);
        let mut due = BinaryHeap::with_capacity(settings.users as usize);
        for u in 0..settings.users {
            let doc = zipf.sample(&mut rng) as u32 - 1;
            users.push(User { doc, caret: 0, left: 0, offline: u < offline });
            // Each starts as if between bursts, so the load is steady from the start.
            due.push(Reverse((think.sample(&mut rng) as u64, u)));
        }
        let editors = (0..settings.docs).map(|_| None).collect();
        Ok(Sessions { settings, think, users, editors, due, held: Vec::new(), rng })
    }

    pub fn doc_id(&self, doc: u32) -> String {
        format!("{}{doc:05}", self.settings.prefix)
    }

    /// The document of an id this run made.
    pub fn doc_of(&self, id: &str) -> Option<u32> {
        id.strip_prefix(&self.settings.prefix)?.parse().ok().filter(|&doc| doc < self.settings.docs)
    }

    /// A document's text as its editor has it (every op made so far, sent or held).
    pub fn text(&self, doc: u32) -> Option<String> {
        self.editors.get(doc as usize)?.as_ref().map(Replica::text)
    }

    /// A document's length in characters as its editor has it.
    pub fn len(&self, doc: u32) -> usize {
        self.editors.get(doc as usize).and_then(Option::as_ref).map_or(0, Replica::len)
    }

    /// Ops made offline and not sent yet.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Up to `max` keystrokes due by `now_ms` (the oldest first), then the held ops of users
    /// back by then, to `out`.
    pub fn edits_until(&mut self, now_ms: u64, max: usize, out: &mut Vec<Edit>) -> Result<(), EditError> {
        for _ in 0..max {
            let Some(&Reverse((at, user))) = self.due.peek() else { break };
            if at > now_ms {
                break;
            }
            self.due.pop();
            let edit = self.keystroke(user, at)?;
            let next = if self.users[user as usize].left > 0 {
                at + KEY_MS
            } else {
                at + self.think.sample(&mut self.rng) as u64
            };
            self.due.push(Reverse((next.max(at + 1), user)));
            if self.users[user as usize].offline && at < self.settings.offline_ms {
                self.held.push(Edit { late: true, ..edit });
            } else {
                out.push(edit);
            }
        }
        if now_ms >= self.settings.offline_ms {
            out.append(&mut self.held);
        }
        Ok(())
    }

    /// When the oldest keystroke not made yet is due (ms of the run).
    pub fn next_due(&self) -> Option<u64> {
        self.due.peek().map(|Reverse((at, _))| *at)
    }

    /// Every held op, as if every user came back now (the end of a run).
    pub fn return_everyone(&mut self, out: &mut Vec<Edit>) {
        out.append(&mut self.held);
    }

    /// One op of `user` at `at`: a burst starts at a random caret, as typing or as a paste.
    fn keystroke(&mut self, user: u32, at: u64) -> Result<Edit, EditError> {
        let settings = &self.settings;
        let u = &mut self.users[user as usize];
        let editor = self.editors[u.doc as usize].get_or_insert_with(|| {
            Replica::new(doc_seed(&format!("{}{:05}", settings.prefix, u.doc)), 1 + u64::from(u.doc))
        });
        let len = editor.len();
        let paste = u.left == 0 && self.rng.random_bool(settings.paste_share);
        if u.left == 0 {
            u.caret = self.rng.random_range(0..=len) as u32;
            u.left = if paste { 1 } else { self.rng.random_range(BURST.0..=BURST.1) as u16 };
        }
        u.left -= 1;
        let caret = (u.caret as usize).min(len);
        let (op, increment) = if paste {
            let chars = self.rng.random_range(PASTE.0..=PASTE.1);
            let text: String =
                (0..chars).map(|_| char::from(b'a' + self.rng.random_range(0..26u8))).collect();
            u.caret = (caret + chars) as u32;
            (editor.local_edit(caret, 0, &text)?, chars as u64)
        } else if caret > 0 && self.rng.random_bool(settings.delete_share) {
            u.caret = caret as u32 - 1;
            (editor.local_edit(caret - 1, 1, "")?, 1)
        } else {
            let letter = char::from(b'a' + self.rng.random_range(0..26u8));
            u.caret = caret as u32 + 1;
            (editor.local_edit(caret, 0, letter.encode_utf8(&mut [0; 4]))?, 1)
        };
        Ok(Edit { doc: u.doc, op, made_ms: at, increment, late: false })
    }
}

/// Which published ops an invalidation shows are visible: the fold's version of a document
/// after the first k of its ops in log order is the sum of their increments, so an
/// invalidation of version v covers every op whose running sum is at most v.
#[derive(Default)]
pub struct Visibility {
    /// Per document: its version so far, and (running sum, published ms) of ops not yet seen.
    docs: Vec<(u64, VecDeque<(u64, u64)>)>,
    waiting: usize,
}

impl Visibility {
    pub fn new(docs: u32) -> Visibility {
        Visibility { docs: (0..docs).map(|_| (0, VecDeque::new())).collect(), waiting: 0 }
    }

    pub fn published(&mut self, doc: u32, increment: u64, at_ms: u64) {
        let (version, waiting) = &mut self.docs[doc as usize];
        *version += increment;
        waiting.push_back((*version, at_ms));
        self.waiting += 1;
    }

    /// `doc` is visible at `version` at `at_ms`: the latency of each op this covers, in ms.
    /// Returns when the oldest of them was published, if it covered any.
    pub fn invalidated(
        &mut self,
        doc: u32,
        version: u64,
        at_ms: u64,
        latencies: &mut Vec<u64>,
    ) -> Option<u64> {
        let (_, waiting) = self.docs.get_mut(doc as usize)?;
        let mut oldest = None;
        while let Some(&(sum, published)) = waiting.front() {
            if sum > version {
                break;
            }
            waiting.pop_front();
            self.waiting -= 1;
            latencies.push(at_ms.saturating_sub(published));
            oldest.get_or_insert(published);
        }
        oldest
    }

    /// Published ops no invalidation has covered yet.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// The version each document should reach once every published op is folded.
    pub fn version(&self, doc: u32) -> u64 {
        self.docs.get(doc as usize).map_or(0, |(version, _)| *version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            users: 400,
            docs: 20,
            rate: 2_000,
            zipf_s: 1.0,
            delete_share: 0.1,
            paste_share: 0.05,
            offline_share: 0.1,
            offline_ms: 500,
            seed: 7,
            prefix: "t-".into(),
        }
    }

    #[test]
    fn users_make_about_the_rate_and_offline_ops_come_late() {
        let mut sessions = Sessions::new(settings()).expect("settings");
        let mut out = Vec::new();
        sessions.edits_until(400, usize::MAX, &mut out).expect("edits");
        assert!(sessions.held() > 0, "offline users hold their ops");
        assert!(out.iter().all(|e| e.made_ms <= 400));
        sessions.edits_until(5_000, usize::MAX, &mut out).expect("edits");
        let rate = out.len() as f64 / 5.0;
        assert!((1_200.0..2_800.0).contains(&rate), "{rate} ops/s for 2,000");
        assert_eq!(sessions.held(), 0, "everyone is back after 500 ms");
        let late = out.windows(2).filter(|w| w[1].made_ms < w[0].made_ms).count();
        assert!(late > 0, "held ops arrive after newer ones");
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        let refused = |settings: Settings| Sessions::new(settings).err().expect("refused");
        assert!(
            refused(Settings { users: 10, rate: 1_000, ..settings() }).contains("more users or a lower rate")
        );
        assert_eq!(refused(Settings { docs: 0, ..settings() }), "--docs must be at least 1");
        assert_eq!(refused(Settings { rate: 0, ..settings() }), "--rate must be at least 1");
        assert!(refused(Settings { offline_share: 1.5, ..settings() }).contains("from 0 to 1"));
        assert!(refused(Settings { zipf_s: 0.0, ..settings() }).contains("positive exponent"));
    }

    #[test]
    fn an_invalidation_covers_the_ops_up_to_its_version() {
        let mut visibility = Visibility::new(2);
        visibility.published(0, 1, 10);
        visibility.published(0, 5, 20);
        visibility.published(1, 1, 20);
        visibility.published(0, 1, 30);
        let mut latencies = Vec::new();
        let oldest = visibility.invalidated(0, 6, 100, &mut latencies);
        assert_eq!(latencies, [90, 80]);
        assert_eq!(oldest, Some(10), "the oldest op it covers was published at 10");
        assert_eq!(visibility.waiting(), 2);
        let again = visibility.invalidated(0, 6, 120, &mut latencies);
        assert_eq!((latencies.len(), again), (2, None), "a repeated invalidation covers nothing new");
        assert_eq!(visibility.version(0), 7);
    }
}
