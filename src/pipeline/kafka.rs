//! Kafka as a source: a consumer group splits the partitions between `docfold run`
//! processes. The group subscribes to every source topic with the `range` assignor, which
//! gives each member the same partition numbers of every topic (the topics have one
//! partition count), so a partition's worker gets partition p of all of them; the
//! assignment is checked when it arrives. On a rebalance the group's callback runs on the consumer thread: revoked
//! partitions are drained and write their final checkpoint before the group moves on;
//! assigned partitions start a worker that reads its checkpoint, and the consumer is
//! assigned at exactly that offset. Offsets are never auto-committed: the store is the truth.

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::batches::Batches;
use super::{Job, PartitionSummary, PartitionWorker, PipelineError, Until};
use crate::config::JobConfig;
use crate::log::kafka::KafkaLog;
use crate::log::{LogError, LogReader, Record};
use crate::telemetry;

/// Batches in flight per partition: the consumer blocks (backpressure) beyond this.
const QUEUE: usize = 8;
const LAG_EVERY: Duration = Duration::from_secs(5);
const COMMIT_EVERY: Duration = Duration::from_secs(1);
const WATERMARKS_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn run(
    config: &JobConfig,
    job: Job,
    logs: Vec<KafkaLog>,
    until: Until,
) -> Result<Vec<PartitionSummary>, PipelineError> {
    let cancel = job.cancel.clone();
    let Some(local) = logs.first().cloned() else {
        return Err(PipelineError::Config("a job has at least its own topic".into()));
    };
    let topics: Vec<String> = job.sources.iter().map(|t| t.to_string()).collect();
    let group = Group {
        logs,
        handle: Handle::current(),
        job,
        workers: Mutex::new(HashMap::new()),
        flushed: Flushed::default(),
        done: Mutex::new(Vec::new()),
        failure: Mutex::new(None),
    };
    let consumer: BaseConsumer<Group> = local
        .config()
        .set("group.id", &config.log.group)
        // Co-partitioning: `range` splits each topic's partitions over the sorted members
        // alike (`Group::assign` checks it).
        .set("partition.assignment.strategy", "range")
        .set("enable.auto.commit", "false")
        // An assigned offset outside the log is an error to report, never a silent reset.
        .set("auto.offset.reset", "error")
        .create_with_context(group)
        .map_err(|e| LogError::Kafka(e.to_string()))?;
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(|e| LogError::Kafka(e.to_string()))?;
    let batching = (config.pipeline.batch, config.pipeline.batch_ms);
    let join = tokio::task::spawn_blocking(move || consume(consumer, batching, until, cancel));
    join.await.map_err(|e| PipelineError::Task(e.to_string()))?
}

struct Worker {
    records: mpsc::Sender<Vec<Record>>,
    task: JoinHandle<Result<PartitionSummary, PipelineError>>,
    /// The offsets the partition's topics were assigned at (its checkpoints).
    start: TopicOffsets,
}

/// A partition's offsets, per source topic.
type TopicOffsets = Vec<(Arc<str>, u64)>;

/// Each partition's last stored checkpoints (per source topic), committed to the consumer
/// group for the ecosystem's lag tools (`kafka-consumer-groups`, Burrow); informational,
/// the store is the truth.
type Flushed = Arc<Mutex<HashMap<u32, TopicOffsets>>>;

/// The group's state, reached from the rebalance callback.
struct Group {
    handle: Handle,
    job: Job,
    /// The source topics, in the job's order (`job.sources`).
    logs: Vec<KafkaLog>,
    workers: Mutex<HashMap<u32, Worker>>,
    flushed: Flushed,
    done: Mutex<Vec<PartitionSummary>>,
    failure: Mutex<Option<PipelineError>>,
}

impl Group {
    fn fail(&self, error: PipelineError) {
        tracing::error!(%error, "stopping");
        self.failure.lock().expect("failure lock").get_or_insert(error);
        self.job.cancel.cancel();
    }

    /// The source topic named `topic`, as the job's `Arc`.
    fn source(&self, topic: &str) -> Option<&Arc<str>> {
        self.job.sources.iter().find(|t| &***t == topic)
    }

