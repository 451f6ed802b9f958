//! Limits enforced at decode time, and the errors that name them.

use std::fmt;

use crate::lseq::{IdentError, OpError};

/// A limit on a decoded message (see `schemas/docfold/op/v1/op.proto`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    MessageBytes,
    DocIdBytes,
    RegionBytes,
}

impl Limit {
    pub const fn name(self) -> &'static str {
        match self {
            Limit::MessageBytes => "max_message_bytes",
            Limit::DocIdBytes => "max_doc_id_bytes",
            Limit::RegionBytes => "max_region_bytes",
        }
    }

    pub const fn max(self) -> usize {
        match self {
            Limit::MessageBytes => 4 << 20,
            Limit::DocIdBytes => 256,
            Limit::RegionBytes => 64,
        }
    }

    /// `Err` when `actual` exceeds this limit.
    pub fn check(self, actual: usize) -> Result<(), DecodeError> {
        if actual > self.max() { Err(DecodeError::OverLimit { limit: self, actual }) } else { Ok(()) }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}", self.name(), self.max())
    }
}

/// Why bytes (or JSON) are not a valid op envelope. Never retryable: the message itself
/// is bad and belongs in the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("value is {actual}, over the limit {limit}")]
    OverLimit { limit: Limit, actual: usize },
    #[error("not a protobuf op envelope: {0}")]
    Malformed(String),
    #[error("not a JSON op envelope: {0}")]
    MalformedJson(String),
    #[error("schema version {found} is not supported (this build reads version {supported})")]
    UnknownSchemaVersion { found: u32, supported: u32 },
    #[error("doc_id is empty")]
    EmptyDocId,
    #[error("{field}: {error}")]
    BadIdent { field: String, error: IdentError },
    #[error(transparent)]
    Invalid(#[from] OpError),
}

impl DecodeError {
    /// For `map_err` on insert run `run`'s identifier (the field is named only on error).
    pub(super) fn insert_ident(run: usize) -> impl FnOnce(IdentError) -> DecodeError {
        move |error| DecodeError::BadIdent { field: format!("inserts[{run}].ident"), error }
    }

    /// For `map_err` on delete `index`'s identifier.
    pub(super) fn delete_ident(index: usize) -> impl FnOnce(IdentError) -> DecodeError {
        move |error| DecodeError::BadIdent { field: format!("deletes[{index}]"), error }
    }
}
