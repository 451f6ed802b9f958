//! Document state: the ordered set of live characters keyed by identifier, stored as a
//! trie of identifier levels (an identifier *is* a path, and neighbours share long
//! prefixes), with the seen counters that make inserts idempotent and a bounded set of
//! tombstones for deletes that arrive before their insert.

use std::cmp::Ordering;
use std::collections::HashMap;

use super::ident::{Ident, Level, SiteId};
use super::op::{Op, OpError};
use super::seen::SeenCounters;

mod position;

pub use position::Neighbours;

/// Deletes whose insert has not arrived yet, per document. An op that would need more is
/// refused whole with [`ApplyError::TombstoneLimit`], so nothing is silently dropped.
pub const MAX_PENDING_TOMBSTONES: usize = 65_536;

pub(super) const NONE: u32 = u32::MAX;
/// `Node::ch` of a deleted character kept as an allocation anchor (replicas only).
const TOMBSTONE: u32 = u32::MAX - 1;
pub(super) const ROOT: u32 = 0;

#[derive(Clone, Debug)]
pub(super) struct Node {
    pub(super) digit: u64,
    pub(super) counter: u64,
    pub(super) site: u32,
    pub(super) parent: u32,
    /// The character; `TOMBSTONE` for a deleted one kept as an anchor; `NONE` for a
    /// prefix that is not (or no longer) a character.
    pub(super) ch: u32,
    /// Live characters in this subtree, this node included.
    pub(super) live: u32,
    /// Index into `Sequence::children`, or `NONE`.
    pub(super) children: u32,
}

/// What applying an op changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub inserted: u32,
    pub deleted: u32,
    /// Inserts already seen and deletes of characters already gone.
    pub duplicates: u32,
    /// Deletes recorded as tombstones, waiting for their insert.
    pub tombstoned: u32,
}

impl ApplyOutcome {
    pub fn changed(&self) -> bool {
        self.inserted + self.deleted > 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Invalid(#[from] OpError),
    #[error(
        "op needs {needed} more delete-before-insert tombstones; limit max_pending_tombstones = {MAX_PENDING_TOMBSTONES} (held: {held})"
    )]
    TombstoneLimit { needed: usize, held: usize },
}

/// The state of one document.
#[derive(Clone, Debug)]
pub struct Sequence {
    pub(super) nodes: Vec<Node>,
    free_nodes: Vec<u32>,
    children: Vec<Vec<u32>>,
    free_children: Vec<u32>,
    sites: Vec<SiteId>,
    site_index: HashMap<SiteId, u32>,
    seen: SeenCounters,
    pending: HashMap<(SiteId, u64), Ident>,
    /// Node path of the identifier touched last: neighbours share prefixes.
    finger: Vec<u32>,
    /// Keep deleted characters as tombstones (an editor's replica), so that an insert next
    /// to a deleted character lands on the side where the author saw it.
    keep_tombstones: bool,
}

impl Default for Sequence {
    fn default() -> Self {
        Sequence::new()
    }
}

impl Sequence {
    pub fn new() -> Sequence {
        let root = Node {
            digit: 0,
            counter: 0,
            site: 0,
            parent: NONE,
            ch: NONE,
            live: 0,
            children: NONE,
        };
        Sequence {
            nodes: vec![root],
            free_nodes: Vec::new(),
            children: Vec::new(),
            free_children: Vec::new(),
            sites: Vec::new(),
            site_index: HashMap::new(),
            seen: SeenCounters::default(),
            pending: HashMap::new(),
            finger: Vec::new(),
            keep_tombstones: false,
        }
    }

    /// A state that keeps deleted characters as allocation anchors (for editors).
    pub fn with_tombstones() -> Sequence {
        Sequence {
            keep_tombstones: true,
            ..Sequence::new()
        }
    }

