//! docfold: an event-sourced stream processor for collaborative documents.
//!
//! ```text
//!  editors ──(LSEQ ops, key = doc id)──► log ──► fold (pure LSEQ merge) ──► sinks
//! ```
//! `lseq` (the CRDT) and `op` (the envelope and its codecs) are the pure core:
//! deterministic, no async, no I/O. `trace` replays real editing traces into ops.

pub mod lseq;
pub mod op;
pub mod trace;
