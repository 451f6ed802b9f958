//! Replays a trace the way the processor will see it: every op encoded into an envelope,
//! decoded, and folded into a fresh state; then compares the text with `endContent`.

use std::time::{Duration, Instant};

use crate::lseq::{Ident, Sequence, doc_seed};
use crate::op::{self, DecodeError, Decoder, Envelope};

use super::{ReplayError, Trace, replay};

/// What a replay measured.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    pub patches: usize,
    pub ops: usize,
    pub messages: usize,
    pub encoded_bytes: usize,
    pub max_message_bytes: usize,
    pub idents: usize,
    pub ident_bytes: usize,
    pub max_ident_bytes: usize,
    pub ident_levels: usize,
    pub max_ident_depth: usize,
    /// Concurrent traces: replicas restarted because history was not linear.
    pub forks: usize,
    /// Time to generate the ops with editor replicas.
    pub generate: Duration,
    /// Time to decode and fold every message into a fresh state.
    pub fold: Duration,
    pub state_bytes: usize,
    /// The folded text.
    pub text: String,
}

impl ReplayReport {
    pub fn mean_ident_bytes(&self) -> f64 {
        self.ident_bytes as f64 / self.idents.max(1) as f64
    }

    pub fn mean_ident_depth(&self) -> f64 {
        self.ident_levels as f64 / self.idents.max(1) as f64
    }

    pub fn fold_ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.fold.as_secs_f64().max(1e-9)
    }

    /// `None` when the text equals `expected`; else the first differing code point and
    /// a little context on both sides.
    pub fn divergence(&self, expected: &str) -> Option<Divergence> {
        let (got, want): (Vec<char>, Vec<char>) = (self.text.chars().collect(), expected.chars().collect());
        let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
        if at == got.len() && at == want.len() {
            return None;
        }
        let around = |s: &[char]| s[at.saturating_sub(30)..(at + 30).min(s.len())].iter().collect();
        Some(Divergence {
            at,
            got: around(&got),
            want: around(&want),
            got_len: got.len(),
            want_len: want.len(),
        })
    }
}

/// Where a replayed text first differs from `endContent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    pub at: usize,
    pub got: String,
    pub want: String,
    pub got_len: usize,
    pub want_len: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error("message {index} does not decode: {error}")]
    Decode { index: usize, error: DecodeError },
    #[error("message {index} does not apply: {reason}")]
    Apply { index: usize, reason: String },
}

/// Replays `trace` as document `doc_id` through the codec into a fold-side state.
pub fn replay_through_codec(trace: &Trace, doc_id: &str) -> Result<ReplayReport, ReportError> {
    let started = Instant::now();
    let ops = replay(trace, doc_seed(doc_id))?;
    let generate = started.elapsed();
    let mut report = ReplayReport {
        patches: trace.patch_count(),
        ops: ops.ops.len(),
        forks: ops.forks,
        generate,
        ..Default::default()
    };
    let mut messages = Vec::with_capacity(ops.ops.len());
    for (i, op) in ops.ops.into_iter().enumerate() {
        let idents = op.inserts.iter().map(|r| &r.start).chain(&op.deletes);
        for id in idents {
            report.count_ident(id);
        }
        messages.push(op::encode(&Envelope::new(doc_id, "local", i as i64, op)));
    }
    report.messages = messages.len();
    report.encoded_bytes = messages.iter().map(Vec::len).sum();
    report.max_message_bytes = messages.iter().map(Vec::len).max().unwrap_or(0);
    let started = Instant::now();
    let mut state = Sequence::new();
    let mut decoder = Decoder::new();
    for (index, bytes) in messages.iter().enumerate() {
        let envelope = decoder.decode(bytes).map_err(|error| ReportError::Decode { index, error })?;
        state.apply(&envelope.op).map_err(|e| ReportError::Apply { index, reason: e.to_string() })?;
    }
    report.fold = started.elapsed();
    report.state_bytes = state.heap_bytes();
    report.text = state.text();
    Ok(report)
}

impl ReplayReport {
    fn count_ident(&mut self, id: &Ident) {
        let bytes = id.encode().len();
        self.idents += 1;
        self.ident_bytes += bytes;
        self.max_ident_bytes = self.max_ident_bytes.max(bytes);
        self.ident_levels += id.depth();
        self.max_ident_depth = self.max_ident_depth.max(id.depth());
    }
}
