//! `docfold mirror`: a region's op topic copied into `<region>.<topic>` of another region's
//! log — every record, in order, with partition, key, value and timestamp, across kills —
//! on the embedded log and on Kafka (tansu).

use docfold::config::{JobConfig, RegionConfig};
use docfold::log::kafka::KafkaLog;
use docfold::log::{LogReader, LogWriter, Record, TimestampType, Topic};
use docfold::mirror::{MirrorError, check, due};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::link::{Delay, Link, Protocol};
use crate::region::region_job;
use crate::services;
use crate::world::status;

/// `docfold mirror --from FROM --config TO` with `args` before them.
fn mirror_command(args: &[&str], from: &Path, to: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_docfold"));
    command.arg("mirror").args(args).arg("--from").arg(from).arg("--config").arg(to).env("RUST_LOG", "warn");
    command
}

pub fn spawn_mirror(from: &Path, to: &Path) -> Child {
    let mut command = mirror_command(&["--exit-when-idle"], from, to);
    command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn docfold mirror")
}

pub fn mirror_to_the_end(from: &Path, to: &Path) -> String {
    let out = spawn_mirror(from, to).wait_with_output().expect("mirror");
    assert!(out.status.success(), "the mirror failed: {}", out.status);
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Appends `count` records with seeded keys and values to the writer.
fn produce(writer: &mut dyn LogWriter, rng: &mut StdRng, count: usize) {
    for i in 0..count {
        let key = format!("doc-{}", rng.random_range(0..40));
        let value = format!("op {i} {}", rng.random::<u64>());
        writer.append(key.as_bytes(), value.as_bytes()).expect("append");
    }
    writer.flush().expect("flush");
}

fn all_records(reader: &mut dyn LogReader) -> Vec<Vec<Record>> {
    (0..reader.partitions())
        .map(|partition| {
            let mut records = Vec::new();
            loop {
                let from = records.last().map_or(0, |r: &Record| r.offset + 1);
                let before = records.len();
                reader.read(partition, from, 4096, &mut records).expect("read");
                if records.len() == before {
                    break records;
                }
            }
        })
        .collect()
}

/// The target holds exactly the source's records, partition for partition: each one (key,
/// value, headers, timestamp), in the source's order once repeats are dropped, and nothing
/// else.
/// Returns how many were repeated.
fn assert_mirrored(source: &[Vec<Record>], target: &[Vec<Record>], same_timestamps: bool) -> usize {
    assert_eq!(source.len(), target.len(), "partition counts");
    let mut repeated = 0;
    for (partition, (from, to)) in source.iter().zip(target).enumerate() {
        let fields = |r: &Record| {
            let timestamp = if same_timestamps { r.timestamp_ms } else { 0 };
            (r.key.clone(), r.value.clone(), r.headers.clone(), timestamp)
        };
        let mut seen = HashSet::new();
        let firsts: Vec<_> = to.iter().map(fields).filter(|f| seen.insert(f.clone())).collect();
        repeated += to.len() - firsts.len();
        let expected: Vec<_> = from.iter().map(fields).collect();
        assert_eq!(firsts.len(), expected.len(), "partition {partition}: records copied");
        assert!(firsts == expected, "partition {partition}: the copies are the source's records in order");
    }
    repeated
}

/// Two regions a and b on the embedded log (2 partitions) in a fresh folder: the folder and
/// their job files.
fn embedded_pair(name: &str) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let dir = services::temp_dir(name);
    let log = |region: &str| format!("url = \"file://{region}/log\"\npartitions = 2");
    let (a, b) = (region_job(&dir, "a", &log("a"), ""), region_job(&dir, "b", &log("b"), ""));
    (dir, a, b)
}

/// A writer to the `doc-ops` topic of the job file `config`.
fn doc_ops_writer(config: &Path) -> Box<dyn LogWriter> {
    let config = JobConfig::load(config).expect("config");
    Topic::open(&config, "doc-ops", true).expect("topic").writer(&config).expect("writer")
}

