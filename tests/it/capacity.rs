//! The fold at many documents: memory stays within its bound however large the documents
//! are, and every op still reaches the store.

use docfold::config::JobConfig;
use docfold::log::file::{FileLog, Fsync};
use docfold::lseq::doc_seed;
use docfold::pipeline::{self, Until};
use docfold::store::Store;
use docfold::trace::{Trace, publish, replay};
use std::path::Path;
use tokio_util::sync::CancellationToken;

/// The process's peak resident memory (`VmHWM`) in MiB. nextest runs each test in a process
/// of its own, so this is this test's peak.
fn peak_rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).expect("kB") / 1024
}

/// rustcode's first op pastes its 42,493-character file: 200 documents that each start
/// with it hold about 8.5 million characters (several hundred MB as fold states), far
/// fewer documents than `max_docs_in_memory`. The byte bound must keep them out of memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_documents_stay_within_the_memory_bound() {
    const DOCS: usize = 200;
    let dir = crate::services::temp_dir("capacity");
    let mut config = JobConfig::in_dir(&dir);
    config.pipeline.max_state_mb = 32;
    let log = FileLog::create(&dir.join("log"), &config.log.topic, config.log.partitions).expect("topic");
    let trace = Trace::read(Path::new("tests/data/traces/rustcode.json.gz")).expect("trace");
    let ops = replay(&trace, doc_seed("rustcode")).expect("replays").ops;
    let docs: Vec<String> = (0..DOCS).map(|i| format!("big-{i}")).collect();
    let mut writer = log.writer(Fsync::Never, 64 << 20);
    let produced = publish(&mut writer, &ops[..3], &docs, "test", |_| {}).expect("publish");
    docfold::log::LogWriter::flush(&mut writer).expect("flush");
    let before = peak_rss_mb();

    let summaries =
        pipeline::run(&config, Until::Idle { idle_ms: 0 }, CancellationToken::new()).await.expect("run");
    let folded: u64 = summaries.iter().map(|s| s.folded).sum();
    assert_eq!(folded, produced, "every op folded");
    let peak = peak_rss_mb();
    println!("peak RSS {before} MB before the run, {peak} MB after");
    assert!(
        peak < before + 200,
        "peak RSS {peak} MB, {before} MB before the run: the fold held far more than max_state_mb = 32"
    );

    let store = Store::open(config.store.url.expose()).await.expect("store");
    let ids = store.doc_ids("main").await.expect("ids");
    assert_eq!(ids.len(), DOCS, "every document stored");
    let last = store.load_doc("main", "big-7").await.expect("load").expect("stored");
    let state = docfold::fold::snapshot::decode(&last.state).expect("decodes");
    let mut reference = docfold::lseq::Sequence::new();
    for op in &ops[..3] {
        reference.apply(op).expect("applies");
    }
    assert_eq!(state.text(), reference.text(), "the stored text is the fold of the three ops");
}
