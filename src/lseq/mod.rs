//! LSEQ (Nédelec et al., DocEng 2013): the pure sequence CRDT at docfold's core.
//! No async, no I/O: identifiers, allocation, document state, and an editor replica.

mod alloc;
mod ident;
mod json;
mod op;
mod replica;
mod seen;
mod seq;

pub use alloc::{
    Allocation, BOUNDARY, DepthExhausted, Rng, Strategy, allocate, doc_seed, splitmix64, strategy,
};
pub use ident::{Ident, IdentError, Level, MAX_DEPTH, SiteId, base};
pub use op::{InsertRun, MAX_COUNTER, MAX_EDIT_CHARS, MAX_EDIT_DELETES, MAX_RUN_CHARS, Op, OpError, OpId};
pub use replica::{EditError, Replica};
pub use seen::{BadRanges, SeenCounters};
pub use seq::{
    ApplyError, ApplyOutcome, MAX_PENDING_TOMBSTONES, Neighbours, PartsError, Sequence, StateParts,
};
