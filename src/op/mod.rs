//! The op envelope: what producers publish and the fold consumes. The schema in
//! `schemas/docfold/op/v1/op.proto` is the single source of truth; this module maps it
//! to `lseq::Op`, enforces the limits at decode, and gives a JSON mapping.

mod codec;
mod decoder;
mod limits;

use serde::{Deserialize, Serialize};

use crate::lseq::Op;

pub use codec::{decode, decode_json, encode, encode_json};
pub use decoder::Decoder;
pub use limits::{DecodeError, Limit};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Types generated from the schema.
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/docfold.op.v1.rs"));
}

/// One op on its way through the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub schema_version: u32,
    pub doc_id: String,
    #[serde(default)]
    pub origin_region: String,
    /// Editor's wall clock, milliseconds since the Unix epoch.
    #[serde(default)]
    pub client_time_ms: i64,
    pub op: Op,
}

impl Envelope {
    pub fn new(
        doc_id: impl Into<String>,
        origin_region: impl Into<String>,
        client_time_ms: i64,
        op: Op,
    ) -> Envelope {
        Envelope {
            schema_version: SCHEMA_VERSION,
            doc_id: doc_id.into(),
            origin_region: origin_region.into(),
            client_time_ms,
            op,
        }
    }
}