    /// Number of live characters.
    pub fn len(&self) -> usize {
        self.nodes[ROOT as usize].live as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Deletes waiting for their insert.
    pub fn pending_tombstones(&self) -> usize {
        self.pending.len()
    }

    /// Applies a (local or remote) op. Idempotent and commutative: the state is a function
    /// of the set of ops applied. An invalid op or one over the tombstone limit changes nothing.
    pub fn apply(&mut self, op: &Op) -> Result<ApplyOutcome, ApplyError> {
        op.validate()?;
        let new_tombstones = op
            .deletes
            .iter()
            .filter(|id| {
                let last = id.last();
                self.find(id.levels()).is_none_or(|n| !self.is_char(n))
                    && !self.seen.contains(last.site, last.counter)
                    && !self.pending.contains_key(&(last.site, last.counter))
            })
            .count();
        if new_tombstones > 0 && self.pending.len() + new_tombstones > MAX_PENDING_TOMBSTONES {
            return Err(ApplyError::TombstoneLimit {
                needed: new_tombstones,
                held: self.pending.len(),
            });
        }
        let mut outcome = ApplyOutcome::default();
        for id in &op.deletes {
            self.delete(id, &mut outcome);
        }
        for run in &op.inserts {
            self.insert_run(&run.start, &run.text, &mut outcome);
        }
        Ok(outcome)
    }

    fn insert_run(&mut self, start: &Ident, text: &str, outcome: &mut ApplyOutcome) {
        let levels = start.levels();
        let (prefix, first) = levels.split_at(levels.len() - 1);
        let first = first[0];
        let parent = self.find_or_create(prefix);
        for (i, ch) in text.chars().enumerate() {
            let level = Level {
                digit: first.digit + i as u64,
                site: first.site,
                counter: first.counter + i as u64,
            };
            if !self.seen.insert(level.site, level.counter) {
                outcome.duplicates += 1;
            } else if self.pending.remove(&(level.site, level.counter)).is_some() {
                if self.keep_tombstones {
                    let node = self.child_or_create(parent, &level);
                    self.nodes[node as usize].ch = TOMBSTONE;
                }
                outcome.deleted += 1;
            } else {
                let node = self.child_or_create(parent, &level);
                self.nodes[node as usize].ch = ch as u32;
                self.add_live(node, 1);
                outcome.inserted += 1;
            }
        }
        self.prune(parent);
    }

    fn delete(&mut self, id: &Ident, outcome: &mut ApplyOutcome) {
        let last = id.last();
        match self.find(id.levels()) {
            Some(node) if self.is_char(node) => {
                self.nodes[node as usize].ch = if self.keep_tombstones {
                    TOMBSTONE
                } else {
                    NONE
                };
                self.add_live(node, -1);
                self.prune(node);
                outcome.deleted += 1;
            }
            _ if self.seen.contains(last.site, last.counter) => outcome.duplicates += 1,
            _ => {
                if self
                    .pending
                    .insert((last.site, last.counter), id.clone())
                    .is_none()
                {
                    outcome.tombstoned += 1;
                } else {
                    outcome.duplicates += 1;
                }
            }
        }
    }

    pub(super) fn is_char(&self, node: u32) -> bool {
        self.nodes[node as usize].ch < TOMBSTONE
    }

    /// The text, in identifier order.
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(self.len());
        self.walk(|_, ch| out.push(ch));
        out
    }

    /// Live characters with their identifiers, in order.
    pub fn entries(&self) -> Vec<(Ident, char)> {
        let mut out = Vec::with_capacity(self.len());
        self.walk(|node, ch| out.push((self.ident_of(node), ch)));
        out
    }