fn reader_of(config: &Path, topic: &str) -> Box<dyn LogReader> {
    let config = JobConfig::load(config).expect("config");
    Topic::open(&config, topic, false).expect("topic").reader().expect("reader")
}

#[test]
fn the_mirror_copies_every_record_across_kills() {
    let runs: usize = std::env::var("DOCFOLD_MIRROR_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let seed: u64 = std::env::var("DOCFOLD_MIRROR_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed);
    eprintln!("mirror kills: {runs} from seed {seed} (DOCFOLD_MIRROR_KILLS, DOCFOLD_MIRROR_SEED)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = services::temp_dir("mirror");
    let log = |name: &str| format!("url = \"file://{name}/log\"\npartitions = 3\nfsync = \"never\"");
    // Small batches: the mirror copies in many rounds (a flush and a checkpoint each), so
    // kills land mid-copy.
    let small_batches = format!("{}\n[pipeline]\nbatch = 50", log("b"));
    let (a, b) = (region_job(&dir, "a", &log("a"), ""), region_job(&dir, "b", &small_batches, ""));
    let config = JobConfig::load(&a).expect("config a");
    let mut writer = Topic::open(&config, "doc-ops", true).expect("topic").writer(&config).expect("writer");
    produce(writer.as_mut(), &mut rng, 30_000);
    let lag = |config: &Path| status(config)["replication_lag_records"].clone();
    assert_eq!(lag(&b)["a"], 30_000, "region status: nothing of a is mirrored yet");
    assert!(
        lag(&b)["c"]["unknown"].as_str().is_some_and(|r| r.contains("c.toml")),
        "no job file for c: {}",
        lag(&b)
    );
    let mut killed_mid_copy = 0;
    for run in 0..runs {
        // Every other run checkpoints every 100 ms instead of every round (a pushing mirror).
        let args: &[&str] = if run % 2 == 1 {
            &["--exit-when-idle", "--checkpoint-ms", "100"]
        } else {
            &["--exit-when-idle"]
        };
        let mut child =
            mirror_command(args, &a, &b).stdout(Stdio::null()).spawn().expect("spawn docfold mirror");
        std::thread::sleep(Duration::from_millis(rng.random_range(5..100)));
        killed_mid_copy += usize::from(child.try_wait().expect("status").is_none());
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        if run == runs / 2 {
            produce(writer.as_mut(), &mut rng, 10_000); // the source goes on meanwhile
        }
    }
    let summary = mirror_to_the_end(&a, &b);
    let source = all_records(reader_of(&a, "doc-ops").as_mut());
    let target = all_records(reader_of(&b, "a.doc-ops").as_mut());
    let repeated = assert_mirrored(&source, &target, true);
    assert_eq!(lag(&b)["a"], 0, "region status: every record of a is mirrored");
    eprintln!("{killed_mid_copy} of {runs} kills mid-copy; {repeated} records copied twice\n{summary}");
    assert!(killed_mid_copy > 0, "no kill landed while copying: the test exercised nothing");
    // Caught up, a mirror copies nothing more.
    let again = mirror_to_the_end(&a, &b);
    assert!(again.lines().skip(2).all(|l| l.trim_end().ends_with(" 0")), "{again}");
    assert_eq!(all_records(reader_of(&b, "a.doc-ops").as_mut()), target);
    // A mirror that checkpoints rarely, stopped by Ctrl-C, flushes and checkpoints what it
    // copied on its way out.
    produce(writer.as_mut(), &mut rng, 1_000);
    let mut child =
        mirror_command(&["--checkpoint-ms", "600000"], &a, &b).stdout(Stdio::null()).spawn().expect("spawn");
    std::thread::sleep(Duration::from_secs(2));
    let interrupted =
        Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill -INT");
    assert!(interrupted.success());
    assert!(child.wait().expect("reap").success(), "the interrupted mirror exits cleanly");
    assert_eq!(lag(&b)["a"], 0, "region status: the last copies are checkpointed");
    let target = all_records(reader_of(&b, "a.doc-ops").as_mut());
    assert_mirrored(&all_records(reader_of(&a, "doc-ops").as_mut()), &target, true);
}

fn region(name: &str, peers: &[&str]) -> RegionConfig {
    RegionConfig {
        name: name.into(),
        peers: peers.iter().map(|p| p.to_string()).collect(),
        ..RegionConfig::default()
    }
}

#[test]
fn a_mirror_never_copies_a_mirror_or_itself() {
    let (a, b) = (region("a", &["b", "c"]), region("b", &["a", "c"]));
    assert_eq!(check(&a, &b, "doc-ops"), Ok(()));
    assert!(matches!(check(&a, &a, "doc-ops"), Err(MirrorError::SameRegion(_))));
    assert!(matches!(check(&a, &region("b", &["c"]), "doc-ops"), Err(MirrorError::NotAPeer { .. })));
    for topic in ["c.doc-ops", "b.doc-ops", "a.doc-ops"] {
        assert!(matches!(check(&a, &b, topic), Err(MirrorError::Mirrored { .. })), "{topic}");
    }
    // And on the command line: a source whose topic is a mirrored one is refused.
    let dir = services::temp_dir("mirror-refused");
    let log = |name: &str, topic: &str| format!("url = \"file://{name}/log\"\ntopic = \"{topic}\"");
    let (from, to) =
        (region_job(&dir, "a", &log("a", "c.doc-ops"), ""), region_job(&dir, "b", &log("b", "doc-ops"), ""));
    let out = Command::new(env!("CARGO_BIN_EXE_docfold"))
        .args(["mirror", "--exit-when-idle", "--from"])
        .arg(&from)
        .arg("--config")
        .arg(&to)
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("\"c.doc-ops\" is a mirrored topic"), "{err}");
}

