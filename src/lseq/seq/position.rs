//! Positional queries for editors: code-point positions ↔ identifiers, using the live
//! counts kept on every node.

use super::{Ident, NONE, ROOT, Sequence};

/// Where an insert at a position goes: see [`Sequence::insert_neighbours`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Neighbours {
    pub left: Option<Ident>,
    pub right: Option<Ident>,
    pub anchor: Option<Ident>,
}

impl Sequence {
    /// Identifiers of the `count` live characters from `pos` on (fewer at the end).
    /// `hint`: a live character and its position, to search from when close.
    pub fn idents_from(&self, pos: usize, count: usize, hint: Option<(usize, &Ident)>) -> Vec<Ident> {
        let mut out = Vec::with_capacity(count);
        let mut node = self.node_near(pos, hint);
        while let Some(n) = node.filter(|_| out.len() < count) {
            out.push(self.ident_of(n));
            node = self.next_in_order(n, true);
        }
        out
    }

    /// The neighbours of text typed at `pos`: the live characters before and after it,
    /// and the first character after the left one, deleted or not, when that is a
    /// tombstone (an anchor: see `Replica::local_edit`).
    /// `hint` as for [`Sequence::idents_from`].
    pub fn insert_neighbours(&self, pos: usize, hint: Option<(usize, &Ident)>) -> Neighbours {
        let left = if pos == 0 { ROOT } else { self.node_near(pos - 1, hint).unwrap_or(ROOT) };
        let next = self.next_in_order(left, false);
        let right = match next {
            Some(n) if !self.is_char(n) => self.next_in_order(n, true),
            other => other,
        };
        let ident = |n: u32| self.ident_of(n);
        Neighbours {
            left: (left != ROOT).then(|| ident(left)),
            right: right.map(ident),
            anchor: next.filter(|&n| !self.is_char(n)).map(ident),
        }
    }

    /// The live character just before `id` (live or deleted), if any.
    pub fn live_before(&self, id: &Ident) -> Option<Ident> {
        self.find(id.levels()).and_then(|n| self.previous_live(n)).map(|n| self.ident_of(n))
    }

    /// The node of the live character at `pos`, found by stepping from `hint` when it is
    /// within `HINT_REACH` positions (editors mostly type and move near their caret), else
    /// by descending from the root.
    fn node_near(&self, pos: usize, hint: Option<(usize, &Ident)>) -> Option<u32> {
        const HINT_REACH: usize = 64;
        let start = hint
            .filter(|(at, _)| at.abs_diff(pos) <= HINT_REACH)
            .and_then(|(at, id)| Some((at, self.find(id.levels()).filter(|&n| self.is_char(n))?)));
        let Some((mut at, mut node)) = start else {
            return self.node_at(pos);
        };
        while at < pos {
            node = self.next_in_order(node, true)?;
            at += 1;
        }
        while at > pos {
            node = self.previous_live(node)?;
            at -= 1;
        }
        Some(node)
    }

    /// The live character before `node` in document order.
    fn previous_live(&self, mut node: u32) -> Option<u32> {
        loop {
            let (parent, siblings, at) = self.siblings_of(node)?;
            if let Some(&earlier) = siblings[..at].iter().rev().find(|&&c| self.nodes[c as usize].live > 0) {
                return Some(self.last_live_in(earlier));
            }
            if parent != ROOT && self.is_char(parent) {
                return Some(parent);
            }
            node = parent;
        }
    }

    /// `node`'s parent, the parent's children and `node`'s index among them (`None` for the root).
    fn siblings_of(&self, node: u32) -> Option<(u32, &[u32], usize)> {
        let parent = self.nodes[node as usize].parent;
        if parent == NONE {
            return None;
        }
        let siblings = self.children_of(parent);
        let at = self.search_children(siblings, &self.level_of(node)).expect("child is listed in its parent");
        Some((parent, siblings, at))
    }

    /// The last live character in the subtree of `node` (which has `live > 0`).
    fn last_live_in(&self, mut node: u32) -> u32 {
        while let Some(&child) =
            self.children_of(node).iter().rev().find(|&&c| self.nodes[c as usize].live > 0)
        {
            node = child;
        }
        node
    }

    pub(super) fn node_at(&self, mut pos: usize) -> Option<u32> {
        if pos >= self.len() {
            return None;
        }
        let mut node = ROOT;
        loop {
            if node != ROOT && self.is_char(node) {
                if pos == 0 {
                    return Some(node);
                }
                pos -= 1;
            }
            let mut next = None;
            for &child in self.children_of(node) {
                let live = self.nodes[child as usize].live as usize;
                if pos < live {
                    next = Some(child);
                    break;
                }
                pos -= live;
            }
            node = next?;
        }
    }

    /// The next node after `node` in document order that holds a live character
    /// (`live_only`) or a live or deleted one.
    fn next_in_order(&self, mut node: u32, live_only: bool) -> Option<u32> {
        let wanted = |c: &u32| !live_only || self.nodes[*c as usize].live > 0;
        if let Some(&child) = self.children_of(node).iter().find(|c| wanted(c)) {
            return Some(self.first_in(child, live_only));
        }
        loop {
            let (parent, siblings, at) = self.siblings_of(node)?;
            if let Some(&next) = siblings[at + 1..].iter().find(|c| wanted(c)) {
                return Some(self.first_in(next, live_only));
            }
            node = parent;
        }
    }

    /// The first wanted node in the subtree of `node` (which holds one: live subtrees hold
    /// a live character, and every node's subtree holds a live or deleted one).
    fn first_in(&self, mut node: u32, live_only: bool) -> u32 {
        loop {
            let n = &self.nodes[node as usize];
            if if live_only { self.is_char(node) } else { n.ch != NONE } {
                return node;
            }
            node = *self
                .children_of(node)
                .iter()
                .find(|&&c| !live_only || self.nodes[c as usize].live > 0)
                .expect("the subtree holds a wanted node");
        }
    }
}
