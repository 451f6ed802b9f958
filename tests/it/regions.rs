//! Three regions on the real engines: each its own tansu broker, PostgreSQL database,
//! DynamoDB table, S3 prefix and Redis keys; one PostgreSQL lease store. Every connection
//! from one region to another's broker, and every region's connection to the lease store,
//! goes through a `link` (one-way delay, jitter, cut). `docfold run` and `docfold mirror`
//! run as processes; producers in every region write through `region::Router`.

use docfold::log::LogWriter;
use docfold::log::kafka::KafkaLog;
use docfold::lseq::{Op, doc_seed};
use docfold::op::{Envelope, encode};
use docfold::region::lease::LeaseStore;
use docfold::region::leases::Leases;
use docfold::region::{Mode, Router};
use docfold::store::{Store, now_ms};
use docfold::trace::{Trace, replay};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::link::{Delay, Link, Protocol};
use crate::region::status;
use crate::services;

const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-southeast-1"];
const PARTITIONS: u32 = 2;
/// The lease store is a witness this far from every region.
const LEASE_ONE_WAY: Duration = Duration::from_millis(10);

/// Half the measured public round trips (REGIONS.md).
fn one_way(a: usize, b: usize) -> Duration {
    let ms = match (a.min(b), a.max(b)) {
        (0, 1) => 35,
        (0, 2) => 110,
        _ => 80,
    };
    Duration::from_millis(ms)
}

