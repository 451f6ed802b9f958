//! Kafka as a source: a consumer group splits the partitions between `docfold run`
//! processes. On a rebalance the group's callback runs on the consumer thread: revoked
//! partitions are drained and write their final checkpoint before the group moves on;
//! assigned partitions start a worker that reads its checkpoint, and the consumer is
//! assigned at exactly that offset. Offsets are never auto-committed: the store is the truth.

use metrics::gauge;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{PartitionSummary, PartitionWorker, PipelineError, Until};
use crate::config::{JobConfig, PipelineConfig};
use crate::log::kafka::KafkaLog;
use crate::log::{LogError, Record};
use crate::sink::Sinks;
use crate::store::Store;
use crate::telemetry::CONSUMER_LAG;

/// Batches in flight per partition: the consumer blocks (backpressure) beyond this.
const QUEUE: usize = 8;
const LAG_EVERY: Duration = Duration::from_secs(5);

pub(super) async fn run(
    config: &JobConfig,
    brokers: &str,
    store: Store,
    sinks: Sinks,
    until: Until,
    cancel: CancellationToken,
) -> Result<Vec<PartitionSummary>, PipelineError> {
    let log = KafkaLog::connect(brokers, &config.log.topic, &config.kafka_overrides())?;
    let group = Group {
        handle: Handle::current(),
        store,
        sinks,
        job: config.job.clone(),
        settings: config.pipeline.clone(),
        topic: config.log.topic.clone(),
        workers: Mutex::new(HashMap::new()),
        done: Mutex::new(Vec::new()),
        failure: Mutex::new(None),
        cancel: cancel.clone(),
    };
    let consumer: BaseConsumer<Group> = log
        .config()
        .set("group.id", &config.log.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(group)
        .map_err(|e| LogError::Kafka(e.to_string()))?;
    consumer.subscribe(&[&config.log.topic]).map_err(|e| LogError::Kafka(e.to_string()))?;
    let batch = config.pipeline.batch;
    let join = tokio::task::spawn_blocking(move || consume(consumer, batch, until, cancel));
    join.await.map_err(|e| PipelineError::Task(e.to_string()))?
}

struct Worker {
    records: mpsc::Sender<Vec<Record>>,
    task: JoinHandle<Result<PartitionSummary, PipelineError>>,
}

/// The group's state, reached from the rebalance callback.
struct Group {
    handle: Handle,
    store: Store,
    sinks: Sinks,
    job: String,
    settings: PipelineConfig,
    topic: String,
    workers: Mutex<HashMap<u32, Worker>>,
    done: Mutex<Vec<PartitionSummary>>,
    failure: Mutex<Option<PipelineError>>,
    cancel: CancellationToken,
}

impl Group {
    fn fail(&self, error: PipelineError) {
        tracing::error!(%error, "stopping");
        self.failure.lock().expect("failure lock").get_or_insert(error);
        self.cancel.cancel();
    }

    /// Starts workers for `partitions` and returns the offsets to consume them from.
    fn assign(&self, partitions: &[u32]) -> Result<TopicPartitionList, PipelineError> {
        let mut list = TopicPartitionList::new();
        for &partition in partitions {
            let worker = self.handle.block_on(PartitionWorker::start(
                self.store.clone(),
                self.sinks.clone(),
                &self.job,
                partition,
                self.settings.clone(),
            ))?;
            list.add_partition_offset(
                &self.topic,
                partition as i32,
                Offset::Offset(worker.next_offset() as i64),
            )
            .map_err(|e| LogError::Kafka(e.to_string()))?;
            let (records, queue) = mpsc::channel(QUEUE);
            let task = self.handle.spawn(partition_task(worker, queue, self.settings.flush_interval_ms));
            self.workers.lock().expect("workers lock").insert(partition, Worker { records, task });
        }
        Ok(list)
    }

    /// Drains every worker (final checkpoints) and records their summaries.
    fn stop_all(&self) {
        let workers: Vec<(u32, Worker)> = self.workers.lock().expect("workers lock").drain().collect();
        for (partition, worker) in workers {
            drop(worker.records);
            match self.handle.block_on(worker.task) {
                Ok(Ok(summary)) => self.done.lock().expect("done lock").push(summary),
                Ok(Err(error)) => self.fail(error),
                Err(e) => self.fail(PipelineError::Task(format!("partition {partition}: {e}"))),
            }
        }
    }

    fn send(&self, partition: u32, records: Vec<Record>) {
        let sender = self.workers.lock().expect("workers lock").get(&partition).map(|w| w.records.clone());
        // No worker: a message fetched before the partition was revoked; its new owner reads it.
        if let Some(sender) = sender
            && sender.blocking_send(records).is_err()
        {
            tracing::warn!(partition, "partition worker stopped early");
        }
    }
}

impl ClientContext for Group {}

impl ConsumerContext for Group {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions: Vec<u32> = tpl.elements().iter().map(|e| e.partition() as u32).collect();
                tracing::info!(?partitions, "partitions assigned");
                match self.assign(&partitions) {
                    Ok(list) => {
                        if let Err(e) = consumer.assign(&list) {
                            self.fail(LogError::Kafka(e.to_string()).into());
                        }
                    }
                    Err(error) => self.fail(error),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!("partitions revoked: draining");
                self.stop_all();
                if let Err(e) = consumer.unassign() {
                    self.fail(LogError::Kafka(e.to_string()).into());
                }
            }
            other => self.fail(LogError::Kafka(format!("rebalance failed: {other:?}")).into()),
        }
    }
}

