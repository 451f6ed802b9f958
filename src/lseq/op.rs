//! The CRDT operation: what one local edit changes, in identifiers. Pure data plus its
//! validity rules; the wire envelope around it lives in `crate::op`.

use serde::{Deserialize, Serialize};

use super::ident::{Ident, IdentError, SiteId, base};

/// Largest counter accepted: keeps `counter + run length` far from overflow.
pub const MAX_COUNTER: u64 = 1 << 62;

/// Longest run of text in one insert (in Unicode code points); longer edits are split
/// into several runs at allocation.
pub const MAX_RUN_CHARS: usize = 65_536;

/// Most characters one op deletes, and most it inserts: keeps a message well under the
/// envelope's byte limit. Larger edits are made as several ops.
pub const MAX_EDIT_DELETES: usize = 4_096;
pub const MAX_EDIT_CHARS: usize = 262_144;

/// Names an op globally: the editing session (`site`) and its counter at the op's first
/// character. The dedupe key across regions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OpId {
    #[serde(with = "super::json::site_hex")]
    pub site: SiteId,
    pub counter: u64,
}

/// Consecutive characters: the i-th has identifier `start.run_member(i)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InsertRun {
    pub start: Ident,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub id: OpId,
    #[serde(default)]
    pub inserts: Vec<InsertRun>,
    #[serde(default)]
    pub deletes: Vec<Ident>,
}

/// Why an op cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("op inserts and deletes nothing")]
    Empty,
    #[error("insert run {run} has an invalid identifier: {error}")]
    InsertIdent { run: usize, error: IdentError },
    #[error("delete {index} has an invalid identifier: {error}")]
    DeleteIdent { index: usize, error: IdentError },
    #[error("insert run {run} is empty")]
    EmptyRun { run: usize },
    #[error("insert run {run} has {chars} characters; limit max_run_chars = {MAX_RUN_CHARS}")]
    RunTooLong { run: usize, chars: usize },
    #[error("insert run {run} runs past the base of its last level")]
    RunPastBase { run: usize },
    #[error("insert run {run} was not allocated by the op's site and counters")]
    ForeignRun { run: usize },
    #[error("op deletes {count} characters; limit max_edit_deletes = {MAX_EDIT_DELETES}")]
    TooManyDeletes { count: usize },
    #[error("op inserts {count} characters; limit max_edit_chars = {MAX_EDIT_CHARS}")]
    TooManyChars { count: usize },
    #[error("counter exceeds {MAX_COUNTER}")]
    CounterTooLarge,
}

impl Op {
    pub fn validate(&self) -> Result<(), OpError> {
        if self.inserts.is_empty() && self.deletes.is_empty() {
            return Err(OpError::Empty);
        }
        if self.id.counter > MAX_COUNTER {
            return Err(OpError::CounterTooLarge);
        }
        if self.deletes.len() > MAX_EDIT_DELETES {
            return Err(OpError::TooManyDeletes { count: self.deletes.len() });
        }
        let mut inserted = 0;
        for (run, insert) in self.inserts.iter().enumerate() {
            insert.start.validate().map_err(|error| OpError::InsertIdent { run, error })?;
            let chars = insert.text.chars().count();
            if chars == 0 {
                return Err(OpError::EmptyRun { run });
            }
            if chars > MAX_RUN_CHARS {
                return Err(OpError::RunTooLong { run, chars });
            }
            inserted += chars;
            if inserted > MAX_EDIT_CHARS {
                return Err(OpError::TooManyChars { count: inserted });
            }
            let last = insert.start.last();
            if last.digit + chars as u64 > base(insert.start.depth() - 1) {
                return Err(OpError::RunPastBase { run });
            }
            if last.site != self.id.site || last.counter < self.id.counter {
                return Err(OpError::ForeignRun { run });
            }
            if last.counter > MAX_COUNTER {
                return Err(OpError::CounterTooLarge);
            }
        }
        for (index, id) in self.deletes.iter().enumerate() {
            id.validate().map_err(|error| OpError::DeleteIdent { index, error })?;
        }
        Ok(())
    }
}
