//! Logs (`tracing`, filtered by `RUST_LOG`, default `info`) and metrics (`metrics`, served in
//! Prometheus format when `metrics.listen` is set). Every metric name is here.

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
/// Archive files written, and the rows in them.
pub const ARCHIVE_FILES: &str = "docfold_archive_files_total";
pub const ARCHIVE_ROWS: &str = "docfold_archive_rows_total";
/// Flushes that failed on an unavailable backend (label `sink`: which one).
pub const SINK_FAILURES: &str = "docfold_sink_failures_total";
/// 1 while the partition's flushes are failing and being retried (label `partition`).
pub const SINK_FAILING: &str = "docfold_sink_failing";

/// Logs to stderr; `RUST_LOG` filters (default: `default_level`, e.g. "info").
pub fn init_logs(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // A second call (tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Serves `/metrics` on `addr` (needs a Tokio runtime).
pub fn serve_metrics(addr: SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| format!("metrics on {addr}: {e}"))
}
