//! Sink benchmarks. A bench binary: `cargo bench --bench sinks`.
//! 1. The archive: every op of automerge-paper (and of all four traces) encoded as Parquet
//!    and written to a local folder — rows per second and bytes per op.
//! 2. Hot documents under sustained typing: ops produced at a steady rate into the
//!    embedded log while `docfold run` folds them — projection writes per 1,000 ops
//!    (coalescing), and, with `DOCFOLD_BENCH_REDIS=redis://…`, the time from an op being
//!    appended to the log to its invalidation arriving on the Redis channel (p50/p99).
//!    Projections go to DynamoDB with `DOCFOLD_BENCH_DYNAMODB=http://…` (DynamoDB Local),
//!    else to SQLite. `DOCFOLD_BENCH_FLUSH_MS` sets the flush window (default 1,000 ms).

use futures::StreamExt;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use docfold::config::{ArchiveConfig, JobConfig, ObjectsConfig};
use docfold::log::LogWriter;
use docfold::log::file::{FileLog, Fsync};
use docfold::lseq::{Op, doc_seed};
use docfold::op::{Envelope, encode};
use docfold::pipeline::{self, Until};
use docfold::sink::archive::PartitionArchive;
use docfold::sink::objects::Objects;
use docfold::sink::projection::ProjectionStore;
use docfold::store::LOCAL_TOPIC;
use docfold::trace::{Trace, replay};
use tokio_util::sync::CancellationToken;

const TRACES: [&str; 4] = ["automerge-paper", "rustcode", "sveltecomponent", "friendsforever"];

