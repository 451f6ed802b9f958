//! Three regions on the real engines, for the `regions` tests and the `regions` bench: each
//! its own tansu broker, PostgreSQL database, DynamoDB table, S3 prefix and Redis keys; one
//! PostgreSQL lease store. Every connection from one region to another's broker, and every
//! region's connection to the lease store, goes through a `link` (one-way delay, jitter,
//! cut). `docfold run` and `docfold mirror` run as processes; producers in every region
//! write through `region::Router`.

use docfold::log::LogWriter;
use docfold::log::kafka::KafkaLog;
use docfold::lseq::Op;
use docfold::op::{Envelope, encode};
use docfold::region::lease::LeaseStore;
use docfold::region::leases::Leases;
use docfold::region::{Mode, Router};
use docfold::sim::MirrorMode;
use docfold::store::{Store, now_ms};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::link::{Delay, Link, Protocol};
use crate::services;

pub const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-southeast-1"];
pub const PARTITIONS: u32 = 2;
/// Whether each region's cache is preloaded with text and version (warm) or only
/// invalidated (cold): one standby of each, so a promotion can be measured both ways.
pub const PRELOADS: [bool; 3] = [true, true, false];
/// The lease store is a witness this far from every region.
pub const LEASE_ONE_WAY: Duration = Duration::from_millis(10);

/// Half the measured public round trips (REGIONS.md).
pub fn one_way(a: usize, b: usize) -> Duration {
    let ms = match (a.min(b), a.max(b)) {
        (0, 1) => 35,
        (0, 2) => 110,
        _ => 80,
    };
    Duration::from_millis(ms)
}

pub struct Region {
    pub broker: String,
    _tansu: KillOnDrop,
    pub store: String,
    /// Its job file, and the lease store's URL through its link.
    pub file: PathBuf,
    pub leases: String,
}

pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The world: regions, the links between them (`links[(p, r)]` is region r's connection
/// to region p's broker), and each region's link to the lease store.
pub struct World {
    pub mode: Mode,
    pub dir: PathBuf,
    pub regions: Vec<Region>,
    pub links: HashMap<(usize, usize), Link>,
    pub lease_links: Vec<Link>,
}

impl World {
    pub async fn start(mode: Mode) -> World {
        let dir = services::temp_dir("regions");
        let unique = services::unique();
        let control = services::postgres_database("leases").await;
        let (s3, bucket) = services::s3_bucket();
        let mut lease_links = Vec::new();
        let mut regions = Vec::new();
        for (i, name) in REGIONS.iter().enumerate() {
            let port = services::free_port();
            let tansu = KillOnDrop(services::start_tansu(port, "memory://tansu/", &[]));
            let broker = format!("127.0.0.1:{port}");
            let store = services::postgres_database(&name.replace('-', "_")).await;
            let delay = Delay { one_way: LEASE_ONE_WAY, jitter: Duration::from_millis(2) };
            let server = services::host_port(&control);
            let server = server.rsplit('@').next().unwrap_or(&server).to_string();
            let link = Link::with(server.clone(), Protocol::Tcp, delay, i as u64).await;
            let leases = control.replacen(&server, &link.addr.to_string(), 1);
            lease_links.push(link);
            let file = dir.join(format!("{name}.toml"));
            let peers: Vec<String> =
                REGIONS.iter().filter(|r| *r != name).map(|r| format!("{r:?}")).collect();
            let text = format!(
                "job = \"main\"\n[log]\nurl = \"kafka://{broker}\"\ntopic = \"doc-ops\"\ngroup = \"main\"\npartitions = {PARTITIONS}\n\
                 [log.kafka]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
                 [store]\nurl = \"{store}\"\n[pipeline]\nflush_interval_ms = 200\n\
                 [objects]\nurl = \"s3://{bucket}/{unique}-{name}\"\nendpoint = \"{s3}\"\n\
                 [projection]\nurl = \"dynamodb://{unique}-{name}\"\nendpoint = \"{}\"\n\
                 [invalidations]\ntopic = \"doc-invalidations\"\nredis = \"{}\"\nkey_prefix = \"test:{unique}:{name}:\"\nchannel = \"test:{unique}:{name}\"\npreload = {}\n\
                 [dead_letters]\ntopic = \"doc-ops-dlq\"\n\
                 [region]\nname = \"{name}\"\nmode = \"{}\"\npeers = [{}]\nleases = \"{leases}\"\nttl_ms = 1500\nskew_ms = 200\n\
                 auto_failover = true\ninitial_leader = \"{}\"\n",
                services::dynamodb(),
                services::redis(),
                PRELOADS[i],
                if mode == Mode::ActiveActive { "active-active" } else { "active-passive" },
                peers.join(", "),
                REGIONS[0]
            );
            std::fs::write(&file, text).expect("job file");
            regions.push(Region { broker, _tansu: tansu, store, file, leases });
        }
        let mut links = HashMap::new();
        for (p, source) in regions.iter().enumerate() {
            for r in (0..REGIONS.len()).filter(|&r| r != p) {
                let delay = Delay { one_way: one_way(p, r), jitter: Duration::from_millis(5) };
                let seed = (p * 10 + r) as u64;
                links.insert((p, r), Link::with(source.broker.clone(), Protocol::Kafka, delay, seed).await);
            }
        }
        let world = World { mode, dir, regions, links, lease_links };
        for (r, name) in REGIONS.iter().enumerate() {
            let out = docfold(&["setup", "--max-replication", "1", "--config"], &world.regions[r].file);
            assert!(out.status.success(), "setup {name}: {}", String::from_utf8_lossy(&out.stderr));
            for p in (0..REGIONS.len()).filter(|&p| p != r) {
                // Region p's job as region r reaches it: its broker through the link.
                let text = std::fs::read_to_string(&world.regions[p].file).expect("job file");
                let via = world.links[&(p, r)].addr.to_string();
                std::fs::write(world.seen_from(p, r), text.replace(&world.regions[p].broker, &via))
                    .expect("write");
            }
        }
        world
    }

    /// Region p's job file with its broker as region r reaches it.
    pub fn seen_from(&self, p: usize, r: usize) -> PathBuf {
        self.dir.join(format!("{}@{}.toml", REGIONS[p], REGIONS[r]))
    }

    /// Cuts (or heals) every link of region `r`: to and from the other brokers, and to the
    /// lease store.
    pub fn set_links(&self, r: usize, up: bool) {
        for ((p, q), link) in &self.links {
            if *p == r || *q == r {
                link.set_up(up);
            }
        }
        self.lease_links[r].set_up(up);
    }

    pub fn holder(&self, r: usize) -> (Option<String>, u64) {
        let status = status(&self.regions[r].file);
        (status["holder"].as_str().map(str::to_string), status["epoch"].as_u64().unwrap_or(0))
    }

    /// Whether region r has folded everything and mirrored every peer to its end.
    pub fn caught_up(&self, r: usize) -> bool {
        let status = status(&self.regions[r].file);
        let mirrored =
            status["replication_lag_records"].as_object().is_some_and(|m| m.values().all(|v| v == 0));
        status["checkpoint_lag_records"] == 0 && mirrored
    }

    /// Those of `docs` whose text in region r's store is not `want` (a missing one too).
    pub async fn differing(&self, r: usize, docs: &[String], want: &str) -> Vec<String> {
        let store = Store::open(&self.regions[r].store).await.expect("store");
        let mut differ = Vec::new();
        for doc in docs {
            let text = match store.load_doc("main", doc).await.expect("load") {
                Some(stored) => docfold::fold::snapshot::decode(&stored.state).expect("state").text(),
                None => String::new(),
            };
            if text != want {
                differ.push(doc.clone());
            }
        }
        store.close().await;
        differ
    }

    /// Whether every region has folded and mirrored everything: no lag, and `docs` are
    /// `want` in every store. The lag alone cannot say so: tansu's high watermark is the
    /// last batch's first offset + 1 (SERVICES.md), so a checkpoint inside the last batch
    /// shows a lag of 0 while the rest of the batch waits to be folded.
    pub fn converged(&self, rt: &tokio::runtime::Handle, docs: &[String], want: &str) -> bool {
        (0..REGIONS.len()).all(|r| rt.block_on(self.differing(r, docs, want)).is_empty() && self.caught_up(r))
    }
}

/// The documents the producers of [`failover`] write: two per region.
pub fn failover_docs() -> Vec<String> {
    REGIONS.iter().flat_map(|x| (0..2).map(move |i| format!("{x}-{i}"))).collect()
}

pub fn docfold(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_docfold")).args(args).arg(config).output().expect("runs docfold")
}

pub fn spawn(args: &[&str], log: &Path) -> KillOnDrop {
    let log = std::fs::File::create(log).expect("log file");
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_docfold"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn docfold"),
    )
}