#[test]
fn a_delayed_link_copies_a_prefix_of_what_is_old_enough() {
    let record = |offset, timestamp_ms| Record {
        topic: "doc-ops".into(),
        offset,
        timestamp_ms,
        timestamp_type: TimestampType::LogAppend,
        key: vec![],
        value: vec![],
        headers: vec![],
    };
    let batch = [record(0, 100), record(1, 250), record(2, 120), record(3, 400)];
    assert_eq!(due(&batch, 1_000, 0), 4);
    assert_eq!(due(&batch, 300, 50), 3);
    assert_eq!(due(&batch, 300, 100), 1, "a prefix: offset 2 is old enough but waits behind offset 1");
    assert_eq!(due(&batch, 299, 200), 0);
    assert_eq!(due(&[], 0, 0), 0);
}

/// Two regions, two brokers: region a's topic on the shared broker, region b's log on a
/// tansu of the test's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_copies_a_kafka_topic_to_another_cluster() {
    let source_brokers = services::kafka();
    let port = services::free_port();
    let mut target_broker = services::start_tansu(port, "memory://tansu/", &[]);
    let target_brokers = format!("127.0.0.1:{port}");
    let topic = format!("mirror-{}", services::unique());
    KafkaLog::create_topic(&source_brokers, &topic, (3, 1), &[], &[]).await.expect("source topic");
    let create_time = [("message.timestamp.type".to_string(), "CreateTime".to_string())];
    let mirrored = format!("a.{topic}");
    KafkaLog::create_topic(&target_brokers, &mirrored, (3, 1), &create_time, &[])
        .await
        .expect("target topic");
    let dir = services::temp_dir("mirror-kafka");
    let log = |brokers: &str| format!("url = \"kafka://{brokers}\"\ntopic = \"{topic}\"");
    let (a, b) =
        (region_job(&dir, "a", &log(&source_brokers), ""), region_job(&dir, "b", &log(&target_brokers), ""));
    let source = KafkaLog::connect(&source_brokers, &topic, &[]).expect("connect");
    let mut rng = StdRng::seed_from_u64(7);
    tokio::task::block_in_place(|| {
        produce(&mut source.writer().expect("producer"), &mut rng, 600);
        // Headers are kept (a residency stamp, say, and one with a null value).
        use rdkafka::message::{Header, OwnedHeaders};
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let producer: BaseProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &source_brokers)
            .create()
            .expect("producer");
        for i in 0..20u32 {
            let headers = OwnedHeaders::new()
                .insert(Header { key: "docfold-residency", value: Some("eu-west-1") })
                .insert(Header { key: "empty", value: None::<&[u8]> });
            let key = format!("doc-{i}");
            let record = BaseRecord::to(&topic).key(&key).payload("with headers").headers(headers);
            producer.send(record).map_err(|(e, _)| e).expect("send");
        }
        producer.flush(Duration::from_secs(30)).expect("delivered");
        mirror_to_the_end(&a, &b);
        let source = all_records(&mut source.reader().expect("reader"));
        let target = KafkaLog::connect(&target_brokers, &mirrored, &[]).expect("connect");
        let target = all_records(&mut target.reader().expect("reader"));
        assert_eq!(source.iter().map(Vec::len).sum::<usize>(), 620);
        let stamped = target.iter().flatten().filter(|r| r.headers.len() == 2).count();
        assert_eq!(stamped, 20, "the headers came along");
        assert_mirrored(&source, &target, true);
    });
    target_broker.kill().expect("stop the target broker");
    target_broker.wait().expect("reap");
}