    /// Starts workers for `partitions` and returns the offsets to consume their topics
    /// from. A checkpoint outside a partition's watermarks is refused here; should the log
    /// shrink after that, the consumer reports it (`auto.offset.reset=error`,
    /// [`Group::out_of_range`]).
    fn assign(
        &self,
        consumer: &BaseConsumer<Group>,
        partitions: &[u32],
    ) -> Result<TopicPartitionList, PipelineError> {
        let mut list = TopicPartitionList::new();
        let count = self.logs.first().map_or(0, KafkaLog::partitions);
        for &partition in partitions {
            let worker = self.handle.block_on(PartitionWorker::start(&self.job, (partition, count)))?;
            for (log, (topic, start)) in self.logs.iter().zip(worker.next_offsets()) {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, partition as i32, WATERMARKS_TIMEOUT)
                    .map_err(|e| LogError::Kafka(e.to_string()))?;
                let folded = worker.fold_offset(&topic).unwrap_or(start);
                let end = confirmed_end(log, partition, folded, high as u64)?;
                worker.check_in_log(&topic, low as u64, end)?;
                list.add_partition_offset(&topic, partition as i32, Offset::Offset(start as i64))
                    .map_err(|e| LogError::Kafka(e.to_string()))?;
            }
            let start = worker.next_offsets();
            let (records, queue) = mpsc::channel(QUEUE);
            let task = self.handle.spawn(partition_task(
                worker,
                queue,
                self.job.settings.flush_interval_ms,
                self.flushed.clone(),
            ));
            self.workers.lock().expect("workers lock").insert(partition, Worker { records, task, start });
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
                Ok(Err(error)) if error.is_fenced() => {
                    tracing::warn!(event = "fenced", %error, "partition stepped down")
                }
                Ok(Err(error)) => self.fail(error),
                Err(e) => self.fail(PipelineError::Task(format!("partition {partition}: {e}"))),
            }
        }
    }

    /// Commits the checkpoints stored since the last call to the consumer group.
    fn commit_flushed(&self, consumer: &BaseConsumer<Group>, mode: CommitMode) {
        let flushed: Vec<(u32, TopicOffsets)> = self.flushed.lock().expect("flushed lock").drain().collect();
        if flushed.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for (partition, topics) in flushed {
            for (topic, offset) in topics {
                if let Err(e) =
                    list.add_partition_offset(&topic, partition as i32, Offset::Offset(offset as i64))
                {
                    tracing::debug!(partition, %topic, error = %e, "group commit skipped");
                }
            }
        }
        if let Err(e) = consumer.commit(&list, mode) {
            tracing::debug!(error = %e, "group commit failed (informational; the store holds the checkpoint)");
        }
    }

    /// The consumer found an assigned offset outside the log: which partition's checkpoint
    /// it is, as an error naming both offsets.
    fn out_of_range(&self, consumer: &BaseConsumer<Group>, error: &KafkaError) -> PipelineError {
        let starts: Vec<(u32, TopicOffsets)> =
            self.workers.lock().expect("workers lock").iter().map(|(&p, w)| (p, w.start.clone())).collect();
        for (partition, topics) in starts {
            for (topic, start) in topics {
                if let Ok((low, high)) =
                    consumer.fetch_watermarks(&topic, partition as i32, WATERMARKS_TIMEOUT)
                    && let Err(error) =
                        super::check_in_log((&topic, partition), [start], low as u64, high as u64)
                {
                    return error;
                }
            }
        }
        LogError::Kafka(format!("{error}: a checkpoint is outside the log; see `docfold snapshots restore`"))
            .into()
    }

    /// Hands a batch to its partition's worker; gives it back when the worker's queue is
    /// full (never blocks: a slow partition must not stop the others or the polling).
    fn offer(&self, partition: u32, records: Vec<Record>) -> Result<(), Vec<Record>> {
        let sender = self.workers.lock().expect("workers lock").get(&partition).map(|w| w.records.clone());
        // No worker: a message fetched before the partition was revoked; its new owner reads it.
        let Some(sender) = sender else { return Ok(()) };
        match sender.try_send(records) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(records)) => Err(records),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::warn!(partition, "partition worker stopped early");
                Ok(())
            }
        }
    }

    /// Pauses or resumes fetching `partition` (of every source topic).
    fn set_paused(&self, consumer: &BaseConsumer<Group>, partition: u32, paused: bool) {
        let mut list = TopicPartitionList::new();
        for topic in self.job.sources.iter() {
            list.add_partition(topic, partition as i32);
        }
        let done = if paused { consumer.pause(&list) } else { consumer.resume(&list) };
        match done {
            Ok(()) => {
                tracing::debug!(partition, paused, "partition's worker is busy: fetching paused or resumed")
            }
            Err(e) => tracing::warn!(partition, paused, error = %e, "pausing or resuming a partition failed"),
        }
    }

    /// Offers every due batch; a refused one is held and its partition paused until a
    /// later offer succeeds.
    fn hand_over(
        &self,
        consumer: &BaseConsumer<Group>,
        batches: &mut Batches,
        paused: &mut HashSet<u32>,
        all: bool,
    ) {
        for (partition, records) in batches.due(Instant::now(), all) {
            match self.offer(partition, records) {
                Ok(()) => {
                    if paused.remove(&partition) {
                        self.set_paused(consumer, partition, false);
                    }
                }
                Err(records) => {
                    batches.hold(partition, records);
                    if paused.insert(partition) {
                        self.set_paused(consumer, partition, true);
                    }
                }
            }
        }
    }
}

