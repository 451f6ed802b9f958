//! Active-passive across three regions on the real engines, measured: real processes
//! (`docfold run`, six `docfold mirror`s) on three tansu brokers, PostgreSQL, DynamoDB Local,
//! S3 and Redis, every cross-region connection through a delay link at half the measured
//! public round trips (us-east-1↔eu-west-1 35 ms, us-east-1↔ap-southeast-1 110 ms,
//! eu-west-1↔ap-southeast-1 80 ms one way). Producers in every region write a real trace
//! through `region::Router`; after a steady phase the leader region loses every link, a
//! standby takes over, the old leader is healed.
//!
//! Reports: write-ack latency per producer region, replication lag p50/p99 from the leader
//! to each standby, cross-region bytes per op, RTO, ops at risk during the outage, and ops
//! lost after the heal. Needs the services: `./scripts/services up && source .services/env
//! && cargo bench --bench regions` (it measures waits, not CPU: `--profile test` reuses
//! the tests' build).

#[allow(dead_code)]
#[path = "../tests/it/link.rs"]
mod link;
#[allow(dead_code)]
#[path = "../tests/it/services.rs"]
mod services;
#[allow(dead_code)]
#[path = "../tests/it/world.rs"]
mod world;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use docfold::log::LogReader;
use docfold::log::kafka::KafkaLog;
use docfold::lseq::{Op, doc_seed};
use docfold::region::Mode;
use docfold::sim::MirrorMode;
use docfold::sim::report::{Real, RealRun};
use docfold::trace::{Trace, replay};
use world::{PARTITIONS, REGIONS, World, failover, start_processes, wait_until};

/// End offsets of the leader's own topic (`series[0]`) and of its mirror in each standby,
/// partition by partition, sampled every few milliseconds.
struct Timeline {
    samples: Vec<(Instant, Vec<Vec<u64>>)>,
}

impl Timeline {
    /// Samples until `stop`: `readers[0]` is the leader's topic, the others its mirrors.
    fn record(readers: &mut [Box<dyn LogReader>], stop: &AtomicBool) -> Timeline {
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let at = Instant::now();
            let ends = readers
                .iter_mut()
                .map(|r| (0..PARTITIONS).map(|p| r.end_offset(p).unwrap_or(0)).collect())
                .collect();
            samples.push((at, ends));
            std::thread::sleep(Duration::from_millis(5));
        }
        Timeline { samples }
    }

    /// For every level the leader's partition reached, and mirror `series` too, before
    /// `until`: how long after the leader the mirror reached it. Sorted.
    fn lags(&self, series: usize, until: Instant) -> Vec<Duration> {
        let mut lags = Vec::new();
        for p in 0..PARTITIONS as usize {
            let mut reached = 0;
            for (at, ends) in self.samples.iter().filter(|(at, _)| *at < until) {
                let level = ends[0][p];
                if level <= reached {
                    continue;
                }
                reached = level;
                let mirrored = self.samples.iter().find(|(t, e)| t >= at && e[series][p] >= level);
                if let Some((t, _)) = mirrored.filter(|(t, _)| *t < until) {
                    lags.push(*t - *at);
                }
            }
        }
        lags.sort_unstable();
        lags
    }
}