/// A mirror whose source is reached through a link that is cut for a while keeps going:
/// it waits, and once the link is back it copies what it missed and what arrived meanwhile,
/// without exiting (a cross-region link goes down now and then; nobody should have to
/// restart the mirror).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_rides_out_a_cut_link() {
    let brokers = services::kafka();
    let topic = format!("mirror-cut-{}", services::unique());
    KafkaLog::create_topic(&brokers, &topic, (2, 1), &[], &[]).await.expect("source topic");
    let delay = Delay { one_way: Duration::from_millis(20), jitter: Duration::ZERO };
    let link = Link::with(services::host_port(&brokers), Protocol::Kafka, delay, 11).await;
    let dir = services::temp_dir("mirror-cut");
    let kafka = |brokers: &str| format!("url = \"kafka://{brokers}\"\ntopic = \"{topic}\"");
    let (a, b) = (
        region_job(&dir, "a", &kafka(&link.addr.to_string()), ""),
        region_job(&dir, "b", "url = \"file://b/log\"\npartitions = 2", ""),
    );
    let source = KafkaLog::connect(&brokers, &topic, &[]).expect("connect");
    let mut writer = source.writer().expect("producer");
    let mut rng = StdRng::seed_from_u64(11);
    let mut mirror = mirror_command(&[], &a, &b)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn docfold mirror");
    let target = |config: &Path| {
        let mut reader = Topic::open(&JobConfig::load(config).expect("config"), &format!("a.{topic}"), true)
            .expect("target topic")
            .reader()
            .expect("reader");
        (0..2).map(|p| reader.end_offset(p).expect("end")).sum::<u64>()
    };
    tokio::task::block_in_place(|| {
        produce(&mut writer, &mut rng, 500);
        let until = |count: u64| {
            let since = std::time::Instant::now();
            while target(&b) < count {
                assert!(
                    since.elapsed() < Duration::from_secs(30),
                    "the mirror copied {} of {count}",
                    target(&b)
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        until(500);
        link.set_up(false);
        produce(&mut writer, &mut rng, 300);
        std::thread::sleep(Duration::from_secs(3));
        assert!(mirror.try_wait().expect("status").is_none(), "the mirror exited while its link was cut");
        link.set_up(true);
        until(800);
        assert!(mirror.try_wait().expect("status").is_none(), "the mirror is still running");
    });
    // (Whether the client reported the cut as an error, which the mirror then waits out,
    // or rode it out by itself, depends on timing; either way the mirror goes on.)
    mirror.kill().expect("stop the mirror");
    mirror.wait().expect("reap");
    tokio::task::block_in_place(|| {
        let source = all_records(&mut source.reader().expect("reader"));
        let copied =
            Topic::open(&JobConfig::load(&b).expect("config"), &format!("a.{topic}"), true).expect("topic");
        assert_mirrored(&source, &all_records(copied.reader().expect("reader").as_mut()), true);
    });
}

/// A mirrored record that is not an op is copied like any other (the mirror never decodes)
/// and becomes a dead letter of the target region's fold, naming the mirrored topic; the
/// fold goes on with the ops around it.
#[test]
fn a_mirrored_record_that_is_not_an_op_is_a_dead_letter_of_the_target() {
    let (dir, a, b) = embedded_pair("mirror-garbage");
    let mut writer = doc_ops_writer(&a);
    let envelope = docfold::op::decode_json(crate::spine::op_line()).expect("an op");
    writer.append(b"greeting", b"\x00 not an op").expect("append");
    writer.append(b"greeting", &docfold::op::encode(&envelope)).expect("append");
    writer.flush().expect("flush");
    drop(writer);
    let copied = mirror_to_the_end(&a, &b);
    assert!(copied.contains("mirror a → b"), "{copied}");
    crate::pipeline::run_to_completion(&b, 0);
    let letters = crate::spine::dead_letters(&dir.join("b/log"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!((letters[0].source_topic.as_str(), letters[0].reason.as_str()), ("a.doc-ops", "undecodable"));
    let out = Command::new(env!("CARGO_BIN_EXE_docfold"))
        .args(["doc", "show", "greeting", "--text-only", "--config"])
        .arg(&b)
        .output()
        .expect("doc show");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), "hi!", "the op after it was folded");
}

/// The MirrorMaker 2 properties for production name the mirrored topics as `docfold
/// mirror` does, copy only each region's own op topic, and cover every ordered pair.
#[test]
fn the_mirrormaker_2_properties_make_the_same_topic_names() {
    let text = std::fs::read_to_string("deploy/mm2/mm2.properties").expect("deploy/mm2/mm2.properties");
    let properties: std::collections::BTreeMap<&str, &str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_once('=').map(|(k, v)| (k.trim(), v.trim())).expect("key = value"))
        .collect();
    assert_eq!(
        properties["replication.policy.class"],
        "org.apache.kafka.connect.mirror.DefaultReplicationPolicy"
    );
    let separator = properties["replication.policy.separator"];
    let clusters: Vec<&str> = properties["clusters"].split(',').map(str::trim).collect();
    assert_eq!(clusters.len(), 3);
    for source in &clusters {
        for target in clusters.iter().filter(|t| *t != source) {
            assert_eq!(properties[format!("{source}->{target}.enabled").as_str()], "true");
            let topics = properties[format!("{source}->{target}.topics").as_str()];
            assert_eq!(topics, "doc-ops", "{source}->{target}: only the region's own topic");
            let mm2_name = format!("{source}{separator}{topics}");
            assert_eq!(mm2_name, docfold::mirror::mirrored_topic(source, topics));
        }
    }
}

/// A link delayed by an hour copies nothing yet; the mirror's metrics say how far behind
/// it is, in records and seconds.
#[test]
fn a_delayed_mirror_reports_its_lag() {
    let (_, a, b) = embedded_pair("mirror-lag");
    let mut writer = doc_ops_writer(&a);
    produce(writer.as_mut(), &mut StdRng::seed_from_u64(3), 500);
    std::thread::sleep(Duration::from_millis(1_100));
    let port = services::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut mirror = mirror_command(&["--delay-ms", "3600000", "--metrics-listen", &listen], &a, &b)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn docfold mirror");
    let value = |body: &str, name: &str, partition: u32| {
        services::metric(body, name, &[("source", "a"), ("partition", &partition.to_string())])
    };
    let body = services::scrape_until(port, |body| body.contains("docfold_mirror_lag_records"));
    mirror.kill().expect("stop the mirror");
    mirror.wait().expect("reap");
    let source = all_records(reader_of(&a, "doc-ops").as_mut());
    for (partition, records) in source.iter().enumerate() {
        let partition = partition as u32;
        let behind = value(&body, "docfold_mirror_lag_records", partition);
        assert_eq!(behind, Some(records.len() as f64), "partition {partition}:\n{body}");
        let seconds = value(&body, "docfold_mirror_lag_seconds", partition).expect("lag seconds");
        assert!(seconds >= 1.0, "the oldest uncopied record is over a second old: {seconds}");
    }
}
