//! The pure fold of one partition: log records → document states, with the bookkeeping
//! the pipeline needs (versions, dirty documents, eviction order, the bytes the states
//! hold). No I/O: when a record is for a document not in memory, the fold says so and the
//! caller loads it.

pub mod snapshot;

use lru::LruCache;
use rustc_hash::FxBuildHasher;

use crate::log::partition_for;
use crate::lseq::{ApplyError, Sequence};
use crate::op::{DecodeError, Decoder, Envelope};

/// One document as the fold holds it.
#[derive(Clone, Debug, Default)]
pub struct Doc {
    pub state: Sequence,
    /// Characters ever inserted plus characters ever deleted (a delete that arrived before
    /// its insert included): a function of the set of ops folded, not of their order or
    /// repeats, so every region that folded the same ops has the same version, and one that
    /// folded more has at least as high a one. It only grows.
    pub version: u64,
    /// The partition's position at the last record folded into this document: the
    /// record's offset plus the next offsets of the partition's other source topics (with
    /// one source topic, the record's log offset). It only grows.
    pub offset: u64,
    /// Origin region of the last op folded in this process (empty after a reload).
    pub region: String,
    /// The records folded into it since it was last stored (`snapshot::push_delta`), when
    /// its fold keeps them ([`PartitionFold::for_partition`]).
    pub delta: Vec<u8>,
    /// What the store holds of it: `None` before its first write.
    pub stored: Option<Stored>,
    /// When the oldest record folded into it since it was last marked clean (written) was
    /// folded: the clock its fold was given ([`PartitionFold::set_now`], ms since the
    /// epoch); 0 when none was.
    pub folded_ms: i64,
}

/// The size of what the store holds of a document.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// Bytes of its last full state, and of the deltas written after it.
    pub full: u64,
    pub deltas: u64,
    /// The offset (partition position) of the last write: deltas are keyed by it.
    pub offset: u64,
}

/// Deltas add up to at least this before a full state is due, however small the document.
const MIN_DELTAS_BEFORE_FULL: u64 = 16 << 10;

impl Doc {
    /// Whether its next write must be the whole state: nothing is stored yet, the stored
    /// deltas with this one would pass a quarter of the full state (every load applies
    /// them all), or it has folded nothing past the stored offset (a replay folding records
    /// again: a delta keyed by that offset would replace the one stored there). A flush's
    /// cost then follows what changed, not the document's size.
    pub fn full_due(&self) -> bool {
        self.stored.is_none_or(|s| {
            self.offset <= s.offset
                || s.deltas + self.delta.len() as u64 > (s.full / 4).max(MIN_DELTAS_BEFORE_FULL)
        })
    }

    /// What to store of it now: its whole state or its delta.
    pub fn to_store(&self) -> StateWrite {
        if self.full_due() {
            StateWrite::Full(snapshot::encode(&self.state))
        } else {
            StateWrite::Delta(self.delta.clone())
        }
    }

    /// What the store holds of it once `write` (from [`Doc::to_store`]) is stored.
    pub fn stored_after(&self, write: &StateWrite) -> Stored {
        match write {
            StateWrite::Full(state) => Stored { full: state.len() as u64, deltas: 0, offset: self.offset },
            StateWrite::Delta(delta) => {
                let stored = self.stored.unwrap_or_default();
                Stored { deltas: stored.deltas + delta.len() as u64, offset: self.offset, ..stored }
            }
        }
    }
}

/// What a write stores of a document's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateWrite {
    /// The whole state (`snapshot::encode`); the deltas before it are dropped.
    Full(Vec<u8>),
    /// The records folded into it since its last write (`snapshot::push_delta`), kept after
    /// the full state until the next one.
    Delta(Vec<u8>),
}

/// What folding one record did.
#[derive(Debug, PartialEq, Eq)]
pub enum Folded {
    /// Applied (or recognised as a duplicate) into the named document.
    Applied { changed: bool },
    /// The document is not in memory: load it (or [`Doc::default`]) with
    /// [`PartitionFold::insert`], then fold the record again.
    NeedDoc(String),
}

