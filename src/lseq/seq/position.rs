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
    pub fn idents_from(&self, pos: usize, count: usize) -> Vec<Ident> {
        let mut out = Vec::with_capacity(count);
        let mut node = self.node_at(pos);
        while let Some(n) = node.filter(|_| out.len() < count) {
            out.push(self.ident_of(n));
            node = self.next_in_order(n, true);
        }
        out
    }

    /// The neighbours of text typed at `pos`: the live characters before and after it,
    /// and the first character after the left one, deleted or not, when that is a
    /// tombstone (an anchor: see `Replica::local_edit`).
    pub fn insert_neighbours(&self, pos: usize) -> Neighbours {
        let left = if pos == 0 { ROOT } else { self.node_at(pos - 1).unwrap_or(ROOT) };
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
            let parent = self.nodes[node as usize].parent;
            if parent == NONE {
                return None;
            }
            let siblings = self.children_of(parent);
            let level = self.level_of(node);
            let at = siblings
                .binary_search_by(|&c| self.compare(c, &level))
                .expect("child is listed in its parent");
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
