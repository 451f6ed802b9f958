//! The pipeline under crashes: `docfold run` children killed with SIGKILL at seeded random
//! moments and restarted; afterwards every document in the store equals the reference fold
//! of every op in the log, with nothing missing.

use docfold::fold::{Doc, Folded, PartitionFold, snapshot};
use docfold::log::file::{FileLog, Fsync};
use docfold::log::kafka::KafkaLog;
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

/// A job config; `flush_ops` small makes a run slow (a transaction per few ops), so a kill
/// lands mid-stream.
fn write_config(dir: &Path, name: &str, log: &str, store_url: &str, flush_ops: u64) -> std::path::PathBuf {
    let path = dir.join(name);
    let text = format!(
        "job = \"crash\"\n[log]\npartitions = {PARTITIONS}\n{log}\n[store]\nurl = \"{store_url}\"\n\
         [pipeline]\nflush_interval_ms = 40\nflush_ops = {flush_ops}\nmax_docs_in_memory = 2\nbatch = 500\n"
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// Publishes two real traces to several documents, then duplicates and garbage.
fn fill(writer: &mut dyn LogWriter, svelte_copies: usize, friends_copies: usize) -> u64 {
    let mut count = 0;
    for (name, copies) in [("sveltecomponent", svelte_copies), ("friendsforever", friends_copies)] {
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

/// `docfold run --exit-when-idle`; on Kafka, idle means `idle_ms` without a message.
fn spawn_run(config: &Path, idle_ms: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_docfold"))
        .args(["run", "--exit-when-idle", "--idle-ms", &idle_ms.to_string(), "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn docfold run")
}

/// Kills `runs` children at seeded random moments `min_ms + 1..=spread_ms` after their
/// start; returns how many were still working.
fn kill_at_random(config: &Path, runs: usize, seed: u64, (min_ms, spread_ms): (u64, u64)) -> usize {
    let mut rng = Rng::new(seed);
    let mut killed_mid_run = 0;
    for _ in 0..runs {
        let mut child = spawn_run(config, 15_000);
        std::thread::sleep(Duration::from_millis(min_ms + rng.one_to(spread_ms)));
        if child.try_wait().expect("child status").is_none() {
            killed_mid_run += 1;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }
    killed_mid_run
}

fn run_to_completion(config: &Path, idle_ms: u64) {
    let status = spawn_run(config, idle_ms).wait().expect("final run");
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
        let (text, expected_text) = (state.text(), doc.state.text());
        assert!(
            text == expected_text,
            "text of {id}: {} chars stored, {} in the reference",
            text.len(),
            expected_text.len()
        );
        assert!(state.entries() == doc.state.entries(), "identifiers of {id}");
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
    fill(&mut log.writer(Fsync::Never, 1 << 20), 5, 3);
    let store_url = format!("sqlite://{}", dir.join("state.db").display());
    let config = write_config(
        &dir,
        "job.toml",
        &format!("url = \"file://{}\"", dir.join("log").display()),
        &store_url,
        3000,
    );
    let (runs, seed) = crash_runs();
    let killed = tokio::task::block_in_place(|| kill_at_random(&config, runs, seed, (0, 150)));
    assert!(killed * 2 >= runs, "most kills must land mid-run ({killed} of {runs})");
    tokio::task::block_in_place(|| run_to_completion(&config, 0));
    assert_store_equals_reference(&store_url, &mut log.reader()).await;
}

/// A Kafka topic filled like the embedded one, a fresh PostgreSQL database, and the log
/// section of a config for a fresh consumer group.
async fn kafka_setup(name: &str) -> (KafkaLog, String, String) {
    let brokers = services::kafka();
    let topic = format!("{name}-{}", services::unique());
    KafkaLog::create_topic(&brokers, &topic, PARTITIONS, 1, &[]).await.expect("create topic");
    let log = KafkaLog::connect(&brokers, &topic, &[]).expect("connect");
    let mut writer = log.writer().expect("producer");
    tokio::task::block_in_place(|| fill(&mut writer, 3, 1));
    let store_url = services::postgres_database(name).await;
    // tansu needs a short session timeout to rebalance in seconds (SERVICES.md).
    let section = format!(
        "url = \"kafka://{brokers}\"\ntopic = \"{topic}\"\ngroup = \"{topic}\"\n\
         [log.kafka]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\""
    );
    (log, store_url, section)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_and_postgres_pipeline_survives_sigkill() {
    let (log, store_url, section) = kafka_setup("kcrash").await;
    let dir = services::temp_dir("kcrash");
    let slow = write_config(&dir, "slow.toml", &section, &store_url, 20);
    let fast = write_config(&dir, "fast.toml", &section, &store_url, 5000);
    let (_, seed) = crash_runs();
    // The group join takes ~3 s on tansu: kill between 3.5 and 7 s after the start.
    let killed = tokio::task::block_in_place(|| kill_at_random(&slow, 3, seed, (3500, 3500)));
    assert!(killed >= 2, "kills must land mid-run ({killed} of 3)");
    tokio::task::block_in_place(|| run_to_completion(&fast, 8000));
    assert_store_equals_reference(&store_url, &mut log.reader().expect("reader")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_group_and_one_is_killed_mid_stream() {
    let (log, store_url, section) = kafka_setup("kgroup").await;
    let dir = services::temp_dir("kgroup");
    let slow = write_config(&dir, "slow.toml", &section, &store_url, 20);
    let fast = write_config(&dir, "fast.toml", &section, &store_url, 5000);
    tokio::task::block_in_place(|| {
        let mut doomed = spawn_run(&slow, 60_000);
        // Long enough idle time to outlive the dead member's session and the rebalance.
        let survivor = spawn_run(&fast, 15_000);
        std::thread::sleep(Duration::from_millis(5000));
        assert!(doomed.try_wait().expect("status").is_none(), "the slow member is still folding when killed");
        doomed.kill().expect("SIGKILL");
        doomed.wait().expect("reap");
        let status = survivor.wait_with_output().expect("survivor").status;
        assert!(matches!(status.code(), Some(0 | 1)), "survivor failed: {status}");
    });
    assert_store_equals_reference(&store_url, &mut log.reader().expect("reader")).await;
}
