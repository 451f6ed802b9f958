//! One source topic of a partition's worker: the job's own topic, or a peer region's
//! mirrored one. Each has its own offsets (fold and archive) and its own checkpoint row;
//! the documents they feed are the partition's, shared by all of them.

use std::sync::Arc;

use crate::sink::archive::PartitionArchive;
use crate::store::Checkpoint;

pub(super) struct Source {
    pub topic: Arc<str>,
    /// Its name in the checkpoints and the archive's file names (`super::stored_topic`).
    pub stored: String,
    /// The next record to fold.
    pub next_offset: u64,
    pub archive: Option<PartitionArchive>,
}

impl Source {
    /// The next record the worker needs: the fold's, or the archive's when it is behind.
    pub fn needed(&self) -> u64 {
        self.archive.as_ref().map_or(self.next_offset, |a| a.next_offset().min(self.next_offset))
    }

    /// The checkpoint a flush writes now.
    pub fn checkpoint(&self) -> Checkpoint {
        let archived_offset = self.archive.as_ref().map_or(self.next_offset, PartitionArchive::progress);
        Checkpoint { next_offset: self.next_offset, archived_offset }
    }
}

/// The partition's position: the sum of its sources' next offsets (see `fold::Doc::offset`).
pub(super) fn position(sources: &[Source]) -> u64 {
    sources.iter().map(|s| s.next_offset).sum()
}
