//! The log on Kafka (rdkafka with its bundled librdkafka). Producers use acks=all,
//! idempotence and `murmur2_random`, so a key lands where the Java client would put it.
//! The reader assigns partitions by hand (no group); the pipeline's group consumer is in
//! `pipeline::kafka`.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, DefaultConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{LogError, LogReader, LogWriter, Record, TimestampType};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A topic on a Kafka cluster.
#[derive(Clone, Debug)]
pub struct KafkaLog {
    brokers: String,
    topic: String,
    partitions: u32,
    /// librdkafka properties added to every client (e.g. `batch.num.messages`).
    overrides: Vec<(String, String)>,
}

/// A consumed message of `topic` as a record, with the kind of timestamp the topic gives.
pub fn record_of(topic: &Arc<str>, message: &impl Message) -> Record {
    use rdkafka::Timestamp as T;
    let (timestamp_ms, timestamp_type) = match message.timestamp() {
        T::LogAppendTime(ms) => (ms, TimestampType::LogAppend),
        T::CreateTime(ms) => (ms, TimestampType::Create),
        T::NotAvailable => (0, TimestampType::Create),
    };
    Record {
        topic: topic.clone(),
        offset: message.offset() as u64,
        timestamp_ms,
        timestamp_type,
        key: message.key().unwrap_or_default().to_vec(),
        value: message.payload().unwrap_or_default().to_vec(),
        headers: message.headers().map_or_else(Vec::new, |headers| {
            headers.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect()
        }),
    }
}

fn kafka(e: KafkaError) -> LogError {
    match e.rdkafka_error_code() {
        Some(code) if is_fatal(code) => LogError::Refused(e.to_string()),
        _ => LogError::Kafka(e.to_string()),
    }
}

/// Error codes that no retry can fix: the record is too large or invalid for the topic, or
/// the client is not allowed to write it.
fn is_fatal(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidMessage
            | C::InvalidRecord
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::InvalidTopic
            | C::SaslAuthenticationFailed
            | C::Authentication
    )
}

impl KafkaLog {
    /// Connects to an existing topic (reads its partition count).
    pub fn connect(brokers: &str, topic: &str, overrides: &[(String, String)]) -> Result<KafkaLog, LogError> {
        let mut log = KafkaLog {
            brokers: brokers.into(),
            topic: topic.into(),
            partitions: 0,
            overrides: overrides.to_vec(),
        };
        let consumer: BaseConsumer = log.config().create().map_err(kafka)?;
        let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT).map_err(kafka)?;
        let partitions =
            metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
        if partitions == 0 {
            return Err(LogError::NoSuchTopic {
                topic: topic.into(),
                location: format!("kafka://{brokers}"),
            });
        }
        log.partitions = partitions as u32;
        Ok(log)
    }

    /// Creates a topic (an existing one with the same name is left as it is), with the
    /// client settings `client` (TLS, SASL: the job's).
    pub async fn create_topic(
        brokers: &str,
        topic: &str,
        (partitions, replication): (u32, i32),
        configs: &[(String, String)],
        client: &[(String, String)],
    ) -> Result<(), LogError> {
        let mut settings = ClientConfig::new();
        settings.set("bootstrap.servers", brokers);
        for (key, value) in client {
            settings.set(key, value);
        }
        let admin: AdminClient<DefaultClientContext> = settings.create().map_err(kafka)?;
        let mut new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(replication));
        for (key, value) in configs {
            new = new.set(key, value);
        }
        let results = admin.create_topics([&new], &AdminOptions::new()).await.map_err(kafka)?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(LogError::Kafka(format!("creating topic {name}: {code}"))),
            }
        }
        Ok(())
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Client settings shared by producers and consumers.
    pub fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.overrides {
            config.set(key, value);
        }
        config
    }

    pub fn writer(&self) -> Result<KafkaWriter, LogError> {
        let failures = Arc::new(Mutex::new(Failures::default()));
        let producer = self
            .config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .create_with_context(DeliveryTracker { failures: failures.clone() })
            .map_err(kafka)?;
        Ok(KafkaWriter { producer, topic: self.topic.clone(), failures })
    }

    pub fn reader(&self) -> Result<KafkaReader, LogError> {
        let consumer = self
            .config()
            .set("group.id", "docfold-reader")
            // A fetch that finds nothing returns within 50 ms, so a record appended then is
            // read at most that long after (a broker that does not answer a long poll
            // when data arrives would otherwise hold it for librdkafka's default 500 ms).
            .set("fetch.wait.max.ms", "50")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(kafka)?;
        let queues = (0..self.partitions).map(|_| None).collect();
        Ok(KafkaReader {
            consumer: Arc::new(consumer),
            topic: self.topic.as_str().into(),
            log: self.clone(),
            queues,
        })
    }
}