    /// Calls `f` for each live character in order (pre-order: a prefix before its extensions).
    fn walk(&self, mut f: impl FnMut(u32, char)) {
        let mut stack: Vec<(u32, usize)> = vec![(ROOT, 0)];
        while let Some((node, next)) = stack.last_mut() {
            let list = self.children_of(*node);
            if *next < list.len() {
                let child = list[*next];
                *next += 1;
                if self.nodes[child as usize].live > 0 {
                    if let Some(ch) = char::from_u32(self.nodes[child as usize].ch) {
                        // NONE and TOMBSTONE are not chars.
                        f(child, ch);
                    }
                    stack.push((child, 0));
                }
            } else {
                stack.pop();
            }
        }
    }

    /// The identifier of a node (walks up to the root).
    pub(super) fn ident_of(&self, mut node: u32) -> Ident {
        let mut levels = Vec::new();
        while node != ROOT {
            levels.push(self.level_of(node));
            node = self.nodes[node as usize].parent;
        }
        levels.reverse();
        Ident(levels)
    }

    pub(super) fn level_of(&self, node: u32) -> Level {
        let n = &self.nodes[node as usize];
        Level {
            digit: n.digit,
            site: self.sites[n.site as usize],
            counter: n.counter,
        }
    }

    pub(super) fn children_of(&self, node: u32) -> &[u32] {
        match self.nodes[node as usize].children {
            NONE => &[],
            list => &self.children[list as usize],
        }
    }

    pub(super) fn compare(&self, node: u32, level: &Level) -> Ordering {
        let n = &self.nodes[node as usize];
        n.digit
            .cmp(&level.digit)
            .then_with(|| self.sites[n.site as usize].cmp(&level.site))
            .then_with(|| n.counter.cmp(&level.counter))
    }

    /// Follows `levels` from the root, reusing the finger's shared prefix.
    fn find(&self, levels: &[Level]) -> Option<u32> {
        let shared = self.shared_with_finger(levels);
        let mut node = if shared == 0 {
            ROOT
        } else {
            self.finger[shared - 1]
        };
        for level in &levels[shared..] {
            let list = self.children_of(node);
            let at = list.binary_search_by(|&c| self.compare(c, level)).ok()?;
            node = list[at];
        }
        Some(node)
    }

    fn shared_with_finger(&self, levels: &[Level]) -> usize {
        self.finger
            .iter()
            .zip(levels)
            .take_while(|&(&node, level)| self.compare(node, level) == Ordering::Equal)
            .count()
    }

    fn find_or_create(&mut self, levels: &[Level]) -> u32 {
        let shared = self.shared_with_finger(levels);
        self.finger.truncate(shared);
        let mut node = if shared == 0 {
            ROOT
        } else {
            self.finger[shared - 1]
        };
        for level in &levels[shared..] {
            node = self.child_or_create(node, level);
            self.finger.push(node);
        }
        node
    }

