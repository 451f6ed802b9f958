//! The spine when the world is less kind (issue 9): ops on the wrong partition, checkpoints
//! that disagree with the log, relative paths, bad records at a clean drain, the demo's
//! folder. Each test drives the `docfold` binary on the embedded default.

use docfold::log::file::{FileLog, Fsync};
use docfold::log::{LogReader, LogWriter, partition_for};
use docfold::lseq::{Ident, InsertRun, Level, Op, OpId};
use docfold::op::{Envelope, encode};
use docfold::sink::dead_letter::DeadLetter;
use docfold::store::{Checkpoint, LOCAL_TOPIC, Store};
use prost::Message;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::services;

/// Runs `docfold ARGS` in `dir`: (exit code, stdout, stderr).
pub fn docfold(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_docfold")).args(args).current_dir(dir).output().expect("runs");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8");
    (out.status.code().expect("exit code"), text(out.stdout), text(out.stderr))
}

/// An op inserting `text` at digit `digit` of document `doc`.
pub fn insert(doc: &str, digit: u64, counter: u64, text: &str) -> Vec<u8> {
    let start = Ident(vec![Level { digit, site: 9, counter }]);
    let op = Op {
        id: OpId { site: 9, counter },
        inserts: vec![InsertRun { start, text: text.into() }],
        deletes: vec![],
    };
    encode(&Envelope::new(doc, "test", 0, op))
}

/// A 4-partition embedded job in `dir` (absolute paths): its config file.
fn embedded_job(dir: &Path) -> PathBuf {
    let path = dir.join("job.toml");
    std::fs::write(
        &path,
        format!(
            "job = \"spine\"\n[log]\nurl = \"file://{0}/log\"\npartitions = 4\n\
             [store]\nurl = \"sqlite://{0}/state.db\"\n[objects]\nurl = \"file://{0}/objects\"\n\
             [projection]\nurl = \"sqlite://{0}/projections.db\"\n",
            dir.display()
        ),
    )
    .expect("write config");
    path
}

