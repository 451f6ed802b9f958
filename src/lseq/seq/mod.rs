//! Document state: the ordered set of live characters keyed by identifier, stored as a
//! trie of identifier levels (an identifier *is* a path, and neighbours share long
//! prefixes), with the seen counters that make inserts idempotent and a bounded set of
//! tombstones for deletes that arrive before their insert.

use rustc_hash::FxHashSet;
use std::cmp::Ordering;

use super::ident::{Ident, Level, SiteId};
use super::op::{Op, OpError};
use super::seen::SeenCounters;

mod parts;
mod position;

pub use parts::{PartsError, StateParts};
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
    pub(super) site: SiteId,
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
    seen: SeenCounters,
    /// Deleted characters (site, counter) whose insert has not arrived.
    pending: FxHashSet<(SiteId, u64)>,
    /// Node path of the identifier touched last: neighbours share prefixes.
    finger: Vec<u32>,
    /// An editor's replica: keeps deleted characters as tombstones (allocation anchors, see
    /// `Replica`) and live counts on every node (positions). A fold state keeps neither.
    editor: bool,
    /// Reused by `apply` for the nodes its deletes target.
    scratch: Vec<Option<u32>>,
    /// Nodes that may have become empty, waiting for `prune_doomed`, and its scratch.
    doomed: Vec<u32>,
    doomed_parents: Vec<u32>,
}

impl Default for Sequence {
    fn default() -> Self {
        Sequence::new()
    }
}

impl Sequence {
    pub fn new() -> Sequence {
        let root = Node { digit: 0, counter: 0, site: 0, parent: NONE, ch: NONE, live: 0, children: NONE };
        Sequence {
            nodes: vec![root],
            free_nodes: Vec::new(),
            children: Vec::new(),
            free_children: Vec::new(),
            seen: SeenCounters::default(),
            pending: FxHashSet::default(),
            finger: Vec::new(),
            editor: false,
            scratch: Vec::new(),
            doomed: Vec::new(),
            doomed_parents: Vec::new(),
        }
    }

