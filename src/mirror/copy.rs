//! The mirror's loop: reads every partition of the source region's topic from the mirror's
//! checkpoint, copies what is due into the same partition of the mirrored topic, and, after
//! every round or every `checkpoint_every`, flushes the target log and then moves the
//! checkpoints (in the target's state store). A crash between the flush and the checkpoint
//! repeats those records; none is ever skipped. A broker or the store out of reach (a cut
//! link) is waited out with backoff, from the checkpoints again. Memory is one batch per
//! partition.
//!
//! A mirror at the source pushing across an ocean sets `checkpoint_every` (a few hundred
//! ms): its copies leave as the Kafka producer sends them (one crossing) while it goes on
//! reading, instead of each round waiting a round trip for the flush and the checkpoint.

use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::due;
use crate::log::{LogError, LogReader, LogWriter, Record};
use crate::region::residency::{Residency, check};
use crate::store::{Store, StoreError, now_ms};
use crate::telemetry;

/// How long a caught-up mirror waits before looking for new records.
const POLL: Duration = Duration::from_millis(20);
/// How long a mirror that checkpoints on an interval lets records gather between rounds.
const LINGER: Duration = Duration::from_millis(5);
/// How often the lag metrics are brought up to date.
const LAG_EVERY: Duration = Duration::from_secs(1);
/// The first wait after a transient failure; it doubles up to `RETRY_MAX`.
pub(crate) const RETRY_FIRST: Duration = Duration::from_millis(200);
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(5);

/// One mirror: the source region's topic into `topic` of the target log.
#[derive(Clone, Debug)]
pub struct Mirror {
    /// The target job (its store keeps the checkpoints).
    pub job: String,
    pub source_region: String,
    /// The mirrored topic in the target log, `<source region>.<topic>`.
    pub topic: String,
    /// One-way delay of the link: a record is copied this long after its timestamp (the
    /// embedded demo's and the tests' stand-in for an ocean).
    pub delay_ms: i64,
    /// Records read per partition and round.
    pub batch: usize,
    /// Flush the target and move the checkpoints at most this often (zero: after every
    /// round that copied something).
    pub checkpoint_every: Duration,
    /// The target region and its residency rules: a resident document's records are not
    /// copied into a region outside its rule (the checkpoint still passes them).
    pub target_region: String,
    pub residency: Vec<Residency>,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("mirror: {0}")]
    Log(#[from] LogError),
    #[error("mirror: {0}")]
    Store(#[from] StoreError),
    #[error(
        "mirror: the source topic has {source_partitions} partitions and {topic} has {target}: every region needs the same count"
    )]
    Partitions { source_partitions: u32, topic: String, target: u32 },
    #[error(
        "mirror: partition {partition} of the source starts at {earliest}, past the mirror's checkpoint {checkpoint}: records were removed before they were mirrored; re-seed the target from the source's archive"
    )]
    Gap { partition: u32, earliest: u64, checkpoint: u64 },
}

/// What one run of the mirror copied, per partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub partition: u32,
    pub from: u64,
    pub next: u64,
    pub records: u64,
    /// Records not copied: resident documents that may not live in the target region.
    pub withheld: u64,
}