/// Why a record was skipped. The partition goes on.
#[derive(Debug, thiserror::Error)]
pub enum BadRecord {
    #[error("undecodable op: {0}")]
    Decode(#[from] DecodeError),
    #[error("op refused by the document: {0}")]
    Refused(#[from] ApplyError),
    /// Another partitioner put this op here: folding it would fold the document in two
    /// partitions, each overwriting the other's state.
    #[error(
        "op of document {doc_id:?} on partition {partition}, but the document belongs to partition {belongs} (murmur2 of its id); `docfold dead-letters replay` re-publishes it there"
    )]
    Misrouted { doc_id: String, partition: u32, belongs: u32 },
}

impl BadRecord {
    /// The dead letter's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            BadRecord::Decode(_) => "undecodable",
            BadRecord::Refused(_) => "refused",
            BadRecord::Misrouted { .. } => "misrouted",
        }
    }
}

/// The documents of one partition in memory, least recently touched first.
pub struct PartitionFold {
    /// (this partition, the topic's partitions) when ops of other partitions' documents
    /// must be refused; `None` folds whatever comes.
    home: Option<(u32, u32)>,
    docs: LruCache<String, Entry, FxBuildHasher>,
    /// Documents changed since the last [`PartitionFold::mark_clean`].
    dirty: Vec<String>,
    /// The sum of the entries' `bytes`.
    bytes: usize,
    /// Keep each document's records since its last write (`Doc::delta`).
    deltas: bool,
    decoder: Decoder,
    /// The time stamped on the documents it folds (`Doc::folded_ms`): given by the caller,
    /// so the fold reads no clock.
    now_ms: i64,
}

struct Entry {
    doc: Doc,
    /// [`Sequence::estimated_bytes`] when last measured.
    bytes: usize,
    dirty: bool,
}

impl Default for PartitionFold {
    fn default() -> Self {
        PartitionFold {
            home: None,
            docs: LruCache::unbounded_with_hasher(FxBuildHasher),
            dirty: Vec::new(),
            bytes: 0,
            deltas: false,
            decoder: Decoder::default(),
            now_ms: 0,
        }
    }
}

impl PartitionFold {
    pub fn new() -> PartitionFold {
        PartitionFold::default()
    }