impl ClientContext for Group {}

impl ConsumerContext for Group {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let assigned: Vec<(String, u32)> =
                    tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition() as u32)).collect();
                tracing::info!(?assigned, "partitions assigned");
                match co_partitioned(&self.job.sources, &assigned)
                    .and_then(|partitions| self.assign(consumer, &partitions))
                {
                    Ok(list) => {
                        // Fetching starts unpaused, whatever an earlier owner of the partition did.
                        if let Err(e) = consumer.assign(&list).and_then(|()| consumer.resume(&list)) {
                            self.fail(LogError::Kafka(e.to_string()).into());
                        }
                    }
                    Err(error) => self.fail(error),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!("partitions revoked: draining");
                self.stop_all();
                self.commit_flushed(consumer, CommitMode::Sync);
                if let Err(e) = consumer.unassign() {
                    self.fail(LogError::Kafka(e.to_string()).into());
                }
            }
            other => self.fail(LogError::Kafka(format!("rebalance failed: {other:?}")).into()),
        }
    }
}

/// Checks that the group gave this member partition p of every one of `sources` or of
/// none, and returns the partition numbers.
fn co_partitioned(sources: &[Arc<str>], assigned: &[(String, u32)]) -> Result<Vec<u32>, PipelineError> {
    let mut partitions: Vec<u32> = assigned.iter().map(|(_, p)| *p).collect();
    partitions.sort_unstable();
    partitions.dedup();
    for &partition in &partitions {
        let missing: Vec<&str> = (sources.iter())
            .filter(|topic| !assigned.iter().any(|(t, p)| *p == partition && t == &***topic))
            .map(|topic| &**topic)
            .collect();
        if !missing.is_empty() {
            return Err(PipelineError::SplitAssignment { partition, missing: missing.join(", ") });
        }
    }
    Ok(partitions)
}

/// The end of `partition` of `log` as far as `checkpoint` is concerned: the high
/// watermark, or the checkpoint itself when the record just before it can be read (some
/// brokers, tansu among them, report a high watermark below the end: `SERVICES.md`).
fn confirmed_end(log: &KafkaLog, partition: u32, checkpoint: u64, high: u64) -> Result<u64, PipelineError> {
    if checkpoint <= high {
        return Ok(high);
    }
    let mut found = Vec::new();
    log.reader()?.read(partition, checkpoint - 1, 1, &mut found)?;
    Ok(if found.first().is_some_and(|r| r.offset == checkpoint - 1) { checkpoint } else { high })
}

async fn partition_task(
    mut worker: PartitionWorker,
    mut queue: mpsc::Receiver<Vec<Record>>,
    flush_interval_ms: u64,
    flushed: Flushed,
) -> Result<PartitionSummary, PipelineError> {
    let tick = Duration::from_millis(flush_interval_ms);
    let partition = worker.summary().partition;
    loop {
        tokio::select! {
            batch = queue.recv() => match batch {
                Some(records) => worker.handle(&records).await?,
                None => break,
            },
            () = tokio::time::sleep(tick) => worker.flush_if_due().await?,
        }
        flushed.lock().expect("flushed lock").insert(partition, worker.flushed_offsets());
    }
    worker.flush_final().await?;
    flushed.lock().expect("flushed lock").insert(partition, worker.flushed_offsets());
    tracing::info!(
        partition,
        position = worker.summary().next_offset,
        "partition drained; final checkpoint written"
    );
    Ok(worker.summary().clone())
}

