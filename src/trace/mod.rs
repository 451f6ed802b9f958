//! Real editing traces (josephg/editing-traces format) and their replay into LSEQ ops.

mod publish;
mod replay;
mod report;

use std::io::Read;
use std::path::Path;

use serde::Deserialize;

pub use publish::publish;
pub use replay::{ReplayError, TraceOps, replay};
pub use report::{Divergence, ReplayReport, ReportError, replay_through_codec};

/// One editing trace: sequential (one author) or concurrent (agents forking and merging).
#[derive(Debug, Clone, Deserialize)]
pub struct Trace {
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default, rename = "startContent")]
    pub start_content: String,
    #[serde(rename = "endContent")]
    pub end_content: String,
    pub txns: Vec<Txn>,
}

/// A transaction: patches applied in sequence by one agent.
#[derive(Debug, Clone, Deserialize)]
pub struct Txn {
    /// Concurrent traces: indexes of the txns this one was made on top of.
    #[serde(default)]
    pub parents: Option<Vec<usize>>,
    #[serde(default)]
    pub agent: usize,
    pub patches: Vec<Patch>,
}

/// `[position, delete count, inserted text]`, positions in Unicode code points.
#[derive(Debug, Clone, Deserialize)]
pub struct Patch(pub usize, pub usize, pub String);

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read trace {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("trace {path} is not a valid editing trace: {error}")]
    Json { path: String, error: serde_json::Error },
}

impl Trace {
    pub fn is_concurrent(&self) -> bool {
        self.kind.as_deref() == Some("concurrent")
    }

    pub fn patch_count(&self) -> usize {
        self.txns.iter().map(|t| t.patches.len()).sum()
    }

    /// Reads a `.json` or `.json.gz` trace file.
    pub fn read(path: &Path) -> Result<Trace, TraceError> {
        let shown = path.display().to_string();
        let io = |error| TraceError::Io { path: shown.clone(), error };
        let raw = std::fs::read(path).map_err(io)?;
        Trace::parse(&raw, &shown)
    }

    /// Parses a trace's bytes (JSON, gzipped or not); `name` is used in errors.
    pub fn parse(raw: &[u8], name: &str) -> Result<Trace, TraceError> {
        let io = |error| TraceError::Io { path: name.into(), error };
        let mut gunzipped = Vec::new();
        let json = if raw.starts_with(&[0x1f, 0x8b]) {
            gunzipped.reserve(raw.len() * 8);
            flate2::read::GzDecoder::new(raw).read_to_end(&mut gunzipped).map_err(io)?;
            &gunzipped[..]
        } else {
            raw
        };
        serde_json::from_slice(json).map_err(|error| TraceError::Json { path: name.into(), error })
    }
}