#[derive(Default)]
struct Failures {
    count: u64,
    /// Whether one of them cannot succeed on a retry.
    fatal: bool,
    first: Option<String>,
}

struct DeliveryTracker {
    failures: Arc<Mutex<Failures>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            let mut failures = self.failures.lock().expect("delivery tracker lock");
            failures.count += 1;
            failures.fatal |= error.rdkafka_error_code().is_some_and(is_fatal);
            failures.first.get_or_insert_with(|| error.to_string());
        }
    }
}

pub struct KafkaWriter {
    producer: BaseProducer<DeliveryTracker>,
    topic: String,
    failures: Arc<Mutex<Failures>>,
}

impl KafkaWriter {
    /// Queues a record, waiting while librdkafka's queue is full.
    fn send(&self, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<(), LogError> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => return Err(kafka(e)),
            }
        }
    }
}

impl LogWriter for KafkaWriter {
    fn append(&mut self, key: &[u8], value: &[u8]) -> Result<(), LogError> {
        self.send(BaseRecord::to(&self.topic).key(key).payload(value))
    }

    fn copy(&mut self, partition: u32, record: &Record) -> Result<(), LogError> {
        let partition =
            i32::try_from(partition).map_err(|_| LogError::Kafka(format!("partition {partition}")))?;
        let mut copy = BaseRecord::to(&self.topic)
            .partition(partition)
            .key(record.key.as_slice())
            .payload(record.value.as_slice())
            .timestamp(record.timestamp_ms);
        if !record.headers.is_empty() {
            let headers = record.headers.iter().fold(OwnedHeaders::new(), |headers, (key, value)| {
                headers.insert(Header { key, value: value.as_deref() })
            });
            copy = copy.headers(headers);
        }
        self.send(copy)
    }

    fn flush(&mut self) -> Result<(), LogError> {
        // Served here rather than by rdkafka's `flush`, which waits out 100 ms polls: every
        // flush took at least 100 ms, a floor under each acked write and each mirror round.
        let deadline = std::time::Instant::now() + TIMEOUT;
        while self.producer.in_flight_count() > 0 {
            if std::time::Instant::now() >= deadline {
                return Err(LogError::Kafka(format!(
                    "{} records not delivered within {} s",
                    self.producer.in_flight_count(),
                    TIMEOUT.as_secs()
                )));
            }
            self.producer.poll(Duration::from_millis(2));
        }
        let mut failures = self.failures.lock().expect("delivery tracker lock");
        if failures.count > 0 {
            let Failures { count, fatal, first } = std::mem::take(&mut *failures);
            let message =
                format!("{count} records were not delivered; first error: {}", first.unwrap_or_default());
            return Err(if fatal { LogError::Refused(message) } else { LogError::Kafka(message) });
        }
        Ok(())
    }
}

/// Reads partitions by manual assignment. A partition, once read, stays assigned with a
/// queue of its own, so librdkafka keeps fetching it ahead while the others are read: a
/// reader that goes round the partitions (the mirror) does not pay a fetch round trip per
/// call, which matters across an ocean.
pub struct KafkaReader {
    consumer: Arc<BaseConsumer>,
    topic: Arc<str>,
    log: KafkaLog,
    /// Per partition, once assigned: its queue and the offset the next record will have
    /// (`None` after an error: the next read assigns it again).
    queues: Vec<Option<(PartitionQueue<DefaultConsumerContext>, Option<u64>)>>,
}

