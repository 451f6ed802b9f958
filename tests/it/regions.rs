//! Three regions on the real engines (`world`): a failover with nothing lost, and split
//! brain under cut links to the lease store.

use docfold::lseq::{Op, doc_seed};
use docfold::region::Mode;
use docfold::region::leases::Leases;
use docfold::sim::MirrorMode;
use docfold::store::now_ms;
use docfold::trace::{Trace, replay};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::link::{Delay, Link, Protocol};
use crate::services;
use crate::world::{LEASE_ONE_WAY, REGIONS, World, failover, failover_docs, start_processes, wait_until};

/// The leader region is cut off (every link) mid-stream while producers in every region
/// write; a standby takes the lapsed lease; producers follow the router; the old leader is
/// healed and steps down. Every region then holds every acked op: its documents equal the
/// trace's endContent in the state store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_passive_survives_the_loss_of_the_leader_region() {
    let world = World::start(Mode::ActivePassive).await;
    let trace = Trace::read(Path::new("tests/data/traces/friendsforever.json.gz")).expect("trace");
    let ops: Arc<[Op]> = replay(&trace, doc_seed("friendsforever")).expect("replays").ops.into();
    let rt = tokio::runtime::Handle::current();
    let logs = |name: &str| world.dir.join(format!("{name}.log"));
    let mut processes = start_processes(&world, MirrorMode::Pull);
    tokio::task::block_in_place(|| {
        let run = failover(&world, &ops, &rt, Duration::from_secs(4), &|_| {});
        let rto = run.rto().expect("a write accepted by the new leader");
        eprintln!(
            "RTO {rto:?}; {} batches acked by the cut-off leader before its lease ran out; healed after {:?}",
            run.at_risk().len(),
            run.healed_at - run.cut_at
        );
        assert!(rto < Duration::from_secs(10), "RTO {rto:?} (ttl 1.5 s)");
        for (x, name) in REGIONS.iter().enumerate() {
            assert_eq!(run.ops_acked(x), 2 * ops.len(), "{name}: every batch acked once");
            let (p50, p99) = run.ack_latency(x);
            eprintln!("{name}: write-ack p50 {p50:?} p99 {p99:?} ({:.0} bytes an op)", run.op_bytes());
        }
        let converged = wait_until("every region converges", Duration::from_secs(120), || {
            world.converged(&rt, &failover_docs(), &trace.end_content)
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
    // The drain keeps what was folded.
    for (r, name) in REGIONS.iter().enumerate() {
        let differ = world.differing(r, &failover_docs(), &trace.end_content).await;
        assert!(differ.is_empty(), "{name}: {differ:?} are not the trace's endContent");
    }
}

/// Split brain on the real runtime: three regions' lease loops (`keep_role`, as `docfold
/// run` runs it) on the PostgreSQL lease store, each through its own link. A seeded
/// schedule cuts the leader's link, heals links and has an operator promote regions
/// (planned, or forced from a live leader), while a
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
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
            let r = rng.random_range(0..REGIONS.len());
            // Half the steps cut whoever leads now, so that failovers happen.
            let leader = views.iter().position(|v| v.borrow().admit(now_ms()).is_ok());
            let promote = |want| claim(&operator, &scope, REGIONS[r], want, (now_ms(), ttl_ms, skew_ms));
            match rng.random_range(0..5) {
                0 | 1 => links[leader.unwrap_or(r)].set_up(false),
                2 => links[r].set_up(true),
                // An operator's planned promotion: only a free lease is taken.
                3 => drop(promote(Claim::Acquire).await),
                // A leader cut off from the lease store, and an operator forcing another
                // region in: the cut-off leader cannot learn of it, and takes writes until
                // its own lease runs out.
                _ => {
                    links[leader.unwrap_or(r)].set_up(false);
                    drop(promote(Claim::Force).await);
                }
            }
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
