//! The pipeline under crashes: `docfold run` children killed with SIGKILL at seeded random
//! moments and restarted; afterwards every document in the store and in the projections
//! equals the reference fold of every op in the log, with nothing missing; projection
//! versions never went back; every op is in the archive exactly once and every bad record
//! in the dead letters.

use docfold::config::JobConfig;
use docfold::fold::{Doc, Folded, PartitionFold, snapshot};
use docfold::log::file::{FileLog, Fsync};
use docfold::log::kafka::KafkaLog;
use docfold::log::{LogReader, LogWriter, Record};
use docfold::lseq::{Rng, doc_seed};
use docfold::sink::Sinks;
use docfold::sink::dead_letter::DeadLetter;
use docfold::store::Store;
use docfold::trace::{Trace, publish, replay};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::services;
use crate::sinks::{offsets_once, read_archive};

const PARTITIONS: u32 = 4;

/// A job config; `flush_ops` small makes a run slow (a transaction per few ops), so a kill
/// lands mid-stream. Archive files rotate often, disaster-recovery snapshots too (a pack per
/// document and two per flush, so that an export goes on over several flushes and a kill
/// lands between its packs).
fn write_config(dir: &Path, name: &str, log: &str, store_url: &str, flush_ops: u64, sinks: &str) -> PathBuf {
    let path = dir.join(name);
    let text = format!(
        "job = \"crash\"\n[log]\npartitions = {PARTITIONS}\n{log}\n[store]\nurl = \"{store_url}\"\n\
         [pipeline]\nflush_interval_ms = 40\nflush_ops = {flush_ops}\nmax_docs_in_memory = 2\nbatch = 500\n\
         [archive]\nmax_file_bytes = 65536\nmax_file_age_ms = 150\n[snapshots]\ninterval_ms = 100\nbatch_docs = 1\ndocs_per_flush = 2\n{sinks}"
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// Publishes two real traces to several documents, then duplicates and garbage.
pub(crate) fn fill(writer: &mut dyn LogWriter, svelte_copies: usize, friends_copies: usize) -> u64 {
    let mut count = 0;
    let traces = [("sveltecomponent", svelte_copies), ("friendsforever", friends_copies)];
    for (name, copies) in traces.into_iter().filter(|(_, copies)| *copies > 0) {
        let trace = Trace::read(Path::new(&format!("tests/data/traces/{name}.json.gz"))).expect("trace");
        let ops = replay(&trace, doc_seed(name)).expect("replays").ops;
        let docs: Vec<String> = (0..copies).map(|i| format!("{name}-{i}")).collect();
        count += publish(writer, &ops, &docs, "test", |_| {}).expect("publish");
        // Redelivery of a slice (duplicates must not change text or versions).
        count += publish(writer, &ops[100..400], &docs[..1], "test", |_| {}).expect("publish");
    }
    for garbage in [&b"\x00\x01not protobuf"[..], b"", &[0x08, 0x09]] {
        let doc: &[u8] = if svelte_copies > 0 { b"sveltecomponent-0" } else { b"friendsforever-0" };
        writer.append(doc, garbage).expect("append garbage");
        count += 1;
    }
    writer.flush().expect("flush");
    count
}

/// Redelivers a slice of sveltecomponent's ops to `docs` (duplicates: text and versions
/// stay, but the documents change again).
fn republish(writer: &mut dyn LogWriter, docs: &[String]) {
    let trace = Trace::read(Path::new("tests/data/traces/sveltecomponent.json.gz")).expect("trace");
    let ops = replay(&trace, doc_seed("sveltecomponent")).expect("replays").ops;
    let svelte: Vec<String> = docs.iter().filter(|d| d.starts_with("sveltecomponent")).cloned().collect();
    publish(writer, &ops[..2000], &svelte, "test", |_| {}).expect("publish");
    writer.flush().expect("flush");
}

/// `docfold run --exit-when-idle`; on Kafka, idle means `idle_ms` without a message.
pub fn spawn_run(config: &Path, idle_ms: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_docfold"))
        .args(["run", "--exit-when-idle", "--idle-ms", &idle_ms.to_string(), "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        // Exports take a while, so that kills land in them too.
        .env("DOCFOLD_FAULT_EXPORT_DELAY_MS", "4")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn docfold run")
}

/// Kills `runs` children at seeded random moments `min_ms + 1..=spread_ms` after their
/// start, calling `after_kill` after each; returns how many were still working.
pub fn kill_at_random(
    config: &Path,
    runs: usize,
    seed: u64,
    (min_ms, spread_ms): (u64, u64),
    after_kill: &mut dyn FnMut(),
) -> usize {
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
        after_kill();
    }
    killed_mid_run
}

/// `docfold run --exit-when-idle` whose stderr the test reads (to see it step down).
fn spawn_watched(config: &Path, idle_ms: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_docfold"))
        .args(["run", "--exit-when-idle", "--idle-ms", &idle_ms.to_string(), "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn docfold run")
}

pub fn run_to_completion(config: &Path, idle_ms: u64) {
    let status = spawn_run(config, idle_ms).wait().expect("final run");
    // Bad records are dead letters, not a failure of a clean drain.
    assert_eq!(status.code(), Some(0), "final run failed: {status}");
}

/// Every document of the log folded in log order, without the pipeline.
pub(crate) struct Reference {
    docs: BTreeMap<String, Doc>,
    /// Each partition's end offset.
    ends: Vec<u64>,
    /// (partition, offset) of the records that decode as ops (the archive's records), with
    /// the log's timestamp and its type…
    ops: BTreeMap<(i32, i64), (i64, &'static str)>,
    /// …and of the records the fold refuses or cannot decode (the dead letters).
    bad: BTreeSet<(u32, u64)>,
}

pub(crate) fn reference(reader: &mut dyn LogReader) -> Reference {
    let mut r =
        Reference { docs: BTreeMap::new(), ends: Vec::new(), ops: BTreeMap::new(), bad: BTreeSet::new() };
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
                if fold.decode(&record.value).is_ok() {
                    let time = (record.timestamp_ms, record.timestamp_type.as_str());
                    r.ops.insert((partition as i32, record.offset as i64), time);
                }
                let mut folded = fold.fold(record.offset, &record.value);
                if let Ok(Folded::NeedDoc(id)) = folded {
                    ids.push(id.clone());
                    fold.insert(id, Doc::default());
                    folded = fold.fold(record.offset, &record.value);
                }
                if folded.is_err() {
                    r.bad.insert((partition, record.offset));
                }
            }
        }
        r.ends.push(next);
        for id in ids {
            let doc = fold.get(&id).expect("folded").clone();
            r.docs.insert(id, doc);
        }
    }
    r
}

pub(crate) async fn assert_store_equals_reference((store_url, job): (&str, &str), expected: &Reference) {
    let Reference { docs: expected, ends, .. } = expected;
    let store = Store::open(store_url).await.expect("open store");
    assert_eq!(
        store.doc_ids(job).await.expect("ids"),
        expected.keys().cloned().collect::<Vec<_>>(),
        "no document missing"
    );
    for (id, doc) in expected {
        let stored = store.load_doc(job, id).await.expect("load").expect("stored");
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
        store.checkpoints(job).await.expect("checkpoints").iter().map(|c| c.2).collect();
    assert_eq!(&checkpoints, ends, "every partition checkpointed at its end");
    store.close().await;
}

/// Every projection's version, by document.
async fn projection_versions(sinks: &Sinks, docs: &[String]) -> BTreeMap<String, u64> {
    let mut versions = BTreeMap::new();
    for doc in docs {
        if let Some((item, _)) =
            sinks.projections.as_ref().expect("projections").get_text(doc).await.expect("read")
        {
            versions.insert(doc.clone(), item.version);
        }
    }
    versions
}

/// After each kill: no projection version went back.
fn versions_never_decrease(sinks: &Sinks, docs: Vec<String>) -> impl FnMut() {
    let mut last = BTreeMap::new();
    let handle = tokio::runtime::Handle::current();
    move || {
        let now = handle.block_on(projection_versions(sinks, &docs));
        for (doc, version) in &last {
            assert!(
                now.get(doc).is_some_and(|v| v >= version),
                "projection of {doc} went back from {version} to {:?}",
                now.get(doc)
            );
        }
        last = now;
    }
}

/// Projections equal the fold; every op is archived exactly once; every bad record is a
/// dead letter (at least once).
async fn assert_sinks_equal_reference(sinks: &Sinks, expected: &Reference, dead_letters: &mut dyn LogReader) {
    let projections = sinks.projections.as_ref().expect("projections");
    for (id, doc) in &expected.docs {
        let (item, text) = projections.get_text(id).await.expect("read").expect("projected");
        assert!(text == doc.state.text(), "projection text of {id}");
        assert_eq!((item.version, item.chars), (doc.version, doc.state.len() as u64), "projection of {id}");
    }
    let rows = read_archive(&sinks.objects).await;
    let archived = offsets_once(&rows);
    assert!(archived.iter().eq(expected.ops.keys()), "the archive holds every op, each once");
    for row in &rows {
        let ingest = (row.ingest_time, row.ingest_time_type.as_str());
        assert_eq!(ingest, expected.ops[&(row.partition, row.offset)], "ingest time is the log's: {row:?}");
    }
    let mut letters = BTreeSet::new();
    for partition in 0..dead_letters.partitions() {
        let mut records = Vec::new();
        dead_letters.read(partition, 0, 10_000, &mut records).expect("read dead letters");
        for record in records {
            let letter = DeadLetter::decode(record.value.as_slice()).expect("a dead letter");
            letters.insert((letter.source_partition, letter.source_offset));
        }
    }
    assert_eq!(letters, expected.bad, "every bad record is a dead letter");
}

/// Watches the disaster-recovery snapshots between kills: a kill after an export (a new
/// manifest appeared during the run), and a kill during one (a pack of states for an offset
/// past every manifest of its partition: written, but its manifest never was).
struct ExportWatch {
    root: PathBuf,
    manifests: usize,
    orphans: BTreeSet<PathBuf>,
    after: usize,
    during: usize,
}

impl ExportWatch {
    fn new(root: PathBuf) -> ExportWatch {
        ExportWatch { root, manifests: 0, orphans: BTreeSet::new(), after: 0, during: 0 }
    }

    fn after_kill(&mut self) {
        let entries = |dir: PathBuf| -> Vec<PathBuf> {
            std::fs::read_dir(dir).map_or(Vec::new(), |d| d.map(|e| e.expect("entry").path()).collect())
        };
        let offset = |path: &Path| -> u64 {
            path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()).unwrap_or(0)
        };
        let newest: Vec<u64> = (0..PARTITIONS)
            .map(|p| {
                entries(self.root.join(format!("manifests/partition={p}")))
                    .iter()
                    .map(|m| offset(m))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let manifests: usize =
            (0..PARTITIONS).map(|p| entries(self.root.join(format!("manifests/partition={p}"))).len()).sum();
        if manifests > self.manifests {
            self.after += 1;
            self.manifests = manifests;
        }
        let mut cut_short = false;
        for (partition, newest) in newest.iter().enumerate() {
            // Packs are named `<the export's offset>-<n>`.
            for pack in entries(self.root.join(format!("packs/partition={partition}"))) {
                let name = pack.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                let at: u64 = name.split('-').next().and_then(|o| o.parse().ok()).unwrap_or(0);
                if at > *newest && self.orphans.insert(pack) {
                    cut_short = true;
                }
            }
        }
        self.during += usize::from(cut_short);
    }
}

fn doc_names(svelte_copies: usize, friends_copies: usize) -> Vec<String> {
    let svelte = (0..svelte_copies).map(|i| format!("sveltecomponent-{i}"));
    svelte.chain((0..friends_copies).map(|i| format!("friendsforever-{i}"))).collect()
}

fn crash_runs() -> (usize, u64) {
    let runs = std::env::var("DOCFOLD_CRASH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let seed = std::env::var("DOCFOLD_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed);
    (runs, seed)
}

/// An embedded log in `dir` filled with duplicates and garbage, and the sections of a
/// config for it with every embedded sink.
struct EmbeddedSetup {
    log: FileLog,
    store_url: String,
    log_section: String,
    sinks_section: String,
}

fn embedded_setup(dir: &Path) -> EmbeddedSetup {
    let log = FileLog::create(&dir.join("log"), "doc-ops", PARTITIONS).expect("topic");
    fill(&mut log.writer(Fsync::Never, 1 << 20), 5, 3);
    let store_url = format!("sqlite://{}", dir.join("state.db").display());
    let log_section = format!("url = \"file://{}\"", dir.join("log").display());
    let sinks_section = format!(
        "[objects]\nurl = \"file://{0}/objects\"\n[projection]\nurl = \"sqlite://{0}/projections.db\"\n",
        dir.display()
    );
    EmbeddedSetup { log, store_url, log_section, sinks_section }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_pipeline_survives_sigkill_at_random_moments() {
    let dir = services::temp_dir("crash");
    let EmbeddedSetup { log, store_url, log_section, sinks_section } = embedded_setup(&dir);
    let config = write_config(&dir, "job.toml", &log_section, &store_url, 3000, &sinks_section);
    let sinks = Sinks::open(&JobConfig::load(&config).expect("config")).await.expect("sinks");
    let (runs, seed) = crash_runs();
    let mut versions = versions_never_decrease(&sinks, doc_names(5, 3));
    let mut exports = ExportWatch::new(dir.join("objects/snapshots"));
    let mut kill_runs = |runs: usize, seed: u64, exports: &mut ExportWatch| {
        let mut check = || {
            versions();
            exports.after_kill();
        };
        tokio::task::block_in_place(|| kill_at_random(&config, runs, seed, (0, 400), &mut check))
    };
    let mut killed = kill_runs(runs, seed, &mut exports);
    // Later runs find less to do: the log is folded after a few dozen runs.
    assert!(killed >= runs.min(20) / 2, "kills must land mid-run ({killed} of {runs})");
    // Where the seeded moments missed a window (a loaded machine starts slowly), more kills
    // while the log grows (redelivered ops: every document changes again, so exports go on).
    let mut extra = 0;
    while (exports.after == 0 || exports.during == 0) && extra < 60 {
        let mut writer = log.writer(Fsync::Never, 1 << 20);
        republish(&mut writer, &doc_names(5, 3));
        drop(writer);
        killed += kill_runs(5, seed.wrapping_add(1 + extra), &mut exports);
        extra += 5;
    }
    let ExportWatch { after, during, .. } = exports;
    eprintln!(
        "{killed} of {} kills mid-run; {after} after a disaster-recovery export, {during} during one",
        runs as u64 + extra
    );
    assert!(after > 0, "some kills land after a disaster-recovery export");
    assert!(during > 0, "some kills land during a disaster-recovery export");
    tokio::task::block_in_place(|| run_to_completion(&config, 0));
    tokio::task::block_in_place(&mut versions);
    let expected = reference(&mut log.reader());
    assert_store_equals_reference((&store_url, "crash"), &expected).await;
    let mut dead_letters = FileLog::open(&dir.join("log"), "doc-ops-dlq").expect("dead letters").reader();
    assert_sinks_equal_reference(&sinks, &expected, &mut dead_letters).await;

    // Disaster recovery: the state store is lost. Restore it from the snapshots of an
    // earlier moment (the newest manifest of each partition removed), replay the log.
    for partition in (0..PARTITIONS).filter(|&p| expected.ends[p as usize] > 0) {
        let manifests = dir.join(format!("objects/snapshots/manifests/partition={partition}"));
        let mut names: Vec<PathBuf> = std::fs::read_dir(&manifests)
            .expect("manifests")
            .map(|e| e.expect("entry").path())
            .filter(|path| path.extension().is_some_and(|e| e == "json"))
            .collect();
        names.sort();
        assert!(names.len() >= 2, "partition {partition} wrote several manifests: {names:?}");
        std::fs::remove_file(names.last().expect("one")).expect("drop the newest");
    }
    let restored_url = format!("sqlite://{}", dir.join("restored.db").display());
    let restored = write_config(&dir, "restored.toml", &log_section, &restored_url, 3000, &sinks_section);
    let out = Command::new(env!("CARGO_BIN_EXE_docfold"))
        .args(["snapshots", "restore", "--config"])
        .arg(&restored)
        .output()
        .expect("restore");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    // Every partition with records has a manifest left; one without may have none (the
    // drain begins no export that is not due), and the replay from 0 is all it needs.
    let manifested = (0..PARTITIONS)
        .filter(|p| {
            let manifests = dir.join(format!("objects/snapshots/manifests/partition={p}"));
            std::fs::read_dir(&manifests).is_ok_and(|entries| {
                entries.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".json"))
            })
        })
        .count();
    let with_records = expected.ends.iter().filter(|&&end| end > 0).count();
    assert!(
        manifested >= with_records,
        "{manifested} partitions have manifests, {with_records} have records"
    );
    assert!(stdout.contains(&format!("restored {manifested} of {PARTITIONS} partitions")), "{stdout}");
    tokio::task::block_in_place(|| run_to_completion(&restored, 0));
    assert_store_equals_reference((&restored_url, "crash"), &expected).await;
    assert_sinks_equal_reference(&sinks, &expected, &mut dead_letters).await;
}

/// A stale owner: a second `docfold run` on the same embedded log and store claims every
/// partition from the first, which is still folding. The first is fenced off: it writes no
/// checkpoint and no archive file after the claim, steps down without failing, and the
/// second finishes with every op folded and archived exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_owner_steps_down_and_the_new_owner_finishes() {
    let dir = services::temp_dir("zombie");
    let EmbeddedSetup { log, store_url, log_section, sinks_section } = embedded_setup(&dir);
    let slow = write_config(&dir, "slow.toml", &log_section, &store_url, 20, &sinks_section);
    let fast = write_config(&dir, "fast.toml", &log_section, &store_url, 3000, &sinks_section);
    tokio::task::block_in_place(|| {
        let stale = spawn_watched(&slow, 0);
        std::thread::sleep(Duration::from_millis(1500));
        let newer = spawn_run(&fast, 0);
        let stale = stale.wait_with_output().expect("first owner");
        let log = String::from_utf8_lossy(&stale.stderr);
        assert_eq!(stale.status.code(), Some(0), "a fenced owner steps down without failing: {log}");
        assert!(log.contains("stepped down"), "it says so: {log}");
        assert_eq!(newer.wait_with_output().expect("new owner").status.code(), Some(0));
    });
    let expected = reference(&mut log.reader());
    assert_store_equals_reference((&store_url, "crash"), &expected).await;
    let sinks = Sinks::open(&JobConfig::load(&fast).expect("config")).await.expect("sinks");
    let mut dead_letters = FileLog::open(&dir.join("log"), "doc-ops-dlq").expect("dead letters").reader();
    assert_sinks_equal_reference(&sinks, &expected, &mut dead_letters).await;
}

/// On the embedded log the consumer-lag gauge says how many records each partition is
/// behind its log's end while it catches up (it used to be set only to 0, when caught up),
/// and 0 once it has caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_log_consumer_lag_counts_the_records_behind() {
    let dir = services::temp_dir("lag");
    let EmbeddedSetup { store_url, log_section, sinks_section, .. } = embedded_setup(&dir);
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
    let sinks = format!("{sinks_section}[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    // A checkpoint every 200 ops: catching up takes a while, and the lag shows.
    let config = write_config(&dir, "lag.toml", &log_section, &store_url, 200, &sinks);
    let lags = |body: &str| -> Vec<f64> {
        (0..PARTITIONS)
            .filter_map(|p| services::metric(body, "docfold_consumer_lag", &[("partition", &p.to_string())]))
            .collect()
    };
    tokio::task::block_in_place(|| {
        // Without --exit-when-idle: a caught-up run stays up, polling its log.
        let mut run = Command::new(env!("CARGO_BIN_EXE_docfold"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn docfold run");
        let behind = services::scrape_until(port, |body| lags(body).iter().any(|&lag| lag > 100.0));
        eprintln!("behind: {:?}", lags(&behind));
        // However busy the machine (the whole suite runs beside it), within two minutes.
        let started = std::time::Instant::now();
        let caught_up = loop {
            let now = lags(&services::scrape_until(port, |_| true));
            if now.len() == PARTITIONS as usize && now.iter().all(|&lag| lag == 0.0) {
                break now;
            }
            assert!(started.elapsed().as_secs() < 120, "not caught up after two minutes: {now:?}");
            std::thread::sleep(Duration::from_millis(100));
        };
        eprintln!("caught up: {caught_up:?}");
        run.kill().expect("stop");
        run.wait().expect("reap");
    });
}

/// A Kafka topic filled like the embedded one (with topics for invalidations and dead
/// letters), a fresh PostgreSQL database, a DynamoDB table, an S3 prefix and Redis keys,
/// and the sections of a config for a fresh consumer group.
struct KafkaSetup {
    /// The job's topic, also its consumer group.
    topic: String,
    log: KafkaLog,
    dead_letters: KafkaLog,
    store_url: String,
    log_section: String,
    sinks_section: String,
}

async fn kafka_setup(name: &str) -> KafkaSetup {
    let brokers = services::kafka();
    let topic = format!("{name}-{}", services::unique());
    for (t, partitions) in
        [(topic.clone(), PARTITIONS), (format!("{topic}-inv"), PARTITIONS), (format!("{topic}-dlq"), 1)]
    {
        KafkaLog::create_topic(&brokers, &t, (partitions, 1), &[], &[]).await.expect("create topic");
    }
    let log = KafkaLog::connect(&brokers, &topic, &[]).expect("connect");
    let mut writer = log.writer().expect("producer");
    tokio::task::block_in_place(|| fill(&mut writer, 3, 1));
    let store_url = services::postgres_database(name).await;
    // tansu needs a short session timeout to rebalance in seconds (SERVICES.md).
    let log_section = format!(
        "url = \"kafka://{brokers}\"\ntopic = \"{topic}\"\ngroup = \"{topic}\"\n\
         [log.kafka]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\""
    );
    let (s3, bucket) = services::s3_bucket();
    let sinks_section = format!(
        "[objects]\nurl = \"s3://{bucket}/{topic}\"\nendpoint = \"{s3}\"\n\
         [projection]\nurl = \"dynamodb://{topic}\"\nendpoint = \"{}\"\n\
         [invalidations]\ntopic = \"{topic}-inv\"\nredis = \"{}\"\nkey_prefix = \"test:{topic}:\"\nchannel = \"test:{topic}\"\n\
         [dead_letters]\ntopic = \"{topic}-dlq\"\n",
        services::dynamodb(),
        services::redis()
    );
    let dead_letters = KafkaLog::connect(&brokers, &format!("{topic}-dlq"), &[]).expect("connect");
    KafkaSetup { topic, log, dead_letters, store_url, log_section, sinks_section }
}

/// The slow and fast configs of a Kafka test, its table created with the CLI, its sinks.
async fn kafka_configs(setup: &KafkaSetup, name: &str) -> (PathBuf, PathBuf, Sinks) {
    let dir = services::temp_dir(name);
    let config = |file, flush_ops| {
        write_config(&dir, file, &setup.log_section, &setup.store_url, flush_ops, &setup.sinks_section)
    };
    let (slow, fast) = (config("slow.toml", 20), config("fast.toml", 5000));
    let out = Command::new(env!("CARGO_BIN_EXE_docfold"))
        .args(["projections", "create", "--config"])
        .arg(&fast)
        .output()
        .expect("projections create");
    assert!(out.status.success(), "projections create: {}", String::from_utf8_lossy(&out.stderr));
    let sinks = Sinks::open(&JobConfig::load(&fast).expect("config")).await.expect("sinks");
    (slow, fast, sinks)
}

/// The offsets the job's consumer group committed, by partition (what lag tools read).
fn group_offsets(setup: &KafkaSetup) -> Vec<u64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let topic = &setup.topic;
    let consumer: BaseConsumer =
        setup.log.config().set("group.id", topic).create().expect("consumer of the job's group");
    let mut list = rdkafka::TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        list.add_partition(topic, partition as i32);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10)).expect("committed offsets");
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            rdkafka::Offset::Offset(offset) => offset as u64,
            other => panic!("partition {} has no committed offset: {other:?}", e.partition()),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_and_postgres_pipeline_survives_sigkill() {
    let setup = kafka_setup("kcrash").await;
    let (slow, fast, sinks) = kafka_configs(&setup, "kcrash").await;
    let (_, seed) = crash_runs();
    let mut check = versions_never_decrease(&sinks, doc_names(3, 1));
    // The group join takes ~3 s on tansu: kill between 3.5 and 7 s after the start.
    let killed = tokio::task::block_in_place(|| kill_at_random(&slow, 3, seed, (3500, 3500), &mut check));
    assert!(killed >= 2, "kills must land mid-run ({killed} of 3)");
    tokio::task::block_in_place(|| run_to_completion(&fast, 8000));
    tokio::task::block_in_place(&mut check);
    let expected = assert_kafka_run_equals_reference(&setup, &sinks).await;
    assert_eq!(group_offsets(&setup), expected.ends, "the group's committed offsets are the checkpoints");
}

/// The store and every sink of a Kafka run equal the reference fold of its log; returns it.
async fn assert_kafka_run_equals_reference(setup: &KafkaSetup, sinks: &Sinks) -> Reference {
    let expected = reference(&mut setup.log.reader().expect("reader"));
    assert_store_equals_reference((&setup.store_url, "crash"), &expected).await;
    let mut dead_letters = setup.dead_letters.reader().expect("reader");
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(assert_sinks_equal_reference(
            sinks,
            &expected,
            &mut dead_letters,
        ))
    });
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_group_and_one_is_killed_mid_stream() {
    let setup = kafka_setup("kgroup").await;
    let (slow, fast, _) = kafka_configs(&setup, "kgroup").await;
    tokio::task::block_in_place(|| {
        let mut doomed = spawn_run(&slow, 60_000);
        // Long enough idle time to outlive the dead member's session and the rebalance.
        let survivor = spawn_run(&fast, 15_000);
        std::thread::sleep(Duration::from_millis(5000));
        assert!(doomed.try_wait().expect("status").is_none(), "the slow member is still folding when killed");
        doomed.kill().expect("SIGKILL");
        doomed.wait().expect("reap");
        let status = survivor.wait_with_output().expect("survivor").status;
        assert_eq!(status.code(), Some(0), "survivor failed: {status}");
    });
    let expected = reference(&mut setup.log.reader().expect("reader"));
    assert_store_equals_reference((&setup.store_url, "crash"), &expected).await;
}

/// A zombie member: one of two members of a group is frozen (SIGSTOP) mid-stream, past
/// its session timeout, so the group gives its partitions to the other, which claims them
/// (a new owner epoch); then it is thawed (SIGCONT) with unflushed work. Its effects are
/// refused by the epoch: it steps down without crashing either process, no archive row
/// is written twice, no projection goes back, and every op is folded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_kafka_member_is_fenced_when_it_wakes() {
    let setup = kafka_setup("kzombie").await;
    let (slow, fast, sinks) = kafka_configs(&setup, "kzombie").await;
    let mut check = versions_never_decrease(&sinks, doc_names(3, 1));
    let signal = |child: &Child, name: &str| {
        let status = Command::new("kill").args([name, &child.id().to_string()]).status().expect("kill");
        assert!(status.success(), "kill {name}");
    };
    tokio::task::block_in_place(|| {
        let mut zombie = spawn_watched(&slow, 15_000);
        // The group join takes ~3 s on tansu; then it folds a transaction per 20 ops.
        std::thread::sleep(Duration::from_millis(4500));
        assert!(zombie.try_wait().expect("status").is_none(), "still folding when frozen");
        signal(&zombie, "-STOP");
        let survivor = spawn_run(&fast, 15_000);
        // Past the 6 s session timeout: the survivor holds (and has claimed) every partition.
        std::thread::sleep(Duration::from_millis(12_000));
        check();
        signal(&zombie, "-CONT");
        let status = survivor.wait_with_output().expect("survivor").status;
        assert_eq!(status.code(), Some(0), "the survivor is not hurt by the zombie: {status}");
        let woken = zombie.wait_with_output().expect("zombie");
        let log = String::from_utf8_lossy(&woken.stderr);
        assert_eq!(woken.status.code(), Some(0), "the zombie steps down without crashing: {log}");
        assert!(log.contains("stepped down"), "it was fenced: {log}");
        check();
    });
    assert_kafka_run_equals_reference(&setup, &sinks).await;
}