async fn partition_task(
    mut worker: PartitionWorker,
    mut queue: mpsc::Receiver<Vec<Record>>,
    flush_interval_ms: u64,
) -> Result<PartitionSummary, PipelineError> {
    let tick = Duration::from_millis(flush_interval_ms);
    loop {
        tokio::select! {
            batch = queue.recv() => match batch {
                Some(records) => worker.handle(&records).await?,
                None => break,
            },
            () = tokio::time::sleep(tick) => worker.flush_if_due().await?,
        }
    }
    worker.flush_final().await?;
    tracing::info!(
        partition = worker.summary().partition,
        offset = worker.next_offset(),
        "partition drained; final checkpoint written"
    );
    Ok(worker.summary().clone())
}

/// The consumer thread: polls, batches per partition, hands batches to the workers.
fn consume(
    consumer: BaseConsumer<Group>,
    batch: usize,
    until: Until,
    cancel: CancellationToken,
) -> Result<Vec<PartitionSummary>, PipelineError> {
    let mut pending: HashMap<u32, Vec<Record>> = HashMap::new();
    let mut positions: HashMap<u32, i64> = HashMap::new();
    let mut last_message = Instant::now();
    let mut last_lag = Instant::now();
    while !cancel.is_cancelled() {
        let polled = consumer.poll(Duration::from_millis(100));
        if consumer.context().workers.lock().expect("workers lock").is_empty() {
            // Idle time counts only while partitions are assigned (a join can take seconds).
            last_message = Instant::now();
        }
        let idle = polled.is_none();
        if let Some(message) = polled {
            match message {
                Ok(m) => {
                    last_message = Instant::now();
                    let partition = m.partition() as u32;
                    positions.insert(partition, m.offset() + 1);
                    let records = pending.entry(partition).or_default();
                    records.push(Record {
                        offset: m.offset() as u64,
                        timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
                        key: m.key().unwrap_or_default().to_vec(),
                        value: m.payload().unwrap_or_default().to_vec(),
                    });
                    if records.len() >= batch {
                        let records = std::mem::take(records);
                        consumer.context().send(partition, records);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "kafka consumer"),
            }
        }
        if idle {
            for (partition, records) in pending.iter_mut().filter(|(_, r)| !r.is_empty()) {
                consumer.context().send(*partition, std::mem::take(records));
            }
            if let Until::Idle { idle_ms } = until
                && last_message.elapsed() >= Duration::from_millis(idle_ms)
            {
                break;
            }
        }
        if last_lag.elapsed() >= LAG_EVERY {
            last_lag = Instant::now();
            report_lag(&consumer, &positions);
        }
    }
    for (partition, records) in pending.into_iter().filter(|(_, r)| !r.is_empty()) {
        consumer.context().send(partition, records);
    }
    let group = consumer.context();
    group.stop_all();
    consumer.unsubscribe();
    if let Some(error) = group.failure.lock().expect("failure lock").take() {
        return Err(error);
    }
    Ok(std::mem::take(&mut *group.done.lock().expect("done lock")))
}

fn report_lag(consumer: &BaseConsumer<Group>, positions: &HashMap<u32, i64>) {
    let topic = &consumer.context().topic;
    for (&partition, &position) in positions {
        let watermarks: KafkaResult<(i64, i64)> =
            consumer.fetch_watermarks(topic, partition as i32, Duration::from_secs(1));
        if let Ok((_, high)) = watermarks {
            gauge!(CONSUMER_LAG, "partition" => partition.to_string()).set((high - position).max(0) as f64);
        }
    }
}