impl KafkaReader {
    /// Assigns `partition` from offset `from` with its own queue (again, if it was
    /// assigned at another offset).
    fn assign(&mut self, partition: u32, from: u64) -> Result<(), LogError> {
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&self.log.topic, partition as i32, Offset::Offset(from as i64))
            .map_err(kafka)?;
        if self.queues[partition as usize].take().is_some() {
            self.consumer.incremental_unassign(&assignment).map_err(kafka)?;
        }
        // The queue first, so that no record fetched for the new assignment lands in the
        // consumer's main queue instead.
        let queue =
            self.consumer.split_partition_queue(&self.log.topic, partition as i32).ok_or_else(|| {
                LogError::Kafka(format!("no queue for partition {partition} of {}", self.log.topic))
            })?;
        self.consumer.incremental_assign(&assignment).map_err(kafka)?;
        self.queues[partition as usize] = Some((queue, Some(from)));
        Ok(())
    }

    /// Appends up to `max` records of `partition` from `from`: waits up to `first` for the
    /// first one, then takes what has arrived without a pause.
    fn take(
        &mut self,
        partition: u32,
        from: u64,
        max: usize,
        out: &mut Vec<Record>,
        first: Duration,
    ) -> Result<(), LogError> {
        if partition >= self.log.partitions {
            return Err(LogError::NoSuchPartition { partition, partitions: self.log.partitions });
        }
        let slot = partition as usize;
        if self.queues[slot].as_ref().and_then(|(_, next)| *next) != Some(from) {
            self.assign(partition, from)?;
        }
        let Some((queue, position)) = self.queues[slot].as_mut() else { return Ok(()) };
        let Some(mut next) = *position else { return Ok(()) };
        // Serves the consumer's events (errors, statistics); its records go to the queues.
        if let Some(Err(e)) = self.consumer.poll(Duration::ZERO) {
            *position = None;
            return Err(kafka(e));
        }
        let (mut wait, mut read) = (first, 0);
        while read < max {
            match queue.poll(wait) {
                None => break,
                Some(Err(e)) => {
                    *position = None;
                    return Err(kafka(e));
                }
                Some(Ok(message)) => {
                    let offset = message.offset() as u64;
                    if offset < next {
                        continue; // fetched before a seek back
                    }
                    out.push(record_of(&self.topic, &message));
                    next = offset + 1;
                    read += 1;
                    wait = Duration::ZERO;
                }
            }
        }
        *position = Some(next);
        Ok(())
    }
}

impl LogReader for KafkaReader {
    fn partitions(&self) -> u32 {
        self.log.partitions
    }

    fn read(&mut self, partition: u32, from: u64, max: usize, out: &mut Vec<Record>) -> Result<(), LogError> {
        // Wait a while for the first record: none means none arrived in that time. (Not the
        // log's end instead: tansu reports a high watermark below the end after a restart,
        // `SERVICES.md`. A caller that goes round partitions uses `read_ready`.)
        self.take(partition, from, max, out, Duration::from_secs(1))
    }

    fn read_ready(
        &mut self,
        partition: u32,
        from: u64,
        max: usize,
        out: &mut Vec<Record>,
    ) -> Result<(), LogError> {
        self.take(partition, from, max, out, Duration::ZERO)
    }

    fn end_offset(&mut self, partition: u32) -> Result<u64, LogError> {
        let (_, high) =
            self.consumer.fetch_watermarks(&self.log.topic, partition as i32, TIMEOUT).map_err(kafka)?;
        Ok(high as u64)
    }

    fn earliest_offset(&mut self, partition: u32) -> Result<u64, LogError> {
        let (low, _) =
            self.consumer.fetch_watermarks(&self.log.topic, partition as i32, TIMEOUT).map_err(kafka)?;
        Ok(low as u64)
    }
}
