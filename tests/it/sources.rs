//! The fold of several source topics: a region folds its own `doc-ops` and each peer's
//! mirrored `<peer>.doc-ops` into the same documents. Two regions that took turns leading
//! each hold part of every document's ops; after mirroring both ways (the fold and the
//! mirror killed at random moments meanwhile), both regions' documents equal the
//! reference fold of all ops, every topic's checkpoint is at its end, and every op is
//! archived once per region under the topic it was read from.

use docfold::config::JobConfig;
use docfold::fold::{Doc, Folded, PartitionFold, snapshot};
use docfold::log::{LogReader, Record, Topic};
use docfold::lseq::{Rng, doc_seed};
use docfold::sink::objects::Objects;
use docfold::store::{Checkpoint, LOCAL_TOPIC, Store};
use docfold::trace::{Trace, publish, replay};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::mirror::{mirror_to_the_end, spawn_mirror};
use crate::pipeline::{kill_at_random, run_to_completion};
use crate::region::region_job;
use crate::services;
use crate::sinks::read_archive;

const PARTITIONS: u32 = 3;

/// Region `name` of {a, b, c} on the embedded log, flushing often (kills land mid-run).
fn region(dir: &Path, name: &str) -> PathBuf {
    let log = format!("url = \"file://{name}/log\"\npartitions = {PARTITIONS}\nfsync = \"never\"");
    let tuning = "[pipeline]\nflush_ops = 300\nflush_interval_ms = 40\nmax_docs_in_memory = 2\n\
                  [archive]\nmax_file_bytes = 65536\nmax_file_age_ms = 150\n[snapshots]\ninterval_ms = 100";
    region_job(dir, name, &log, tuning)
}

fn reader(config: &Path, topic: &str) -> Box<dyn LogReader> {
    let config = JobConfig::load(config).expect("config");
    Topic::open(&config, topic, false).expect("topic").reader().expect("reader")
}

/// Every record of every partition of `topic` in `config`'s log.
fn records(config: &Path, topic: &str) -> Vec<Vec<Record>> {
    let mut reader = reader(config, topic);
    (0..reader.partitions())
        .map(|partition| {
            let mut records: Vec<Record> = Vec::new();
            // Up to the end offset: a Kafka fetch may come back empty before it.
            let end = reader.end_offset(partition).expect("end offset");
            loop {
                let before = records.len();
                let from = records.last().map_or(0, |r| r.offset + 1);
                reader.read(partition, from, 4096, &mut records).expect("read");
                if records.len() == before && from >= end {
                    break records;
                }
            }
        })
        .collect()
}

/// Every document of `logs` folded (one topic after the other), without the pipeline.
fn reference(logs: &[&[Vec<Record>]]) -> BTreeMap<String, Doc> {
    let mut docs = BTreeMap::new();
    for partition in 0..PARTITIONS as usize {
        let mut fold = PartitionFold::new();
        let mut ids = BTreeSet::new();
        for record in logs.iter().flat_map(|log| &log[partition]) {
            if let Ok(Folded::NeedDoc(id)) = fold.fold(0, &record.value) {
                ids.insert(id.clone());
                fold.insert(id, Doc::default());
                fold.fold(0, &record.value).expect("an op");
            }
        }
        docs.extend(ids.into_iter().map(|id| (id.clone(), fold.get(&id).expect("folded").clone())));
    }
    docs
}

