//! Residency: rules that keep a document inside a set of regions. A rule names a document
//! id prefix and the regions its documents may live in; the first matching rule decides, and
//! a document no rule matches may live anywhere. Producers refuse to write a resident
//! document into another region's log and the mirror does not copy its records there, so
//! its ops, and everything folded from them (state, projections, archive rows, cache
//! entries), never exist outside those regions.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Residency {
    /// Documents whose id starts with this.
    pub prefix: String,
    /// The regions they may live in.
    pub regions: Vec<String>,
}

/// A resident document bound for a region outside its rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "document {doc_id:?} may live only in {} (region.residency prefix {prefix:?}); region {region} may not hold it",
    .allowed.join(", ")
)]
pub struct Resident {
    pub doc_id: String,
    pub prefix: String,
    pub allowed: Vec<String>,
    pub region: String,
}

/// Whether the document with key `doc_id` may live in `region` under `rules`.
pub fn check(rules: &[Residency], doc_id: &[u8], region: &str) -> Result<(), Resident> {
    let Some(rule) = rules.iter().find(|r| doc_id.starts_with(r.prefix.as_bytes())) else { return Ok(()) };
    if rule.regions.iter().any(|r| r == region) {
        return Ok(());
    }
    Err(Resident {
        doc_id: String::from_utf8_lossy(doc_id).into_owned(),
        prefix: rule.prefix.clone(),
        allowed: rule.regions.clone(),
        region: region.to_string(),
    })
}
