//! Publishes a trace's ops to the log as if `docs` documents had each been edited the same
//! way: op i goes to every document before op i+1 (so partitions see interleaved traffic).

use crate::log::{LogError, LogWriter};
use crate::lseq::{Op, OpId};
use crate::op::{Envelope, encode};

/// Appends every op to every document; calls `progress` with the running count every
/// 100,000 records. Returns the number of records appended (flush is the caller's).
pub fn publish(
    writer: &mut dyn LogWriter,
    ops: &[Op],
    doc_ids: &[String],
    region: &str,
    mut progress: impl FnMut(u64),
) -> Result<u64, LogError> {
    let mut envelope = Envelope::new(
        "",
        region,
        0,
        Op { id: OpId { site: 0, counter: 0 }, inserts: vec![], deletes: vec![] },
    );
    let mut count = 0u64;
    for op in ops {
        envelope.op.clone_from(op);
        for doc_id in doc_ids {
            envelope.doc_id.clone_from(doc_id);
            writer.append(doc_id.as_bytes(), &encode(&envelope))?;
            count += 1;
            if count.is_multiple_of(100_000) {
                progress(count);
            }
        }
    }
    Ok(count)
}
