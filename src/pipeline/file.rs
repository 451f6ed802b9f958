//! The embedded file log as a source: a task per partition reads from the worker's
//! checkpoint, folds, and polls for more when it reaches the end.

use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Job, PartitionSummary, PartitionWorker, PipelineError, Until};
use crate::log::LogReader;
use crate::log::file::{FileLog, FileReader};
use crate::telemetry;

/// How long a caught-up partition waits before looking for new records.
const POLL: Duration = Duration::from_millis(50);

pub(super) async fn run(
    job: Job,
    log: FileLog,
    until: Until,
) -> Result<Vec<PartitionSummary>, PipelineError> {
    let mut tasks = JoinSet::new();
    let partitions = log.partitions();
    let cancel = job.cancel.clone();
    for partition in 0..partitions {
        let worker = PartitionWorker::start(&job, (partition, partitions)).await?;
        let mut reader = log.reader();
        worker.check_in_log(reader.earliest_offset(partition)?, reader.end_offset(partition)?)?;
        tasks.spawn(partition_loop(worker, reader, job.settings.batch, until, cancel.clone()));
    }
    let mut summaries = Vec::new();
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(|e| PipelineError::Task(e.to_string())).and_then(|r| r) {
            Ok(summary) => summaries.push(summary),
            Err(error) if error.is_fenced() => tracing::warn!(%error, "partition stepped down"),
            Err(error) => {
                tracing::error!(%error, "partition stopped; stopping the others");
                cancel.cancel();
                failure.get_or_insert(error);
            }
        }
    }
    failure.map_or(Ok(summaries), Err)
}

async fn partition_loop(
    mut worker: PartitionWorker,
    reader: FileReader,
    batch: usize,
    until: Until,
    cancel: CancellationToken,
) -> Result<PartitionSummary, PipelineError> {
    let partition = worker.summary().partition;
    let mut reader = Some(reader);
    while !cancel.is_cancelled() {
        let from = worker.next_offset();
        let mut taken = reader.take().expect("the reader is put back after each read");
        let (taken, records) = tokio::task::spawn_blocking(move || {
            let mut records = Vec::with_capacity(batch);
            let result = taken.read(partition, from, batch, &mut records);
            (taken, result.map(|()| records))
        })
        .await
        .map_err(|e| PipelineError::Task(e.to_string()))?;
        reader = Some(taken);
        let records = records?;
        if records.is_empty() {
            telemetry::consumer_lag(partition, 0);
            worker.flush_if_due().await?;
            if matches!(until, Until::Idle { .. }) {
                break;
            }
            tokio::select! {
                () = cancel.cancelled() => {}
                () = tokio::time::sleep(POLL) => {}
            }
            continue;
        }
        worker.handle(&records).await?;
    }
    worker.flush_final().await?;
    tracing::info!(partition, offset = worker.next_offset(), "partition drained; final checkpoint written");
    Ok(worker.summary().clone())
}
