//! The embedded file log as a source: a task per partition reads partition p of every
//! source topic from the worker's checkpoints, folds, and polls for more when it reaches
//! the end of all of them.

use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Job, PartitionSummary, PartitionWorker, PipelineError, Until};
use crate::log::file::{FileLog, FileReader};
use crate::log::{LogError, LogReader, Record};
use crate::telemetry;

/// How long a caught-up partition waits before looking for new records.
const POLL: Duration = Duration::from_millis(50);
/// How often a partition that is behind measures its lag.
const LAG_EVERY: Duration = Duration::from_millis(500);

pub(super) async fn run(
    job: Job,
    logs: Vec<FileLog>,
    until: Until,
) -> Result<Vec<PartitionSummary>, PipelineError> {
    let mut tasks = JoinSet::new();
    let partitions = logs.first().map_or(0, FileLog::partitions);
    let cancel = job.cancel.clone();
    for partition in 0..partitions {
        let worker = PartitionWorker::start(&job, (partition, partitions)).await?;
        let mut readers = Vec::with_capacity(logs.len());
        for log in &logs {
            let mut reader = log.reader();
            let (earliest, end) = (reader.earliest_offset(partition)?, reader.end_offset(partition)?);
            worker.check_in_log(log.topic(), earliest, end)?;
            readers.push(reader);
        }
        tasks.spawn(partition_loop(worker, readers, job.settings.batch, until, cancel.clone()));
    }
    let mut summaries = Vec::new();
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(|e| PipelineError::Task(e.to_string())).and_then(|r| r) {
            Ok(summary) => summaries.push(summary),
            Err(error) if error.is_fenced() => {
                tracing::warn!(event = "fenced", %error, "partition stepped down")
            }
            Err(error) => {
                tracing::error!(%error, "partition stopped; stopping the others");
                cancel.cancel();
                failure.get_or_insert(error);
            }
        }
    }
    failure.map_or(Ok(summaries), Err)
}

/// Reads up to `batch` records of `partition` from each source topic's reader (in the
/// job's order), each from the offset the worker needs.
fn read_sources(
    readers: &mut [FileReader],
    partition: u32,
    from: &[u64],
    batch: usize,
) -> Result<Vec<Record>, LogError> {
    let mut records = Vec::with_capacity(batch);
    for (reader, &from) in readers.iter_mut().zip(from) {
        reader.read(partition, from, batch, &mut records)?;
    }
    Ok(records)
}

async fn partition_loop(
    mut worker: PartitionWorker,
    readers: Vec<FileReader>,
    batch: usize,
    until: Until,
    cancel: CancellationToken,
) -> Result<PartitionSummary, PipelineError> {
    let partition = worker.summary().partition;
    let mut readers = Some(readers);
    let mut lag_measured: Option<Instant> = None;
    while !cancel.is_cancelled() {
        let from: Vec<u64> = worker.next_offsets().into_iter().map(|(_, offset)| offset).collect();
        let mut taken = readers.take().expect("the readers are put back after each read");
        // The lag needs each source's end (from its last segment's index): at most every LAG_EVERY.
        let measure = lag_measured.is_none_or(|at| at.elapsed() >= LAG_EVERY);
        let (taken, read) = tokio::task::spawn_blocking(move || {
            let read = read_sources(&mut taken, partition, &from, batch).and_then(|records| {
                let ends = measure
                    .then(|| taken.iter_mut().map(|r| r.end_offset(partition)).collect::<Result<Vec<_>, _>>())
                    .transpose()?;
                Ok((records, ends))
            });
            (taken, read)
        })
        .await
        .map_err(|e| PipelineError::Task(e.to_string()))?;
        readers = Some(taken);
        let (records, ends) = read?;
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
        if let Some(ends) = ends {
            // Records between what the worker has folded and each source's end when read.
            let behind = worker
                .next_offsets()
                .iter()
                .zip(&ends)
                .map(|((_, next), end)| end.saturating_sub(*next))
                .sum();
            telemetry::consumer_lag(partition, behind);
            lag_measured = Some(Instant::now());
        }
    }
    worker.flush_final().await?;
    tracing::info!(
        partition,
        position = worker.summary().next_offset,
        "partition drained; final checkpoint written"
    );
    Ok(worker.summary().clone())
}
