//! An editor's replica: turns local edits (code-point positions) into ops and applies
//! remote ones.

use super::alloc::{DepthExhausted, Rng, allocate, splitmix64};
use super::ident::{Ident, SiteId};
use super::op::{InsertRun, MAX_RUN_CHARS, Op, OpId};
use super::seq::{ApplyError, ApplyOutcome, Neighbours, Sequence};

/// Extra depth an insert may take to stay before a deleted neighbour (a tombstone) rather
/// than land anywhere between the live neighbours. LSEQ orders concurrent inserts at one
/// place by their digits, so without this a replacement typed where a character was
/// deleted can interleave with text another editor typed after that character. Measured
/// (`docfold trace replay`, 16 document seeds): slack 0 left 2–4 interleavings in
/// friendsforever, slack 3 none, at +20% mean depth on automerge-paper; larger slack grows
/// identifiers with every retyped typo.
pub const ANCHOR_SLACK: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("edit at {pos} deleting {delete_count} is outside the document of length {len}")]
    OutOfRange {
        pos: usize,
        delete_count: usize,
        len: usize,
    },
    #[error("edit inserts and deletes nothing")]
    Empty,
    #[error(transparent)]
    DepthExhausted(#[from] DepthExhausted),
}

#[derive(Clone, Debug)]
pub struct Replica {
    seq: Sequence,
    site: SiteId,
    doc_seed: u64,
    /// Next counter to hand out: above every counter this replica has seen (Lamport).
    next_counter: u64,
    rng: Rng,
}

impl Replica {
    /// A replica of the document whose allocation seed is `doc_seed`, for editing session `site`.
    pub fn new(doc_seed: u64, site: SiteId) -> Replica {
        Replica {
            seq: Sequence::with_tombstones(),
            site,
            doc_seed,
            next_counter: 1,
            rng: Rng::new(splitmix64(site)),
        }
    }

    pub fn site(&self) -> SiteId {
        self.site
    }

    pub fn sequence(&self) -> &Sequence {
        &self.seq
    }

    pub fn text(&self) -> String {
        self.seq.text()
    }

    pub fn len(&self) -> usize {
        self.seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }

    pub fn check_invariants(&self) {
        self.seq.check_invariants();
    }

    /// Deletes `delete_count` characters at `pos` and inserts `text` there; returns the op
    /// to publish (already applied here).
    pub fn local_edit(
        &mut self,
        pos: usize,
        delete_count: usize,
        text: &str,
    ) -> Result<Op, EditError> {
        let len = self.seq.len();
        if pos.checked_add(delete_count).is_none_or(|end| end > len) {
            return Err(EditError::OutOfRange {
                pos,
                delete_count,
                len,
            });
        }
        if delete_count == 0 && text.is_empty() {
            return Err(EditError::Empty);
        }
        let deletes = self.seq.idents_from(pos, delete_count);
        let Neighbours {
            mut left,
            right,
            mut anchor,
        } = self.seq.insert_neighbours(pos);
        let first_counter = self.next_counter;
        let mut counter = first_counter;
        let mut inserts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let want = rest.chars().take(MAX_RUN_CHARS).count() as u64;
            let own = (self.site, counter);
            let p = left.as_ref().map_or(&[][..], Ident::levels);
            let mut run = allocate(
                p,
                right.as_ref().map(Ident::levels),
                want,
                own,
                self.doc_seed,
                &mut self.rng,
            )?;
            // Prefer the side of a deleted neighbour that the author saw, as long as that
            // costs at most ANCHOR_SLACK levels: a concurrent insert next to it keeps its side.
            if let Some(bound) = anchor.as_ref() {
                let before = allocate(
                    p,
                    Some(bound.levels()),
                    want,
                    own,
                    self.doc_seed,
                    &mut self.rng,
                );
                if let Ok(before) = before
                    && before.start.depth() <= run.start.depth() + ANCHOR_SLACK
                {
                    run = before;
                }
            }
            debug_assert!(
                left.as_ref().is_none_or(|l| *l < run.start),
                "allocated {:?} not after {left:?}",
                run.start
            );
            let last = run.start.run_member(run.len - 1);
            debug_assert!(
                right.as_ref().is_none_or(|r| last < *r),
                "allocated {last:?} not before {right:?}"
            );
            anchor = anchor.filter(|a| last < *a);
            let split = rest
                .char_indices()
                .nth(run.len as usize)
                .map_or(rest.len(), |(i, _)| i);
            inserts.push(InsertRun {
                start: run.start,
                text: rest[..split].to_owned(),
            });
            left = Some(last);
            counter += run.len;
            rest = &rest[split..];
        }
        self.next_counter = counter.max(first_counter + 1);
        let op = Op {
            id: OpId {
                site: self.site,
                counter: first_counter,
            },
            inserts,
            deletes,
        };
        self.seq
            .apply(&op)
            .expect("a local op is valid and deletes only present characters");
        Ok(op)
    }

    /// Applies a remote (or replayed) op.
    pub fn apply(&mut self, op: &Op) -> Result<ApplyOutcome, ApplyError> {
        let outcome = self.seq.apply(op)?;
        let last = op.inserts.last().map_or(op.id.counter, |r| {
            r.start.last().counter + r.text.chars().count() as u64
        });
        self.next_counter = self.next_counter.max(last + 1);
        Ok(outcome)
    }
}
