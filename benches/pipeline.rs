//! End-to-end benchmark of the embedded pipeline (file log → fold → SQLite checkpoints):
//! real traces spread over 1,000 documents, then a catch-up after a restart with the
//! checkpoint 100,000 ops behind; then a wide run: 300,000 ops over 100,000 documents (the
//! first ops of two traces, many users starting documents at once), with the process's
//! peak resident memory. With `DOCFOLD_BENCH_KAFKA=HOST:PORT` (and PostgreSQL at
//! `DOCFOLD_BENCH_POSTGRES`), also the Kafka path next to a raw rdkafka consume of the same
//! topic. A bench binary: `cargo bench --bench pipeline [-- PHASE]`, where PHASE (`deep`,
//! `wide` or `kafka`) runs only that phase.

use std::path::Path;
use std::time::Instant;

use docfold::config::JobConfig;
use docfold::log::LogWriter;
use docfold::log::file::{FileLog, Fsync};
use docfold::lseq::{Op, doc_seed};
use docfold::pipeline::{self, Until};
use docfold::trace::{Trace, publish, replay};
use tokio_util::sync::CancellationToken;

const TRACES: [&str; 4] = ["automerge-paper", "rustcode", "sveltecomponent", "friendsforever"];
const DOCS_PER_TRACE: usize = 250;
/// Ops of each trace's history given to each document in the first phase.
const HEAD: usize = 2_000;
/// Ops per document in the catch-up phase: 1,000 documents × 100 = 100,000 ops.
const TAIL: usize = 100;
/// The wide phase's traces: the two typed into an empty document (the others begin by
/// pasting a file, 42,493 characters in rustcode's case), 50,000 documents each, 3 ops each.
const WIDE_TRACES: [&str; 2] = ["automerge-paper", "friendsforever"];
const WIDE_DOCS_PER_TRACE: usize = 50_000;
const WIDE_OPS: usize = 3;