fn text_of(dir: &Path, config: &Path, doc: &str) -> String {
    let (code, out, err) =
        docfold(dir, &["doc", "show", doc, "--text-only", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "doc show {doc}: {err}");
    out
}

fn run_idle(dir: &Path, config: &Path) -> (i32, String, String) {
    docfold(dir, &["run", "--exit-when-idle", "--config", config.to_str().unwrap()])
}

pub fn dead_letters(log_dir: &Path) -> Vec<DeadLetter> {
    let mut reader = FileLog::open(log_dir, "doc-ops-dlq").expect("dead-letter topic").reader();
    let mut letters = Vec::new();
    for partition in 0..reader.partitions() {
        let mut records = Vec::new();
        reader.read(partition, 0, 1000, &mut records).expect("read");
        letters
            .extend(records.iter().map(|r| DeadLetter::decode(r.value.as_slice()).expect("a dead letter")));
    }
    letters
}

#[test]
fn an_op_on_the_wrong_partition_is_a_dead_letter_and_replay_puts_it_right() {
    let dir = services::temp_dir("misrouted");
    let config = embedded_job(&dir);
    let log = FileLog::create(&dir.join("log"), "doc-ops", 4).expect("topic");
    let home = partition_for(b"moved", 4);
    let wrong = (home + 1) % 4;
    {
        let mut writer = log.writer(Fsync::Always, 1 << 20);
        writer.append(b"moved", &insert("moved", 3, 1, "a")).expect("append");
        // Another partitioner (librdkafka's CRC32) put this op of the same document elsewhere.
        writer.append_to(wrong, b"moved", &insert("moved", 5, 2, "b")).expect("append");
        writer.flush().expect("flush");
    }
    let (code, out, err) = run_idle(&dir, &config);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(text_of(&dir, &config, "moved"), "a", "the misrouted op is folded nowhere");
    let letters = dead_letters(&dir.join("log"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!((letters[0].reason.as_str(), letters[0].source_partition), ("misrouted", wrong));
    assert!(
        letters[0].error.contains(&format!("partition {home}")),
        "names its partition: {}",
        letters[0].error
    );

    let replay = ["dead-letters", "replay", "--config", config.to_str().unwrap()];
    let (code, out, err) = docfold(&dir, &replay);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("re-published 1 of 1 dead letters"), "{out}");
    let (code, out, err) = run_idle(&dir, &config);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(text_of(&dir, &config, "moved"), "ab", "replayed to its own partition and folded there");
    // Replaying again is harmless: the fold dedupes.
    assert_eq!(docfold(&dir, &replay).0, 0);
    assert_eq!(run_idle(&dir, &config).0, 0);
    assert_eq!(text_of(&dir, &config, "moved"), "ab");
    assert_eq!(dead_letters(&dir.join("log")).len(), 1, "nothing new is misrouted");
}

/// Fills partition `partition` of a fresh 4-partition log with `count` ops of one
/// document (small segments: a roll every few records).
fn fill_partition(dir: &Path, count: u64) -> (u32, FileLog) {
    let log = FileLog::create(&dir.join("log"), "doc-ops", 4).expect("topic");
    let partition = partition_for(b"doc", 4);
    let mut writer = log.writer(Fsync::Always, 256);
    for i in 0..count {
        writer.append(b"doc", &insert("doc", i + 1, i + 1, "x")).expect("append");
    }
    writer.flush().expect("flush");
    (partition, log)
}

async fn set_checkpoint(dir: &Path, partition: u32, offset: u64) {
    let store = Store::open(&format!("sqlite://{}/state.db", dir.display())).await.expect("store");
    let checkpoint = Checkpoint { next_offset: offset, archived_offset: offset };
    let owner = store.claim("spine", partition).await.expect("claim");
    store.commit(&owner, &[(LOCAL_TOPIC, checkpoint)], &[]).await.expect("commit");
    store.close().await;
}

#[tokio::test]
async fn a_checkpoint_past_the_end_of_the_log_stops_the_partition() {
    let dir = services::temp_dir("past-end");
    let config = embedded_job(&dir);
    let (partition, _) = fill_partition(&dir, 3);
    // The store says 100 records were folded; the log (truncated, or recreated) has 3.
    set_checkpoint(&dir, partition, 100).await;
    let (code, out, err) = run_idle(&dir, &config);
    assert_ne!(code, 0, "the run must not go on silently: {out}");
    assert!(
        err.contains(&format!("partition {partition}")) && err.contains("100") && err.contains("ends at 3"),
        "names the partition and both offsets: {err}"
    );
    assert!(err.contains("snapshots restore"), "says what to do: {err}");
}

#[tokio::test]
async fn a_checkpoint_before_the_start_of_the_log_stops_the_partition() {
    let dir = services::temp_dir("before-start");
    let config = embedded_job(&dir);
    let (partition, _) = fill_partition(&dir, 20);
    set_checkpoint(&dir, partition, 1).await;
    // Retention removed the oldest segment: records from offset 1 on are gone.
    let folder = dir.join(format!("log/doc-ops/{partition}"));
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&folder)
        .expect("partition")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    assert!(segments.len() > 2, "several segments: {segments:?}");
    std::fs::remove_file(&segments[0]).expect("retention");
    let earliest: u64 = segments[1].file_stem().unwrap().to_str().unwrap().parse().expect("base offset");
    let (code, out, err) = run_idle(&dir, &config);
    assert_ne!(code, 0, "the run must not skip the gap: {out}");
    assert!(
        err.contains(&format!("partition {partition}")) && err.contains(&format!("starts at {earliest}")),
        "names the partition and both offsets: {err}"
    );
    assert!(err.contains("archive"), "says what to do: {err}");
}

#[test]
fn a_clean_drain_exits_0_even_after_bad_records() {
    let dir = services::temp_dir("bad-exit");
    let config = embedded_job(&dir);
    let log = FileLog::create(&dir.join("log"), "doc-ops", 4).expect("topic");
    let mut writer = log.writer(Fsync::Always, 1 << 20);
    writer.append(b"doc", b"\x00not an op").expect("append");
    writer.append(b"doc", &insert("doc", 3, 1, "ok")).expect("append");
    writer.flush().expect("flush");
    let (code, out, err) = run_idle(&dir, &config);
    assert_eq!(code, 0, "bad records are in the dead letters, the drain was clean: {out}{err}");
    assert!(out.contains("1 bad record") && out.contains("doc-ops-dlq"), "says where they went: {out}");
    assert_eq!(dead_letters(&dir.join("log")).len(), 1);
}

#[test]
fn relative_paths_in_a_config_are_relative_to_its_folder() {
    let dir = services::temp_dir("relative");
    let conf = dir.join("conf");
    std::fs::create_dir_all(&conf).expect("mkdir");
    std::fs::write(
        conf.join("job.toml"),
        "[log]\nurl = \"file://data/log\"\n[store]\nurl = \"sqlite://data/state.db\"\n\
         [objects]\nurl = \"file://data/objects\"\n[projection]\nurl = \"sqlite://data/projections.db\"\n",
    )
    .expect("write config");
    std::fs::write(dir.join("ops.jsonl"), format!("{}\n", op_line())).expect("write ops");
    // From a folder without docfold-data/ and without the config's folders.
    let (code, out, err) = docfold(&dir, &["produce", "ops.jsonl", "--config", "conf/job.toml"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = docfold(&dir, &["run", "--exit-when-idle", "--config", "conf/job.toml"]);
    assert_eq!(code, 0, "{out}{err}");
    for made in ["data/log", "data/state.db", "data/projections.db"] {
        assert!(conf.join(made).exists(), "{made} is under the config's folder");
    }
    assert!(
        !dir.join("data").exists() && !dir.join("docfold-data").exists(),
        "nothing in the working folder"
    );
    let (code, out, err) = docfold(&dir, &["projections", "show", "greeting", "--config", "conf/job.toml"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("---\nhi!\n"), "{out}");
}

pub fn op_line() -> &'static str {
    r#"{"schema_version":1,"doc_id":"greeting","origin_region":"r","client_time_ms":0,"op":{"id":{"site":"00000000000000aa","counter":1},"inserts":[{"start":[[5,"00000000000000aa",1]],"text":"hi!"}],"deletes":[]}}"#
}

#[test]
fn the_demo_deletes_only_a_folder_it_made() {
    let dir = services::temp_dir("demo-dir");
    // Someone's job folder: it has a job.toml, but the demo did not make it.
    std::fs::write(dir.join("job.toml"), "job = \"mine\"\n").expect("write");
    std::fs::write(dir.join("precious.txt"), "keep me").expect("write");
    let (code, _, err) = docfold(&dir, &["demo", "--dir", dir.to_str().unwrap(), "--copies", "1"]);
    assert_ne!(code, 0);
    assert!(err.contains("not a folder docfold demo made"), "{err}");
    assert!(dir.join("precious.txt").exists(), "nothing deleted");
}

#[test]
fn log_repair_keeps_every_valid_record_of_a_damaged_segment() {
    let dir = services::temp_dir("repair");
    let config = embedded_job(&dir);
    let log = FileLog::create(&dir.join("log"), "doc-ops", 4).expect("topic");
    let partition = partition_for(b"doc", 4);
    {
        let mut writer = log.writer(Fsync::Always, 1 << 20);
        for i in 0..5 {
            writer.append(b"doc", &insert("doc", i + 1, i + 1, "x")).expect("append");
        }
        writer.flush().expect("flush");
    }
    let segment = dir.join(format!("log/doc-ops/{partition}/00000000000000000000.seg"));
    let original = std::fs::read(&segment).expect("segment");
    let frame = original.len() / 5;
    let mut damaged = original.clone();
    damaged[2 * frame + 20] ^= 0x04; // one bit of record 2
    std::fs::write(&segment, &damaged).expect("damage");
    // The pipeline stops at the damage and says what to do.
    let (code, _, err) = run_idle(&dir, &config);
    assert_ne!(code, 0);
    assert!(err.contains("corrupt at offset 2") && err.contains("docfold log repair"), "{err}");

    let (code, out, err) = docfold(&dir, &["log", "repair", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("offset 2:")
            && out.contains("one record")
            && out.contains("1 damaged segments repaired"),
        "{out}"
    );
    let kept =
        std::fs::read_dir(segment.parent().unwrap().join("damaged")).expect("the original kept").count();
    assert_eq!(kept, 1);
    let mut records = Vec::new();
    log.reader().read(partition, 0, 10, &mut records).expect("reads after the repair");
    assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 1, 2, 3, 4], "offsets kept");
    let mut expected = Vec::new();
    {
        let copy = services::temp_dir("repair-copy");
        let copy_log = FileLog::create(&copy, "doc-ops", 4).expect("topic");
        std::fs::write(copy.join(format!("doc-ops/{partition}/00000000000000000000.seg")), &original)
            .expect("copy");
        copy_log.reader().read(partition, 0, 10, &mut expected).expect("read the original");
    }
    for i in [0, 1, 3, 4] {
        assert_eq!(
            (&records[i].key, &records[i].value),
            (&expected[i].key, &expected[i].value),
            "record {i} kept"
        );
    }
    assert!(records[2].key.is_empty(), "a placeholder where the damage was");
    // The pipeline goes on: the placeholder is a dead letter, the rest is folded.
    let (code, out, err) = run_idle(&dir, &config);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(text_of(&dir, &config, "doc"), "xxxx");
    let letters = dead_letters(&dir.join("log"));
    assert_eq!((letters.len(), letters[0].source_offset, letters[0].reason.as_str()), (1, 2, "undecodable"));
}

/// A record over librdkafka's 1 MB message limit that the fold cannot take: its dead
/// letter keeps the reason and metadata in the topic and the raw bytes in object storage,
/// and the partition moves on (it used to retry the dead letter forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_too_large_for_its_topic_keeps_its_bytes_in_object_storage() {
    use docfold::log::kafka::KafkaLog;
    let dir = services::temp_dir("big-dlq");
    let brokers = services::kafka();
    let topic = format!("big-{}", services::unique());
    for name in [topic.clone(), format!("{topic}-dlq")] {
        KafkaLog::create_topic(&brokers, &name, (1, 1), &[], &[]).await.expect("create topic");
    }
    let big: Vec<u8> = (0..(2 << 20)).map(|i: u32| (i % 253) as u8 | 0x80).collect();
    let overrides = [("message.max.bytes".to_string(), "8000000".to_string())];
    let log = KafkaLog::connect(&brokers, &topic, &overrides).expect("connect");
    tokio::task::block_in_place(|| {
        let mut writer = log.writer().expect("producer");
        writer.append(b"doc", &big).expect("append");
        writer.append(b"doc", &insert("doc", 3, 1, "ok")).expect("append");
        writer.flush().expect("flush");
    });
    let config = dir.join("job.toml");
    std::fs::write(
        &config,
        format!(
            "job = \"big\"\n[log]\nurl = \"kafka://{brokers}\"\ntopic = \"{topic}\"\ngroup = \"{topic}\"\n\
             [log.kafka]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
             [store]\nurl = \"sqlite://{d}/state.db\"\n[objects]\nurl = \"file://{d}/objects\"\n\
             [projection]\nurl = \"\"\n[invalidations]\ntopic = \"\"\n[dead_letters]\ntopic = \"{topic}-dlq\"\n",
            d = dir.display()
        ),
    )
    .expect("config");
    let mut run = Command::new(env!("CARGO_BIN_EXE_docfold"))
        .args(["run", "--exit-when-idle", "--idle-ms", "3000", "--config"])
        .arg(&config)
        .spawn()
        .expect("run");
    let since = std::time::Instant::now();
    let status = loop {
        if let Some(status) = run.try_wait().expect("status") {
            break status;
        }
        if since.elapsed() > std::time::Duration::from_secs(60) {
            run.kill().expect("kill");
            panic!("the partition is stuck behind its dead letter");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
    let mut records = Vec::new();
    KafkaLog::connect(&brokers, &format!("{topic}-dlq"), &[])
        .expect("connect")
        .reader()
        .expect("reader")
        .read(0, 0, 10, &mut records)
        .expect("read dead letters");
    assert_eq!(records.len(), 1);
    assert!(records[0].value.len() < 1 << 20, "the letter in the topic is small");
    let letter = DeadLetter::decode(records[0].value.as_slice()).expect("a dead letter");
    assert_eq!((letter.reason.as_str(), letter.source_offset, letter.value.len()), ("undecodable", 0, 0));
    assert!(letter.value_ref.starts_with("dead-letters/"), "{}", letter.value_ref);
    let objects = docfold::sink::objects::Objects::open(&docfold::config::ObjectsConfig {
        url: format!("file://{}/objects", dir.display()).into(),
        ..Default::default()
    })
    .expect("objects");
    assert!(letter.value(&objects).await.expect("read back") == big, "the raw bytes, whole");
}

/// `docfold setup` makes what a job on the real engines needs: its topics under their
/// configured names (with the shipped topic settings, from any folder), the projection
/// table, and checks that object storage answers; twice in a row is harmless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_creates_the_jobs_topics_table_and_bucket_from_any_folder() {
    use docfold::log::kafka::KafkaLog;
    let dir = services::temp_dir("setup");
    let brokers = services::kafka();
    let (s3, _) = services::s3_bucket();
    let name = format!("setup-{}", services::unique());
    let bucket = format!("{name}-bucket");
    let config = dir.join("job.toml");
    std::fs::write(
        &config,
        format!(
            "[log]\nurl = \"kafka://{brokers}\"\ntopic = \"{name}-ops\"\npartitions = 3\n\
             [store]\nurl = \"sqlite://state.db\"\n[objects]\nurl = \"s3://{bucket}/{name}\"\nendpoint = \"{s3}\"\n\
             [projection]\nurl = \"dynamodb://{name}\"\nendpoint = \"{}\"\n\
             [invalidations]\ntopic = \"{name}-inv\"\n[dead_letters]\ntopic = \"{name}-dlq\"\n",
            services::dynamodb()
        ),
    )
    .expect("config");
    for round in 0..2 {
        let (code, out, err) = tokio::task::block_in_place(|| {
            docfold(&dir, &["setup", "--max-replication", "1", "--config", "job.toml"])
        });
        assert_eq!(code, 0, "round {round}: {out}{err}");
        assert!(out.contains(&format!("topic {name}-ops: 3 partitions")), "{out}");
        assert!(out.contains("projection table ready") && out.contains("object storage ready"), "{out}");
        assert_eq!(out.contains("bucket created"), round == 0, "the bucket is made once: {out}");
    }
    for (topic, partitions) in
        [(format!("{name}-ops"), 3), (format!("{name}-inv"), 3), (format!("{name}-dlq"), 1)]
    {
        let log = KafkaLog::connect(&brokers, &topic, &[]).expect("the topic exists");
        assert_eq!(log.partitions(), partitions, "{topic}");
    }
    let (code, out, err) =
        tokio::task::block_in_place(|| docfold(&dir, &["projections", "show", "x", "--config", "job.toml"]));
    assert_eq!(code, 2, "{out}");
    assert!(err.contains("no projection of \"x\""), "the table exists and answers: {err}");
}

/// On Kafka too: a checkpoint past the end of the partition (a recreated topic, an unclean
/// leader election) stops the run with both offsets; `auto.offset.reset` never resets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_past_the_end_of_a_kafka_partition_stops_the_run() {
    use docfold::log::kafka::KafkaLog;
    let dir = services::temp_dir("kafka-past-end");
    let brokers = services::kafka();
    let topic = format!("past-end-{}", services::unique());
    KafkaLog::create_topic(&brokers, &topic, (1, 1), &[], &[]).await.expect("create topic");
    let one_per_batch = [("batch.num.messages".to_string(), "1".to_string())];
    let log = KafkaLog::connect(&brokers, &topic, &one_per_batch).expect("connect");
    tokio::task::block_in_place(|| {
        let mut writer = log.writer().expect("producer");
        for i in 0..3 {
            writer.append(b"doc", &insert("doc", i + 1, i + 1, "x")).expect("append");
        }
        writer.flush().expect("flush");
    });
    std::fs::write(
        dir.join("job.toml"),
        format!(
            "job = \"spine\"\n[log]\nurl = \"kafka://{brokers}\"\ntopic = \"{topic}\"\ngroup = \"{topic}\"\n\
             [log.kafka]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
             [store]\nurl = \"sqlite://state.db\"\n[objects]\nurl = \"file://objects\"\n[projection]\nurl = \"\"\n\
             [invalidations]\ntopic = \"\"\n[dead_letters]\ntopic = \"\"\n"
        ),
    )
    .expect("config");
    set_checkpoint(&dir, 0, 100).await;
    let (code, out, err) = tokio::task::block_in_place(|| {
        docfold(&dir, &["run", "--exit-when-idle", "--idle-ms", "5000", "--config", "job.toml"])
    });
    assert_ne!(code, 0, "the run must not go on silently: {out}");
    assert!(err.contains("partition 0") && err.contains("100") && err.contains("ends at 3"), "{err}");
}

/// `--log-format json`: one JSON object per line, and the operators' events carry an
/// `event` field: a late op's merge, a dead letter, a checkpoint.
#[test]
fn json_logs_name_the_operators_events() {
    let dir = services::temp_dir("json-logs");
    let config = embedded_job(&dir);
    let log = FileLog::create(&dir.join("log"), "doc-ops", 4).expect("topic");
    let mut writer = log.writer(Fsync::Never, 1 << 20);
    // Made a minute before the log takes it: an editor that was offline.
    let op = Op {
        id: OpId { site: 9, counter: 1 },
        inserts: vec![InsertRun {
            start: Ident(vec![Level { digit: 5, site: 9, counter: 1 }]),
            text: "late".into(),
        }],
        deletes: vec![],
    };
    let late = encode(&Envelope::new("doc", "test", docfold::store::now_ms() - 60_000, op));
    writer.append(b"doc", &late).expect("append");
    writer.append(b"doc", b"\x00garbage").expect("append");
    writer.flush().expect("flush");
    let out = Command::new(env!("CARGO_BIN_EXE_docfold"))
        .args(["--log-format", "json", "run", "--exit-when-idle", "--config"])
        .arg(&config)
        .env("RUST_LOG", "docfold=debug")
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stderr)
        .expect("utf-8")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let event =
        |name: &str| lines.iter().find(|l| l["event"] == name).unwrap_or_else(|| panic!("no {name} event"));
    assert!(event("late_ops")["max_late_ms"].as_i64().expect("a lateness") >= 60_000);
    assert_eq!(event("dead_letter")["reason"], "undecodable");
    assert!(event("checkpoint")["partition"].is_string());
}
