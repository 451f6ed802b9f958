//! A document state taken apart for storage and put back together: the live characters as
//! runs, the seen counters and the pending tombstones. Everything else (the trie layout,
//! finger, free lists) is rebuilt, so a restored state holds only what is live.

use super::Sequence;
use crate::lseq::ident::{Ident, SiteId};
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
        let mut run_len = 0u64;
        for (ident, ch) in self.entries() {
            match runs.last_mut() {
                Some(run)
                    if (run_len as usize) < MAX_RUN_CHARS && continues_run(&run.start, run_len, &ident) =>
                {
                    run.text.push(ch);
                    run_len += 1;
                }
                _ => {
                    runs.push(InsertRun { start: ident, text: ch.to_string() });
                    run_len = 1;
                }
            }
        }
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

/// Whether `ident` is the `i`-th member of the run starting at `start` (as `start.run_member(i)`,
/// without building it).
fn continues_run(start: &Ident, i: u64, ident: &Ident) -> bool {
    let (a, b) = (start.levels(), ident.levels());
    let (a_last, b_last) = (start.last(), ident.last());
    a.len() == b.len()
        && a[..a.len() - 1] == b[..b.len() - 1]
        && b_last.site == a_last.site
        && b_last.digit == a_last.digit + i
        && b_last.counter == a_last.counter + i
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
