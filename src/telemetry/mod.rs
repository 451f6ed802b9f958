//! Logs (`tracing`, filtered by `RUST_LOG`, default `info`) and metrics (`metrics`, served in
//! Prometheus format when `metrics.listen` is set). Every metric name is here, and one
//! typed function per metric: the pipeline calls these, never the `metrics` macros.

mod http;

use metrics::{counter, gauge, histogram};
use std::net::SocketAddr;

/// Ops folded into document states (label `partition`).
pub const OPS_FOLDED: &str = "docfold_ops_folded_total";
/// Records skipped as undecodable or refused (labels `partition`, `reason`).
pub const BAD_MESSAGES: &str = "docfold_bad_messages_total";
/// Seconds to fold one batch of records (label `partition`).
pub const FOLD_SECONDS: &str = "docfold_fold_batch_seconds";
/// Records between the partition's end and the next record to fold (label `partition`).
pub const CONSUMER_LAG: &str = "docfold_consumer_lag";
/// Seconds since the partition's checkpoint was last written (label `partition`).
pub const CHECKPOINT_AGE: &str = "docfold_checkpoint_age_seconds";
/// Seconds to write one checkpoint with its snapshots (label `partition`).
pub const FLUSH_SECONDS: &str = "docfold_flush_seconds";
/// Documents held in memory (label `partition`).
pub const DOCS_IN_MEMORY: &str = "docfold_docs_in_memory";
/// Projection writes (label `outcome`: `written`, or `stale` when the stored version was
/// already as new).
pub const PROJECTION_WRITES: &str = "docfold_projection_writes_total";
/// Seconds from the oldest op of a flush being folded to its invalidations being sent.
pub const INVALIDATION_DELAY: &str = "docfold_invalidation_delay_seconds";
/// Parquet archive files written.
pub const ARCHIVE_FILES: &str = "docfold_archive_files_total";
/// Rows in the archive files written (one per insert run or deleted identifier).
pub const ARCHIVE_ROWS: &str = "docfold_archive_rows_total";
/// Seconds one sink took to write a flush's share (label `sink`).
pub const SINK_SECONDS: &str = "docfold_sink_seconds";
/// Ops that reached the projections and invalidations inside a write of their document
/// with others: the ops of a flush minus the documents written (a write per document per
/// flush, however many ops changed it).
pub const WRITES_COALESCED: &str = "docfold_writes_coalesced_total";
/// Bytes of the Parquet archive files written (compressed).
pub const ARCHIVE_BYTES: &str = "docfold_archive_bytes_total";
/// Invalidations sent (each on the topic and to the cache, as configured).
pub const INVALIDATIONS: &str = "docfold_invalidations_total";
/// Flushes that failed on an unavailable backend (label `sink`: which one); each is
/// retried with backoff.
pub const SINK_FAILURES: &str = "docfold_sink_failures_total";
/// 1 while the partition's flushes are failing and being retried (label `partition`).
pub const SINK_FAILING: &str = "docfold_sink_failing";

/// 1 while this region holds the leadership lease, else 0 (label `region`).
pub const REGION_LEADER: &str = "docfold_region_leader";
/// The lease epoch this region last led at (label `region`).
pub const REGION_EPOCH: &str = "docfold_region_epoch";
/// Times this region took the lease (label `region`): promotions and failovers.
pub const REGION_PROMOTIONS: &str = "docfold_region_promotions_total";
/// Seconds until the lease this region holds runs out unless renewed (label `region`; 0
/// when it holds none). Renewed every third of the ttl: a value under a third says
/// renewals are failing.
pub const REGION_LEASE_REMAINING: &str = "docfold_region_lease_remaining_seconds";

/// Records of a source region's partition not yet mirrored here (labels `source`,
/// `partition`).
pub const MIRROR_LAG_RECORDS: &str = "docfold_mirror_lag_records";
/// Age of the oldest record not yet mirrored, in seconds (labels `source`, `partition`).
pub const MIRROR_LAG_SECONDS: &str = "docfold_mirror_lag_seconds";

pub fn ops_folded(partition: &str, ops: u64) {
    counter!(OPS_FOLDED, "partition" => partition.to_owned()).increment(ops);
}

pub fn fold_seconds(partition: &str, seconds: f64) {
    histogram!(FOLD_SECONDS, "partition" => partition.to_owned()).record(seconds);
}

pub fn bad_message(partition: &str, reason: &'static str) {
    counter!(BAD_MESSAGES, "partition" => partition.to_owned(), "reason" => reason).increment(1);
}

pub fn consumer_lag(partition: u32, records: u64) {
    gauge!(CONSUMER_LAG, "partition" => partition.to_string()).set(records as f64);
}

