//! Regions: the lease store conformance suite (SQLite, PostgreSQL, DynamoDB Local), and the
//! pure role machine driven under virtual time by the same `lease::claim` the runtime uses.

use docfold::region::lease::{Answer, Claim, Lease, LeaseError, LeaseStore, Replaced, claim};
use docfold::region::leases::Leases;
use docfold::region::role::{Change, Request, Role, RoleMachine, RoleSettings};
use docfold::region::{Mode, RouteError, Router};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::sync::Mutex;

use crate::services;
use crate::world::status;

fn lease(holder: &str, epoch: u64, expires_ms: i64) -> Lease {
    Lease { holder: holder.into(), epoch, expires_ms }
}

const TTL: i64 = 3_000;
const SKEW: i64 = 500;

async fn conformance(leases: Leases) {
    let scope = format!("scope-{}", services::unique());
    assert_eq!(leases.read(&scope).await.expect("read"), None);

    // Compare-and-set: create only if absent, replace only the expected row.
    let first = lease("eu", 1, 10_000);
    assert_eq!(leases.replace(&scope, None, &first).await.expect("create"), Replaced::Written);
    assert_eq!(
        leases.replace(&scope, None, &lease("us", 1, 10_000)).await.expect("second create"),
        Replaced::Conflict(Some(first.clone())),
        "a second create loses and sees the first"
    );
    for wrong in [lease("us", 1, 10_000), lease("eu", 2, 10_000), lease("eu", 1, 9_999)] {
        let lost = leases.replace(&scope, Some(&wrong), &lease("us", 2, 20_000)).await.expect("replace");
        assert_eq!(lost, Replaced::Conflict(Some(first.clone())), "expected {wrong:?}");
    }
    let second = lease("us", 2, 20_000);
    assert_eq!(leases.replace(&scope, Some(&first), &second).await.expect("replace"), Replaced::Written);
    assert_eq!(leases.read(&scope).await.expect("read"), Some(second.clone()));
    let other = format!("{scope}-other");
    assert_eq!(leases.read(&other).await.expect("read"), None, "scopes are independent");

    // Claims through the store: renew keeps the epoch, a live lease is not taken, a lapsed
    // one is (epoch + 1), force always is, release frees it, a stale renew is refused.
    let at = |now| (now, TTL, SKEW);
    let renewed = claim(&leases, &scope, "us", Claim::Renew { epoch: 2 }, at(19_000)).await.expect("renew");
    assert_eq!(renewed, Answer::Ours(lease("us", 2, 22_000)));
    let refused = claim(&leases, &scope, "ap", Claim::Acquire, at(22_000 + SKEW)).await.expect("acquire");
    assert_eq!(refused, Answer::Theirs(Some(lease("us", 2, 22_000))), "within the skew bound");
    let taken = claim(&leases, &scope, "ap", Claim::Acquire, at(22_001 + SKEW)).await.expect("acquire");
    assert_eq!(taken, Answer::Ours(lease("ap", 3, 22_001 + SKEW + TTL)));
    let stale = claim(&leases, &scope, "us", Claim::Renew { epoch: 2 }, at(23_000)).await.expect("renew");
    assert!(matches!(stale, Answer::Theirs(Some(ref l)) if l.holder == "ap" && l.epoch == 3), "{stale:?}");
    // Forced from a live holder: epoch + 1 at once (ap's renewals are refused), running until
    // ap's lease would have ended + the skew bound; eu takes it up only then.
    let forced = claim(&leases, &scope, "eu", Claim::Force, at(23_000)).await.expect("force");
    assert_eq!(forced, Answer::Ours(lease("eu", 4, 22_001 + SKEW + TTL + SKEW)));
    let early = claim(&leases, &scope, "eu", Claim::Acquire, at(24_000)).await.expect("acquire");
    assert_eq!(early, Answer::Theirs(Some(lease("eu", 4, 22_001 + SKEW + TTL + SKEW))), "not before then");
    let released =
        claim(&leases, &scope, "eu", Claim::Release { epoch: 4 }, at(24_000)).await.expect("release");
    assert_eq!(released, Answer::Released);
    let after = claim(&leases, &scope, "us", Claim::Acquire, at(24_001)).await.expect("acquire");
    assert_eq!(after, Answer::Ours(lease("us", 5, 24_001 + TTL)), "a released lease is free at once");

    // Regions racing for a free lease: exactly one wins, every other sees the winner.
    let race = format!("{scope}-race");
    let regions = ["r0", "r1", "r2", "r3", "r4"];
    let answers = futures::future::join_all(
        regions.iter().map(|region| claim(&leases, &race, region, Claim::Acquire, at(50_000))),
    )
    .await;
    let winners: Vec<_> = answers.iter().filter(|a| matches!(a, Ok(Answer::Ours(_)))).collect();
    assert_eq!(winners.len(), 1, "one winner: {answers:?}");
    let Ok(Answer::Ours(winner)) = winners[0] else { unreachable!() };
    for answer in &answers {
        match answer {
            Ok(Answer::Ours(l)) | Ok(Answer::Theirs(Some(l))) => assert_eq!(l, winner),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn lease_store_conformance_sqlite() {
    let dir = services::temp_dir("leases");
    let url = format!("sqlite://{}/leases.db", dir.display());
    conformance(Leases::open(&url, None, None).await.expect("open")).await;
}

#[tokio::test]
async fn lease_store_conformance_postgres() {
    let url = services::postgres_database("leases").await;
    conformance(Leases::open(&url, None, None).await.expect("open")).await;
}

#[tokio::test]
async fn lease_store_conformance_dynamodb() {
    let url = format!("dynamodb://leases-{}", services::unique());
    let leases =
        Leases::open(&url, Some(&services::dynamodb()), None).await.expect("open and create the table");
    Leases::open(&url, Some(&services::dynamodb()), None).await.expect("creating the table is idempotent");
    conformance(leases).await;
}

#[tokio::test]
async fn a_bad_lease_store_is_refused_with_a_reason() {
    let missing = Leases::open("dynamodb://", None, None).await;
    assert!(
        matches!(missing, Err(LeaseError::Refused(ref m)) if m.contains("names no table")),
        "{:?}",
        missing.err()
    );
    let bad = Leases::open("mysql://x", None, None).await;
    assert!(matches!(bad, Err(LeaseError::Refused(ref m)) if m.contains("sqlite://")), "{:?}", bad.err());
    // Through the job's [region], the error names the setting to fix.
    let region =
        docfold::config::RegionConfig { name: "eu".into(), leases: "mysql://x".into(), ..Default::default() };
    let named = Leases::of(&region).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(named.contains("region.leases of region eu"), "{named}");
}

/// A linearizable in-memory lease store: the simulator's (and this test's) stand-in for the
/// real backends, which pass the same conformance suite.
#[derive(Default)]
struct MemoryLeases(Mutex<Option<Lease>>);

impl LeaseStore for MemoryLeases {
    async fn read(&self, _: &str) -> Result<Option<Lease>, LeaseError> {
        Ok(self.0.lock().unwrap().clone())
    }

    async fn replace(&self, _: &str, expected: Option<&Lease>, new: &Lease) -> Result<Replaced, LeaseError> {
        let mut held = self.0.lock().unwrap();
        if held.as_ref() == expected {
            *held = Some(new.clone());
            Ok(Replaced::Written)
        } else {
            Ok(Replaced::Conflict(held.clone()))
        }
    }
}

fn settings(region: &str, auto_failover: bool) -> RoleSettings {
    RoleSettings {
        region: region.into(),
        ttl_ms: TTL,
        skew_ms: SKEW,
        auto_failover,
        initial_leader: "r0".into(),
    }
}

/// One region under virtual time: its machine, its clock offset, whether it reaches the
/// lease store, and answers on their way back.
struct Sim {
    machine: RoleMachine,
    offset_ms: i64,
    cut: bool,
    inbox: VecDeque<(i64, Result<Answer, Option<Lease>>)>,
}

/// Three regions, seeded cuts from the lease store and delayed answers, clocks apart by up
/// to the skew bound: at no instant do two regions accept writes, no two regions ever hold
/// one epoch, and after the last heal one region leads.
fn run_roles(seed: u64) -> Vec<(i64, String, Change)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let store = MemoryLeases::default();
    let mut regions: Vec<Sim> = (0..3)
        .map(|i| Sim {
            machine: RoleMachine::new(settings(&format!("r{i}"), true)),
            offset_ms: rng.random_range(-SKEW / 2..=SKEW / 2),
            cut: false,
            inbox: VecDeque::new(),
        })
        .collect();
    let mut events = Vec::new();
    let mut holders = std::collections::BTreeMap::new();
    let end = 60_000;
    for now in (0..end).step_by(10) {
        if now < end - 15_000 && rng.random_ratio(1, 400) {
            let r = rng.random_range(0..regions.len());
            regions[r].cut = !regions[r].cut;
        }
        if now == end - 15_000 {
            regions.iter_mut().for_each(|r| r.cut = false);
        }
        for (i, sim) in regions.iter_mut().enumerate() {
            let own = now + sim.offset_ms;
            while sim.inbox.front().is_some_and(|(at, _)| *at <= now) {
                let (_, answer) = sim.inbox.pop_front().unwrap();
                let change = match answer {
                    Ok(answer) => sim.machine.on_answer(answer),
                    Err(read) => sim.machine.on_read(read),
                };
                events.extend(change.map(|c| (now, format!("r{i}"), c)));
            }
            let (request, change) = sim.machine.poll(own);
            events.extend(change.map(|c| (now, format!("r{i}"), c)));
            let Some(request) = request.filter(|_| !sim.cut) else { continue };
            let answer = match request {
                Request::Claim(c) => {
                    let times = (own, TTL, SKEW);
                    let answer = futures::executor::block_on(claim(&store, "s", &format!("r{i}"), c, times));
                    Ok(answer.expect("memory store"))
                }
                Request::Read => Err(futures::executor::block_on(store.read("s")).expect("memory store")),
            };
            sim.inbox.push_back((now + rng.random_range(0..300), answer));
        }
        let leaders: Vec<_> = regions
            .iter()
            .filter(|s| s.machine.accepts_writes(now + s.offset_ms))
            .map(|s| s.machine.epoch())
            .collect();
        assert!(leaders.len() <= 1, "seed {seed}: two regions accept writes at {now} ms: {leaders:?}");
    }
    for (at, region, change) in &events {
        if let Change::Promoted { epoch } = change {
            let first = holders.entry(*epoch).or_insert(region);
            assert_eq!(first, &region, "seed {seed}: epoch {epoch} held by two regions (at {at} ms)");
        }
    }
    let leading = regions.iter().filter(|s| s.machine.role() == Role::Leader).count();
    assert_eq!(leading, 1, "seed {seed}: after every region healed, one leads: {events:?}");
    events
}

#[test]
fn never_two_leaders_under_cuts_delays_and_skew() {
    let runs: u64 = std::env::var("DOCFOLD_REGION_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let seed: u64 = std::env::var("DOCFOLD_REGION_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed);
    eprintln!("role runs: {runs} from seed {seed} (DOCFOLD_REGION_RUNS, DOCFOLD_REGION_SEED)");
    let mut failovers = 0;
    for run in 0..runs {
        let events = run_roles(seed + run);
        failovers +=
            events.iter().filter(|(_, _, c)| matches!(c, Change::Promoted { epoch } if *epoch > 1)).count();
    }
    assert!(failovers > 0, "the cuts caused no failover: the test exercised nothing");
    assert_eq!(run_roles(seed), run_roles(seed), "same seed, same run");
}

#[test]
fn a_leader_renews_every_third_of_the_ttl_and_a_standby_only_watches() {
    let store = MemoryLeases::default();
    let mut leader = RoleMachine::new(settings("r0", false));
    let mut standby = RoleMachine::new(settings("r1", false));
    let drive = |machine: &mut RoleMachine, region: &str, now| -> Option<Request> {
        let (request, _) = machine.poll(now);
        match request? {
            Request::Claim(c) => {
                let answer = futures::executor::block_on(claim(&store, "s", region, c, (now, TTL, SKEW)));
                machine.on_answer(answer.expect("memory store"));
            }
            Request::Read => {
                machine.on_read(futures::executor::block_on(store.read("s")).expect("memory store"));
            }
        }
        request
    };
    assert_eq!(drive(&mut leader, "r0", 0), Some(Request::Claim(Claim::Acquire)));
    assert_eq!((leader.role(), leader.epoch()), (Role::Leader, Some(1)));
    assert_eq!(drive(&mut leader, "r0", TTL / 3 - 1), None, "not yet due");
    assert_eq!(drive(&mut leader, "r0", TTL / 3), Some(Request::Claim(Claim::Renew { epoch: 1 })));
    assert_eq!(leader.lease().map(|l| l.expires_ms), Some(TTL / 3 + TTL));
    assert_eq!(drive(&mut standby, "r1", 0), Some(Request::Read));
    assert_eq!(standby.role(), Role::Standby);
    // Without auto-failover the standby watches a lapsed lease and does not take it.
    assert_eq!(drive(&mut standby, "r1", 10 * TTL), Some(Request::Read));
    assert!(!standby.accepts_writes(10 * TTL));
    // The leader cut off: it stops accepting writes when its own lease runs out.
    let expires = leader.lease().unwrap().expires_ms;
    assert!(leader.accepts_writes(expires - 1));
    let (_, change) = leader.poll(expires);
    assert!(matches!(change, Some(Change::Demoted { epoch: 1, .. })), "{change:?}");
    assert!(!leader.accepts_writes(expires));
}

#[test]
fn the_router_sends_writes_to_the_lease_holder_and_reads_where_they_are_served() {
    let held = lease("eu", 3, 1_000);
    let passive = Router { mode: Mode::ActivePassive, local: "us".into() };
    assert_eq!(passive.route(Some(&held), 999), Ok("eu"));
    assert_eq!(
        passive.route(Some(&held), 1_000),
        Err(RouteError::NoLeader),
        "an expired lease names no leader"
    );
    assert_eq!(passive.route(None, 0), Err(RouteError::NoLeader));
    let active = Router { mode: Mode::ActiveActive, local: "us".into() };
    assert_eq!(active.route(None, 0), Ok("us"));
    // Reads: a standby serves them when `standby_reads`, else they go to the leader.
    assert_eq!(passive.read_from(Some(&held), 999, true), Ok("us"));
    assert_eq!(passive.read_from(Some(&held), 999, false), Ok("eu"));
    assert_eq!(passive.read_from(None, 0, false), Err(RouteError::NoLeader));
    assert_eq!(active.read_from(None, 0, false), Ok("us"));
}

/// A job file for region `name` of {a, b, c} under `dir/name`, its `[log]` section `log`,
/// sharing the lease store `dir/leases.db`; `extra` lines go into `[region]`.
pub fn region_job(dir: &std::path::Path, name: &str, log: &str, extra: &str) -> std::path::PathBuf {
    let peers: Vec<String> =
        ["a", "b", "c"].iter().filter(|r| **r != name).map(|r| format!("{r:?}")).collect();
    let text = format!(
        "job = \"main\"\n[log]\n{log}\n[store]\nurl = \"sqlite://{name}/state.db\"\n\
         [objects]\nurl = \"file://{name}/objects\"\n[projection]\nurl = \"sqlite://{name}/projections.db\"\n\
         [region]\nname = \"{name}\"\npeers = [{}]\nleases = \"sqlite://leases.db\"\nttl_ms = 1500\nskew_ms = 200\n\
         initial_leader = \"a\"\n{extra}\n",
        peers.join(", ")
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

/// Region `name` on the embedded log (2 partitions).
fn region_config(dir: &std::path::Path, name: &str, auto_failover: bool) -> std::path::PathBuf {
    let log = format!("url = \"file://{name}/log\"\npartitions = 2");
    region_job(dir, name, &log, &format!("auto_failover = {auto_failover}"))
}

fn docfold(args: &[&str], config: &std::path::Path) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_docfold"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("runs docfold");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8 output");
    (out.status.success(), text(out.stdout), text(out.stderr))
}

#[test]
fn operators_promote_and_demote_regions() {
    let dir = services::temp_dir("region-cli");
    let (a, b) = (region_config(&dir, "a", false), region_config(&dir, "b", false));
    let (ok, out, err) = docfold(&["setup"], &a);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("topic b.doc-ops") && out.contains("topic c.doc-ops"),
        "the peers' mirrored topics: {out}"
    );
    assert!(out.contains("lease store ready: sqlite://"), "{out}");
    assert_eq!(status(&a)["role"], "standby (no region leads)");
    let (ok, out, err) = docfold(&["region", "promote", "a"], &b);
    assert!(ok && out.contains("a leads at epoch 1"), "{out}{err}");
    assert_eq!((status(&a)["role"].as_str(), status(&b)["role"].as_str()), (Some("leader"), Some("standby")));
    assert_eq!(status(&b)["reads_from"], "b", "standby_reads is on by default");
    let (ok, _, err) = docfold(&["region", "promote", "b"], &b);
    assert!(
        !ok && err.contains("a holds the lease at epoch 1"),
        "a live lease is not taken without --force: {err}"
    );
    let (ok, out, err) = docfold(&["region", "promote", "b", "--force"], &a);
    assert!(ok && out.contains("b holds the lease at epoch 2: a is fenced"), "{out}{err}");
    let (ok, _, err) = docfold(&["region", "demote"], &a);
    assert!(!ok && err.contains("a does not lead"), "{err}");
    let (ok, out, err) = docfold(&["region", "demote"], &b);
    assert!(ok && out.contains("b released the lease (epoch 2)"), "{out}{err}");
    let (ok, _, err) = docfold(&["region", "promote", "x"], &a);
    assert!(!ok && err.contains("\"x\" is not a region of this job"), "{err}");
    let (ok, out, err) = docfold(&["region", "promote", "c"], &a);
    assert!(ok && out.contains("c leads at epoch 3"), "a released lease is free at once: {out}{err}");
}

/// Two `docfold run` processes with `auto_failover`: the initial leader takes the lease; it
/// is killed (-9, no release); the standby takes over with a higher epoch within the
/// bound (ttl + skew + a renew interval, with margin); a planned stop releases it.
#[test]
fn a_standby_takes_over_when_the_leader_dies() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let dir = services::temp_dir("region-failover");
    let port = services::free_port();
    let b_log = "url = \"file://b/log\"\npartitions = 2";
    let b_extra = format!("auto_failover = true\n[metrics]\nlisten = \"127.0.0.1:{port}\"");
    let (a, b) = (region_config(&dir, "a", true), region_job(&dir, "b", b_log, &b_extra));
    let spawn = |config: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_docfold"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn docfold run")
    };
    let wait_for = |config: &std::path::Path, holder: &str, within: Duration| {
        let start = Instant::now();
        loop {
            let seen = status(config);
            if seen["holder"] == holder && seen["expires_in_ms"].is_i64() {
                return (start.elapsed(), seen["epoch"].as_u64().expect("epoch"));
            }
            assert!(start.elapsed() < within, "{holder} did not take the lease within {within:?}: {seen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut leader = spawn(&a);
    let (_, first) = wait_for(&b, "a", Duration::from_secs(20));
    let standby = spawn(&b);
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(status(&b)["holder"], "a", "a live leader keeps the lease");
    leader.kill().expect("kill -9 the leader");
    leader.wait().expect("reap");
    let (rto, second) = wait_for(&b, "b", Duration::from_secs(10));
    eprintln!("failover: b took the lease at epoch {second}, {} ms after a was killed", rto.as_millis());
    assert!(second > first, "the new term has a higher epoch ({second} after {first})");
    assert!(rto <= Duration::from_millis(1_500 + 200 + 500 + 2_000), "took {rto:?}");
    let body = services::scrape_until(port, |body| body.contains("docfold_region_leader"));
    let leader = services::metric(&body, "docfold_region_leader", &[("region", "b")]);
    let epoch = services::metric(&body, "docfold_region_epoch", &[("region", "b")]);
    assert_eq!((leader, epoch), (Some(1.0), Some(second as f64)), "b's metrics say it leads:\n{body}");
    // SIGTERM: a planned stop drains and releases the lease.
    let pid = standby.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let out = standby.wait_with_output().expect("standby exits");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("this region leads") && log.contains("released the region lease"), "{log}");
    assert_eq!(status(&a)["role"], "standby (no region leads)", "released at once");
}

/// Records in `config`'s own log (0 when its topic was never made).
fn records_in(config: &std::path::Path) -> usize {
    let config = docfold::config::JobConfig::load(config).expect("config");
    let Ok(topic) = docfold::log::Topic::open(&config, "doc-ops", false) else { return 0 };
    let mut reader = topic.reader().expect("reader");
    (0..topic.partitions()).map(|p| reader.end_offset(p).expect("end") as usize).sum()
}

#[test]
fn producers_write_to_the_leaders_log() {
    let dir = services::temp_dir("region-produce");
    let configs: Vec<_> = ["a", "b", "c"].iter().map(|r| region_config(&dir, r, false)).collect();
    let ops = dir.join("ops.jsonl");
    let op = r#"{"schema_version":1,"doc_id":"greeting","origin_region":"a","client_time_ms":0,"op":{"id":{"site":"00000000000000aa","counter":1},"inserts":[{"start":[[5,"00000000000000aa",1]],"text":"hi!"}],"deletes":[]}}"#;
    std::fs::write(&ops, format!("{op}\n")).expect("write ops");
    let produce = |config: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["produce", ops.to_str().expect("utf-8 path")];
        args.extend(extra);
        docfold(&args, config)
    };
    let (ok, _, err) = produce(&configs[0], &[]);
    assert!(!ok && err.contains("no region holds the leadership lease"), "{err}");
    assert!(docfold(&["region", "promote", "b"], &configs[0]).0);
    let (ok, _, err) = produce(&configs[0], &[]);
    assert!(ok && err.contains("routed to region b"), "{err}");
    let (ok, _, err) = produce(&configs[2], &["--region", "c"]);
    assert!(ok && err.contains("routed to region b"), "{err}");
    let (ok, _, err) = produce(&configs[2], &["--region", "mars-1"]);
    assert!(!ok && err.contains("--region \"mars-1\" is not a region of this job"), "{err}");
    let counts: Vec<_> = configs.iter().map(|c| records_in(c)).collect();
    assert_eq!(counts, [0, 2, 0], "every write went to the leader's log");

    // Active-active: every region writes its own log.
    let dir = services::temp_dir("region-produce-aa");
    let log = "url = \"file://a/log\"\npartitions = 2";
    let local = region_job(&dir, "a", log, "mode = \"active-active\"");
    let (ok, _, err) = produce(&local, &[]);
    assert!(ok && err.contains("routed to region a"), "{err}");
    assert_eq!(records_in(&local), 1);
}

