//! A topic on the job's log as a sink: records appended by any partition's worker and made
//! durable by `send` before the checkpoint moves (at-least-once: a replay may repeat them).

use std::sync::{Arc, Mutex};

use super::{SinkError, topic_writer};
use crate::config::JobConfig;
use crate::log::LogWriter;

#[derive(Clone)]
pub struct TopicSink {
    /// Which sink this is, for errors and metrics.
    sink: &'static str,
    writer: Arc<Mutex<Box<dyn LogWriter>>>,
}

impl TopicSink {
    pub fn open(config: &JobConfig, topic: &str, sink: &'static str) -> Result<TopicSink, SinkError> {
        let writer = topic_writer(config, topic).map_err(|e| SinkError::from_log(sink, e))?;
        Ok(TopicSink { sink, writer: Arc::new(Mutex::new(writer)) })
    }

    /// Appends `(key, value)` records and waits until they are durable.
    pub async fn send(&self, records: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), SinkError> {
        if records.is_empty() {
            return Ok(());
        }
        let (writer, sink) = (self.writer.clone(), self.sink);
        tokio::task::spawn_blocking(move || {
            let mut writer = writer
                .lock()
                .map_err(|_| SinkError::Corrupt { sink, message: "a writer panicked".into() })?;
            for (key, value) in &records {
                writer.append(key, value).map_err(|e| SinkError::from_log(sink, e))?;
            }
            writer.flush().map_err(|e| SinkError::from_log(sink, e))
        })
        .await
        .map_err(|e| SinkError::Corrupt { sink, message: e.to_string() })?
    }
}
