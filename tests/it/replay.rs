//! Replay (`docfold replay`): from the archive or the log, into a fresh store or the live
//! store and sinks, interrupted and resumed, to a time; and its guard against a live owner.
//! The first test runs on the embedded defaults and on the real engines.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use docfold::config::JobConfig;
use docfold::fold::snapshot;
use docfold::log::file::FileLog;
use docfold::log::kafka::KafkaLog;
use docfold::log::{LogReader, LogWriter, Topic};
use docfold::lseq::{Ident, Sequence};
use docfold::op::decode;
use docfold::pipeline::{self, PartitionSummary, Until};
use docfold::replay::{self, Bound, Plan, ReplaySource, Request, Target};
use docfold::store::Store;

use crate::pipeline::fill;
use crate::services;

const PARTITIONS: u32 = 4;

/// A document as a store holds it: text, identifiers and version.
type Held = (String, Vec<(Ident, char)>, u64);

async fn docs_of(url: &str, job: &str) -> BTreeMap<String, Held> {
    let store = Store::open(url).await.expect("store");
    let mut docs = BTreeMap::new();
    for id in store.doc_ids(job).await.expect("ids") {
        let stored = store.load_doc(job, &id).await.expect("load").expect("listed");
        let state = snapshot::decode(&stored.state).expect("state");
        docs.insert(id, (state.text(), state.entries(), stored.version));
    }
    store.close().await;
    docs
}

/// Asserts two stores hold the same documents, naming the first that differs (in short).
fn assert_same(held: &BTreeMap<String, Held>, expected: &BTreeMap<String, Held>, what: &str) {
    assert_eq!(held.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "{what}: documents");
    for (id, doc) in expected {
        let other = &held[id];
        let first_ident = doc.1.iter().zip(&other.1).position(|(a, b)| a != b);
        assert!(
            other == doc,
            "{what}: {id} holds {} characters, {} identifiers, version {} where {}, {}, {} are expected; first differing identifier at {first_ident:?}",
            other.0.chars().count(),
            other.1.len(),
            other.2,
            doc.0.chars().count(),
            doc.1.len(),
            doc.2
        );
    }
}

fn request(source: ReplaySource, target: Target) -> Request {
    Request { partitions: Vec::new(), doc: None, from: None, to: None, source, target, force: false }
}

async fn replay_all(config: &JobConfig, request: &Request) -> (Plan, Vec<PartitionSummary>) {
    let plan = replay::plan(config, request).await.expect("plan");
    let progress = Arc::new(AtomicU64::new(0));
    let done =
        replay::replay(config, request, &plan, progress, CancellationToken::new()).await.expect("replay");
    (plan, done)
}

/// Small batches and flushes, archive files of a few hundred records.
fn tune(config: &mut JobConfig) {
    config.job = "replay".into();
    config.log.partitions = PARTITIONS;
    config.pipeline.batch = 500;
    config.pipeline.flush_ops = 2000;
    config.archive.max_file_bytes = 65_536;
    config.archive.max_file_age_ms = 150;
}

/// The texts and identifiers of the fold of each document's records before `ends[p]`.
fn reference(reader: &mut dyn LogReader, ends: &[u64]) -> BTreeMap<String, (String, Vec<(Ident, char)>)> {
    let mut docs: BTreeMap<String, Sequence> = BTreeMap::new();
    for (partition, &end) in ends.iter().enumerate() {
        // A Kafka read brings what one fetch has: read on to the end.
        let mut records: Vec<docfold::log::Record> = Vec::new();
        while records.last().map_or(0, |r| r.offset + 1) < end {
            let (before, from) = (records.len(), records.last().map_or(0, |r| r.offset + 1));
            reader.read(partition as u32, from, (end - from) as usize, &mut records).expect("read");
            assert!(records.len() > before, "partition {partition}: no records from {from} on, before {end}");
        }
        for record in records.iter().filter(|r| r.offset < end) {
            if let Ok(envelope) = decode(&record.value) {
                let doc = docs.entry(envelope.doc_id.clone()).or_default();
                let _ = doc.apply(&envelope.op);
            }
        }
    }
    docs.into_iter().map(|(id, doc)| (id, (doc.text(), doc.entries()))).collect()
}

