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

/// The process's peak resident memory in MiB. nextest runs each test in a process of its
/// own, so this is this test's peak.
fn peak_rss_mb() -> u64 {
    let kb = docfold::telemetry::memory_kb(None, "VmHWM");
    assert!(kb > 0, "/proc/self/status has VmHWM");
    kb / 1024
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
    // Bounded, the run adds 127–201 MB here (the same code measured on different days:
    // mimalloc and the kernel's page accounting vary); unbounded it added 393 MB.
    assert!(
        peak < before + 260,
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

/// A job folding into `dir` with a flush window of `flush_ms`, and its config file.
fn loadgen_job(dir: &Path, flush_ms: u64) -> (JobConfig, std::path::PathBuf) {
    let path = dir.join("job.toml");
    let text = format!(
        "job = \"lg\"\n[log]\nurl = \"file://{d}/log\"\npartitions = 4\n[store]\nurl = \"sqlite://{d}/state.db\"\n\
         [pipeline]\nflush_interval_ms = {flush_ms}\n[objects]\nurl = \"file://{d}/objects\"\n\
         [projection]\nurl = \"sqlite://{d}/projections.db\"\n",
        d = dir.display()
    );
    std::fs::write(&path, text).expect("write config");
    (JobConfig::load(&path).expect("config"), path)
}

/// `docfold loadgen` with a small population; its report's figures.
fn loadgen(config: &Path, out: &Path, extra: &[&str]) -> (std::process::Output, serde_json::Value) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_docfold"))
        .args(["loadgen", "--users", "400", "--docs", "40", "--rate", "800", "--seconds", "3"])
        .args(["--offline-share", "0.1", "--offline-ms", "1500", "--drain-seconds", "30", "--out"])
        .arg(out)
        .arg("--config")
        .arg(config)
        .args(extra)
        .output()
        .expect("loadgen runs");
    let figures = std::fs::read(out.join("figures.json")).unwrap_or_default();
    (output, serde_json::from_slice(&figures).unwrap_or_default())
}

/// A short run: every op it sent is seen folded, offline users' ops arrive late, its own
/// check passes, and an independent fold of the log equals the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_load_run_folds_to_what_its_users_made() {
    let dir = crate::services::temp_dir("loadgen");
    let (config, path) = loadgen_job(&dir, 100);
    let (output, figures) = tokio::task::block_in_place(|| loadgen(&path, &dir.join("report"), &[]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("stored texts and versions are what their users made"), "{stdout}");
    let sent = figures["sent"].as_u64().expect("sent");
    assert!(sent > 1000, "{figures}");
    assert_eq!(figures["visible"].as_u64(), Some(sent), "every op seen folded");
    assert!(figures["late"].as_u64().expect("late") > 0, "offline ops arrive late: {figures}");
    for name in ["report.md", "latency.png", "throughput.png"] {
        assert!(dir.join("report").join(name).is_file(), "{name}");
    }
    let log = FileLog::open(&dir.join("log"), &config.log.topic).expect("log");
    let expected = crate::pipeline::reference(&mut log.reader());
    crate::pipeline::assert_store_equals_reference((config.store.url.expose(), "lg"), &expected).await;
}

/// Latency comes from when each op was sent and when an invalidation showed it folded: with
/// the pipeline started 1.5 s after the load, the first ops wait at least that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_pipeline_shows_in_the_latency() {
    let dir = crate::services::temp_dir("loadgen-late");
    let (_, path) = loadgen_job(&dir, 100);
    let report = dir.join("report");
    let started = std::time::Instant::now();
    let run = {
        let path = path.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(1500));
            std::process::Command::new(env!("CARGO_BIN_EXE_docfold"))
                .args(["run", "--config"])
                .arg(path)
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("docfold run")
        })
    };
    let (output, figures) = tokio::task::block_in_place(|| loadgen(&path, &report, &["--no-run"]));
    let mut run = run.join().expect("joined");
    // SAFETY: kill(2) with our own child's pid; SIGINT drains `docfold run` as Ctrl-C does.
    unsafe { libc::kill(run.id() as i32, libc::SIGINT) };
    assert!(run.wait().expect("waited").success());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let max = figures["max_ms"].as_u64().expect("max");
    let first = figures["timeline"][0]["visible"].as_u64().expect("first second");
    assert_eq!(first, 0, "nothing is folded before the pipeline starts: {figures}");
    assert!(max >= 1400 && max < started.elapsed().as_millis() as u64, "max {max} ms: {figures}");
    let folded = figures["stages"]["folded"][3].as_u64().expect("a stage quantile");
    assert!(folded >= 1400, "the pipeline's stamps put the wait before the fold: {figures}");
}

/// The stages come from the pipeline's stamps on the invalidations: with a 1.2 s flush
/// window the wait shows between the fold and the projection write, not before the fold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_flush_window_shows_in_the_projection_stage() {
    let dir = crate::services::temp_dir("loadgen-stages");
    let (_, path) = loadgen_job(&dir, 1200);
    let (output, figures) = tokio::task::block_in_place(|| loadgen(&path, &dir.join("report"), &[]));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stage = |name: &str, at: usize| figures["stages"][name][at].as_u64().expect("a stage quantile");
    assert!(figures["stages"]["samples"].as_u64().expect("samples") > 50, "{figures}");
    let (p50, max) = (stage("projected", 0), stage("projected", 3));
    assert!(
        p50 >= 200 && (900..=2000).contains(&max),
        "folded → projection written waits for the flush: {figures}"
    );
    assert!(stage("folded", 2) < 900, "published → folded does not: {figures}");
    assert!(stage("seen", 2) < 900, "nor does the invalidation's delivery: {figures}");
}