struct Region {
    broker: String,
    _tansu: KillOnDrop,
    store: String,
    /// Its job file, and the lease store's URL through its link.
    file: PathBuf,
    leases: String,
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The world: regions, the links between them (`links[(p, r)]` is region r's connection
/// to region p's broker), and each region's link to the lease store.
struct World {
    dir: PathBuf,
    regions: Vec<Region>,
    links: HashMap<(usize, usize), Link>,
    lease_links: Vec<Link>,
}

impl World {
    async fn start() -> World {
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
                 [invalidations]\ntopic = \"doc-invalidations\"\nredis = \"{}\"\nkey_prefix = \"test:{unique}:{name}:\"\nchannel = \"test:{unique}:{name}\"\n\
                 [dead_letters]\ntopic = \"doc-ops-dlq\"\n\
                 [region]\nname = \"{name}\"\npeers = [{}]\nleases = \"{leases}\"\nttl_ms = 1500\nskew_ms = 200\n\
                 auto_failover = true\ninitial_leader = \"{}\"\n",
                services::dynamodb(),
                services::redis(),
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
        let world = World { dir, regions, links, lease_links };
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
    fn seen_from(&self, p: usize, r: usize) -> PathBuf {
        self.dir.join(format!("{}@{}.toml", REGIONS[p], REGIONS[r]))
    }

    /// Cuts (or heals) every link of region `r`: to and from the other brokers, and to the
    /// lease store.
    fn set_links(&self, r: usize, up: bool) {
        for ((p, q), link) in &self.links {
            if *p == r || *q == r {
                link.set_up(up);
            }
        }
        self.lease_links[r].set_up(up);
    }

    fn holder(&self, r: usize) -> (Option<String>, u64) {
        let status = status(&self.regions[r].file);
        (status["holder"].as_str().map(str::to_string), status["epoch"].as_u64().unwrap_or(0))
    }

    /// Whether region r has folded everything and mirrored every peer to its end.
    fn caught_up(&self, r: usize) -> bool {
        let status = status(&self.regions[r].file);
        let mirrored =
            status["replication_lag_records"].as_object().is_some_and(|m| m.values().all(|v| v == 0));
        status["checkpoint_lag_records"] == 0 && mirrored
    }
}

fn docfold(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_docfold")).args(args).arg(config).output().expect("runs docfold")
}

fn spawn(args: &[&str], log: &Path) -> KillOnDrop {
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

/// What every producer got.
#[derive(Default)]
struct Acks {
    /// (region written to, epoch of the lease routed by, when) per acked batch.
    writes: Vec<(usize, u64, Instant)>,
}

/// The producer in region `x`: `ops` to its documents in batches, each batch to where the
/// router sends it by the lease as x last read it, retried until some region acks it.
fn produce(world: &World, x: usize, ops: &[Op], acks: &Mutex<Acks>, rt: &tokio::runtime::Handle) {
    let docs: Vec<String> = (0..2).map(|i| format!("{}-{i}", REGIONS[x])).collect();
    let leases = rt.block_on(Leases::open(&world.regions[x].leases, None, None)).expect("lease store");
    let router = Router { mode: Mode::ActivePassive, local: REGIONS[x].into() };
    let mut lease = None;
    let mut writers: HashMap<usize, Box<dyn LogWriter>> = HashMap::new();
    let settings = [
        ("message.timeout.ms".to_string(), "2000".to_string()),
        ("reconnect.backoff.max.ms".to_string(), "500".to_string()),
    ];
    // A batch is one acked write: a producer far from the leader pays a round trip per batch.
    for batch in ops.chunks(400) {
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
            for op in batch {
                for doc in &docs {
                    let envelope = Envelope::new(doc.as_str(), REGIONS[x], now_ms(), op.clone());
                    writer.append(doc.as_bytes(), &encode(&envelope)).expect("append");
                }
            }
            if writer.flush().is_ok() {
                acks.lock().expect("acks").writes.push((t, epoch, Instant::now()));
                break;
            }
            // Not acked: a new session next time (tansu fences the old one's retry).
            writers.remove(&t);
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(150).saturating_sub(started.elapsed()));
    }
}

fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) -> Duration {
    let since = Instant::now();
    while !ready() {
        assert!(since.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    since.elapsed()
}

/// The leader region is cut off (every link) mid-stream while producers in every region
/// write; a standby takes the lapsed lease; producers follow the router; the old leader is
/// healed and steps down. Every region then holds every acked op: its documents equal the
/// trace's endContent in the state store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_passive_survives_the_loss_of_the_leader_region() {
    let world = World::start().await;
    let trace = Trace::read(Path::new("tests/data/traces/friendsforever.json.gz")).expect("trace");
    let ops: Arc<[Op]> = replay(&trace, doc_seed("friendsforever")).expect("replays").ops.into();
    let rt = tokio::runtime::Handle::current();
    let logs = |name: &str| world.dir.join(format!("{name}.log"));
    let mut processes = Vec::new();
    for (r, name) in REGIONS.iter().enumerate() {
        let config = world.regions[r].file.to_str().expect("path").to_string();
        processes.push(spawn(&["run", "--config", &config], &logs(&format!("run-{name}"))));
        for p in (0..REGIONS.len()).filter(|&p| p != r) {
            let from = world.seen_from(p, r);
            let args = ["mirror", "--from", from.to_str().expect("path"), "--config", &config];
            processes.push(spawn(&args, &logs(&format!("mirror-{}-{name}", REGIONS[p]))));
        }
    }
    tokio::task::block_in_place(|| {
        wait_until("the first region leads", Duration::from_secs(30), || {
            world.holder(1).0.as_deref() == Some(REGIONS[0])
        });
        let acks = Mutex::new(Acks::default());
        let (cut_at, healed_at) = std::thread::scope(|scope| {
            for x in 0..REGIONS.len() {
                let (world, ops, acks, rt) = (&world, &ops, &acks, &rt);
                scope.spawn(move || produce(world, x, ops, acks, rt));
            }
            std::thread::sleep(Duration::from_secs(4));
            world.set_links(0, false);
            let cut_at = Instant::now();
            wait_until("a standby leads", Duration::from_secs(30), || {
                world.holder(1).0.as_deref().is_some_and(|h| h != REGIONS[0])
            });
            std::thread::sleep(Duration::from_secs(2));
            world.set_links(0, true);
            (cut_at, Instant::now())
        });
        let acks = acks.into_inner().expect("acks");
        let first_new = acks
            .writes
            .iter()
            .filter(|(_, epoch, at)| *epoch > 1 && *at > cut_at)
            .map(|(_, _, at)| *at)
            .min();
        let rto = first_new.expect("a write accepted by the new leader") - cut_at;
        let at_old = acks.writes.iter().filter(|(t, _, at)| *t == 0 && *at > cut_at).count();
        eprintln!(
            "RTO {rto:?}; {at_old} batches acked by the cut-off leader before its lease ran out; healed after {:?}",
            healed_at - cut_at
        );
        assert!(rto < Duration::from_secs(10), "RTO {rto:?} (ttl 1.5 s)");
        let converged = wait_until("every region converges", Duration::from_secs(120), || {
            (0..REGIONS.len()).all(|r| world.caught_up(r))
        });
        eprintln!("converged {converged:?} after the last write");
    });
    let (holder, epoch) = world.holder(0);
    assert!(holder.is_some_and(|h| h != REGIONS[0]) && epoch >= 2, "a standby leads at a new epoch");
    for process in &mut processes {
        let exited = process.0.try_wait().expect("status");
        assert!(
            exited.is_none(),
            "no process gives up during the cut ({exited:?}; logs in {})",
            world.dir.display()
        );
        // SIGTERM: drain and checkpoint.
        let _ = Command::new("kill").arg(process.0.id().to_string()).status();
    }
    for process in &mut processes {
        let _ = process.0.wait();
    }
    let old = std::fs::read_to_string(logs(&format!("run-{}", REGIONS[0]))).expect("log");
    assert!(old.contains("stepped down"), "the old leader demoted itself: {old}");
    for (r, name) in REGIONS.iter().enumerate() {
        let store = Store::open(&world.regions[r].store).await.expect("store");
        for doc in REGIONS.iter().flat_map(|x| (0..2).map(move |i| format!("{x}-{i}"))) {
            let stored = store
                .load_doc("main", &doc)
                .await
                .expect("load")
                .unwrap_or_else(|| panic!("{name}: {doc} missing"));
            let text = docfold::fold::snapshot::decode(&stored.state).expect("state").text();
            assert!(text == trace.end_content, "{name}: {doc} is not the trace's endContent");
        }
        store.close().await;
    }
}

/// Split brain on the real runtime: three regions' lease loops (`keep_role`, as `docfold
/// run` runs it) on the PostgreSQL lease store, each through its own link. A seeded
/// schedule cuts the leader's link, heals links and has an operator try planned promotions, while a
/// writer per region asks its region's gate every few milliseconds. Never do two regions
/// accept writes at one instant, accepted epochs never go back, no epoch is held by two
/// regions, and after the last heal one region leads. `DOCFOLD_SPLIT_RUNS` (default 20),
/// `DOCFOLD_SPLIT_SEED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_two_leaders_when_links_to_the_lease_store_are_cut() {
    use docfold::region::lease::{Claim, claim};
    use docfold::region::role::{RoleMachine, RoleSettings};
    use docfold::region::runtime::keep_role;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    let env =
        |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (runs, seed) = (env("DOCFOLD_SPLIT_RUNS", 20), env("DOCFOLD_SPLIT_SEED", 0x5b17));
    let control = services::postgres_database("split").await;
    let server = services::host_port(&control);
    let server = server.rsplit('@').next().unwrap_or(&server).to_string();
    let mut links = Vec::new();
    for r in 0..REGIONS.len() {
        let delay = Delay { one_way: LEASE_ONE_WAY, jitter: Duration::from_millis(5) };
        links.push(Link::with(server.clone(), Protocol::Tcp, delay, seed + r as u64).await);
    }
    let operator = Leases::open(&control, None, None).await.expect("lease store");
    let (ttl_ms, skew_ms) = (450, 100);
    for run in 0..runs {
        let scope = format!("split-{run}");
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(run));
        let cancel = CancellationToken::new();
        let mut views = Vec::new();
        let mut loops = Vec::new();
        for (r, name) in REGIONS.iter().enumerate() {
            let url = control.replacen(&server, &links[r].addr.to_string(), 1);
            let leases = Leases::open(&url, None, None).await.expect("lease store through the link");
            let settings = RoleSettings {
                region: name.to_string(),
                ttl_ms,
                skew_ms,
                auto_failover: true,
                initial_leader: REGIONS[0].into(),
            };
            let (view, seen) = watch::channel(RoleMachine::new(settings));
            views.push(seen);
            loops.push(tokio::spawn(keep_role(leases, scope.clone(), view, cancel.clone())));
        }
        // The writers: (when, region, epoch) of every write a gate let through.
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let sampler = {
            let (views, accepted, cancel) = (views.clone(), accepted.clone(), cancel.clone());
            tokio::spawn(async move {
                while !cancel.is_cancelled() {
                    let now = now_ms();
                    for (r, view) in views.iter().enumerate() {
                        if let Ok(epoch) = view.borrow().admit(now) {
                            accepted.lock().expect("accepted").push((now, r, epoch));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            })
        };
        let mut schedule = Vec::new();
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
            let r = rng.random_range(0..REGIONS.len());
            // Half the steps cut whoever leads now, so that failovers happen.
            let leader = views.iter().position(|v| v.borrow().admit(now_ms()).is_ok());
            match rng.random_range(0..4) {
                0 | 1 => links[leader.unwrap_or(r)].set_up(false),
                2 => links[r].set_up(true),
                _ => {
                    let times = (now_ms(), ttl_ms, skew_ms);
                    let _ = claim(&operator, &scope, REGIONS[r], Claim::Acquire, times).await;
                }
            }
            schedule.push(r);
        }
        links.iter().for_each(|link| link.set_up(true));
        let since = Instant::now();
        let leaders = || views.iter().filter(|v| v.borrow().admit(now_ms()).is_ok()).count();
        while leaders() != 1 {
            assert!(since.elapsed() < Duration::from_secs(10), "run {run}: no single leader after the heal");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cancel.cancel();
        sampler.await.expect("sampler");
        for task in loops {
            task.await.expect("lease loop");
        }
        let accepted = accepted.lock().expect("accepted");
        let mut holders: HashMap<u64, usize> = HashMap::new();
        for window in accepted.windows(2) {
            let ((t1, r1, e1), (t2, r2, e2)) = (window[0], window[1]);
            assert!(
                t1 != t2 || r1 == r2,
                "run {run} (seed {seed}): regions {r1} and {r2} both accepted writes at {t1}"
            );
            assert!(e2 >= e1, "run {run} (seed {seed}): a write at epoch {e2} after one at {e1}");
        }
        for &(_, r, epoch) in accepted.iter() {
            assert_eq!(*holders.entry(epoch).or_insert(r), r, "run {run}: epoch {epoch} held by two regions");
        }
        eprintln!("run {run}: {} writes accepted, epochs {:?}", accepted.len(), holders);
    }
}
