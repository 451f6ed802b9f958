//! A document state taken apart for storage and put back together: the live characters as
//! runs, the seen counters and the pending tombstones. Everything else (the trie layout,
//! finger, free lists) is rebuilt, so a restored state holds only what is live.

use super::Sequence;
use crate::lseq::ident::SiteId;
use crate::lseq::op::{InsertRun, MAX_RUN_CHARS, Op, OpId};
use crate::lseq::seen::SeenCounters;

/// What a document state is made of: enough to rebuild it exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateParts {
    /// Live characters in order; consecutive characters allocated together share a run.
    pub runs: Vec<InsertRun>,
    pub seen: SeenCounters,
    /// Deletes waiting for their insert, as (site, counter), sorted.
    pub pending: Vec<(SiteId, u64)>,
}

impl Sequence {
    /// Takes the state apart (see [`StateParts`]).
    pub fn to_parts(&self) -> StateParts {
        let mut runs: Vec<InsertRun> = Vec::new();
        // The run being extended: its last character's node. A run's characters are
        // siblings (one prefix) with consecutive digits and counters, adjacent in order.
        let mut last: Option<u32> = None;
        let mut run_len = 0;
        self.walk(|node, ch| {
            let n = &self.nodes[node as usize];
            let extends = last.is_some_and(|prev| {
                let p = &self.nodes[prev as usize];
                p.parent == n.parent
                    && p.site == n.site
                    && p.digit + 1 == n.digit
                    && p.counter + 1 == n.counter
            });
            match runs.last_mut() {
                Some(run) if extends && run_len < MAX_RUN_CHARS => {
                    run.text.push(ch);
                    run_len += 1;
                }
                _ => {
                    runs.push(InsertRun { start: self.ident_of(node), text: ch.to_string() });
                    run_len = 1;
                }
            }
            last = Some(node);
        });
        let mut pending: Vec<(SiteId, u64)> = self.pending.iter().copied().collect();
        pending.sort_unstable();
        StateParts { runs, seen: self.seen.clone(), pending }
    }

    /// Rebuilds a fold state from its parts (which may come from storage: checked, never trusted).
    pub fn from_parts(parts: StateParts) -> Result<Sequence, PartsError> {
        let mut sequence = Sequence::new();
        for (index, run) in parts.runs.into_iter().enumerate() {
            let last = run.start.last();
            let op = Op {
                id: OpId { site: last.site, counter: last.counter },
                inserts: vec![run],
                deletes: vec![],
            };
            let outcome = sequence.apply(&op).map_err(|error| PartsError::BadRun { index, error })?;
            if outcome.duplicates > 0 {
                return Err(PartsError::DuplicateChar { index });
            }
        }
        // A freshly built state has no free nodes: every character node is live.
        let live = (0..sequence.nodes.len() as u32).filter(|&node| sequence.is_char(node));
        if let Some(node) =
            live.map(|node| &sequence.nodes[node as usize]).find(|n| !parts.seen.contains(n.site, n.counter))
        {
            return Err(PartsError::LiveNotSeen { site: node.site, counter: node.counter });
        }
        if let Some(&(site, counter)) = parts.pending.iter().find(|(s, c)| parts.seen.contains(*s, *c)) {
            return Err(PartsError::PendingSeen { site, counter });
        }
        sequence.seen = parts.seen;
        sequence.pending = parts.pending.into_iter().collect();
        Ok(sequence)
    }
}

/// Why stored parts do not make a document state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartsError {
    #[error("run {index} is not a valid insert: {error}")]
    BadRun { index: usize, error: super::ApplyError },
    #[error("run {index} repeats a character of an earlier run")]
    DuplicateChar { index: usize },
    #[error("live character ({site:016x}, {counter}) is missing from the seen counters")]
    LiveNotSeen { site: SiteId, counter: u64 },
    #[error("pending tombstone ({site:016x}, {counter}) is for a character already seen")]
    PendingSeen { site: SiteId, counter: u64 },
}