/// One acked batch.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    /// The producer's region and the region whose log took the batch.
    pub producer: usize,
    pub region: usize,
    /// The epoch of the lease the producer routed by.
    pub epoch: u64,
    pub at: Instant,
    /// From the batch's first append to its flush (this attempt).
    pub latency: Duration,
    pub ops: usize,
    /// The encoded envelopes' bytes.
    pub bytes: usize,
}

/// The producer in region `x`: `ops` to each of `docs` in batches of `batch` ops (one every
/// 150 ms at most), each batch to where the router sends it (by the lease as x last read
/// it), retried until some region acks it.
pub fn produce(
    world: &World,
    x: usize,
    (docs, ops, batch): (&[String], &[Op], usize),
    acks: &Mutex<Vec<Ack>>,
    rt: &tokio::runtime::Handle,
) {
    let leases = rt.block_on(Leases::open(&world.regions[x].leases, None, None)).expect("lease store");
    let router = Router { mode: world.mode, local: REGIONS[x].into() };
    let mut lease = None;
    let mut writers: HashMap<usize, Box<dyn LogWriter>> = HashMap::new();
    let settings = [
        ("message.timeout.ms".to_string(), "2000".to_string()),
        ("reconnect.backoff.max.ms".to_string(), "500".to_string()),
    ];
    // A batch is one acked write: a producer far from the leader pays a round trip per batch.
    for batch in ops.chunks(batch) {
        let started = Instant::now();
        loop {
            if let Ok(Ok(seen)) =
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(1), leases.read("main")).await })
            {
                lease = seen;
            }
            let target = router
                .route(lease.as_ref(), now_ms())
                .ok()
                .and_then(|to| REGIONS.iter().position(|r| *r == to));
            let Some(t) = target else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let epoch = lease.as_ref().map_or(0, |l| l.epoch);
            let via =
                if t == x { world.regions[t].broker.clone() } else { world.links[&(t, x)].addr.to_string() };
            let writer = match writers.entry(t) {
                std::collections::hash_map::Entry::Occupied(open) => open.into_mut(),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    match KafkaLog::connect(&via, "doc-ops", &settings).and_then(|log| log.writer()) {
                        Ok(writer) => slot.insert(Box::new(writer)),
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    }
                }
            };
            let (sent, mut bytes) = (Instant::now(), 0);
            for op in batch {
                for doc in docs {
                    let envelope = encode(&Envelope::new(doc.as_str(), REGIONS[x], now_ms(), op.clone()));
                    bytes += envelope.len();
                    writer.append(doc.as_bytes(), &envelope).expect("append");
                }
            }
            if writer.flush().is_ok() {
                let (at, ops) = (Instant::now(), batch.len() * docs.len());
                let ack = Ack { producer: x, region: t, epoch, at, latency: at - sent, ops, bytes };
                acks.lock().expect("acks").push(ack);
                break;
            }
            // Not acked: a new session next time (tansu fences the old one's retry).
            writers.remove(&t);
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(150).saturating_sub(started.elapsed()));
    }
}

/// A failover run: producers in every region write `ops` (see [`produce`]); after `steady`
/// every link of the leader (region 0) is cut; two seconds after a standby leads it is
/// healed; returns when every producer has had every batch acked.
pub struct Failover {
    pub acks: Vec<Ack>,
    pub cut_at: Instant,
    pub healed_at: Instant,
}

impl Failover {
    /// Cut → the first write acked at a newer epoch than the cut-off leader's.
    pub fn rto(&self) -> Option<Duration> {
        let first = self.acks.iter().filter(|a| a.epoch > 1 && a.at > self.cut_at).map(|a| a.at).min();
        first.map(|at| at - self.cut_at)
    }

