//! The pipeline under crashes: `docfold run` children killed with SIGKILL at seeded random
//! moments and restarted; afterwards every document in the store equals the reference fold
//! of every op in the log, with nothing missing.

use docfold::fold::{Doc, Folded, PartitionFold, snapshot};
use docfold::log::file::{FileLog, Fsync};
use docfold::log::{LogReader, LogWriter, Record};
use docfold::lseq::{Rng, doc_seed};
use docfold::store::Store;
use docfold::trace::{Trace, publish, replay};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::services;

const PARTITIONS: u32 = 4;

fn write_config(dir: &Path, log_url: &str, store_url: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join("job.toml");
    let text = format!(
        "job = \"crash\"\n[log]\nurl = \"{log_url}\"\npartitions = {PARTITIONS}\n{extra}\n[store]\nurl = \"{store_url}\"\n\
         [pipeline]\nflush_interval_ms = 40\nflush_ops = 3000\nmax_docs_in_memory = 2\nbatch = 500\n"
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// Publishes two real traces to several documents, then duplicates and garbage.
fn fill(writer: &mut dyn LogWriter) -> u64 {
    let mut count = 0;
    for (name, copies) in [("sveltecomponent", 5), ("friendsforever", 3)] {
        let trace = Trace::read(Path::new(&format!("tests/data/traces/{name}.json.gz"))).expect("trace");
        let ops = replay(&trace, doc_seed(name)).expect("replays").ops;
        let docs: Vec<String> = (0..copies).map(|i| format!("{name}-{i}")).collect();
        count += publish(writer, &ops, &docs, "test", |_| {}).expect("publish");
        // Redelivery of a slice (duplicates must not change text or versions).
        count += publish(writer, &ops[100..400], &docs[..1], "test", |_| {}).expect("publish");
    }
    for garbage in [&b"\x00\x01not protobuf"[..], b"", &[0x08, 0x09]] {
        writer.append(b"sveltecomponent-0", garbage).expect("append garbage");
        count += 1;
    }
    writer.flush().expect("flush");
    count
}

fn spawn_run(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_docfold"))
        .args(["run", "--exit-when-idle", "--idle-ms", "15000", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn docfold run")
}

/// Kills `runs` children at seeded random moments; returns how many were still working.
fn kill_at_random(config: &Path, runs: usize, seed: u64, max_ms: u64) -> usize {
    let mut rng = Rng::new(seed);
    let mut killed_mid_run = 0;
    for _ in 0..runs {
        let mut child = spawn_run(config);
        std::thread::sleep(Duration::from_millis(rng.one_to(max_ms)));
        if child.try_wait().expect("child status").is_none() {
            killed_mid_run += 1;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }
    killed_mid_run
}

fn run_to_completion(config: &Path) {
    let status = spawn_run(config).wait().expect("final run");
    // Exit 1 when this run met bad records; anything else is a failure.
    assert!(matches!(status.code(), Some(0 | 1)), "final run failed: {status}");
}

/// Every document of the log folded in log order, without the pipeline.
fn reference(reader: &mut dyn LogReader) -> (BTreeMap<String, Doc>, Vec<u64>) {
    let mut docs = BTreeMap::new();
    let mut ends = Vec::new();
    for partition in 0..reader.partitions() {
        let mut fold = PartitionFold::new();
        let mut ids = Vec::new();
        let mut records: Vec<Record> = Vec::new();
        let mut next = 0;
        loop {
            records.clear();
            reader.read(partition, next, 1000, &mut records).expect("read");
            let Some(last) = records.last() else { break };
            next = last.offset + 1;
            for record in &records {
                if let Ok(Folded::NeedDoc(id)) = fold.fold(record.offset, &record.value) {
                    ids.push(id.clone());
                    fold.insert(id, Doc::default());
                    fold.fold(record.offset, &record.value).expect("folds once loaded");
                }
            }
        }
        ends.push(next);
        for id in ids {
            let doc = fold.get(&id).expect("folded").clone();
            docs.insert(id, doc);
        }
    }
    (docs, ends)
}

async fn assert_store_equals_reference(store_url: &str, reader: &mut dyn LogReader) {
    let (expected, ends) = reference(reader);
    let store = Store::open(store_url).await.expect("open store");
    assert_eq!(
        store.doc_ids("crash").await.expect("ids"),
        expected.keys().cloned().collect::<Vec<_>>(),
        "no document missing"
    );
    for (id, doc) in &expected {
        let stored = store.load_doc("crash", id).await.expect("load").expect("stored");
        let state = snapshot::decode(&stored.state).expect("decodes");
        assert_eq!(state.text(), doc.state.text(), "text of {id}");
        assert_eq!(state.entries(), doc.state.entries(), "identifiers of {id}");
        assert_eq!((stored.version, stored.offset), (doc.version, doc.offset), "version and offset of {id}");
    }
    let checkpoints: Vec<u64> =
        store.checkpoints("crash").await.expect("checkpoints").iter().map(|c| c.1).collect();
    assert_eq!(checkpoints, ends, "every partition checkpointed at its end");
    store.close().await;
}

fn crash_runs() -> (usize, u64) {
    let runs = std::env::var("DOCFOLD_CRASH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let seed = std::env::var("DOCFOLD_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed);
    (runs, seed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_pipeline_survives_sigkill_at_random_moments() {
    let dir = services::temp_dir("crash");
    let log = FileLog::create(&dir.join("log"), "doc-ops", PARTITIONS).expect("topic");
    fill(&mut log.writer(Fsync::Never, 1 << 20));
    let store_url = format!("sqlite://{}", dir.join("state.db").display());
    let config = write_config(&dir, &format!("file://{}", dir.join("log").display()), &store_url, "");
    let (runs, seed) = crash_runs();
    let killed = tokio::task::block_in_place(|| kill_at_random(&config, runs, seed, 150));
    assert!(killed * 2 >= runs, "most kills must land mid-run ({killed} of {runs})");
    tokio::task::block_in_place(|| run_to_completion(&config));
    assert_store_equals_reference(&store_url, &mut log.reader()).await;
}