/// Replays `request` with a Ctrl-C once about a third of its records are read.
async fn replay_interrupted(config: &JobConfig, request: &Request) {
    let plan = replay::plan(config, request).await.expect("plan");
    let (progress, cancel) = (Arc::new(AtomicU64::new(0)), CancellationToken::new());
    let watch = {
        let (progress, cancel, third) = (progress.clone(), cancel.clone(), plan.records() / 3);
        tokio::spawn(async move {
            while progress.load(Ordering::Relaxed) < third {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            cancel.cancel();
        })
    };
    replay::replay(config, request, &plan, progress, cancel)
        .await
        .expect("an interrupted replay drains cleanly");
    watch.abort();
}

/// The live fold of `copies` of the sveltecomponent and friendsforever traces, then: a
/// replay from the archive into a fresh store holds exactly its documents (text,
/// identifiers, version); so does a replay from the log interrupted at a third and run
/// again; and a replay to a time holds the fold of the records stamped by then.
async fn replays_equal_the_live_fold(
    mut config: JobConfig,
    fresh: Vec<String>,
    idle_ms: u64,
    (svelte, friends): (usize, usize),
) {
    tune(&mut config);
    let topic = Topic::open(&config, &config.log.topic, false).expect("topic");
    let mut writer = topic.writer(&config).expect("writer");
    let written = tokio::task::block_in_place(|| fill(writer.as_mut(), svelte, friends));
    pipeline::run(&config, Until::Idle { idle_ms }, CancellationToken::new()).await.expect("live run");
    let live = docs_of(config.store.url.expose(), &config.job).await;
    assert_eq!(live.len(), svelte + friends, "{:?}", live.keys());

    let [from_archive, resumed, to_time] = <[String; 3]>::try_from(fresh).expect("three fresh stores");
    let (plan, _) =
        replay_all(&config, &request(ReplaySource::Archive, Target::Fresh(from_archive.clone()))).await;
    // Every record up to the last op: the archive writes no file of dead letters alone, so
    // where a file was cut just before `fill`'s three garbage records, they are not in it.
    assert!(
        (written - 3..=written).contains(&plan.records()),
        "every op's record is in the archive ({written} written): {plan:?}"
    );
    assert_same(&docs_of(&from_archive, &config.job).await, &live, "from the archive");

    let resume = request(ReplaySource::Log, Target::Fresh(resumed.clone()));
    replay_interrupted(&config, &resume).await;
    let again = replay::plan(&config, &resume).await.expect("plan again");
    assert!(
        again.steps.iter().any(|s| s.start > s.from && s.start < s.to),
        "the interrupt landed mid-partition and the next run goes on from there: {again:?}"
    );
    replay_all(&config, &resume).await;
    assert_same(&docs_of(&resumed, &config.job).await, &live, "interrupted, then resumed");

    // To a time: the stamp of the middle record of the largest partition.
    let mut reader = topic.reader().expect("reader");
    let ends: Vec<u64> = (0..PARTITIONS).map(|p| reader.end_offset(p).expect("end")).collect();
    let largest = (0..PARTITIONS).max_by_key(|&p| ends[p as usize]).expect("partitions");
    let mut middle = Vec::new();
    reader.read(largest, ends[largest as usize] / 2, 1, &mut middle).expect("read");
    let time = middle[0].timestamp_ms;
    let cut: Vec<u64> =
        (0..PARTITIONS).map(|p| reader.offset_after(p, time).expect("offset after")).collect();
    let (at, end) = (cut[largest as usize], ends[largest as usize]);
    assert!(at > 0 && at < end, "the time falls inside partition {largest}: {cut:?} of {ends:?}");
    let until =
        Request { to: Some(Bound::Time(time)), ..request(ReplaySource::Log, Target::Fresh(to_time.clone())) };
    let (plan, _) = replay_all(&config, &until).await;
    assert_eq!(plan.steps.iter().map(|s| s.to).collect::<Vec<_>>(), cut);
    let held: BTreeMap<String, (String, Vec<(Ident, char)>)> = docs_of(&to_time, &config.job)
        .await
        .into_iter()
        .map(|(id, (text, ids, _))| (id, (text, ids)))
        .collect();
    let expected = reference(reader.as_mut(), &cut);
    assert_eq!(held.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    for (id, doc) in &expected {
        assert!(
            held[id] == *doc,
            "{id} at {time} ms: {} characters held, {} expected",
            held[id].0.len(),
            doc.0.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_equal_the_live_fold_embedded() {
    let dir = services::temp_dir("replay");
    let config = JobConfig::in_dir(&dir);
    FileLog::create(&dir.join("log"), &config.log.topic, PARTITIONS).expect("topic");
    let fresh = ["archive", "resumed", "time"].map(|n| format!("sqlite://{}/{n}.db", dir.display()));
    replays_equal_the_live_fold(config, fresh.to_vec(), 0, (2, 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_equal_the_live_fold_kafka_postgres_s3() {
    let brokers = services::kafka();
    let topic = format!("replay-{}", services::unique());
    KafkaLog::create_topic(&brokers, &topic, (PARTITIONS, 1), &[], &[]).await.expect("create topic");
    let mut config = JobConfig::in_dir(&services::temp_dir("kreplay"));
    config.log.url = format!("kafka://{brokers}").into();
    config.log.topic = topic.clone();
    config.log.group = topic.clone();
    config.log.kafka.insert("session.timeout.ms", "6000");
    // One record per batch: tansu's high watermark, where a plan ends, is then the log's
    // end (SERVICES.md); tansu takes a few seconds for one trace that way.
    config.log.kafka.insert("batch.num.messages", "1");
    config.store.url = services::postgres_database("replay_live").await.into();
    let (s3, bucket) = services::s3_bucket();
    config.objects.url = format!("s3://{bucket}/{topic}").into();
    config.objects.endpoint = Some(s3);
    config.projection.url = "".into();
    config.invalidations.topic.clear();
    config.dead_letters.topic.clear();
    let mut fresh = Vec::new();
    for name in ["replay_archive", "replay_resumed", "replay_time"] {
        fresh.push(services::postgres_database(name).await);
    }
    replays_equal_the_live_fold(config, fresh, 8000, (0, 1)).await;
}

/// Appends one op of another document of `partition` (a neighbour, for one-document
/// replays); returns its id.
fn append_a_neighbour(writer: &mut dyn LogWriter, partition: u32) -> String {
    let neighbour = (0..)
        .map(|i| format!("neighbour-{i}"))
        .find(|id| docfold::log::partition_for(id.as_bytes(), PARTITIONS) == partition)
        .expect("a neighbour");
    writer.append(neighbour.as_bytes(), &crate::spine::insert(&neighbour, 7, 1, "n")).expect("append");
    neighbour
}

/// One document into a fresh store, then its neighbour in the same partition into the same
/// store, then everything: each holds exactly what the live fold holds (a one-document
/// replay leaves no checkpoint that would pass over its neighbours' records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_document_replays_leave_their_neighbours_to_later_replays() {
    let dir = services::temp_dir("replay-doc");
    let mut config = JobConfig::in_dir(&dir);
    tune(&mut config);
    let log = FileLog::create(&dir.join("log"), &config.log.topic, PARTITIONS).expect("topic");
    let mut writer = log.writer(docfold::log::file::Fsync::Never, 1 << 20);
    fill(&mut writer, 1, 1);
    let doc = "sveltecomponent-0";
    let partition = docfold::log::partition_for(doc.as_bytes(), PARTITIONS);
    let neighbour = append_a_neighbour(&mut writer, partition);
    writer.flush().expect("flush");
    pipeline::run(&config, Until::Idle { idle_ms: 0 }, CancellationToken::new()).await.expect("live run");
    let live = docs_of(config.store.url.expose(), &config.job).await;
    let fresh = format!("sqlite://{}/fresh.db", dir.display());
    for one in [doc, neighbour.as_str()] {
        let only =
            Request { doc: Some(one.into()), ..request(ReplaySource::Log, Target::Fresh(fresh.clone())) };
        replay_all(&config, &only).await;
        assert_eq!(docs_of(&fresh, &config.job).await.get(one), live.get(one), "{one} alone");
    }
    replay_all(&config, &request(ReplaySource::Log, Target::Fresh(fresh.clone()))).await;
    assert_same(&docs_of(&fresh, &config.job).await, &live, "then everything");
}

/// A live replay: refused while an owner's heartbeat is fresh; once the owner is released,
/// it rewrites every projection and cache entry of the range with a new generation (a
/// corrupted projection at its current version is repaired), and the live job afterwards
/// goes on writing with that generation. A live replay of one document repairs it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_replay_repairs_projections_and_caches() {
    let dir = services::temp_dir("replay-live");
    let mut config = JobConfig::in_dir(&dir);
    tune(&mut config);
    let prefix = format!("test:{}:", services::unique());
    config.invalidations.redis = Some(services::redis().into());
    config.invalidations.key_prefix = prefix.clone();
    let log = FileLog::create(&dir.join("log"), &config.log.topic, PARTITIONS).expect("topic");
    let mut writer = log.writer(docfold::log::file::Fsync::Never, 1 << 20);
    fill(&mut writer, 1, 1);
    pipeline::run(&config, Until::Idle { idle_ms: 0 }, CancellationToken::new()).await.expect("live run");
    let live = docs_of(config.store.url.expose(), &config.job).await;

    // Corrupt every projection at its version, and cache a wrong text at that version.
    let projections = sqlx::SqlitePool::connect(&format!("sqlite://{}/projections.db", dir.display()))
        .await
        .expect("projections db");
    sqlx::query("UPDATE projections SET text = 'corrupt'").execute(&projections).await.expect("corrupt");
    let client = redis::Client::open(services::redis()).expect("url");
    let mut redis = client.get_multiplexed_async_connection().await.expect("redis");
    for (id, (_, _, version)) in &live {
        let _: () = redis::cmd("HSET")
            .arg(format!("{prefix}{id}"))
            .arg("version")
            .arg(version)
            .arg("text")
            .arg("stale")
            .query_async(&mut redis)
            .await
            .expect("hset");
    }

    let store = Store::open(config.store.url.expose()).await.expect("store");
    let partition =
        docfold::log::partition_for(live.keys().next().expect("a document").as_bytes(), PARTITIONS);
    let owner = store.claim(&config.job, partition).await.expect("a live owner");
    let live_replay = request(ReplaySource::Log, Target::Live);
    let plan = replay::plan(&config, &live_replay).await.expect("plan");
    let refused =
        replay::replay(&config, &live_replay, &plan, Arc::default(), CancellationToken::new()).await;
    let message = refused.expect_err("a partition has a live owner").to_string();
    assert!(message.contains(&format!("partition {partition} of job replay has a live owner")), "{message}");
    store.release(&owner).await.expect("release");
    store.close().await;
    let letters = crate::spine::dead_letters(&dir.join("log")).len();
    assert_eq!(letters, 3, "the live run dead-lettered the three garbage records");
    let (plan, _) = replay_all(&config, &live_replay).await;
    assert!(plan.sinks && plan.records() > 40_000, "{plan:?}");
    let again = crate::spine::dead_letters(&dir.join("log")).len();
    assert_eq!(again, letters, "the live job sent the range's dead letters: the replay sends none again");

    assert_same(&docs_of(config.store.url.expose(), &config.job).await, &live, "the state is unchanged");
    let sinks = docfold::sink::Sinks::open(&config).await.expect("sinks");
    let read = sinks.projections.as_ref().expect("projections");
    for (id, (text, _, version)) in &live {
        let (projection, held) = read.get_text(id).await.expect("get").expect("projected");
        assert_eq!((held.as_str(), projection.version), (text.as_str(), *version), "{id} repaired");
        assert!(projection.generation >= 1, "{id}: {projection:?}");
        let cached: u32 =
            redis::cmd("EXISTS").arg(format!("{prefix}{id}")).query_async(&mut redis).await.expect("exists");
        assert_eq!(cached, 0, "{id}: the stale cache entry was dropped");
    }

    // The live job goes on with the replay's generation: its next versions are written.
    let doc = live.keys().next().expect("a document").clone();
    writer.append(doc.as_bytes(), &crate::spine::insert(&doc, 7, 1_000_000, "!")).expect("append");
    let neighbour = append_a_neighbour(&mut writer, partition);
    writer.flush().expect("flush");
    pipeline::run(&config, Until::Idle { idle_ms: 0 }, CancellationToken::new()).await.expect("run again");
    let (projection, _) = read.get_text(&doc).await.expect("get").expect("projected");
    assert_eq!(projection.version, live[&doc].2 + 1, "the new op's version is projected");

    // One document: only it is projected again, and its partition's checkpoint ends where
    // the live job left it.
    let live = docs_of(config.store.url.expose(), &config.job).await;
    sqlx::query("UPDATE projections SET text = 'corrupt'").execute(&projections).await.expect("corrupt");
    let store = Store::open(config.store.url.expose()).await.expect("store");
    let before = store.checkpoint(&config.job, partition).await.expect("checkpoint");
    store.close().await;
    let one = Request { doc: Some(doc.clone()), ..request(ReplaySource::Log, Target::Live) };
    let (plan, _) = replay_all(&config, &one).await;
    assert_eq!(plan.steps.iter().map(|s| s.partition).collect::<Vec<_>>(), [partition], "{plan:?}");
    let store = Store::open(config.store.url.expose()).await.expect("store");
    let after = store.checkpoint(&config.job, partition).await.expect("checkpoint");
    store.close().await;
    assert_eq!(
        after.map(|c| c.next_offset),
        before.map(|c| c.next_offset),
        "the checkpoint ends where it was"
    );
    assert_same(&docs_of(config.store.url.expose(), &config.job).await, &live, "the state is unchanged");
    assert!(live.contains_key(&neighbour), "{:?}", live.keys());
    for (id, (text, _, version)) in &live {
        let (projection, held) = read.get_text(id).await.expect("get").expect("projected");
        if *id == doc {
            assert_eq!((held.as_str(), projection.version), (text.as_str(), *version), "{id} repaired");
        } else {
            assert_eq!(held, "corrupt", "{id} is not the replayed document: left alone");
        }
    }
}

fn docfold(config: &Path, args: &[&str]) -> (bool, String, String) {
    let args = [args, &["--config", config.to_str().expect("a UTF-8 path")]].concat();
    let (code, out, err) = crate::spine::docfold(config.parent().expect("a folder"), &args);
    (code == 0, out, err)
}

/// The command: a dry run says what it would do; a live replay waits for a running
/// `docfold run` to stop (its drain releases the partitions); wrong requests get reasons.
#[test]
fn the_replay_command_plans_waits_for_the_live_job_and_explains_refusals() {
    let dir = services::temp_dir("replay-cli");
    let mut config = JobConfig::in_dir(&dir);
    tune(&mut config);
    let path = dir.join("job.toml");
    std::fs::write(&path, toml::to_string(&config).expect("toml")).expect("config");
    let log = FileLog::create(&dir.join("log"), &config.log.topic, PARTITIONS).expect("topic");
    fill(&mut log.writer(docfold::log::file::Fsync::Never, 1 << 20), 1, 1);
    let mut run = Command::new(env!("CARGO_BIN_EXE_docfold"))
        .args(["run", "--config"])
        .arg(&path)
        .spawn()
        .expect("run");
    let fresh = format!("sqlite://{}/fresh.db", dir.display());
    let (ok, out, _) =
        docfold(&path, &["replay", "--into", &fresh, "--from", "100", "--to", "200", "--dry-run"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("into sqlite://") && out.contains("(sinks off)") && out.contains("dry run"),
        "{out}"
    );
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|r: &Vec<&str>| r.len() == 5 && r[0].parse::<u32>().is_ok())
        .collect();
    assert_eq!(rows.len(), PARTITIONS as usize, "{out}");
    assert!(rows.iter().all(|r| r[1] == "100" && r[3] == "100"), "{out}");
    assert!(rows.iter().any(|r| r[2] == "200" && r[4] == "100"), "{out}");
    // Wait until the run has folded everything, then a live replay is refused.
    let refused = (0..600).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        let (ok, _, err) = docfold(&path, &["replay", "--live", "--quiet"]);
        (!ok && err.contains("has a live owner")).then_some(err)
    });
    assert!(refused.is_some(), "a live replay is refused while `docfold run` holds the partitions");
    Command::new("kill").args(["-TERM", &run.id().to_string()]).status().expect("kill");
    assert!(run.wait().expect("wait").success(), "the run drains on SIGTERM");
    let (ok, out, err) = docfold(&path, &["replay", "--live", "--quiet"]);
    assert!(ok && out.contains("replayed"), "{out}{err}");
    for (args, reason) in [
        (&["replay", "--live", "--into", &fresh][..], "cannot be used with"),
        (&["replay", "--into", &fresh, "--partitions", "9"][..], "partition 9 does not exist"),
        (&["replay", "--into", config.store.url.expose()][..], "the target is the job's own state store"),
        (&["replay", "--into", &fresh, "--from", "yesterday"][..], "is not a time like"),
    ] {
        let (ok, _, err) = docfold(&path, args);
        assert!(!ok && err.contains(reason), "{args:?}: {err}");
    }
}