/// Per region: how many of the documents its cache holds with their text (a reader's hit).
fn cache_hits(world: &World) -> Vec<(usize, usize)> {
    let docs: Vec<String> = REGIONS.iter().flat_map(|x| (0..2).map(move |i| format!("{x}-{i}"))).collect();
    let mut redis = redis::Client::open(services::redis()).expect("redis").get_connection().expect("connect");
    world
        .regions
        .iter()
        .map(|region| {
            let config = docfold::config::JobConfig::load(&region.file).expect("job file");
            let hits = docs
                .iter()
                .filter(|doc| {
                    let key = format!("{}{doc}", config.invalidations.key_prefix);
                    let text: Option<String> =
                        redis::cmd("HGET").arg(&key).arg("text").query(&mut redis).unwrap_or(None);
                    text.is_some()
                })
                .count();
            (hits, docs.len())
        })
        .collect()
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Readers of region 0's own topic and of its mirror in every other region.
fn first_region_and_its_mirrors(world: &World) -> Vec<Box<dyn LogReader>> {
    let mirrored = docfold::mirror::mirrored_topic(REGIONS[0], "doc-ops");
    let mut readers: Vec<Box<dyn LogReader>> = vec![Box::new(
        KafkaLog::connect(&world.regions[0].broker, "doc-ops", &[])
            .expect("leader")
            .reader()
            .expect("reader"),
    )];
    for region in &world.regions[1..] {
        let log = KafkaLog::connect(&region.broker, &mirrored, &[]).expect("standby");
        readers.push(Box::new(log.reader().expect("reader")));
    }
    readers
}

/// Documents (of every region's producer) that differ from `end_content` in some region's
/// state store.
fn lost(world: &World, rt: &tokio::runtime::Runtime, end_content: &str) -> usize {
    let docs = world::failover_docs();
    (0..REGIONS.len()).map(|r| rt.block_on(world.differing(r, &docs, end_content)).len()).sum()
}

fn whole_ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// (p50, p99) of `samples`, in whole milliseconds.
fn spread(mut samples: Vec<Duration>) -> (u64, u64) {
    samples.sort_unstable();
    (whole_ms(percentile(&samples, 0.5)), whole_ms(percentile(&samples, 0.99)))
}

/// Active-active in the same world: every region's producer writes its own documents into
/// its own log while the mirrors (pulling in the targets, or pushing from the sources) copy
/// them everywhere; no fault.
fn active_active(rt: &tokio::runtime::Runtime, ops: &[Op], end_content: &str, mirror: MirrorMode) -> RealRun {
    let world = rt.block_on(World::start(Mode::ActiveActive));
    let mut processes = start_processes(&world, mirror);
    let mut readers = first_region_and_its_mirrors(&world);
    let links_before: u64 = world.links.values().chain(&world.lease_links).map(|l| l.bytes()).sum();
    let (stop, acks) = (AtomicBool::new(false), std::sync::Mutex::new(Vec::new()));
    let timeline = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| Timeline::record(&mut readers, &stop));
        let producers: Vec<_> = REGIONS
            .iter()
            .enumerate()
            .map(|(x, name)| {
                let (world, acks, docs) =
                    (&world, &acks, (0..2).map(|i| format!("{name}-{i}")).collect::<Vec<_>>());
                scope.spawn(move || world::produce(world, x, (&docs, ops, 400), acks, rt.handle()))
            })
            .collect();
        producers.into_iter().for_each(|p| p.join().expect("producer"));
        wait_until("every region converges", Duration::from_secs(300), || {
            world.converged(rt.handle(), &world::failover_docs(), end_content)
        });
        stop.store(true, Ordering::Relaxed);
        sampler.join().expect("sampler")
    });
    let acks = acks.into_inner().expect("acks");
    let link_bytes: u64 =
        world.links.values().chain(&world.lease_links).map(|l| l.bytes()).sum::<u64>() - links_before;
    let total_ops: usize = acks.iter().map(|a| a.ops).sum();
    let op_bytes = acks.iter().map(|a| a.bytes).sum::<usize>() as f64 / total_ops.max(1) as f64;
    let lost = lost(&world, rt, end_content);
    for process in &mut processes {
        let _ = std::process::Command::new("kill").arg(process.0.id().to_string()).status();
        let _ = process.0.wait();
    }
    let end = Instant::now();
    RealRun {
        mode: "active-active".into(),
        mirror,
        ack_ms: (0..REGIONS.len())
            .map(|x| spread(acks.iter().filter(|a| a.producer == x).map(|a| a.latency).collect()))
            .collect(),
        lag_ms: (0..REGIONS.len()).map(|r| (r > 0).then(|| spread(timeline.lags(r, end)))).collect(),
        rto_ms: None,
        at_risk: None,
        lost: lost as u64,
        bytes_per_op: link_bytes as f64 / total_ops.max(1) as f64,
        op_bytes,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let world = rt.block_on(World::start(Mode::ActivePassive));
    let path = format!("{}/tests/data/traces/friendsforever.json.gz", env!("CARGO_MANIFEST_DIR"));
    let trace = Trace::read(Path::new(&path)).expect("trace");
    let ops: Vec<Op> = replay(&trace, doc_seed("friendsforever")).expect("replay").ops;
    let mut processes = start_processes(&world, MirrorMode::Pull);
    let mut readers = first_region_and_its_mirrors(&world);
    let links_before: u64 = world.links.values().chain(&world.lease_links).map(|l| l.bytes()).sum();
    let stop = AtomicBool::new(false);
    let caches = std::sync::Mutex::new(None);
    let (run, timeline) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| Timeline::record(&mut readers, &stop));
        let run = failover(&world, &ops, rt.handle(), Duration::from_secs(8), &|leader| {
            *caches.lock().expect("caches") = Some((leader, cache_hits(&world)));
        });
        wait_until("every region converges", Duration::from_secs(300), || {
            world.converged(rt.handle(), &world::failover_docs(), &trace.end_content)
        });
        stop.store(true, Ordering::Relaxed);
        (run, sampler.join().expect("sampler"))
    });
    let steady_ops: usize = run.acks.iter().filter(|a| a.at < run.cut_at).map(|a| a.ops).sum();
    let link_bytes: u64 =
        world.links.values().chain(&world.lease_links).map(|l| l.bytes()).sum::<u64>() - links_before;
    let total_ops: usize = run.acks.iter().map(|a| a.ops).sum();
    let lost = lost(&world, &rt, &trace.end_content);
    for process in &mut processes {
        let _ = std::process::Command::new("kill").arg(process.0.id().to_string()).status();
        let _ = process.0.wait();
    }

    println!("active-passive, 3 regions, friendsforever ({} ops) × 2 documents per region", ops.len());
    println!(
        "\nwrite-ack latency (steady phase, 400 ops × 2 documents a batch, routed to the leader {})",
        REGIONS[0]
    );
    println!("| producer region | p50 | p99 |\n|---|---|---|");
    for (x, name) in REGIONS.iter().enumerate() {
        let (p50, p99) = run.ack_latency(x);
        println!("| {name} | {} | {} |", ms(p50), ms(p99));
    }
    println!("\nreplication lag from {} (steady phase, until the cut; sampled every 5 ms)", REGIONS[0]);
    println!("| to | one-way delay | p50 | p99 |\n|---|---|---|---|");
    for (series, r) in (1..REGIONS.len()).enumerate() {
        let lags = timeline.lags(series + 1, run.cut_at);
        println!(
            "| {} | {} | {} | {} |",
            REGIONS[r],
            ms(world::one_way(0, r)),
            ms(percentile(&lags, 0.5)),
            ms(percentile(&lags, 0.99))
        );
    }
    println!(
        "\ncross-region bytes per op (every link, steady and outage): {:.0} (an encoded op: {:.0} bytes)",
        link_bytes as f64 / total_ops.max(1) as f64,
        run.op_bytes()
    );
    let at_risk: usize = run.at_risk().iter().map(|a| a.ops).sum();
    println!("RTO (links cut → first write acked by the new leader): {}", ms(run.rto().unwrap_or_default()));
    if let Some((leader, hits)) = caches.into_inner().expect("caches") {
        println!(
            "\ncache hit ratio the moment {} was promoted (documents a reader finds in the region's cache)",
            REGIONS[leader]
        );
        println!("| region | cache | hits |\n|---|---|---|");
        for (r, (hit, of)) in hits.iter().enumerate().skip(1) {
            let kind = if world::PRELOADS[r] { "warm (preload)" } else { "cold (invalidations only)" };
            let promoted = if r == leader { ", promoted" } else { "" };
            println!(
                "| {}{promoted} | {kind} | {hit}/{of} ({:.0} %) |",
                REGIONS[r],
                100.0 * *hit as f64 / *of as f64
            );
        }
    }
    println!("ops at risk during the outage (acked by the cut-off leader): {at_risk}");
    println!("steady-phase ops: {steady_ops}; all ops acked: {total_ops}");
    match lost {
        0 => println!("lost after heal: 0 (every region holds every document at endContent)"),
        n => println!("lost after heal: {n} documents differ from endContent"),
    }
    let active_passive = RealRun {
        mode: "active-passive".into(),
        mirror: MirrorMode::Pull,
        ack_ms: (0..REGIONS.len())
            .map(|x| run.ack_latency(x))
            .map(|(a, b)| (whole_ms(a), whole_ms(b)))
            .collect(),
        lag_ms: (0..REGIONS.len()).map(|r| (r > 0).then(|| spread(timeline.lags(r, run.cut_at)))).collect(),
        rto_ms: Some(whole_ms(run.rto().unwrap_or_default())),
        at_risk: Some(at_risk as u64),
        lost: lost as u64,
        bytes_per_op: link_bytes as f64 / total_ops.max(1) as f64,
        op_bytes: run.op_bytes(),
    };
    drop(world);
    let mut runs = vec![active_passive];
    for mirror in [MirrorMode::Pull, MirrorMode::Push] {
        let run = active_active(&rt, &ops, &trace.end_content, mirror);
        println!("\nactive-active, the same world, no fault, mirrors {mirror:?}:");
        println!("| producer region | write-ack p50 / p99 | replication lag from {} p50 / p99 |", REGIONS[0]);
        println!("|---|---|---|");
        for (r, name) in REGIONS.iter().enumerate() {
            let (p50, p99) = run.ack_ms[r];
            let lag = run.lag_ms[r].map_or("—".into(), |(a, b)| format!("{a} / {b} ms"));
            println!("| {name} | {p50} / {p99} ms | {lag} |");
        }
        println!("cross-region bytes per op: {:.0}; lost: {}", run.bytes_per_op, run.lost);
        runs.push(run);
    }
    let real = Real {
        command:
            "./scripts/services up && source .services/env && cargo bench --bench regions --profile test"
                .into(),
        runs,
    };
    // For `docfold sim report`'s calibration table.
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/multi-region/real.json");
    std::fs::create_dir_all(out.parent().expect("a folder")).expect("docs/multi-region");
    std::fs::write(&out, serde_json::to_string_pretty(&real).expect("json") + "\n").expect("write real.json");
    println!("wrote {}", out.display());
}