    /// Write-ack latency (p50, p99) of region `producer`'s batches acked before the cut.
    pub fn ack_latency(&self, producer: usize) -> (Duration, Duration) {
        let mut steady: Vec<Duration> = self
            .acks
            .iter()
            .filter(|a| a.producer == producer && a.at < self.cut_at)
            .map(|a| a.latency)
            .collect();
        steady.sort_unstable();
        let at = |q: f64| {
            steady.get(((steady.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or_default()
        };
        (at(0.5), at(0.99))
    }

    /// Ops (one op for one document) acked per producer region.
    pub fn ops_acked(&self, producer: usize) -> usize {
        self.acks.iter().filter(|a| a.producer == producer).map(|a| a.ops).sum()
    }

    /// The mean encoded size of an acked op.
    pub fn op_bytes(&self) -> f64 {
        let (ops, bytes) = self.acks.iter().fold((0, 0), |(o, b), a| (o + a.ops, b + a.bytes));
        bytes as f64 / ops.max(1) as f64
    }

    /// Batches the cut-off leader acked after the cut (in its log only until the heal).
    pub fn at_risk(&self) -> Vec<&Ack> {
        self.acks.iter().filter(|a| a.region == 0 && a.at > self.cut_at).collect()
    }
}

/// `promoted` runs as soon as a standby leads, with the new leader's index.
pub fn failover(
    world: &World,
    ops: &[Op],
    rt: &tokio::runtime::Handle,
    steady: Duration,
    promoted: &(dyn Fn(usize) + Sync),
) -> Failover {
    wait_until("the first region leads", Duration::from_secs(30), || {
        world.holder(1).0.as_deref() == Some(REGIONS[0])
    });
    let acks = Mutex::new(Vec::new());
    let (cut_at, healed_at) = std::thread::scope(|scope| {
        for (x, name) in REGIONS.iter().enumerate() {
            let acks = &acks;
            let docs: Vec<String> = failover_docs().into_iter().filter(|d| d.starts_with(*name)).collect();
            scope.spawn(move || produce(world, x, (&docs, ops, 400), acks, rt));
        }
        std::thread::sleep(steady);
        world.set_links(0, false);
        let cut_at = Instant::now();
        let mut leader = None;
        wait_until("a standby leads", Duration::from_secs(30), || {
            leader = world.holder(1).0.and_then(|h| REGIONS.iter().position(|r| *r == h)).filter(|&r| r != 0);
            leader.is_some()
        });
        promoted(leader.expect("a new leader"));
        std::thread::sleep(Duration::from_secs(2));
        world.set_links(0, true);
        (cut_at, Instant::now())
    });
    Failover { acks: acks.into_inner().expect("acks"), cut_at, healed_at }
}

pub fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) -> Duration {
    let since = Instant::now();
    while !ready() {
        assert!(since.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    since.elapsed()
}

/// `docfold region status --json` of the region whose job file is `config`.
pub fn status(config: &Path) -> serde_json::Value {
    let out = docfold(&["region", "status", "--json", "--config"], config);
    assert!(out.status.success(), "region status: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&String::from_utf8_lossy(&out.stdout)).expect("status is JSON")
}

/// Starts every region's `docfold run` and its mirror from each peer (the peer's broker
/// through the link), logging to `<name>.log` in the world's folder.
pub fn start_processes(world: &World, mirrors: MirrorMode) -> Vec<KillOnDrop> {
    let logs = |name: &str| world.dir.join(format!("{name}.log"));
    let path = |file: &Path| file.to_str().expect("path").to_string();
    let mut processes = Vec::new();
    for (r, name) in REGIONS.iter().enumerate() {
        let config = path(&world.regions[r].file);
        processes.push(spawn(&["run", "--config", &config], &logs(&format!("run-{name}"))));
        for p in (0..REGIONS.len()).filter(|&p| p != r) {
            // Pulling: in r, reading p's log across the link. Pushing: in p, reading its own
            // log and writing r's across the link, checkpointing every 250 ms.
            let (from, to, every) = match mirrors {
                MirrorMode::Pull => (path(&world.seen_from(p, r)), config.clone(), "0"),
                MirrorMode::Push => (path(&world.regions[p].file), path(&world.seen_from(r, p)), "250"),
            };
            let args = ["mirror", "--from", &from, "--config", &to, "--checkpoint-ms", every];
            processes.push(spawn(&args, &logs(&format!("mirror-{}-{name}", REGIONS[p]))));
        }
    }
    processes
}