    /// The fold of `partition` of a topic with `partitions` for a store: an op whose document
    /// belongs to another partition (by the key rule, [`partition_for`]) is
    /// [`BadRecord::Misrouted`], and each document keeps its records since its last write.
    pub fn for_partition(partition: u32, partitions: u32) -> PartitionFold {
        PartitionFold { home: Some((partition, partitions)), deltas: true, ..PartitionFold::default() }
    }

    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// About how many bytes the documents in memory hold (their states' tables).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn get(&self, doc_id: &str) -> Option<&Doc> {
        self.docs.peek(doc_id).map(|e| &e.doc)
    }

    /// Puts a loaded (clean) document in memory, as the most recently touched.
    pub fn insert(&mut self, doc_id: String, doc: Doc) {
        let bytes = doc.state.estimated_bytes() + doc.delta.capacity();
        self.bytes += bytes;
        if let Some(old) = self.docs.put(doc_id.clone(), Entry { doc, bytes, dirty: false }) {
            self.bytes -= old.bytes;
            if old.dirty {
                self.dirty.retain(|id| *id != doc_id);
            }
        }
    }

    /// Folds the record at `position` (see [`Doc::offset`]).
    pub fn fold(&mut self, position: u64, bytes: &[u8]) -> Result<Folded, BadRecord> {
        let envelope = self.decoder.decode(bytes)?;
        if let Some((partition, partitions)) = self.home {
            let belongs = partition_for(envelope.doc_id.as_bytes(), partitions);
            if belongs != partition {
                return Err(BadRecord::Misrouted { doc_id: envelope.doc_id.clone(), partition, belongs });
            }
        }
        let Some(entry) = self.docs.get_mut(envelope.doc_id.as_str()) else {
            return Ok(Folded::NeedDoc(envelope.doc_id.clone()));
        };
        let outcome = entry.doc.state.apply(&envelope.op)?;
        entry.doc.version += u64::from(outcome.inserted + outcome.deleted + outcome.tombstoned);
        // Never backwards: a replay folds records again that the stored state already holds.
        entry.doc.offset = entry.doc.offset.max(position);
        if entry.doc.region != envelope.origin_region {
            entry.doc.region.clone_from(&envelope.origin_region);
        }
        if self.deltas && outcome.inserted + outcome.deleted + outcome.tombstoned > 0 {
            snapshot::push_delta(&mut entry.doc.delta, bytes);
        }
        let bytes = entry.doc.state.estimated_bytes() + entry.doc.delta.capacity();
        self.bytes = self.bytes + bytes - entry.bytes;
        entry.bytes = bytes;
        if !entry.dirty {
            entry.dirty = true;
            entry.doc.folded_ms = self.now_ms;
            self.dirty.push(envelope.doc_id.clone());
        }
        Ok(Folded::Applied { changed: outcome.changed() })
    }

    /// The time (ms since the epoch) to stamp on the documents folded from now on.
    pub fn set_now(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
    }

    /// Decodes a record without folding it (for sinks that see records the fold already has).
    pub fn decode(&mut self, bytes: &[u8]) -> Result<&Envelope, DecodeError> {
        self.decoder.decode(bytes)
    }

    /// The envelope of the record last given to [`Self::fold`] or [`Self::decode`]; valid
    /// when that call decoded it (returned `Ok` or [`BadRecord::Refused`]).
    pub fn last_envelope(&self) -> &Envelope {
        self.decoder.last()
    }

    /// Documents changed since the last [`PartitionFold::mark_clean`], with their states.
    /// (In the order they first changed; the work is proportional to them, not to the
    /// documents in memory.)
    pub fn dirty(&self) -> impl Iterator<Item = (&str, &Doc)> {
        self.dirty.iter().filter_map(|id| self.docs.peek(id.as_str()).map(|e| (id.as_str(), &e.doc)))
    }

    pub fn dirty_count(&self) -> usize {
        self.dirty.len()
    }

    /// Called once the dirty documents are durably stored, with what the store now holds of
    /// each ([`Doc::stored_after`]).
    pub fn mark_stored(&mut self, stored: &[(String, Stored)]) {
        for (id, stored) in stored {
            if let Some(entry) = self.docs.peek_mut(id.as_str()) {
                entry.doc.stored = Some(*stored);
                entry.doc.delta = Vec::new();
                let bytes = entry.doc.state.estimated_bytes();
                self.bytes = self.bytes + bytes - entry.bytes;
                entry.bytes = bytes;
            }
        }
        self.mark_clean();
    }

    /// Called once the dirty documents are durably stored.
    pub fn mark_clean(&mut self) {
        for id in self.dirty.drain(..) {
            if let Some(entry) = self.docs.peek_mut(id.as_str()) {
                entry.dirty = false;
            }
        }
    }

    /// Drops the least recently touched clean documents until at most `keep_docs` remain
    /// holding at most `keep_bytes` (dirty ones stay: their state is not stored yet).
    /// Returns how many were dropped; the work is proportional to that.
    pub fn evict(&mut self, keep_docs: usize, keep_bytes: usize) -> usize {
        let mut dropped = 0;
        // Dirty documents met on the way go to the other end; each is met at most once.
        let mut passed = 0;
        while (self.docs.len() > keep_docs || self.bytes > keep_bytes) && passed < self.dirty.len() + 1 {
            let Some((id, entry)) = self.docs.pop_lru() else { break };
            if entry.dirty {
                self.docs.put(id, entry);
                passed += 1;
                continue;
            }
            self.bytes -= entry.bytes;
            dropped += 1;
        }
        dropped
    }
}