pub fn checkpoint_age(partition: &str, seconds: f64) {
    gauge!(CHECKPOINT_AGE, "partition" => partition.to_owned()).set(seconds);
}

pub fn flush_seconds(partition: &str, seconds: f64) {
    histogram!(FLUSH_SECONDS, "partition" => partition.to_owned()).record(seconds);
}

pub fn docs_in_memory(partition: &str, docs: usize) {
    gauge!(DOCS_IN_MEMORY, "partition" => partition.to_owned()).set(docs as f64);
}

pub fn projection_writes(written: u64, stale: u64) {
    counter!(PROJECTION_WRITES, "outcome" => "written").increment(written);
    counter!(PROJECTION_WRITES, "outcome" => "stale").increment(stale);
}

pub fn invalidation_delay(seconds: f64) {
    histogram!(INVALIDATION_DELAY).record(seconds);
}

pub fn archive_file(rows: usize, bytes: usize) {
    counter!(ARCHIVE_FILES).increment(1);
    counter!(ARCHIVE_ROWS).increment(rows as u64);
    counter!(ARCHIVE_BYTES).increment(bytes as u64);
}

pub fn sink_seconds(sink: &'static str, seconds: f64) {
    histogram!(SINK_SECONDS, "sink" => sink).record(seconds);
}

pub fn writes_coalesced(ops: u64) {
    counter!(WRITES_COALESCED).increment(ops);
}

pub fn invalidations(count: u64) {
    counter!(INVALIDATIONS).increment(count);
}

pub fn region_lease_remaining(region: &str, seconds: f64) {
    gauge!(REGION_LEASE_REMAINING, "region" => region.to_owned()).set(seconds.max(0.0));
}

pub fn sink_failure(sink: &'static str) {
    counter!(SINK_FAILURES, "sink" => sink).increment(1);
}

pub fn sink_failing(partition: &str, failing: bool) {
    http::note_failing(partition, failing);
    gauge!(SINK_FAILING, "partition" => partition.to_owned()).set(if failing { 1.0 } else { 0.0 });
}

pub fn mirror_lag(source: &str, partition: u32, records: u64, seconds: f64) {
    let labels = [("source", source.to_owned()), ("partition", partition.to_string())];
    gauge!(MIRROR_LAG_RECORDS, &labels).set(records as f64);
    gauge!(MIRROR_LAG_SECONDS, &labels).set(seconds);
}

/// This region took the lease at `epoch` (`Some`), or stepped down (`None`).
pub fn region_role(region: &str, epoch: Option<u64>) {
    gauge!(REGION_LEADER, "region" => region.to_owned()).set(if epoch.is_some() { 1.0 } else { 0.0 });
    if let Some(epoch) = epoch {
        gauge!(REGION_EPOCH, "region" => region.to_owned()).set(epoch as f64);
        counter!(REGION_PROMOTIONS, "region" => region.to_owned()).increment(1);
    }
}

/// Logs to stderr, as text or as one JSON object per line (`json`: for a log pipeline; the
/// operators' events carry an `event` field: `checkpoint`, `late_ops`, `dead_letter`,
/// `invalidations`, `fenced`, `lead`, `step_down`). `RUST_LOG` filters (default:
/// `default_level`, e.g. "info").
pub fn init_logs(default_level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second call (tests) keeps the first subscriber.
    let _ = if json { logs.json().flatten_event(true).try_init() } else { logs.try_init() };
}

/// The buckets of every histogram (all of them measure seconds: 1 ms to 30 s).
const SECONDS_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Serves `/metrics` and `/health` on `addr` (`http.rs`; needs a Tokio runtime).
/// Histograms are served as Prometheus histograms (buckets, which aggregate across
/// instances), not summaries.
pub async fn serve_metrics(addr: SocketAddr) -> Result<(), String> {
    let listener = http::bind(addr).await?;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&SECONDS_BUCKETS)
        .and_then(|builder| builder.install_recorder())
        .map_err(|e| format!("metrics on {addr}: {e}"))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        // Histograms drain their samples into buckets on upkeep (the exporter's own
        // listener did this on its schedule).
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(http::serve(listener, handle));
    Ok(())
}

/// A memory figure of process `pid` (this process when `None`) from `/proc/<pid>/status`, in
/// KiB: `VmRSS` (resident now) or `VmHWM` (its peak). 0 where /proc has none (the process is
/// gone, or not Linux).
pub fn memory_kb(pid: Option<u32>, field: &str) -> u64 {
    let path = pid.map_or_else(|| "/proc/self/status".to_string(), |pid| format!("/proc/{pid}/status"));
    let status = std::fs::read_to_string(path).unwrap_or_default();
    let line = status.lines().find(|l| l.strip_prefix(field).is_some_and(|rest| rest.starts_with(':')));
    line.and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse().ok()).unwrap_or(0)
}