/// The region's documents equal `expected`, and each source topic's checkpoint is at the
/// end of that topic in the region's log.
async fn assert_region_converged(config: &Path, expected: &BTreeMap<String, Doc>) {
    let job = JobConfig::load(config).expect("config");
    let region = job.region.as_ref().expect("[region]").name.clone();
    let store = Store::open(job.store.url.expose()).await.expect("store");
    let ids = store.doc_ids("main").await.expect("ids");
    assert_eq!(ids, expected.keys().cloned().collect::<Vec<_>>(), "region {region}: no document missing");
    for (id, doc) in expected {
        let stored = store.load_doc("main", id).await.expect("load").expect("stored");
        let state = snapshot::decode(&stored.state).expect("decodes");
        assert!(state.text() == doc.state.text(), "region {region}: text of {id}");
        assert!(state.entries() == doc.state.entries(), "region {region}: identifiers of {id}");
    }
    for (index, topic) in docfold::pipeline::source_topics(&job).iter().enumerate() {
        let stored_as = docfold::pipeline::stored_topic(index, topic);
        let ends: Vec<u64> =
            records(config, topic).iter().map(|r| r.last().map_or(0, |r| r.offset + 1)).collect();
        for (partition, end) in ends.iter().enumerate() {
            let held = store.source_checkpoints("main", partition as u32).await.expect("checkpoints");
            let at =
                held.iter().find(|(t, _)| t == stored_as).map(|(_, c)| (c.next_offset, c.archived_offset));
            assert_eq!(at, Some((*end, *end)), "region {region}: {topic} partition {partition} checkpoint");
        }
    }
    store.close().await;
}