/// The gate in front of a region's log: a write is taken at the leader's epoch, and refused
/// by a region that stepped down, naming who holds the lease and at which epoch.
#[test]
fn a_region_that_no_longer_leads_refuses_writes_naming_the_holder_and_epoch() {
    let store = MemoryLeases::default();
    let mut old = RoleMachine::new(settings("r0", false));
    let (request, _) = old.poll(0);
    let Some(Request::Claim(c)) = request else { panic!("the initial leader claims: {request:?}") };
    old.on_answer(
        futures::executor::block_on(claim(&store, "s", "r0", c, (0, TTL, SKEW))).expect("memory store"),
    );
    assert_eq!(old.admit(1), Ok(1), "the leader takes writes at its epoch");
    // An operator forces r1 in; r0's next renewal finds the lease gone.
    let forced = futures::executor::block_on(claim(&store, "s", "r1", Claim::Force, (10, TTL, SKEW)));
    assert!(matches!(forced, Ok(Answer::Ours(Lease { epoch: 2, .. }))), "{forced:?}");
    let (request, _) = old.poll(TTL / 3);
    let Some(Request::Claim(c)) = request else { panic!("a renewal is due: {request:?}") };
    let change = old.on_answer(
        futures::executor::block_on(claim(&store, "s", "r0", c, (TTL / 3, TTL, SKEW))).expect("memory store"),
    );
    assert!(matches!(change, Some(Change::Demoted { epoch: 1, .. })), "{change:?}");
    let refused = old.admit(TTL / 3 + 1).expect_err("a demoted region takes no writes");
    assert_eq!(refused.role, Role::Demoted);
    let message = refused.to_string();
    assert!(message.contains("r0 no longer leads") && message.contains("r1's at epoch 2"), "{message}");
    let standby = RoleMachine::new(settings("r2", false));
    let never = standby.admit(0).expect_err("a standby takes no writes").to_string();
    assert!(never.contains("r2 does not lead"), "{never}");
}