    /// A state for an editor's replica: positions and tombstones.
    pub fn for_editor() -> Sequence {
        Sequence { editor: true, ..Sequence::new() }
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
        let mut targets = std::mem::take(&mut self.scratch);
        targets.clear();
        let mut new_tombstones = 0;
        for id in &op.deletes {
            let node = self.find(id.levels()).filter(|&n| self.is_char(n));
            let last = id.last();
            if node.is_none()
                && !self.seen.contains(last.site, last.counter)
                && !self.pending.contains(&(last.site, last.counter))
            {
                new_tombstones += 1;
            }
            targets.push(node);
        }
        if new_tombstones > 0 && self.pending.len() + new_tombstones > MAX_PENDING_TOMBSTONES {
            self.scratch = targets;
            return Err(ApplyError::TombstoneLimit { needed: new_tombstones, held: self.pending.len() });
        }
        let mut outcome = ApplyOutcome::default();
        for (id, node) in op.deletes.iter().zip(&targets) {
            self.delete(id, *node, &mut outcome);
        }
        self.prune_doomed();
        self.scratch = targets;
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
            let level =
                Level { digit: first.digit + i as u64, site: first.site, counter: first.counter + i as u64 };
            if !self.seen.insert(level.site, level.counter) {
                outcome.duplicates += 1;
            } else if !self.pending.is_empty() && self.pending.remove(&(level.site, level.counter)) {
                if self.editor {
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

    /// Deletes `id`, whose node `apply` looked up (a repeated delete in one op finds its
    /// node no longer a character).
    fn delete(&mut self, id: &Ident, node: Option<u32>, outcome: &mut ApplyOutcome) {
        let last = id.last();
        match node {
            Some(node) if self.is_char(node) => {
                self.nodes[node as usize].ch = if self.editor { TOMBSTONE } else { NONE };
                self.add_live(node, -1);
                self.doomed.push(node);
                outcome.deleted += 1;
            }
            _ if self.seen.contains(last.site, last.counter) => outcome.duplicates += 1,
            _ => {
                if self.pending.insert((last.site, last.counter)) {
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
                if !self.editor || self.nodes[child as usize].live > 0 {
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
        Level { digit: n.digit, site: n.site, counter: n.counter }
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
            .then_with(|| n.site.cmp(&level.site))
            .then_with(|| n.counter.cmp(&level.counter))
    }

    /// Follows `levels` from the root, reusing the finger's shared prefix.
    fn find(&self, levels: &[Level]) -> Option<u32> {
        let shared = self.shared_with_finger(levels);
        let mut node = if shared == 0 { ROOT } else { self.finger[shared - 1] };
        for level in &levels[shared..] {
            let list = self.children_of(node);
            node = list[self.search_children(list, level).ok()?];
        }
        Some(node)
    }

    /// Where `level` is (`Ok`) or would go (`Err`) among the sorted children `list`. Tries
    /// the end first: typing appends, and backspace deletes what was just appended.
    fn search_children(&self, list: &[u32], level: &Level) -> Result<usize, usize> {
        match list.last().map(|&last| self.compare(last, level)) {
            Some(Ordering::Less) => Err(list.len()),
            Some(Ordering::Equal) => Ok(list.len() - 1),
            _ => list.binary_search_by(|&c| self.compare(c, level)),
        }
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
        let mut node = if shared == 0 { ROOT } else { self.finger[shared - 1] };
        for level in &levels[shared..] {
            node = self.child_or_create(node, level);
            self.finger.push(node);
        }
        node
    }

    fn child_or_create(&mut self, parent: u32, level: &Level) -> u32 {
        let list = self.children_of(parent);
        let at = match self.search_children(list, level) {
            Ok(at) => return list[at],
            Err(at) => at,
        };
        let site = level.site;
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

    /// Keeps live counts: on every node for an editor's replica (positions), on the root only
    /// for a fold state, which never asks for positions.
    fn add_live(&mut self, mut node: u32, delta: i32) {
        if !self.editor {
            node = ROOT;
        }
        while node != NONE {
            let n = &mut self.nodes[node as usize];
            n.live = n.live.wrapping_add_signed(delta);
            node = n.parent;
        }
    }

    /// Removes `node` and its ancestors while they hold neither a character nor children.
    fn prune(&mut self, node: u32) {
        self.doomed.push(node);
        self.prune_doomed();
    }

    fn prunable(&self, node: u32) -> bool {
        let n = &self.nodes[node as usize];
        node != ROOT && n.ch == NONE && n.children == NONE
    }

    /// Prunes the nodes queued in `doomed` (and then their ancestors) with one pass over
    /// each child list involved, so deleting a pasted block costs linear, not quadratic, time.
    fn prune_doomed(&mut self) {
        let mut doomed = std::mem::take(&mut self.doomed);
        let mut parents = std::mem::take(&mut self.doomed_parents);
        while !doomed.is_empty() {
            doomed.retain(|&n| self.prunable(n));
            doomed.sort_unstable_by_key(|&n| (self.nodes[n as usize].parent, n));
            doomed.dedup();
            let mut start = 0;
            while start < doomed.len() {
                let parent = self.nodes[doomed[start] as usize].parent;
                let len =
                    doomed[start..].iter().take_while(|&&n| self.nodes[n as usize].parent == parent).count();
                let group = &doomed[start..start + len];
                start += len;
                let list = self.nodes[parent as usize].children as usize;
                if let [node] = group {
                    let level = self.level_of(*node);
                    let at = self
                        .search_children(&self.children[list], &level)
                        .expect("child is listed in its parent");
                    self.children[list].remove(at);
                } else {
                    self.children[list].retain(|c| group.binary_search(c).is_err());
                }
                if self.children[list].is_empty() {
                    self.children[list] = Vec::new();
                    self.nodes[parent as usize].children = NONE;
                    self.free_children.push(list as u32);
                }
                if let Some(depth) = self.finger.iter().position(|f| group.binary_search(f).is_ok()) {
                    self.finger.truncate(depth);
                }
                self.free_nodes.extend_from_slice(group);
                parents.push(parent);
            }
            doomed.clear();
            std::mem::swap(&mut doomed, &mut parents);
        }
        self.doomed = doomed;
        self.doomed_parents = parents;
    }

    /// Bytes retained by this state (capacity of its tables, not the allocator's overhead).
    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * size_of::<Node>()
            + self.children.capacity() * size_of::<Vec<u32>>()
            + self.children.iter().map(|c| c.capacity() * 4).sum::<usize>()
            + (self.free_nodes.capacity() + self.free_children.capacity()) * 4
            + self.seen.heap_bytes()
            + self.pending.capacity() * 16
    }

    /// [`Self::heap_bytes`] without visiting the nodes (a fold measures its states after
    /// every op): every node counted with one slot in its parent's list, each list at its
    /// length, the seen counters at one range per site.
    pub fn estimated_bytes(&self) -> usize {
        self.nodes.capacity() * (size_of::<Node>() + 4)
            + self.children.capacity() * size_of::<Vec<u32>>()
            + (self.free_nodes.capacity() + self.free_children.capacity()) * 4
            + self.seen.estimated_bytes()
            + self.pending.capacity() * 16
    }

    /// Checks the structure's invariants; panics with a description when one fails.
    /// Meant for tests and debug builds.
    pub fn check_invariants(&self) {
        let mut reachable = 0usize;
        let mut live_chars = 0usize;
        let mut stack = vec![(ROOT, 0usize)];
        while let Some((node, depth)) = stack.pop() {
            reachable += 1;
            let n = &self.nodes[node as usize];
            let list = self.children_of(node);
            assert!(n.children == NONE || !list.is_empty(), "node {node} keeps an empty child list");
            for pair in list.windows(2) {
                assert_eq!(
                    self.compare(pair[0], &self.level_of(pair[1])),
                    Ordering::Less,
                    "children of {node} unsorted"
                );
            }
            if self.editor {
                let own = u32::from(node != ROOT && self.is_char(node));
                let sum: u32 = list.iter().map(|&c| self.nodes[c as usize].live).sum();
                assert_eq!(n.live, own + sum, "live count of node {node}");
            } else if node != ROOT {
                live_chars += usize::from(self.is_char(node));
            }
            if node != ROOT {
                assert!(n.ch != NONE || !list.is_empty(), "node {node} is an empty leaf");
                assert!(self.editor || n.ch != TOMBSTONE, "tombstone kept in a fold state");
                assert!(n.digit < super::ident::base(depth - 1), "digit of node {node} outside its base");
                if n.ch != NONE {
                    assert!(self.seen.contains(n.site, n.counter), "char {node} not marked seen");
                }
            }
            for &c in list {
                assert_eq!(self.nodes[c as usize].parent, node, "parent link of {c}");
                stack.push((c, depth + 1));
            }
        }
        assert_eq!(reachable + self.free_nodes.len(), self.nodes.len(), "lost or doubly freed nodes");
        assert!(self.editor || live_chars == self.len(), "character count of a fold state");
        for (site, counter) in &self.pending {
            assert!(!self.seen.contains(*site, *counter), "a tombstone waits for an insert already seen");
        }
        for (i, &f) in self.finger.iter().enumerate() {
            let parent = if i == 0 { ROOT } else { self.finger[i - 1] };
            assert_eq!(self.nodes[f as usize].parent, parent, "finger is not a path");
        }
    }
}