/// The consumer thread: polls, batches per partition, hands batches to the workers.
fn consume(
    consumer: BaseConsumer<Group>,
    (batch, batch_ms): (usize, u64),
    until: Until,
    cancel: CancellationToken,
) -> Result<Vec<PartitionSummary>, PipelineError> {
    let max_wait = Duration::from_millis(batch_ms);
    let mut batches = Batches::new(batch, max_wait);
    let mut paused: HashSet<u32> = HashSet::new();
    let mut positions: HashMap<(Arc<str>, u32), i64> = HashMap::new();
    let mut last_message = Instant::now();
    let mut last_lag = Instant::now();
    let mut last_commit = Instant::now();
    while !cancel.is_cancelled() {
        let polled = consumer.poll(max_wait.min(Duration::from_millis(100)));
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
                    match consumer.context().source(m.topic()).cloned() {
                        Some(topic) => {
                            positions.insert((topic.clone(), partition), m.offset() + 1);
                            batches.push(partition, crate::log::kafka::record_of(&topic, &m), last_message);
                        }
                        None => {
                            tracing::warn!(topic = m.topic(), "a message of a topic the job does not fold")
                        }
                    }
                }
                Err(
                    e @ KafkaError::MessageConsumption(
                        RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange,
                    ),
                ) => {
                    let group = consumer.context();
                    group.fail(group.out_of_range(&consumer, &e));
                }
                Err(e) => tracing::warn!(error = %e, "kafka consumer"),
            }
        }
        consumer.context().hand_over(&consumer, &mut batches, &mut paused, idle);
        if idle
            && let Until::Idle { idle_ms } = until
            && last_message.elapsed() >= Duration::from_millis(idle_ms)
        {
            break;
        }
        if last_commit.elapsed() >= COMMIT_EVERY {
            last_commit = Instant::now();
            consumer.context().commit_flushed(&consumer, CommitMode::Async);
        }
        if last_lag.elapsed() >= LAG_EVERY {
            last_lag = Instant::now();
            report_lag(&consumer, &positions);
        }
    }
    // What is left goes to the workers before they drain (waiting for room, now).
    let group = consumer.context();
    for (partition, records) in batches.due(Instant::now(), true) {
        let sender = group.workers.lock().expect("workers lock").get(&partition).map(|w| w.records.clone());
        if let Some(sender) = sender {
            let _ = sender.blocking_send(records);
        }
    }
    group.stop_all();
    group.commit_flushed(&consumer, CommitMode::Sync);
    consumer.unsubscribe();
    if let Some(error) = group.failure.lock().expect("failure lock").take() {
        return Err(error);
    }
    Ok(std::mem::take(&mut *group.done.lock().expect("done lock")))
}

/// Reports each partition's lag: records behind, summed over its source topics.
fn report_lag(consumer: &BaseConsumer<Group>, positions: &HashMap<(Arc<str>, u32), i64>) {
    let mut lag: HashMap<u32, u64> = HashMap::new();
    for ((topic, partition), &position) in positions {
        let watermarks: KafkaResult<(i64, i64)> =
            consumer.fetch_watermarks(topic, *partition as i32, Duration::from_secs(1));
        if let Ok((_, high)) = watermarks {
            *lag.entry(*partition).or_default() += (high - position).max(0) as u64;
        }
    }
    for (partition, lag) in lag {
        telemetry::consumer_lag(partition, lag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assignment_must_hold_a_partitions_every_topic() {
        let sources: Vec<Arc<str>> = vec!["doc-ops".into(), "eu.doc-ops".into()];
        let of = |pairs: &[(&str, u32)]| pairs.iter().map(|(t, p)| (t.to_string(), *p)).collect::<Vec<_>>();
        let whole = of(&[("doc-ops", 2), ("eu.doc-ops", 2), ("eu.doc-ops", 0), ("doc-ops", 0)]);
        assert_eq!(co_partitioned(&sources, &whole).expect("co-partitioned"), [0, 2]);
        assert_eq!(co_partitioned(&sources, &[]).expect("nothing assigned"), Vec::<u32>::new());
        let split = of(&[("doc-ops", 1), ("eu.doc-ops", 1), ("doc-ops", 3)]);
        let error = co_partitioned(&sources, &split).expect_err("partition 3 lacks eu.doc-ops");
        assert!(
            matches!(&error, PipelineError::SplitAssignment { partition: 3, missing } if missing == "eu.doc-ops")
        );
        assert!(error.to_string().contains("partition.assignment.strategy = range"), "{error}");
    }
}