/// `docfold demo --regions`: three embedded regions, the leader killed mid-stream, a
/// standby promoted, the old leader healed. Nothing acked is lost, every region equals the
/// reference fold, the RTO is reported, and a write sent to the healed old leader is
/// refused with the new epoch.
#[test]
fn the_regions_demo_fails_over_and_loses_nothing() {
    let dir = services::temp_dir("demo-regions");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_docfold"))
        .args(["demo", "--regions", "--copies", "1", "--dir"])
        .arg(dir.join("demo"))
        .output()
        .expect("runs docfold");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("lost after heal: 0\n"), "{stdout}");
    assert!(stdout.contains("every region's documents equal the reference fold"), "{stdout}");
    let rto: f64 = stdout
        .split("RTO: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an RTO line: {stdout}"));
    // ttl 1500 ms + skew 200 ms + a watch interval, on a loaded test machine.
    assert!(rto > 1.0 && rto < 10.0, "RTO {rto} s: {stdout}");
    assert!(stdout.contains("at risk until it heals"), "{stdout}");
    assert!(stdout.contains("refused: region us-east-1 does not lead: the lease is"), "{stdout}");
    let status = status(&dir.join("demo/eu-west-1.toml"));
    assert!(status["epoch"].as_u64().is_some_and(|e| e >= 2), "a failover happened: {status}");
}

