//! Dead letters: records that cannot be folded go to `doc-ops-dlq` with the reason, the
//! source partition and offset and the raw bytes (`schemas/docfold/dlq/v1/dead_letter.proto`),
//! and the partition moves on (DESIGN.md invariant 4). They are durable before the
//! checkpoint passes them; a replay may send one twice.

use prost::Message;

use super::{SinkError, TopicSink};
use crate::config::JobConfig;
use crate::log::Record;

/// Types generated from the schema.
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/docfold.dlq.v1.rs"));
}

pub use wire::DeadLetter;

impl DeadLetter {
    pub fn new(
        source_topic: &str,
        partition: u32,
        record: &Record,
        reason: &str,
        error: String,
    ) -> DeadLetter {
        DeadLetter {
            reason: reason.into(),
            error,
            source_topic: source_topic.into(),
            source_partition: partition,
            source_offset: record.offset,
            source_timestamp_ms: record.timestamp_ms,
            key: record.key.clone(),
            value: record.value.clone(),
        }
    }
}

/// Where dead letters go: a topic, or nowhere (only logged and counted).
#[derive(Clone, Default)]
pub struct DeadLetters {
    topic: Option<TopicSink>,
}

impl DeadLetters {
    pub fn open(config: &JobConfig) -> Result<DeadLetters, SinkError> {
        let topic = &config.dead_letters.topic;
        let topic =
            (!topic.is_empty()).then(|| TopicSink::open(config, topic, "dead letters")).transpose()?;
        Ok(DeadLetters { topic })
    }

    pub async fn send(&self, letters: &[DeadLetter]) -> Result<(), SinkError> {
        let Some(topic) = &self.topic else { return Ok(()) };
        topic.send(letters.iter().map(|l| (l.key.clone(), l.encode_to_vec())).collect()).await
    }
}