/// Every op of each topic is archived once, under its topic.
async fn assert_archived_once(config: &Path, topics: &[(&str, &[Vec<Record>])]) {
    let job = JobConfig::load(config).expect("config");
    let rows = read_archive(&Objects::open(&job.objects).expect("objects")).await;
    let mut seen = BTreeSet::new();
    for row in &rows {
        let at = (row.source_topic.clone(), row.partition, row.offset, row.item);
        assert!(seen.insert(at), "row {row:?} archived twice");
    }
    let archived: BTreeSet<(String, i32, i64)> = seen.into_iter().map(|(t, p, o, _)| (t, p, o)).collect();
    let mut fold = PartitionFold::new();
    let expected: BTreeSet<(String, i32, i64)> = topics
        .iter()
        .flat_map(|(topic, log)| {
            log.iter().enumerate().flat_map(move |(p, records)| records.iter().map(move |r| (*topic, p, r)))
        })
        .filter(|(_, _, r)| {
            fold.decode(&r.value).is_ok_and(|e| !e.op.inserts.is_empty() || !e.op.deletes.is_empty())
        })
        .map(|(topic, p, r)| (topic.to_string(), p as i32, r.offset as i64))
        .collect();
    assert!(archived == expected, "{} ops archived, {} expected", archived.len(), expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_regions_fold_each_others_mirrored_ops_into_the_same_documents() {
    let runs: usize = std::env::var("DOCFOLD_SOURCES_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let seed: u64 = std::env::var("DOCFOLD_SOURCES_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed);
    eprintln!("fold kills: {runs} from seed {seed} (DOCFOLD_SOURCES_KILLS, DOCFOLD_SOURCES_SEED)");
    let dir = services::temp_dir("sources");
    let (a, b) = (region(&dir, "a"), region(&dir, "b"));
    // Region a led first, then b: a's log has the start of every document's ops, b's the
    // rest and a slice of a's again (producers retrying after the failover).
    let trace = Trace::read(Path::new("tests/data/traces/sveltecomponent.json.gz")).expect("trace");
    let ops = replay(&trace, doc_seed("sveltecomponent")).expect("replays").ops;
    let docs: Vec<String> = (0..4).map(|i| format!("doc-{i}")).collect();
    let split = ops.len() * 3 / 5;
    for (config, slice) in [(&a, &ops[..split]), (&b, &ops[split - 200..])] {
        let job = JobConfig::load(config).expect("config");
        let mut writer = Topic::open(&job, "doc-ops", true).expect("topic").writer(&job).expect("writer");
        let region = &job.region.as_ref().expect("[region]").name;
        publish(writer.as_mut(), slice, &docs, region, |_| {}).expect("publish");
        writer.flush().expect("flush");
    }
    // b folds while a's ops are mirrored into it; both are killed at random moments.
    let mut rng = Rng::new(seed);
    let mut copying = spawn_mirror(&a, &b);
    let mut restart_mirror = || {
        if rng.one_to(2) == 1 {
            copying.kill().expect("SIGKILL the mirror");
        }
        if copying.try_wait().expect("mirror status").is_some() {
            copying = spawn_mirror(&a, &b);
        }
    };
    let killed =
        tokio::task::block_in_place(|| kill_at_random(&b, runs, seed, (50, 600), &mut restart_mirror));
    assert!(killed > 0, "no kill landed mid-run: the test exercised nothing");
    tokio::task::block_in_place(|| {
        let _ = copying.kill();
        copying.wait().expect("reap the mirror");
        mirror_to_the_end(&a, &b);
        mirror_to_the_end(&b, &a);
        run_to_completion(&b, 0);
        run_to_completion(&a, 0);
    });
    let (a_own, b_own) = (records(&a, "doc-ops"), records(&b, "doc-ops"));
    let expected = reference(&[&a_own, &b_own]);
    assert_eq!(expected.len(), docs.len());
    let full = &trace.end_content;
    assert!(
        expected.values().all(|doc| &doc.state.text() == full),
        "the reference is the trace's endContent"
    );
    assert_region_converged(&a, &expected).await;
    assert_region_converged(&b, &expected).await;
    let (a_in_b, b_in_a) = (records(&b, "a.doc-ops"), records(&a, "b.doc-ops"));
    assert_archived_once(&b, &[("doc-ops", &b_own), ("a.doc-ops", &a_in_b)]).await;
    assert_archived_once(&a, &[("doc-ops", &a_own), ("b.doc-ops", &b_in_a)]).await;
    eprintln!("{killed} of {runs} kills mid-run; both regions converged");
}

/// Checkpoints written before several source topics (one row per partition, with the
/// owner epoch) become the job's own topic's: a partition goes on where it was, and the
/// next claim fences the owner of before the migration.
#[tokio::test]
async fn single_topic_checkpoints_become_the_local_topics() {
    let dir = services::temp_dir("sources-migrate");
    let url = format!("sqlite://{}?mode=rwc", dir.join("state.db").display());
    let before = dir.join("migrations");
    std::fs::create_dir_all(&before).expect("mkdir");
    for entry in std::fs::read_dir("migrations/sqlite").expect("migrations") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name").to_string_lossy().to_string();
        if name.as_str() < "0006" {
            std::fs::copy(&path, before.join(&name)).expect("copy");
        }
    }
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.expect("connect");
    sqlx::migrate::Migrator::new(before).await.expect("migrator").run(&pool).await.expect("migrate to 0005");
    sqlx::query(
        "INSERT INTO checkpoints (job, partition_id, next_offset, updated_ms, archived_offset, owner_epoch) \
         VALUES ('job', 1, 9, 0, 4, 3), ('job', 2, 5, 0, NULL, 1)",
    )
    .execute(&pool)
    .await
    .expect("old checkpoints");
    pool.close().await;
    let store = Store::open(&url).await.expect("open and migrate");
    let at = |next_offset, archived_offset| Some(Checkpoint { next_offset, archived_offset });
    assert_eq!(store.checkpoint("job", 1).await.expect("read"), at(9, 4));
    assert_eq!(store.checkpoint("job", 2).await.expect("read"), at(5, 5), "no archive progress: the fold's");
    let owner = store.claim("job", 1).await.expect("claim");
    assert_eq!(owner.epoch, 4, "the epoch goes on from the old row's");
    let stale = docfold::store::Owner { epoch: 3, ..owner.clone() };
    assert!(store.check_owner(&stale).await.is_err(), "the owner of before the migration is fenced");
    store
        .commit(&owner, &[(LOCAL_TOPIC, Checkpoint { next_offset: 12, archived_offset: 12 })], &[])
        .await
        .expect("commit");
    assert_eq!(
        store.checkpoints("job").await.expect("list"),
        [(1, LOCAL_TOPIC.into(), 12), (2, LOCAL_TOPIC.into(), 5)]
    );
    store.close().await;
}

/// On Kafka and PostgreSQL: a job folding its topic and a peer's mirrored one, in a group
/// of two members, one killed mid-stream. The `range` assignor gives each member the same
/// partition numbers of both topics (a split assignment would stop the member with an
/// error), the survivor takes the dead member's partitions of both, and every document
/// equals the reference fold of both topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_group_keeps_a_partitions_topics_together() {
    let brokers = services::kafka();
    let topic = format!("ksources-{}", services::unique());
    let mirrored = format!("p.{topic}");
    let (invalidations, dead_letters) = (format!("{topic}-inv"), format!("{topic}-dlq"));
    for name in [&topic, &mirrored, &invalidations, &dead_letters] {
        docfold::log::kafka::KafkaLog::create_topic(&brokers, name, (PARTITIONS, 1), &[], &[])
            .await
            .expect("create topic");
    }
    let dir = services::temp_dir("ksources");
    let store = services::postgres_database("ksources").await;
    let config = |file: &str, flush_ops: u64| {
        let text = format!(
            "job = \"main\"\n[log]\nurl = \"kafka://{brokers}\"\ntopic = \"{topic}\"\ngroup = \"{topic}\"\n\
             partitions = {PARTITIONS}\n[log.kafka]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
             [store]\nurl = \"{store}\"\n[pipeline]\nflush_ops = {flush_ops}\nflush_interval_ms = 40\n\
             [objects]\nurl = \"file://objects\"\n[projection]\nurl = \"sqlite://projections.db\"\n\
             [invalidations]\ntopic = \"{invalidations}\"\n[dead_letters]\ntopic = \"{dead_letters}\"\n\
             [region]\nname = \"r\"\npeers = [\"p\"]\nleases = \"sqlite://leases.db\"\n"
        );
        let path = dir.join(file);
        std::fs::write(&path, text).expect("write config");
        path
    };
    let (slow, fast) = (config("slow.toml", 20), config("fast.toml", 5000));
    let trace = Trace::read(Path::new("tests/data/traces/friendsforever.json.gz")).expect("trace");
    let ops = replay(&trace, doc_seed("friendsforever")).expect("replays").ops;
    let docs: Vec<String> = (0..6).map(|i| format!("doc-{i}")).collect();
    let split = ops.len() / 2;
    let job = JobConfig::load(&fast).expect("config");
    for (name, slice) in [(&topic, &ops[..split]), (&mirrored, &ops[split - 100..])] {
        let mut writer = Topic::open(&job, name, false).expect("topic").writer(&job).expect("writer");
        tokio::task::block_in_place(|| {
            publish(writer.as_mut(), slice, &docs, "r", |_| {}).expect("publish");
            writer.flush().expect("flush");
        });
    }
    tokio::task::block_in_place(|| {
        let mut doomed = crate::pipeline::spawn_run(&slow, 60_000);
        let survivor = crate::pipeline::spawn_run(&fast, 15_000);
        std::thread::sleep(std::time::Duration::from_millis(5000));
        assert!(doomed.try_wait().expect("status").is_none(), "the slow member is still folding when killed");
        doomed.kill().expect("SIGKILL");
        doomed.wait().expect("reap");
        let status = survivor.wait_with_output().expect("survivor").status;
        assert_eq!(status.code(), Some(0), "survivor failed: {status}");
    });
    let (own, copied) = (records(&fast, &topic), records(&fast, &mirrored));
    let expected = reference(&[&own, &copied]);
    let full = &trace.end_content;
    let records_of = |log: &[Vec<Record>]| log.iter().map(Vec::len).sum::<usize>();
    let (own_n, copied_n) = (records_of(&own), records_of(&copied));
    eprintln!("{own_n} + {copied_n} records of {} ops", ops.len());
    assert_eq!(expected.len(), docs.len(), "every document folded");
    for (id, doc) in &expected {
        assert!(&doc.state.text() == full, "{id}: the reference is the trace's endContent");
    }
    assert_region_converged(&fast, &expected).await;
}
