//! Dead letters: records that cannot be folded go to `doc-ops-dlq` with the reason, the
//! source partition and offset and the raw bytes (`schemas/docfold/dlq/v1/dead_letter.proto`),
//! and the partition moves on (DESIGN.md invariant 4). They are durable before the
//! checkpoint passes them; a replay may send one twice. A value too large for the topic
//! (a 4 MiB op against librdkafka's 1 MB message limit) goes to object storage as
//! `dead-letters/topic=T/partition=P/<offset>.bin`, and the letter in the topic points at it.

use futures::future::BoxFuture;
use prost::Message;

use bytes::Bytes;
use object_store::path::Path as Key;

use super::objects::{Objects, stored_key};
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
            value_ref: String::new(),
        }
    }

    /// The source record's value: inline, or read from object storage.
    pub async fn value(&self, objects: &Objects) -> Result<Vec<u8>, SinkError> {
        if self.value_ref.is_empty() {
            return Ok(self.value.clone());
        }
        let key = stored_key("dead letters", &self.value_ref)?;
        let found = objects.get(&key).await?;
        let bytes = found.ok_or_else(|| SinkError::Corrupt {
            sink: "dead letters",
            message: format!(
                "dead letter of offset {} points at {key}, which is missing",
                self.source_offset
            ),
        })?;
        Ok(bytes.to_vec())
    }
}

/// Where a dead letter's oversized value is kept.
fn value_key(letter: &DeadLetter) -> Key {
    Key::from_iter([
        "dead-letters".to_string(),
        format!("topic={}", letter.source_topic),
        format!("partition={}", letter.source_partition),
        format!("{:020}.bin", letter.source_offset),
    ])
}

/// Where dead letters go: a topic, or nowhere (only logged and counted).
#[derive(Clone)]
pub struct DeadLetters {
    topic: Option<TopicSink>,
    objects: Objects,
    max_inline_bytes: usize,
    /// Bytes of letters a partition may hold unsent.
    pub max_buffered_bytes: usize,
}

impl DeadLetters {
    pub fn open(config: &JobConfig, objects: Objects) -> Result<DeadLetters, SinkError> {
        let topic = &config.dead_letters.topic;
        let topic =
            (!topic.is_empty()).then(|| TopicSink::open(config, topic, "dead letters")).transpose()?;
        Ok(DeadLetters {
            topic,
            objects,
            max_inline_bytes: config.dead_letters.max_inline_bytes,
            max_buffered_bytes: config.dead_letters.max_buffered_bytes,
        })
    }

    /// Makes the letters durable: oversized values in object storage first, then the
    /// letters in the topic. (Also the first [`super::Sink`] of every flush.)
    pub async fn send(&self, letters: &[DeadLetter]) -> Result<(), SinkError> {
        let Some(topic) = &self.topic else { return Ok(()) };
        let mut records = Vec::with_capacity(letters.len());
        for letter in letters {
            if letter.encoded_len() <= self.max_inline_bytes {
                records.push((letter.key.clone(), letter.encode_to_vec()));
                continue;
            }
            let key = value_key(letter);
            self.objects.put(&key, Bytes::from(letter.value.clone()), usize::MAX).await?;
            let outlined = DeadLetter { value: Vec::new(), value_ref: key.to_string(), ..letter.clone() };
            records.push((letter.key.clone(), outlined.encode_to_vec()));
        }
        topic.send(records).await
    }
}

impl super::Sink for DeadLetters {
    fn name(&self) -> &'static str {
        "dead letters"
    }

    fn write<'a>(&'a self, changes: &'a super::Changes<'a>) -> BoxFuture<'a, Result<u64, SinkError>> {
        Box::pin(async move {
            if changes.dead.is_empty() {
                return Ok(0);
            }
            self.send(changes.dead).await?;
            Ok(changes.dead.len() as u64)
        })
    }
}
