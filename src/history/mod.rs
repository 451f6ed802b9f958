//! Time travel: a document as it was at a position of its partition, rebuilt from the
//! newest state known to hold only records before that position (the state store's, else a
//! disaster-recovery manifest's, else none) plus the document's records up to it, read from
//! the log or rebuilt from the Parquet archive (`replay::Reader`, the replay's source).
//! The fold is idempotent and a stored state is exactly the fold of the document's records
//! up to its `offset`, so the result is the fold of every record before the position.

use crate::config::JobConfig;
use crate::fold::{Doc, Folded, PartitionFold, snapshot};
use crate::log::{Topic, partition_for};
use crate::replay::{Reader, ReplaySource};
use crate::sink::objects::Objects;
use crate::sink::snapshots;
use crate::store::Store;

/// A document at a position.
#[derive(Debug)]
pub struct DocAt {
    pub partition: u32,
    /// Records before this offset of the partition are in `doc` (the log's end when the
    /// position asked for was past it).
    pub offset: u64,
    pub doc: Doc,
    /// Where the fold started: "state store", "disaster-recovery snapshot" or "the log".
    pub from: &'static str,
    /// The document's records folded from the log, and those refused (dead letters).
    pub folded: u64,
    pub refused: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "job {job} folds several source topics (mirrored regions): positions are sums of their offsets, and time travel reads one topic"
    )]
    SeveralSources { job: String },
    #[error(
        "partition {partition} of {topic} starts at offset {earliest} in {read_from}, and no stored state of {doc_id:?} is older than offset {offset}: the records it needs are gone from there{}",
        if *.read_from == "the log" { " (try --source archive)" } else { "" }
    )]
    Gone {
        topic: String,
        partition: u32,
        doc_id: String,
        earliest: u64,
        offset: u64,
        read_from: &'static str,
    },
    #[error(transparent)]
    Source(#[from] crate::replay::ReplayError),
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error("stored state of {doc_id:?}: {reason}")]
    Corrupt { doc_id: String, reason: String },
}

/// The point in a partition's history to show a document at.
#[derive(Clone, Copy, Debug)]
pub enum At {
    /// Before this offset of the partition.
    Offset(u64),
    /// After every record stamped at or before this time (ms since the epoch).
    Time(i64),
}

/// Records read from the log per call.
const BATCH: usize = 4096;

/// `doc_id` as it was at `at` in its partition of the job's topic.
pub async fn doc_at(
    config: &JobConfig,
    doc_id: &str,
    at: At,
    source: ReplaySource,
) -> Result<DocAt, HistoryError> {
    if crate::pipeline::source_topics(config).len() > 1 {
        return Err(HistoryError::SeveralSources { job: config.job.clone() });
    }
    let topic = Topic::open(config, &config.log.topic, false)?;
    let partition = partition_for(doc_id.as_bytes(), topic.partitions());
    let mut reader = Reader::open(config, &topic, source)?;
    let (earliest, end) = reader.range(partition).await?;
    let offset = match at {
        At::Offset(offset) => offset.min(end),
        At::Time(time_ms) => reader.offset_after(partition, time_ms).await?,
    };
    // A stored state (bytes, version, offset of its last record) and where it came from.
    let mut start: Option<(Vec<u8>, u64, u64, &'static str)> = None;
    let store = Store::open(config.store.url.expose()).await?;
    let stored = store.load_doc(&config.job, doc_id).await;
    store.close().await;
    if let Some(stored) = stored?.filter(|s| s.offset < offset) {
        start = Some((stored.state, stored.version, stored.offset, "state store"));
    }
    if start.is_none() && config.snapshots.interval_ms > 0 {
        let objects = Objects::open(&config.objects)?;
        if let Some((doc, state)) = snapshots::doc_state_before(&objects, partition, doc_id, offset).await? {
            start = Some((state, doc.version, doc.offset, "disaster-recovery snapshot"));
        }
    }
    let (doc, next, from) = match start {
        Some((bytes, version, at, from)) => {
            let state = snapshot::decode(&bytes)
                .map_err(|e| HistoryError::Corrupt { doc_id: doc_id.into(), reason: e.to_string() })?;
            (Doc { state, version, offset: at, ..Doc::default() }, at + 1, from)
        }
        None => (Doc::default(), 0, "the log"),
    };
    if next < earliest && next < offset {
        let read_from = match source {
            ReplaySource::Log => "the log",
            ReplaySource::Archive => "the archive",
        };
        return Err(HistoryError::Gone {
            topic: config.log.topic.clone(),
            partition,
            doc_id: doc_id.into(),
            earliest,
            offset,
            read_from,
        });
    }
    let mut fold = PartitionFold::new();
    fold.insert(doc_id.to_string(), doc);
    let (mut folded, mut refused) = (0, 0);
    let mut batches = reader.read_ahead(partition, (next, offset), BATCH);
    while let Some(batch) = batches.next().await {
        let (records, _) = batch?;
        for record in records.iter().filter(|r| r.key == doc_id.as_bytes()) {
            match fold.fold(record.offset, &record.value) {
                Ok(Folded::Applied { .. }) => folded += 1,
                // Another document's op under this key (a misdirected producer): not ours.
                Ok(Folded::NeedDoc(_)) => {}
                Err(_) => refused += 1,
            }
        }
    }
    let doc = fold.get(doc_id).cloned().unwrap_or_default();
    Ok(DocAt { partition, offset, doc, from, folded, refused })
}
