//! Backends going away: DynamoDB, S3 and Redis are reached through TCP proxies the test
//! cuts (connections dropped, the port refusing) one after the other while ops keep
//! arriving. The pipeline keeps folding, retries with backoff, catches up, and loses
//! nothing. `DOCFOLD_OUTAGE_SECS` sets each outage (default 3; the figure is 30).

use docfold::config::JobConfig;
use docfold::log::file::{FileLog, Fsync};
use docfold::lseq::doc_seed;
use docfold::pipeline::{self, Until};
use docfold::sink::Sinks;
use docfold::sink::projection::ProjectionStore;
use docfold::store::Store;
use docfold::trace::{Trace, publish, replay};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::services::{self, host_port};
use crate::sinks::{offsets_once, read_archive};

/// A TCP proxy to `target` on its own port. While down, the port refuses connections and
/// open connections are cut.
struct Proxy {
    addr: SocketAddr,
    up: watch::Sender<bool>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let (up, state) = watch::channel(true);
        tokio::spawn(serve(Some(listener), addr, target, state));
        Proxy { addr, up }
    }

    fn set_up(&self, up: bool) {
        self.up.send(up).expect("proxy running");
    }
}

async fn serve(
    mut listener: Option<TcpListener>,
    addr: SocketAddr,
    target: String,
    mut state: watch::Receiver<bool>,
) {
    loop {
        let Some(open) = &listener else {
            // Down: nothing listens (connections are refused) until it is up again.
            if state.changed().await.is_err() {
                return;
            }
            if *state.borrow() {
                listener = Some(TcpListener::bind(addr).await.expect("rebind proxy"));
            }
            continue;
        };
        tokio::select! {
            accepted = open.accept() => {
                let Ok((mut client, _)) = accepted else { continue };
                let (target, mut state) = (target.clone(), state.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = state.wait_for(|up| !up) => {} // cut
                    }
                });
            }
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                if !*state.borrow() {
                    listener = None;
                }
            }
        }
    }
}

/// Appends a trace's ops for `docs` documents to the log (in a blocking thread).
async fn produce(log: &FileLog, name: &str, docs: &[String]) {
    let mut writer = log.writer(Fsync::Never, 1 << 20);
    let (name, docs) = (name.to_string(), docs.to_vec());
    tokio::task::spawn_blocking(move || {
        let trace = Trace::read(Path::new(&format!("tests/data/traces/{name}.json.gz"))).expect("trace");
        let ops = replay(&trace, doc_seed(&name)).expect("replays").ops;
        publish(&mut writer, &ops, &docs, "eu", |_| {}).expect("publish");
        drop(writer);
    })
    .await
    .expect("producer");
}

/// Whether both the fold and the archive have passed every record.
async fn caught_up(store: &Store, log: &FileLog) -> bool {
    let mut reader = log.reader();
    for partition in 0..log.partitions() {
        let end = docfold::log::LogReader::end_offset(&mut reader, partition).expect("end");
        let held = store.checkpoint("outage", partition).await.expect("checkpoint");
        let (next, archived) = held.map_or((0, 0), |c| (c.next_offset, c.archived_offset));
        if (next, archived) != (end, end) {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_rides_out_backend_outages() {
    docfold::telemetry::init_logs("warn"); // what failed and what was retried, in the test output
    let outage = Duration::from_secs(
        std::env::var("DOCFOLD_OUTAGE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(3),
    );
    let dir = services::temp_dir("outage");
    let (s3, bucket) = services::s3_bucket();
    let (dynamodb, s3_proxy, redis) = (
        Proxy::start(host_port(&services::dynamodb())).await,
        Proxy::start(host_port(&s3)).await,
        Proxy::start(host_port(&services::redis())).await,
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
    let path = dir.join("job.toml");
    std::fs::write(&path, text).expect("config");
    let config = JobConfig::load(&path).expect("config");
    let log = FileLog::create(&dir.join("log"), "doc-ops", 2).expect("topic");
    let sinks = Sinks::open(&config).await.expect("sinks");
    sinks.projections.as_ref().expect("projections").backend().create().await.expect("table");

    // Documents on both partitions.
    let docs: Vec<String> = ["svelte-0", "svelte-5", "svelte-1", "svelte-2"].map(String::from).to_vec();
    produce(&log, "sveltecomponent", &docs[..2]).await;
    let store = Store::open(&config.store.url).await.expect("store");
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let (config, cancel) = (config.clone(), cancel.clone());
        async move { pipeline::run(&config, Until::Cancelled, cancel).await }
    });
    for (proxy, name) in [(&dynamodb, "DynamoDB"), (&s3_proxy, "S3"), (&redis, "Redis")] {
        proxy.set_up(false);
        // Ops keep arriving during the outage; the checkpoint cannot pass them.
        produce(&log, "sveltecomponent", &docs[2..]).await;
        tokio::time::sleep(outage).await;
        assert!(
            !caught_up(&store, &log).await,
            "{name} down: the checkpoint (or the archive's) must wait for it"
        );
        proxy.set_up(true);
        let since = Instant::now();
        while !caught_up(&store, &log).await {
            assert!(!run.is_finished(), "the pipeline stopped: {:?}", run.await);
            if since.elapsed() > Duration::from_secs(60) {
                let held: Vec<_> =
                    futures::future::join_all((0..2).map(|p| store.checkpoint("outage", p))).await;
                let mut reader = log.reader();
                let ends: Vec<u64> = (0..2)
                    .map(|p| docfold::log::LogReader::end_offset(&mut reader, p).expect("end"))
                    .collect();
                panic!("not caught up a minute after {name} came back: checkpoints {held:?}, ends {ends:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    cancel.cancel();
    let summaries = run.await.expect("joined").expect("the pipeline never stopped");
    let retries: u64 = summaries.iter().map(|s| s.retries).sum();
    assert!(retries >= 3, "each outage made flushes fail and retry ({retries} retries)");

    // Nothing lost: projections equal the store, every op archived once.
    let projections = sinks.projections.as_ref().expect("projections");
    for doc in &docs {
        let stored = store.load_doc("outage", doc).await.expect("load").expect("folded");
        let state = docfold::fold::snapshot::decode(&stored.state).expect("decodes");
        let (item, text) = projections.get_text(doc).await.expect("read").expect("projected");
        assert_eq!(item.version, stored.version, "projection version of {doc}");
        assert!(text == state.text(), "projection text of {doc}");
    }
    let archived = offsets_once(&read_archive(&sinks.objects).await);
    let mut reader = log.reader();
    let total: u64 = (0..2).map(|p| docfold::log::LogReader::end_offset(&mut reader, p).expect("end")).sum();
    assert_eq!(archived.len() as u64, total, "every op archived exactly once");
    store.close().await;
}