    fn child_or_create(&mut self, parent: u32, level: &Level) -> u32 {
        let at = match self
            .children_of(parent)
            .binary_search_by(|&c| self.compare(c, level))
        {
            Ok(at) => return self.children_of(parent)[at],
            Err(at) => at,
        };
        let site = self.intern_site(level.site);
        let node = Node {
            digit: level.digit,
            counter: level.counter,
            site,
            parent,
            ch: NONE,
            live: 0,
            children: NONE,
        };
        let id = match self.free_nodes.pop() {
            Some(id) => {
                self.nodes[id as usize] = node;
                id
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        if self.nodes[parent as usize].children == NONE {
            let list = match self.free_children.pop() {
                Some(list) => list,
                None => {
                    self.children.push(Vec::new());
                    (self.children.len() - 1) as u32
                }
            };
            self.nodes[parent as usize].children = list;
        }
        let list = self.nodes[parent as usize].children as usize;
        self.children[list].insert(at, id);
        id
    }

    fn intern_site(&mut self, site: SiteId) -> u32 {
        let next = self.sites.len() as u32;
        let index = *self.site_index.entry(site).or_insert(next);
        if index == next {
            self.sites.push(site);
        }
        index
    }

    fn add_live(&mut self, mut node: u32, delta: i32) {
        while node != NONE {
            let n = &mut self.nodes[node as usize];
            n.live = n.live.wrapping_add_signed(delta);
            node = n.parent;
        }
    }

    /// Removes `node` and its ancestors while they hold neither a character nor children.
    fn prune(&mut self, mut node: u32) {
        while node != ROOT
            && self.nodes[node as usize].ch == NONE
            && self.nodes[node as usize].children == NONE
        {
            let parent = self.nodes[node as usize].parent;
            let list = self.nodes[parent as usize].children as usize;
            let at = self.children[list]
                .iter()
                .position(|&c| c == node)
                .expect("child is listed in its parent");
            self.children[list].remove(at);
            if self.children[list].is_empty() {
                self.nodes[parent as usize].children = NONE;
                self.free_children.push(list as u32);
            }
            if let Some(depth) = self.finger.iter().position(|&f| f == node) {
                self.finger.truncate(depth);
            }
            self.free_nodes.push(node);
            node = parent;
        }
    }

    /// Bytes retained by this state (capacity of its tables, not the allocator's overhead).
    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * size_of::<Node>()
            + self.children.capacity() * size_of::<Vec<u32>>()
            + self
                .children
                .iter()
                .map(|c| c.capacity() * 4)
                .sum::<usize>()
            + (self.free_nodes.capacity() + self.free_children.capacity()) * 4
            + self.sites.capacity() * 8
            + self.site_index.capacity() * 16
            + self.seen.heap_bytes()
            + self.pending.capacity() * (16 + size_of::<Ident>())
            + self
                .pending
                .values()
                .map(|id| id.depth() * size_of::<Level>())
                .sum::<usize>()
    }

    /// Checks the structure's invariants; panics with a description when one fails.
    /// Meant for tests and debug builds.
    pub fn check_invariants(&self) {
        let mut reachable = 0usize;
        let mut stack = vec![(ROOT, 0usize)];
        while let Some((node, depth)) = stack.pop() {
            reachable += 1;
            let n = &self.nodes[node as usize];
            let list = self.children_of(node);
            assert!(
                n.children == NONE || !list.is_empty(),
                "node {node} keeps an empty child list"
            );
            for pair in list.windows(2) {
                assert_eq!(
                    self.compare(pair[0], &self.level_of(pair[1])),
                    Ordering::Less,
                    "children of {node} unsorted"
                );
            }
            let own = u32::from(node != ROOT && self.is_char(node));
            let sum: u32 = list.iter().map(|&c| self.nodes[c as usize].live).sum();
            assert_eq!(n.live, own + sum, "live count of node {node}");
            if node != ROOT {
                assert!(
                    n.ch != NONE || !list.is_empty(),
                    "node {node} is an empty leaf"
                );
                assert!(
                    self.keep_tombstones || n.ch != TOMBSTONE,
                    "tombstone kept in a fold state"
                );
                assert!(
                    n.digit < super::ident::base(depth - 1),
                    "digit of node {node} outside its base"
                );
                if n.ch != NONE {
                    assert!(
                        self.seen.contains(self.sites[n.site as usize], n.counter),
                        "char {node} not marked seen"
                    );
                }
            }
            for &c in list {
                assert_eq!(self.nodes[c as usize].parent, node, "parent link of {c}");
                stack.push((c, depth + 1));
            }
        }
        assert_eq!(
            reachable + self.free_nodes.len(),
            self.nodes.len(),
            "lost or doubly freed nodes"
        );
        for (site, counter) in self.pending.keys() {
            assert!(
                !self.seen.contains(*site, *counter),
                "a tombstone waits for an insert already seen"
            );
        }
        for (i, &f) in self.finger.iter().enumerate() {
            let parent = if i == 0 { ROOT } else { self.finger[i - 1] };
            assert_eq!(
                self.nodes[f as usize].parent, parent,
                "finger is not a path"
            );
        }
    }
}
