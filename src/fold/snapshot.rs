//! A document state's storage encoding (`schemas/docfold/state/v1/snapshot.proto`).

use prost::Message;

use crate::lseq::{BadRanges, Ident, IdentError, InsertRun, PartsError, SeenCounters, Sequence, StateParts};

/// The snapshot format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

mod wire {
    include!(concat!(env!("OUT_DIR"), "/docfold.state.v1.rs"));
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot is not a DocSnapshot message: {0}")]
    Malformed(String),
    #[error("snapshot format {found} is not supported (this build reads {FORMAT_VERSION})")]
    UnknownFormat { found: u32 },
    #[error("snapshot run {run}: {error}")]
    BadIdent { run: usize, error: IdentError },
    #[error("snapshot seen counters: odd number of range bounds for site {site:016x}")]
    OddBounds { site: u64 },
    #[error("snapshot {0}")]
    BadRanges(#[from] BadRanges),
    #[error("snapshot does not make a document state: {0}")]
    BadState(#[from] PartsError),
    #[error("snapshot delta: {0}")]
    BadDelta(String),
}

/// Appends one folded record (an encoded `op::Envelope`) to a delta: its length (4 bytes,
/// little-endian), then the record.
pub fn push_delta(delta: &mut Vec<u8>, record: &[u8]) {
    delta.extend_from_slice(&(record.len() as u32).to_le_bytes());
    delta.extend_from_slice(record);
}

/// A stored state with its deltas (oldest first) applied, encoded again.
pub fn apply_deltas(state: &[u8], deltas: &[Vec<u8>]) -> Result<Vec<u8>, SnapshotError> {
    let mut sequence = decode(state)?;
    let mut decoder = crate::op::Decoder::default();
    for delta in deltas {
        let mut rest = delta.as_slice();
        while let Some((len, after)) = rest.split_first_chunk::<4>() {
            let len = u32::from_le_bytes(*len) as usize;
            let record =
                after.get(..len).ok_or_else(|| SnapshotError::BadDelta("a record is cut short".into()))?;
            let envelope = decoder.decode(record).map_err(|e| SnapshotError::BadDelta(e.to_string()))?;
            sequence.apply(&envelope.op).map_err(|e| SnapshotError::BadDelta(e.to_string()))?;
            rest = &after[len..];
        }
        if !rest.is_empty() {
            return Err(SnapshotError::BadDelta("trailing bytes".into()));
        }
    }
    Ok(encode(&sequence))
}

pub fn encode(sequence: &Sequence) -> Vec<u8> {
    let parts = sequence.to_parts();
    let mut seen: Vec<wire::SeenRanges> = parts
        .seen
        .sites()
        .map(|(site, ranges)| wire::SeenRanges {
            site,
            bounds: ranges.iter().flat_map(|&(start, end)| [start, end]).collect(),
        })
        .collect();
    seen.sort_unstable_by_key(|s| s.site);
    wire::DocSnapshot {
        format_version: FORMAT_VERSION,
        runs: parts
            .runs
            .into_iter()
            .map(|run| crate::op::wire::InsertRun { ident: run.start.encode(), text: run.text })
            .collect(),
        seen,
        pending: parts.pending.into_iter().map(|(site, counter)| wire::OpRef { site, counter }).collect(),
    }
    .encode_to_vec()
}

pub fn decode(bytes: &[u8]) -> Result<Sequence, SnapshotError> {
    let message = wire::DocSnapshot::decode(bytes).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    if message.format_version != FORMAT_VERSION {
        return Err(SnapshotError::UnknownFormat { found: message.format_version });
    }
    let mut runs = Vec::with_capacity(message.runs.len());
    for (run, wire_run) in message.runs.into_iter().enumerate() {
        let start = Ident::decode(&wire_run.ident).map_err(|error| SnapshotError::BadIdent { run, error })?;
        runs.push(InsertRun { start, text: wire_run.text });
    }
    let mut seen = SeenCounters::default();
    for site in message.seen {
        if site.bounds.len() % 2 != 0 {
            return Err(SnapshotError::OddBounds { site: site.site });
        }
        seen.add_site(site.site, site.bounds.chunks_exact(2).map(|b| (b[0], b[1])).collect())?;
    }
    let pending = message.pending.into_iter().map(|p| (p.site, p.counter)).collect();
    Ok(Sequence::from_parts(StateParts { runs, seen, pending })?)
}
