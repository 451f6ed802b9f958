//! Backends going away. DynamoDB, S3 and Redis are reached through TCP proxies the test
//! cuts (connections dropped, the port refusing) one after the other while ops keep
//! arriving; Kafka is a broker of the test's own (tansu storing in S3) killed and
//! restarted. The pipeline keeps folding, retries with backoff, catches up, and loses
//! nothing. `DOCFOLD_OUTAGE_SECS` sets each outage (default 3; the figure is 30).

use docfold::config::JobConfig;
use docfold::log::file::{FileLog, Fsync};
use docfold::log::kafka::KafkaLog;
use docfold::log::{LogReader, LogWriter, partition_for};
use docfold::lseq::doc_seed;
use docfold::pipeline::{self, Until};
use docfold::sink::Sinks;
use docfold::sink::projection::ProjectionStore;
use docfold::store::Store;
use docfold::trace::{Trace, publish, replay};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::link::Link;
use crate::services::{self, host_port};
use crate::sinks::{offsets_once, read_archive};

fn outage() -> Duration {
    Duration::from_secs(std::env::var("DOCFOLD_OUTAGE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(3))
}

fn svelte_ops() -> Vec<docfold::lseq::Op> {
    let trace = Trace::read(Path::new("tests/data/traces/sveltecomponent.json.gz")).expect("trace");
    replay(&trace, doc_seed("sveltecomponent")).expect("replays").ops
}

/// Publishes the sveltecomponent trace to `docs` (in a blocking thread).
async fn produce(mut writer: Box<dyn LogWriter>, docs: &[String]) {
    let docs = docs.to_vec();
    tokio::task::spawn_blocking(move || {
        publish(writer.as_mut(), &svelte_ops(), &docs, "eu", |_| {}).expect("publish");
        writer.flush().expect("flush");
    })
    .await
    .expect("producer");
}

/// Whether both the fold and the archive have reached `ends` in every partition.
async fn caught_up(store: &Store, ends: &[u64]) -> bool {
    for (partition, &end) in ends.iter().enumerate() {
        let held = store.checkpoint("outage", partition as u32).await.expect("checkpoint");
        if held.map_or((0, 0), |c| (c.next_offset, c.archived_offset)) != (end, end) {
            return false;
        }
    }
    true
}

type Run = tokio::task::JoinHandle<
    Result<Vec<docfold::pipeline::PartitionSummary>, docfold::pipeline::PipelineError>,
>;

/// Waits (at most a minute) until the pipeline has caught up with `ends`.
async fn wait_caught_up(store: &Store, ends: &[u64], run: &Run, after: &str) {
    let since = Instant::now();
    while !caught_up(store, ends).await {
        assert!(!run.is_finished(), "the pipeline stopped after {after}");
        if since.elapsed() > Duration::from_secs(60) {
            let held: Vec<_> =
                futures::future::join_all((0..ends.len() as u32).map(|p| store.checkpoint("outage", p)))
                    .await;
            panic!("not caught up a minute after {after}: checkpoints {held:?}, ends {ends:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts the pipeline on `config_text` (a job called "outage"); its sinks and store.
async fn start(dir: &Path, config_text: &str) -> (JobConfig, Sinks, Store, Run, CancellationToken) {
    let path = dir.join("job.toml");
    std::fs::write(&path, config_text).expect("config");
    let config = JobConfig::load(&path).expect("config");
    let sinks = Sinks::open(&config).await.expect("sinks");
    sinks.projections.as_ref().expect("projections").backend().create().await.expect("table");
    let store = Store::open(config.store.url.expose()).await.expect("store");
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let (config, cancel) = (config.clone(), cancel.clone());
        async move { pipeline::run(&config, Until::Cancelled, cancel).await }
    });
    (config, sinks, store, run, cancel)
}

/// Stops the pipeline; then nothing is lost: it retried at least `retries` flushes,
/// projections equal the store, every op of the `ends` is archived exactly once.
async fn assert_nothing_lost(
    run: Run,
    cancel: CancellationToken,
    sinks: &Sinks,
    store: &Store,
    docs: &[String],
    ends: &[u64],
    retries: u64,
) {
    cancel.cancel();
    let summaries = run.await.expect("joined").expect("the pipeline never stopped");
    let retried: u64 = summaries.iter().map(|s| s.retries).sum();
    assert!(retried >= retries, "outages made flushes fail and retry ({retried} retries)");
    let projections = sinks.projections.as_ref().expect("projections");
    for doc in docs {
        let stored = store.load_doc("outage", doc).await.expect("load").expect("folded");
        let state = docfold::fold::snapshot::decode(&stored.state).expect("decodes");
        let (item, text) = projections.get_text(doc).await.expect("read").expect("projected");
        assert_eq!(item.version, stored.version, "projection version of {doc}");
        assert!(text == state.text(), "projection text of {doc}");
    }
    let archived = offsets_once(&read_archive(&sinks.objects).await);
    assert_eq!(archived.len() as u64, ends.iter().sum::<u64>(), "every op archived exactly once");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_rides_out_backend_outages() {
    docfold::telemetry::init_logs("warn", false); // what failed and what was retried, in the test output
    let dir = services::temp_dir("outage");
    let (s3, bucket) = services::s3_bucket();
    let (dynamodb, s3_proxy, redis) = (
        Link::start(host_port(&services::dynamodb())).await,
        Link::start(host_port(&s3)).await,
        Link::start(host_port(&services::redis())).await,
    );
    let unique = services::unique();
    let text = format!(
        "job = \"outage\"\n[log]\nurl = \"file://{d}/log\"\npartitions = 2\n[store]\nurl = \"sqlite://{d}/state.db\"\n\
         [pipeline]\nflush_interval_ms = 100\n[archive]\nmax_file_age_ms = 300\n[snapshots]\ninterval_ms = 500\n\
         [objects]\nurl = \"s3://{bucket}/outage-{unique}\"\nendpoint = \"http://{s3p}\"\n\
         [projection]\nurl = \"dynamodb://outage-{unique}\"\nendpoint = \"http://{ddb}\"\n\
         [invalidations]\nredis = \"redis://{rds}\"\nkey_prefix = \"outage:{unique}:\"\nchannel = \"outage:{unique}\"\n",
        d = dir.display(),
        s3p = s3_proxy.addr,
        ddb = dynamodb.addr,
        rds = redis.addr,
    );
    let log = FileLog::create(&dir.join("log"), "doc-ops", 2).expect("topic");
    let writer = || Box::new(log.writer(Fsync::Never, 1 << 20)) as Box<dyn LogWriter>;
    let ends = || {
        let mut reader = log.reader();
        (0..2).map(|p| reader.end_offset(p).expect("end")).collect::<Vec<u64>>()
    };
    // Documents on both partitions.
    let docs: Vec<String> = ["svelte-0", "svelte-5", "svelte-1", "svelte-2"].map(String::from).to_vec();
    produce(writer(), &docs[..2]).await;
    let (_, sinks, store, run, cancel) = start(&dir, &text).await;
    for (proxy, name) in [(&dynamodb, "DynamoDB"), (&s3_proxy, "S3"), (&redis, "Redis")] {
        proxy.set_up(false);
        // Ops keep arriving during the outage; the checkpoint cannot pass them.
        produce(writer(), &docs[2..]).await;
        tokio::time::sleep(outage()).await;
        assert!(
            !caught_up(&store, &ends()).await,
            "{name} down: the checkpoint (or the archive's) must wait for it"
        );
        proxy.set_up(true);
        wait_caught_up(&store, &ends(), &run, &format!("{name} came back")).await;
    }
    assert_nothing_lost(run, cancel, &sinks, &store, &docs, &ends(), 3).await;
}

/// A tansu broker of the test's own on `port`, keeping its log in the S3 server's `bucket`
/// so that a restart loses nothing.
fn start_broker(port: u16, s3: &str, bucket: &str) -> Child {
    let env = [("AWS_ENDPOINT", s3), ("AWS_ALLOW_HTTP", "true"), ("AWS_DEFAULT_REGION", "us-east-1")];
    services::start_tansu(port, &format!("s3://{bucket}/"), &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_rides_out_a_kafka_outage() {
    docfold::telemetry::init_logs("warn", false);
    let dir = services::temp_dir("koutage");
    let (s3, _) = services::s3_bucket();
    let bucket = format!("tansu-{}", services::unique());
    services::create_bucket(&s3, &bucket);
    let port = services::free_port();
    let mut broker = start_broker(port, &s3, &bucket);
    let brokers = format!("127.0.0.1:{port}");
    for (topic, partitions) in [("doc-ops", 2), ("doc-invalidations", 2), ("doc-ops-dlq", 1)] {
        KafkaLog::create_topic(&brokers, topic, (partitions, 1), &[], &[]).await.expect("create topic");
    }
    let writer = || {
        Box::new(KafkaLog::connect(&brokers, "doc-ops", &[]).expect("connect").writer().expect("producer"))
            as Box<dyn LogWriter>
    };
    let docs: Vec<String> = ["svelte-0", "svelte-5", "svelte-1", "svelte-2"].map(String::from).to_vec();
    // What the log holds: the trace once per document, each on its key's partition.
    let mut ends = vec![0u64; 2];
    let mut count = |docs: &[String]| {
        for doc in docs {
            ends[partition_for(doc.as_bytes(), 2) as usize] += svelte_ops().len() as u64;
        }
        ends.clone()
    };
    produce(writer(), &docs[..2]).await;
    let first = count(&docs[..2]);
    let text = format!(
        "job = \"outage\"\n[log]\nurl = \"kafka://{brokers}\"\ngroup = \"outage\"\n\
         [log.kafka]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
         [store]\nurl = \"sqlite://{d}/state.db\"\n[pipeline]\nflush_interval_ms = 100\n[archive]\nmax_file_age_ms = 300\n\
         [objects]\nurl = \"file://{d}/objects\"\n[projection]\nurl = \"sqlite://{d}/projections.db\"\n",
        d = dir.display(),
    );
    let (_, sinks, store, run, cancel) = start(&dir, &text).await;
    wait_caught_up(&store, &first, &run, "the start").await;
    // More ops, then the broker dies mid-stream and comes back after the outage.
    produce(writer(), &docs[2..]).await;
    let all = count(&docs[2..]);
    broker.kill().expect("SIGKILL tansu");
    broker.wait().expect("reap");
    tokio::time::sleep(outage()).await;
    assert!(!caught_up(&store, &all).await, "Kafka down: the checkpoint waits");
    let mut broker = start_broker(port, &s3, &bucket);
    wait_caught_up(&store, &all, &run, "Kafka came back").await;
    assert_nothing_lost(run, cancel, &sinks, &store, &docs, &all, 0).await;
    broker.kill().expect("stop tansu");
    broker.wait().expect("reap");
}

/// One slow partition stops only itself: partition A's flushes fail (its large texts go to
/// an S3 that is down) until its unflushed work is over the bound and its worker stops
/// taking records; partition B (small texts, no S3) must still be fed and checkpointed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_partition_does_not_stop_the_others() {
    docfold::telemetry::init_logs("warn", false);
    let dir = services::temp_dir("stall");
    let brokers = services::kafka();
    let topic = format!("stall-{}", services::unique());
    KafkaLog::create_topic(&brokers, &topic, (2, 1), &[], &[]).await.expect("create topic");
    let (s3, bucket) = services::s3_bucket();
    let s3_proxy = Link::start(host_port(&s3)).await;
    s3_proxy.set_up(false);
    let names = |partition: u32, n: usize| -> Vec<String> {
        (0..)
            .map(|i| format!("doc-{i}"))
            .filter(|d| partition_for(d.as_bytes(), 2) == partition)
            .take(n)
            .collect()
    };
    let (slow, quick) = (names(0, 3), names(1, 2));
    let log = KafkaLog::connect(&brokers, &topic, &[]).expect("connect");
    // Enough typing that partition A's texts pass the inline limit (1,000 bytes).
    let publish_to = |docs: Vec<String>, ops: usize| {
        let log = log.clone();
        tokio::task::spawn_blocking(move || {
            let mut writer = log.writer().expect("producer");
            let count = publish(&mut writer, &svelte_ops()[..ops], &docs, "eu", |_| {}).expect("publish");
            writer.flush().expect("flush");
            count
        })
    };
    let slow_end = publish_to(slow.clone(), 2000).await.expect("producer");
    let text = format!(
        "job = \"outage\"\n[log]\nurl = \"kafka://{brokers}\"\ntopic = \"{topic}\"\ngroup = \"{topic}\"\n\
         [log.kafka]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
         [store]\nurl = \"sqlite://{d}/state.db\"\n\
         [pipeline]\nflush_interval_ms = 100\nmax_docs_in_memory = 1\nbatch = 50\n\
         [archive]\nenabled = false\n[snapshots]\ninterval_ms = 0\n\
         [objects]\nurl = \"s3://{bucket}/stall-{topic}\"\nendpoint = \"http://{s3p}\"\n\
         [projection]\nurl = \"sqlite://{d}/projections.db\"\ninline_max_bytes = 1000\n\
         [invalidations]\ntopic = \"\"\n[dead_letters]\ntopic = \"\"\n",
        d = dir.display(),
        s3p = s3_proxy.addr,
    );
    let (_, sinks, store, run, cancel) = start(&dir, &text).await;
    let _stop_on_failure = cancel.clone().drop_guard();
    // Partition B: a few small ops, after A has stalled.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Partition B: a few one-letter ops (digits 1..=30 of level 0: its texts stay small).
    let quick_end = tokio::task::spawn_blocking({
        let (log, quick) = (log.clone(), quick.clone());
        move || {
            let mut writer = log.writer().expect("producer");
            for (i, doc) in (0..30u64).flat_map(|i| quick.iter().map(move |d| (i, d))) {
                writer.append(doc.as_bytes(), &crate::spine::insert(doc, i + 1, i + 1, "b")).expect("append");
            }
            writer.flush().expect("flush");
            30 * quick.len() as u64
        }
    })
    .await
    .expect("producer");
    let since = Instant::now();
    loop {
        let held = store.checkpoint("outage", 1).await.expect("checkpoint").map_or(0, |c| c.next_offset);
        if held == quick_end {
            break;
        }
        assert!(!run.is_finished(), "the pipeline stopped");
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "partition 1 starved behind partition 0: at {held} of {quick_end}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ends = [slow_end, quick_end];
    assert!(!caught_up(&store, &ends).await, "partition 0 is still stalled");
    s3_proxy.set_up(true);
    wait_caught_up(&store, &ends, &run, "S3 came back").await;
    cancel.cancel();
    run.await.expect("joined").expect("the pipeline never stopped");
    let projections = sinks.projections.as_ref().expect("projections");
    for doc in slow.iter().chain(&quick) {
        let stored = store.load_doc("outage", doc).await.expect("load").expect("folded");
        let (item, _) = projections.get_text(doc).await.expect("read").expect("projected");
        assert_eq!(item.version, stored.version, "projection of {doc}");
    }
}

/// A PostgreSQL restart (`pg_ctl restart -m fast`: every connection terminated with
/// SQLSTATE 57P01, then refused until it is back) is routine: the pipeline retries and
/// catches up with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_rides_out_a_postgres_restart() {
    docfold::telemetry::init_logs("warn", false);
    let cluster = services::PgCluster::start("pgrestart");
    let dir = services::temp_dir("pgrestart");
    let log = FileLog::create(&dir.join("log"), "doc-ops", 2).expect("topic");
    let writer = || Box::new(log.writer(Fsync::Never, 1 << 20)) as Box<dyn LogWriter>;
    let docs: Vec<String> = ["svelte-0", "svelte-5", "svelte-1", "svelte-2"].map(String::from).to_vec();
    produce(writer(), &docs[..2]).await;
    let text = format!(
        "job = \"outage\"\n[log]\nurl = \"file://{d}/log\"\npartitions = 2\n[store]\nurl = \"{pg}\"\n\
         [pipeline]\nflush_interval_ms = 20\nflush_ops = 200\n[archive]\nmax_file_age_ms = 300\n\
         [objects]\nurl = \"file://{d}/objects\"\n[projection]\nurl = \"sqlite://{d}/projections.db\"\n",
        d = dir.display(),
        pg = cluster.url(),
    );
    let (_, sinks, store, run, cancel) = start(&dir, &text).await;
    let _stop_on_failure = cancel.clone().drop_guard();
    produce(writer(), &docs[2..]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ends = || {
        let mut reader = log.reader();
        (0..2).map(|p| reader.end_offset(p).expect("end")).collect::<Vec<u64>>()
    };
    // Three restarts while commits run every few milliseconds: some land mid-transaction.
    for _ in 0..3 {
        assert!(!caught_up(&store, &ends()).await, "the restart comes mid-stream");
        tokio::task::block_in_place(|| cluster.restart_fast());
        assert!(!run.is_finished(), "the pipeline stopped at a restart");
        produce(writer(), &docs[..1]).await;
    }
    wait_caught_up(&store, &ends(), &run, "PostgreSQL restarted").await;
    assert_nothing_lost(run, cancel, &sinks, &store, &docs, &ends(), 0).await;
}

/// Dead letters count towards the unflushed bound: while the dead-letter topic cannot take
/// them (its partition held by another writer), a partition of garbage stops reading once
/// `dead_letters.max_buffered_bytes` are held, instead of holding the whole log in memory;
/// when the topic is back, every record is a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_that_cannot_be_written_stop_the_reading() {
    docfold::telemetry::init_logs("warn", false);
    let dir = services::temp_dir("dlq-bound");
    let log = FileLog::create(&dir.join("log"), "doc-ops", 1).expect("topic");
    let dead = FileLog::create(&dir.join("log"), "doc-ops-dlq", 1).expect("dead-letter topic");
    {
        let mut writer = log.writer(Fsync::Never, 1 << 30);
        for i in 0..200u32 {
            let garbage: Vec<u8> = (0..100_000u32).map(|j| (i ^ j) as u8 | 0x80).collect();
            writer.append(b"doc", &garbage).expect("append");
        }
        writer.flush().expect("flush");
    }
    // Another writer holds the dead-letter partition: sends fail (retryable) until it lets go.
    let mut holder = dead.writer(Fsync::Never, 1 << 20);
    holder.append(b"holder", b"").expect("take the partition's lock");
    let text = format!(
        "job = \"outage\"\n[log]\nurl = \"file://{d}/log\"\npartitions = 1\n[store]\nurl = \"sqlite://{d}/state.db\"\n\
         [pipeline]\nflush_interval_ms = 50\nbatch = 5\n[archive]\nmax_file_age_ms = 300\n[dead_letters]\nmax_buffered_bytes = 1000000\n\
         [objects]\nurl = \"file://{d}/objects\"\n[projection]\nurl = \"sqlite://{d}/projections.db\"\n",
        d = dir.display(),
    );
    let (_, _, store, run, cancel) = start(&dir, &text).await;
    let _stop_on_failure = cancel.clone().drop_guard();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!run.is_finished(), "the pipeline keeps retrying");
    cancel.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(holder); // the final flush goes through now
    let summaries = run.await.expect("joined").expect("the final flush wrote the dead letters");
    let read = summaries[0].next_offset;
    assert!(read <= 20, "reading stopped near the bound (1 MB of 100 kB letters), not at {read} of 200");
    assert_eq!(store.checkpoint("outage", 0).await.expect("checkpoint").map(|c| c.next_offset), Some(read));
    // The rest follows once nothing blocks it.
    let (_, _, _, run, cancel) = start(&dir, &text).await;
    wait_caught_up(&store, &[200], &run, "the dead-letter topic came back").await;
    cancel.cancel();
    run.await.expect("joined").expect("run");
    let mut letters = Vec::new();
    dead.reader().read(0, 0, 1000, &mut letters).expect("read dead letters");
    assert_eq!(letters.len(), 201, "every garbage record, once, after the holder's record");
}