/// `docfold setup` reads the peers' job files beside its own and refuses what would let two
/// regions lead: another initial leader, another lease store; the error names the setting.
#[test]
fn setup_refuses_regions_that_disagree_on_who_leads() {
    let dir = services::temp_dir("region-disagree");
    let configs: Vec<_> = ["a", "b", "c"].iter().map(|r| region_config(&dir, r, false)).collect();
    let text = std::fs::read_to_string(&configs[1]).expect("read");
    std::fs::write(&configs[1], text.replace("initial_leader = \"a\"", "initial_leader = \"b\""))
        .expect("write");
    let (ok, _, err) = docfold(&["setup"], &configs[0]);
    assert!(!ok && err.contains("region.initial_leader") && err.contains("b.toml"), "{err}");
    std::fs::write(&configs[1], text).expect("write");
    let text = std::fs::read_to_string(&configs[2]).expect("read");
    std::fs::write(&configs[2], text.replace("sqlite://leases.db", "sqlite://other.db")).expect("write");
    let (ok, _, err) = docfold(&["setup"], &configs[0]);
    assert!(!ok && err.contains("region.leases") && err.contains("different lease stores"), "{err}");
    std::fs::write(&configs[2], text).expect("write");
    let (ok, _, err) = docfold(&["setup"], &configs[0]);
    assert!(ok, "agreeing regions set up: {err}");
    // One lease database reached by two routes (hosts, proxies, options) is one store.
    let region = |name: &str, peer: &str, leases: &str| docfold::config::RegionConfig {
        name: name.into(),
        peers: vec![peer.into()],
        leases: leases.into(),
        ..Default::default()
    };
    let a = region("a", "b", "postgres://u@db-a.internal:5432/control");
    let b = region("b", "a", "postgres://u:pw@pgbouncer-b:6432/control?sslmode=verify-full");
    assert_eq!(a.disagreement(&b), None);
    let c = region("b", "a", "postgres://u@db-a.internal:5432/other");
    assert!(a.disagreement(&c).is_some_and(|(setting, _)| setting == "region.leases"));
    // Residency: one rule set everywhere, naming known regions only.
    let rule = |regions: &[&str]| docfold::region::residency::Residency {
        prefix: "eu/".into(),
        regions: regions.iter().map(|r| r.to_string()).collect(),
    };
    let resident = docfold::config::RegionConfig { residency: vec![rule(&["b"])], ..b.clone() };
    assert!(a.disagreement(&resident).is_some_and(|(setting, _)| setting == "region.residency"));
    let text = std::fs::read_to_string(&configs[0]).expect("read");
    let unknown = "[[region.residency]]\nprefix = \"eu/\"\nregions = [\"mars-1\"]\n";
    std::fs::write(&configs[0], format!("{text}{unknown}")).expect("write");
    let (ok, _, err) = docfold(&["setup"], &configs[0]);
    assert!(!ok && err.contains("region.residency") && err.contains("mars-1"), "{err}");
    // Home rules: one set everywhere, in home mode only, inside residency.
    let home = |region: &str| docfold::region::home::HomeRule { prefix: "eu/".into(), region: region.into() };
    let homed = docfold::config::RegionConfig { home: vec![home("b")], ..b.clone() };
    assert!(a.disagreement(&homed).is_some_and(|(setting, _)| setting == "region.home"));
    let rule = "[[region.home]]\nprefix = \"eu/\"\nregion = \"b\"\n";
    std::fs::write(&configs[0], format!("{text}{rule}")).expect("write");
    let (ok, _, err) = docfold(&["setup"], &configs[0]);
    assert!(!ok && err.contains("region.home") && err.contains("mode = \"home\""), "{err}");
    let (ok, _, err) = docfold(&["region", "move-doc", "eu/x", "b"], &configs[1]);
    assert!(!ok && err.contains("only in mode = \"home\""), "{err}");
    let residency = "[[region.residency]]\nprefix = \"eu/\"\nregions = [\"c\"]\n";
    let homes = text.replace("initial_leader", "mode = \"home\"\ninitial_leader");
    std::fs::write(&configs[0], format!("{homes}{residency}{rule}")).expect("write");
    let (ok, _, err) = docfold(&["setup"], &configs[0]);
    assert!(!ok && err.contains("region.home") && err.contains("may live only in c"), "{err}");
    std::fs::write(&configs[0], format!("{homes}{residency}")).expect("write");
    let (ok, _, err) = docfold(&["region", "move-doc", "eu/x", "b"], &configs[0]);
    assert!(!ok && err.contains("may live only in c"), "move-doc keeps residency: {err}");
}