fn main() {
    // `cargo bench` passes `--bench`; a further argument names the one phase to run.
    let only = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let runs = |phase: &str| only.as_deref().is_none_or(|only| only == phase);
    let histories: Vec<(String, Vec<Op>)> = TRACES
        .iter()
        .map(|name| {
            let path = format!("{}/tests/data/traces/{name}.json.gz", env!("CARGO_MANIFEST_DIR"));
            let trace = Trace::read(Path::new(&path)).expect("trace");
            (name.to_string(), replay(&trace, doc_seed(name)).expect("replay").ops)
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    if runs("deep") {
        deep(&rt, &histories);
    }
    if runs("wide") {
        wide(&rt, &histories);
    }
    if runs("kafka")
        && let Ok(brokers) = std::env::var("DOCFOLD_BENCH_KAFKA")
    {
        kafka(&rt, &brokers, &histories);
    }
}

/// A fresh embedded job in a folder of its own, with its log's topic created.
fn embedded(phase: &str) -> (std::path::PathBuf, JobConfig, FileLog) {
    let dir = std::env::temp_dir().join(format!("docfold-bench-{phase}-{}", std::process::id()));
    let config = JobConfig::in_dir(&dir);
    let log = FileLog::create(&dir.join("log"), &config.log.topic, config.log.partitions).expect("topic");
    (dir, config, log)
}

/// 1,000 documents with long histories, then a catch-up after a restart.
fn deep(rt: &tokio::runtime::Runtime, histories: &[(String, Vec<Op>)]) {
    let (dir, config, log) = embedded("deep");
    let produced = produce(&log, histories, 0..HEAD, DOCS_PER_TRACE);
    let (ops, seconds) = fold(rt, &config);
    assert_eq!(ops, produced, "every op folded");
    println!(
        "embedded end to end: {ops} ops over {} documents in {seconds:.2} s = {:.0} ops/s",
        TRACES.len() * DOCS_PER_TRACE,
        ops as f64 / seconds
    );

    let produced = produce(&log, histories, HEAD..HEAD + TAIL, DOCS_PER_TRACE);
    let (ops, seconds) = fold(rt, &config);
    assert_eq!(ops, produced, "every new op folded");
    println!(
        "catch-up after restart, checkpoint {ops} ops behind: {seconds:.2} s (reloading every document from its snapshot)"
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// 100,000 documents with a few ops each: many users starting documents at once.
fn wide(rt: &tokio::runtime::Runtime, histories: &[(String, Vec<Op>)]) {
    let (dir, config, log) = embedded("wide");
    let typed: Vec<(String, Vec<Op>)> =
        histories.iter().filter(|(name, _)| WIDE_TRACES.contains(&name.as_str())).cloned().collect();
    let produced = produce(&log, &typed, 0..WIDE_OPS, WIDE_DOCS_PER_TRACE);
    let (ops, seconds) = fold(rt, &config);
    assert_eq!(ops, produced, "every op folded");
    println!(
        "wide: {ops} ops over {} documents in {seconds:.2} s = {:.0} ops/s; peak RSS {} MB",
        WIDE_TRACES.len() * WIDE_DOCS_PER_TRACE,
        ops as f64 / seconds,
        docfold::telemetry::memory_kb(None, "VmHWM") / 1024
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// Both sides join a fresh consumer group and stop after `IDLE_MS` without a message, so
/// both timings include the same join and idle wait.
fn kafka(rt: &tokio::runtime::Runtime, brokers: &str, histories: &[(String, Vec<Op>)]) {
    use docfold::log::kafka::KafkaLog;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    const IDLE_MS: u64 = 1000;
    let topic = format!("bench-{}", std::process::id());
    let (invalidations, dead_letters) = (format!("{topic}-inv"), format!("{topic}-dlq"));
    for (name, partitions) in [(&topic, 8), (&invalidations, 8), (&dead_letters, 1)] {
        rt.block_on(KafkaLog::create_topic(brokers, name, (partitions, 1), &[], &[])).expect("topic");
    }
    let log = KafkaLog::connect(brokers, &topic, &[]).expect("connect");
    let mut writer = log.writer().expect("producer");
    let mut produced = 0;
    for (name, ops) in histories {
        let docs: Vec<String> = (0..DOCS_PER_TRACE).map(|i| format!("{name}-{i}")).collect();
        produced += publish(&mut writer, &ops[..250], &docs, "bench", |_| {}).expect("publish");
    }
    writer.flush().expect("flush");

    let consumer: BaseConsumer = log
        .config()
        .set("group.id", format!("{topic}-raw"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let started = Instant::now();
    let (mut count, mut last) = (0u64, Instant::now());
    while last.elapsed().as_millis() < u128::from(IDLE_MS) || count == 0 {
        if let Some(Ok(_)) = consumer.poll(std::time::Duration::from_millis(50)) {
            count += 1;
            last = Instant::now();
        }
    }
    let raw = started.elapsed().as_secs_f64();
    assert_eq!(count, produced, "raw consumer read everything");

    let postgres =
        std::env::var("DOCFOLD_BENCH_POSTGRES").expect("DOCFOLD_BENCH_POSTGRES with DOCFOLD_BENCH_KAFKA");
    // The sinks beside the log stay embedded, in a folder of the bench's own.
    let dir = std::env::temp_dir().join(format!("docfold-bench-{topic}"));
    let mut config = JobConfig { job: topic.clone(), ..JobConfig::in_dir(&dir) };
    config.log.url = format!("kafka://{brokers}").into();
    config.log.topic = topic.clone();
    config.log.group = format!("{topic}-docfold");
    config.log.kafka.insert("session.timeout.ms", "6000");
    config.store.url = postgres.into();
    config.invalidations.topic = invalidations;
    config.dead_letters.topic = dead_letters;
    let started = Instant::now();
    let summaries = rt
        .block_on(pipeline::run(&config, Until::Idle { idle_ms: IDLE_MS }, CancellationToken::new()))
        .expect("run");
    let piped = started.elapsed().as_secs_f64();
    let folded: u64 = summaries.iter().map(|s| s.folded).sum();
    assert_eq!(folded, produced, "every op folded");
    println!(
        "kafka: {produced} records; raw rdkafka group consume {raw:.2} s ({:.0}/s); docfold run → PostgreSQL {piped:.2} s ({:.0}/s) = {:.0}% of raw (both include a group join and {IDLE_MS} ms idle)",
        produced as f64 / raw,
        produced as f64 / piped,
        100.0 * raw / piped
    );
}

/// Publishes each trace's ops in `range` to `docs_per_trace` documents of that trace.
fn produce(
    log: &FileLog,
    histories: &[(String, Vec<Op>)],
    range: std::ops::Range<usize>,
    docs_per_trace: usize,
) -> u64 {
    let mut writer = log.writer(Fsync::Never, 64 << 20);
    let mut count = 0;
    for (name, ops) in histories {
        let docs: Vec<String> = (0..docs_per_trace).map(|i| format!("{name}-{i}")).collect();
        count += publish(&mut writer, &ops[range.clone()], &docs, "bench", |_| {}).expect("publish");
    }
    writer.flush().expect("flush");
    count
}

/// Runs the job until idle; returns ops folded and seconds.
fn fold(rt: &tokio::runtime::Runtime, config: &JobConfig) -> (u64, f64) {
    let started = Instant::now();
    let summaries = rt
        .block_on(pipeline::run(config, Until::Idle { idle_ms: 0 }, CancellationToken::new()))
        .expect("run");
    (summaries.iter().map(|s| s.folded).sum(), started.elapsed().as_secs_f64())
}