fn ops_of(name: &str) -> Vec<Op> {
    let path = format!("{}/tests/data/traces/{name}.json.gz", env!("CARGO_MANIFEST_DIR"));
    let trace = Trace::read(Path::new(&path)).expect("trace");
    replay(&trace, doc_seed(name)).expect("replay").ops
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let dir = std::env::temp_dir().join(format!("docfold-bench-sinks-{}", std::process::id()));
    rt.block_on(archive(&dir));
    rt.block_on(hot_documents(&dir));
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// Pushes `ops` (as envelopes of one document) into a fresh archive and writes one file
/// per `max_file_bytes`; returns (rows, seconds, bytes written).
async fn archive_ops(dir: &Path, name: &str, ops: &[Op]) -> (u64, f64, u64) {
    let folder = dir.join(format!("archive-{name}"));
    let objects = Objects::open(&ObjectsConfig {
        url: format!("file://{}", folder.display()).into(),
        ..Default::default()
    })
    .expect("objects");
    let envelopes: Vec<Envelope> = ops
        .iter()
        .enumerate()
        .map(|(i, op)| Envelope::new(name, "eu-west-1", 1_700_000_000_000 + i as i64, op.clone()))
        .collect();
    let mut archive = PartitionArchive::new((LOCAL_TOPIC, 0), objects, ArchiveConfig::default(), 0);
    let (mut rows, mut bytes) = (0u64, 0u64);
    let started = Instant::now();
    for (offset, envelope) in envelopes.iter().enumerate() {
        let timestamp_type = docfold::log::TimestampType::LogAppend;
        let record = docfold::log::Record {
            topic: "doc-ops".into(),
            offset: offset as u64,
            timestamp_ms: 1_700_000_000_000,
            timestamp_type,
            key: vec![],
            value: vec![],
            headers: vec![],
        };
        archive.push(&record, Some(envelope));
        if archive.is_due()
            && let Some(file) = archive.write().await.expect("write")
        {
            (rows, bytes) = (rows + file.rows as u64, bytes + file.bytes as u64);
        }
    }
    if let Some(file) = archive.write().await.expect("write") {
        (rows, bytes) = (rows + file.rows as u64, bytes + file.bytes as u64);
    }
    (rows, started.elapsed().as_secs_f64(), bytes)
}

async fn archive(dir: &Path) {
    let (mut all_rows, mut all_seconds) = (0, 0.0);
    for name in TRACES {
        let ops = ops_of(name);
        let (rows, seconds, bytes) = archive_ops(dir, name, &ops).await;
        println!(
            "archive {name}: {} ops, {rows} rows in {seconds:.3} s = {:.2} M rows/s; {bytes} bytes = {:.2} bytes/op",
            ops.len(),
            rows as f64 / seconds / 1e6,
            bytes as f64 / ops.len() as f64
        );
        (all_rows, all_seconds) = (all_rows + rows, all_seconds + seconds);
    }
    println!("archive, all traces: {:.2} M rows/s", all_rows as f64 / all_seconds / 1e6);
}

/// Hot documents: `DOCS` documents typed into at `RATE` ops/s each for `SECONDS`.
const DOCS: usize = 20;
const RATE: u64 = 20;
const SECONDS: u64 = 30;

async fn hot_documents(dir: &Path) {
    let dir = dir.join("hot");
    let mut config = JobConfig::in_dir(&dir);
    if let Some(ms) = std::env::var("DOCFOLD_BENCH_FLUSH_MS").ok().and_then(|v| v.parse().ok()) {
        config.pipeline.flush_interval_ms = ms;
    }
    config.archive.enabled = false;
    config.snapshots.interval_ms = 0;
    let unique = std::process::id();
    if let Ok(endpoint) = std::env::var("DOCFOLD_BENCH_DYNAMODB") {
        config.projection.url = format!("dynamodb://bench-hot-{unique}").into();
        config.projection.endpoint = Some(endpoint);
    }
    let redis = std::env::var("DOCFOLD_BENCH_REDIS").ok();
    if let Some(url) = &redis {
        config.invalidations.redis = Some(url.as_str().into());
        config.invalidations.channel = format!("bench:{unique}");
        config.invalidations.key_prefix = format!("bench:{unique}:");
    }
    let sinks = docfold::sink::Sinks::open(&config).await.expect("sinks");
    sinks.projections.as_ref().expect("projections").backend().create().await.expect("table");
    let log = FileLog::create(&dir.join("log"), &config.log.topic, config.log.partitions).expect("topic");

    // Invalidations as a cache would see them: (doc, version) → when it arrived.
    let arrivals: Arc<Mutex<HashMap<(String, u64), Instant>>> = Arc::default();
    if let Some(url) = &redis {
        let mut pubsub =
            redis::Client::open(url.as_str()).expect("redis").get_async_pubsub().await.expect("pubsub");
        pubsub.subscribe(&config.invalidations.channel).await.expect("subscribe");
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let item: docfold::sink::invalidate::Invalidation =
                    serde_json::from_slice(message.get_payload_bytes()).expect("json");
                arrivals.lock().expect("lock").insert((item.doc_id, item.version), Instant::now());
            }
        });
    }

    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let (config, cancel) = (config.clone(), cancel.clone());
        async move { pipeline::run(&config, Until::Cancelled, cancel).await }
    });
    // Each document types the start of automerge-paper, RATE ops per second.
    let ops = ops_of("automerge-paper");
    let sent = tokio::task::spawn_blocking(move || {
        let mut writer = log.writer(Fsync::Never, 64 << 20);
        let mut sent: Vec<(String, u64, Instant)> = Vec::new();
        let tick = Duration::from_micros(1_000_000 / RATE);
        let started = Instant::now();
        for (i, op) in ops.iter().take((RATE * SECONDS) as usize).enumerate() {
            for d in 0..DOCS {
                let doc = format!("hot-{d}");
                let envelope = Envelope::new(&doc, "eu-west-1", 0, op.clone());
                writer.append(doc.as_bytes(), &encode(&envelope)).expect("append");
                sent.push((doc, i as u64 + 1, Instant::now()));
            }
            writer.flush().expect("flush");
            if let Some(wait) = (tick * (i as u32 + 1)).checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        sent
    })
    .await
    .expect("producer");
    tokio::time::sleep(Duration::from_secs(2)).await;
    cancel.cancel();
    let summaries = run.await.expect("joined").expect("pipeline");
    let writes: u64 = summaries.iter().filter_map(|s| s.written.get("projections")).sum();
    let folded: u64 = summaries.iter().map(|s| s.folded).sum();
    println!(
        "hot documents ({DOCS} docs × {RATE} ops/s for {SECONDS} s, flush every {} ms, projections {}): {folded} ops, {writes} projection writes = {:.1} per 1,000 ops",
        config.pipeline.flush_interval_ms,
        config.projection.url,
        writes as f64 * 1000.0 / folded as f64
    );
    if redis.is_some() {
        let arrivals = arrivals.lock().expect("lock");
        // An op is visible once an invalidation at its version or later has arrived.
        let mut by_doc: HashMap<&str, Vec<(u64, Instant)>> = HashMap::new();
        for ((doc, version), at) in arrivals.iter() {
            by_doc.entry(doc.as_str()).or_default().push((*version, *at));
        }
        by_doc.values_mut().for_each(|v| v.sort());
        let mut delays: Vec<Duration> = sent
            .iter()
            .filter_map(|(doc, version, appended)| {
                let seen = by_doc.get(doc.as_str())?.iter().find(|(v, _)| v >= version)?;
                Some(seen.1.saturating_duration_since(*appended))
            })
            .collect();
        delays.sort();
        let pct = |p: f64| delays[((delays.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1000.0;
        println!(
            "append → Redis invalidation ({} of {} ops seen): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            delays.len(),
            sent.len(),
            pct(0.5),
            pct(0.99),
            pct(1.0)
        );
    }
}
