//! Mirroring: another region's local topic copied into `<source region>.<topic>` of this
//! region's log (MirrorMaker 2's DefaultReplicationPolicy names), partition for partition,
//! with key, value, timestamp and headers. The decisions are here and pure (which name, which
//! records are due under a configured one-way delay); `copy` does the I/O.

pub mod copy;

use crate::config::RegionConfig;
use crate::log::Record;

/// The name of `source`'s topic `topic` in other regions' logs.
pub fn mirrored_topic(source: &str, topic: &str) -> String {
    format!("{source}.{topic}")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MirrorError {
    #[error("the mirror's source and target are both region {0:?}: a region does not mirror itself")]
    SameRegion(String),
    #[error("region {source_region:?} is not a peer of {target:?} (its peers: {peers})")]
    NotAPeer { source_region: String, target: String, peers: String },
    #[error(
        "topic {topic:?} is a mirrored topic (it starts with region {region:?}): mirrors copy only a region's own topic"
    )]
    Mirrored { topic: String, region: String },
}

/// Checks that `source` may be mirrored into `target`, topic `topic`: two regions that are
/// peers, and a topic that is the source's own, never a mirror (no loops).
pub fn check(source: &RegionConfig, target: &RegionConfig, topic: &str) -> Result<(), MirrorError> {
    if source.name == target.name {
        return Err(MirrorError::SameRegion(source.name.clone()));
    }
    if !target.peers.contains(&source.name) {
        return Err(MirrorError::NotAPeer {
            source_region: source.name.clone(),
            target: target.name.clone(),
            peers: target.peers.join(", "),
        });
    }
    let region =
        target.regions().into_iter().chain(source.regions()).find(|r| topic.starts_with(&format!("{r}.")));
    match region {
        Some(region) => Err(MirrorError::Mirrored { topic: topic.into(), region: region.into() }),
        None => Ok(()),
    }
}

/// How many of `records` (in offset order) are due at `now_ms` when the link delays each
/// by `delay_ms` after its timestamp: a prefix, so the checkpoint stays a single offset.
pub fn due(records: &[Record], now_ms: i64, delay_ms: i64) -> usize {
    records.iter().take_while(|r| r.timestamp_ms.saturating_add(delay_ms) <= now_ms).count()
}
