//! docfold: an event-sourced stream processor for collaborative documents.
//!
//! ```text
//!  editors ──(LSEQ ops, key = doc id)──► log ──► fold (pure LSEQ merge) ──► sinks, then store + checkpoint
//! ```
//! `lseq` (the CRDT), `op` (the envelope and its codecs) and `fold` (records → document
//! states) are the pure core: deterministic, no async, no I/O. `log` and `store` are the
//! backends (embedded files and SQLite, or Kafka and PostgreSQL); `sink` holds the outputs
//! (projections, the Parquet archive, disaster-recovery snapshots, cache invalidations,
//! dead letters); `pipeline` runs one task per partition between them. `trace` replays real
//! editing traces into ops; `history` shows a document as it was at an offset or a time.

/// mimalloc instead of glibc's malloc: a fold allocates and frees many small objects from
/// several threads, and glibc's arenas spent a quarter of the wide benchmark's CPU in
/// `_int_malloc`, `_int_free` and `malloc_consolidate`. Here, the library sets it for every
/// program built on it: `docfold`, the benches and the tests measure the same allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod config;
pub mod fold;
pub mod history;
pub mod loadgen;
pub mod log;
pub mod lseq;
pub mod mirror;
pub mod op;
pub mod pipeline;
pub mod region;
pub mod replay;
pub mod sim;
pub mod sink;
pub mod store;
pub mod telemetry;
pub mod trace;
