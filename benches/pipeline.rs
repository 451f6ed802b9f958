//! End-to-end benchmark of the embedded pipeline (file log → fold → SQLite checkpoints):
//! real traces spread over 1,000 documents, then a catch-up after a restart with the
//! checkpoint 100,000 ops behind. A bench binary: `cargo bench --bench pipeline`.

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

fn main() {
    let dir = std::env::temp_dir().join(format!("docfold-bench-{}", std::process::id()));
    let config = JobConfig::in_dir(&dir);
    let log = FileLog::create(&dir.join("log"), &config.log.topic, config.log.partitions).expect("topic");
    let histories: Vec<(String, Vec<Op>)> = TRACES
        .iter()
        .map(|name| {
            let path = format!("{}/tests/data/traces/{name}.json.gz", env!("CARGO_MANIFEST_DIR"));
            let trace = Trace::read(Path::new(&path)).expect("trace");
            (name.to_string(), replay(&trace, doc_seed(name)).expect("replay").ops)
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");

    let produced = produce(&log, &histories, 0..HEAD);
    let (ops, seconds) = fold(&rt, &config);
    assert_eq!(ops, produced, "every op folded");
    println!(
        "embedded end to end: {ops} ops over {} documents in {seconds:.2} s = {:.0} ops/s",
        TRACES.len() * DOCS_PER_TRACE,
        ops as f64 / seconds
    );

    let produced = produce(&log, &histories, HEAD..HEAD + TAIL);
    let (ops, seconds) = fold(&rt, &config);
    assert_eq!(ops, produced, "every new op folded");
    println!(
        "catch-up after restart, checkpoint {ops} ops behind: {seconds:.2} s (reloading every document from its snapshot)"
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
}

fn produce(log: &FileLog, histories: &[(String, Vec<Op>)], range: std::ops::Range<usize>) -> u64 {
    let mut writer = log.writer(Fsync::Never, 64 << 20);
    let mut count = 0;
    for (name, ops) in histories {
        let docs: Vec<String> = (0..DOCS_PER_TRACE).map(|i| format!("{name}-{i}")).collect();
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
