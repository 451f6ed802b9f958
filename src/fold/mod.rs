//! The pure fold of one partition: log records → document states, with the bookkeeping
//! the pipeline needs (versions, dirty documents, eviction order). No I/O: when a record
//! is for a document not in memory, the fold says so and the caller loads it.

pub mod snapshot;

use rustc_hash::FxHashMap;

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

/// The documents of one partition in memory.
#[derive(Default)]
pub struct PartitionFold {
    /// (this partition, the topic's partitions) when ops of other partitions' documents
    /// must be refused; `None` folds whatever comes.
    home: Option<(u32, u32)>,
    docs: FxHashMap<String, Entry>,
    decoder: Decoder,
    /// Bumped per record; entries remember when they were last touched.
    clock: u64,
}

struct Entry {
    doc: Doc,
    touched: u64,
    dirty: bool,
}

impl PartitionFold {
    pub fn new() -> PartitionFold {
        PartitionFold::default()
    }

    /// The fold of `partition` of a topic with `partitions`: an op whose document belongs
    /// to another partition (by the key rule, [`partition_for`]) is [`BadRecord::Misrouted`].
    pub fn for_partition(partition: u32, partitions: u32) -> PartitionFold {
        PartitionFold { home: Some((partition, partitions)), ..PartitionFold::default() }
    }

    pub fn len(&self) -> usize {
        self.docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    pub fn get(&self, doc_id: &str) -> Option<&Doc> {
        self.docs.get(doc_id).map(|e| &e.doc)
    }

    /// Puts a loaded (clean) document in memory.
    pub fn insert(&mut self, doc_id: String, doc: Doc) {
        self.docs.insert(doc_id, Entry { doc, touched: self.clock, dirty: false });
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
        self.clock += 1;
        entry.touched = self.clock;
        let outcome = entry.doc.state.apply(&envelope.op)?;
        entry.doc.version += u64::from(outcome.inserted + outcome.deleted + outcome.tombstoned);
        entry.doc.offset = position;
        if entry.doc.region != envelope.origin_region {
            entry.doc.region.clone_from(&envelope.origin_region);
        }
        entry.dirty = true;
        Ok(Folded::Applied { changed: outcome.changed() })
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
    pub fn dirty(&self) -> impl Iterator<Item = (&str, &Doc)> {
        self.docs.iter().filter(|(_, e)| e.dirty).map(|(id, e)| (id.as_str(), &e.doc))
    }

    pub fn dirty_count(&self) -> usize {
        self.docs.values().filter(|e| e.dirty).count()
    }

    /// Called once the dirty documents are durably stored.
    pub fn mark_clean(&mut self) {
        self.docs.values_mut().for_each(|e| e.dirty = false);
    }

    /// Drops the least recently touched clean documents until at most `keep` remain (dirty
    /// ones stay: their state is not stored yet). Returns how many were dropped.
    pub fn evict(&mut self, keep: usize) -> usize {
        if self.docs.len() <= keep {
            return 0;
        }
        let mut clean: Vec<(u64, String)> =
            self.docs.iter().filter(|(_, e)| !e.dirty).map(|(id, e)| (e.touched, id.clone())).collect();
        let excess = (self.docs.len() - keep).min(clean.len());
        if excess == 0 {
            return 0;
        }
        clean.select_nth_unstable_by_key(excess - 1, |c| c.0);
        for (_, id) in clean.drain(..excess) {
            self.docs.remove(&id);
        }
        excess
    }
}