/// Copies until `cancel`, or, with `until_idle`, until every partition is caught up.
pub async fn run<R: LogReader + ?Sized, W: LogWriter + ?Sized>(
    mirror: &Mirror,
    reader: &mut R,
    (writer, target_partitions): (&mut W, u32),
    store: &Store,
    until_idle: bool,
    cancel: &CancellationToken,
) -> Result<Vec<Copied>, CopyError> {
    let partitions = reader.partitions();
    if partitions != target_partitions {
        return Err(CopyError::Partitions {
            source_partitions: partitions,
            topic: mirror.topic.clone(),
            target: target_partitions,
        });
    }
    let mut copied = Vec::new();
    for partition in 0..partitions {
        let checkpoint = store.mirror_checkpoint(&mirror.job, &mirror.topic, partition).await?.unwrap_or(0);
        let earliest = reader.earliest_offset(partition)?;
        if earliest > checkpoint {
            return Err(CopyError::Gap { partition, earliest, checkpoint });
        }
        copied.push(Copied { partition, from: checkpoint, next: checkpoint, records: 0, withheld: 0 });
    }
    let mut records: Vec<Record> = Vec::with_capacity(mirror.batch);
    let mut lag_reported: Option<Instant> = None;
    let mut backoff = RETRY_FIRST;
    let mut checkpointed: Vec<u64> = copied.iter().map(|c| c.next).collect();
    let mut last_checkpoint = Instant::now();
    while !cancel.is_cancelled() {
        let round = copy_round(
            mirror,
            (reader, &mut *writer),
            &mut copied,
            &mut records,
            &mut lag_reported,
            until_idle,
        )
        .await;
        let idle = matches!(round, Ok(Round::Waiting { pending: false }));
        let round = match round {
            Ok(round) if last_checkpoint.elapsed() >= mirror.checkpoint_every || (until_idle && idle) => {
                last_checkpoint = Instant::now();
                checkpoint(mirror, writer, store, &copied, &mut checkpointed).await.map(|()| round)
            }
            other => other,
        };
        let pending = match round {
            Ok(Round::Moved) => {
                backoff = RETRY_FIRST;
                if !mirror.checkpoint_every.is_zero() {
                    tokio::time::sleep(LINGER).await;
                }
                continue;
            }
            Ok(Round::Waiting { pending }) => {
                backoff = RETRY_FIRST;
                pending
            }
            Err(error) if error.is_retryable() => {
                tracing::warn!(
                    source = %mirror.source_region, %error, retry_in_ms = backoff.as_millis() as u64,
                    "mirror: a log or the store is unreachable; retrying from the checkpoints"
                );
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RETRY_MAX);
                // What was copied but not checkpointed is copied again: repeats, never gaps.
                if let Err(error) = rewind(mirror, store, &mut copied).await {
                    tracing::warn!(%error, "mirror: cannot read its checkpoints yet");
                }
                checkpointed = copied.iter().map(|c| c.next).collect();
                continue;
            }
            Err(error) => return Err(error),
        };
        if until_idle && !pending {
            break;
        }
        tokio::select! {
            () = cancel.cancelled() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
    // Stopped: what was copied since the last checkpoint is flushed and checkpointed (if
    // that fails, the next run copies it again).
    if let Err(error) = checkpoint(mirror, writer, store, &copied, &mut checkpointed).await {
        tracing::warn!(%error, "mirror: the last copies are not checkpointed; the next run repeats them");
    }
    Ok(copied)
}

/// Flushes the target log, then moves the checkpoint of every partition copied past its
/// stored one.
async fn checkpoint<W: LogWriter + ?Sized>(
    mirror: &Mirror,
    writer: &mut W,
    store: &Store,
    copied: &[Copied],
    checkpointed: &mut [u64],
) -> Result<(), CopyError> {
    let moved: Vec<(u32, u64)> = (copied.iter().zip(checkpointed.iter()))
        .filter(|(c, stored)| c.next != **stored)
        .map(|(c, _)| (c.partition, c.next))
        .collect();
    if moved.is_empty() {
        return Ok(());
    }
    tokio::task::block_in_place(|| writer.flush())?;
    for (partition, next) in moved {
        store.set_mirror_checkpoint(&mirror.job, &mirror.topic, partition, next).await?;
        checkpointed[partition as usize] = next;
    }
    Ok(())
}

/// What one round over the partitions did.
enum Round {
    /// Copied something: go on at once.
    Moved,
    /// Nothing due; `pending`: records were read that are not due yet.
    Waiting { pending: bool },
}

/// Reads each partition once and copies what is due.
async fn copy_round<R: LogReader + ?Sized, W: LogWriter + ?Sized>(
    mirror: &Mirror,
    (reader, writer): (&mut R, &mut W),
    copied: &mut [Copied],
    records: &mut Vec<Record>,
    lag_reported: &mut Option<Instant>,
    until_idle: bool,
) -> Result<Round, CopyError> {
    let now = now_ms();
    let report_lag = lag_reported.is_none_or(|at| at.elapsed() >= LAG_EVERY);
    let (mut moved, mut pending) = (false, false);
    for progress in copied.iter_mut() {
        records.clear();
        let partition = progress.partition;
        // Running on, take what has arrived and go round (a partition with nothing yet
        // must not hold up the others); to the end (`--exit-when-idle`), read to it.
        tokio::task::block_in_place(|| match until_idle {
            true => reader.read(partition, progress.next, mirror.batch, records),
            false => reader.read_ready(partition, progress.next, mirror.batch, records),
        })?;
        let ready = due(records, now, mirror.delay_ms);
        let mut withheld = 0;
        for record in &records[..ready] {
            if check(&mirror.residency, &record.key, &mirror.target_region).is_ok() {
                writer.copy(partition, record)?;
            } else {
                withheld += 1;
            }
        }
        pending |= !records.is_empty();
        // The oldest record not copied: the first one not due, or past a full batch (at
        // least as old as its last record), else none.
        let full = records.len() == mirror.batch;
        let oldest = records.get(ready).or(records.last().filter(|_| full));
        let behind = oldest.map_or(0.0, |r| (now - r.timestamp_ms).max(0) as f64 / 1000.0);
        if let Some(last) = records[..ready].last() {
            progress.next = last.offset + 1;
            progress.records += (ready - withheld) as u64;
            progress.withheld += withheld as u64;
            moved = true;
        }
        // The end offset is a broker round trip on Kafka: at most once per LAG_EVERY.
        if report_lag {
            let end = reader.end_offset(partition)?;
            let records_behind = end.saturating_sub(progress.next);
            telemetry::mirror_lag(&mirror.source_region, partition, records_behind, behind);
        }
    }
    if report_lag {
        *lag_reported = Some(Instant::now());
    }
    Ok(if moved { Round::Moved } else { Round::Waiting { pending } })
}

/// Puts every partition back at its stored checkpoint (after a failed round).
async fn rewind(mirror: &Mirror, store: &Store, copied: &mut [Copied]) -> Result<(), CopyError> {
    for progress in copied.iter_mut() {
        let stored = store.mirror_checkpoint(&mirror.job, &mirror.topic, progress.partition).await?;
        let checkpoint = stored.unwrap_or(progress.from);
        progress.records = progress.records.saturating_sub(progress.next.saturating_sub(checkpoint));
        progress.next = checkpoint;
    }
    Ok(())
}

impl CopyError {
    /// A broker or the store is unreachable for now (a cut link, a restart): wait and go on.
    pub fn is_retryable(&self) -> bool {
        match self {
            CopyError::Log(LogError::Kafka(_)) => true,
            CopyError::Store(error) => error.is_retryable(),
            _ => false,
        }
    }
}
