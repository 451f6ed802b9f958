//! `docfold demo --regions`: three regions of the embedded log in one process, active-passive.
//! Each region runs what `docfold run` and `docfold mirror` run: the fold of its own topic and
//! its peers' mirrored ones, its role (the lease, in one SQLite file every region reaches),
//! and a mirror from each peer with a one-way delay. A gate in front of each region's log
//! takes writes only while that region leads (`RoleMachine::admit`). A producer per region
//! writes a real editing trace where `region::Router` sends it.
//!
//! Mid-stream the leader is killed: its tasks are dropped wherever they were, and its log is
//! unreachable. A standby takes the lease when it runs out. Then the old leader is healed.
//! Every region's documents are checked against the reference fold of every op a producer
//! got an ack for.

use anyhow::Context;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use docfold::config::{JobConfig, RegionConfig};
use docfold::fold::snapshot;
use docfold::log::Topic;
use docfold::lseq::{Op, OpId, Sequence, doc_seed};
use docfold::mirror::copy;
use docfold::op::decode;
use docfold::pipeline::{self, Until};
use docfold::region::Mode;
use docfold::region::leases::Leases;
use docfold::region::role::RoleMachine;
use docfold::region::runtime::keep_role;
use docfold::store::Store;
use docfold::trace::{Trace, replay};

use super::super::mirror::{Link, open_link};
use super::super::open_writer;
use super::super::region::lags;
use super::TRACES;
use produce::{Phase, Producers, Region};

mod produce;

const REGIONS: [&str; 3] = ["us-east-1", "eu-west-1", "ap-southeast-1"];
/// The trace every producer writes (sveltecomponent: 19,761 ops).
const TRACE: usize = 2;
const TTL_MS: u64 = 1_500;
const SKEW_MS: u64 = 200;

/// Half the measured public round trips (REGIONS.md): us-east-1↔eu-west-1 ≈ 70 ms,
/// us-east-1↔ap-southeast-1 ≈ 220 ms, eu-west-1↔ap-southeast-1 ≈ 160 ms.
fn one_way_ms(a: &str, b: &str) -> u64 {
    match (a.min(b), a.max(b)) {
        ("eu-west-1", "us-east-1") => 35,
        ("ap-southeast-1", "us-east-1") => 110,
        _ => 80,
    }
}

pub struct RegionsDemo {
    pub dir: PathBuf,
    pub copies: usize,
    pub rate: u64,
    pub one_way_ms: Option<u64>,
}

/// Tasks of a region or a link while it is up.
struct Up {
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Up {
    fn new() -> Up {
        Up { cancel: CancellationToken::new(), tasks: Vec::new() }
    }

    /// A crash: every task dropped at the await it was at (an uncommitted transaction rolls
    /// back, an unflushed batch is gone), nothing released or drained.
    async fn kill(self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// A clean stop: drain, checkpoint, release the lease; the first failure, if any.
    async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        let mut result = Ok(());
        for task in self.tasks {
            let outcome = task.await.map_err(anyhow::Error::from).and_then(|r| r);
            result = result.and(outcome);
        }
        result
    }
}

/// The job file of region `name` in the demo folder (paths relative to it).
fn job_file(name: &str) -> anyhow::Result<String> {
    let mut config = JobConfig::in_dir(Path::new(name));
    config.pipeline.flush_interval_ms = 200;
    config.region = Some(RegionConfig {
        name: name.into(),
        peers: REGIONS.iter().filter(|r| **r != name).map(|r| r.to_string()).collect(),
        mode: Mode::ActivePassive,
        leases: "sqlite://leases.db".into(),
        standby_reads: true,
        auto_failover: true,
        ttl_ms: TTL_MS,
        skew_ms: SKEW_MS,
        initial_leader: Some(REGIONS[0].into()),
        ..RegionConfig::default()
    });
    Ok(format!(
        "# Written by `docfold demo --regions`: region {name}, for `docfold region status --config {name}.toml`.\n{}",
        toml::to_string(&config)?
    ))
}

impl RegionsDemo {
    fn delay(&self, a: &str, b: &str) -> u64 {
        self.one_way_ms.unwrap_or_else(|| one_way_ms(a, b))
    }

    pub async fn run(self) -> anyhow::Result<bool> {
        let (name, bytes) = TRACES[TRACE];
        let trace = Trace::parse(bytes, name)?;
        let ops: Arc<[Op]> =
            replay(&trace, doc_seed(name)).with_context(|| format!("replaying {name}"))?.ops.into();
        let mut regions = Vec::new();
        for name in REGIONS {
            let file = self.dir.join(format!("{name}.toml"));
            std::fs::write(&file, job_file(name)?)?;
            let config = JobConfig::load(&file)?;
            regions.push(Region::new(name, file, config));
        }
        let producers = Producers::new(regions, &ops, self.copies, self.rate).await?;
        let regions = &producers.regions;
        println!("1/4 three regions on the embedded log under {}, active-passive", self.dir.display());
        for (i, a) in REGIONS.iter().enumerate() {
            for b in &REGIONS[i + 1..] {
                println!("    mirror {a} ↔ {b}: {} ms one way", self.delay(a, b));
            }
        }
        let mut up: Vec<Option<Up>> = Vec::new();
        for region in regions {
            up.push(Some(self.start_region(region).await?));
        }
        let mut links = Vec::new();
        for a in 0..regions.len() {
            for b in (0..regions.len()).filter(|&b| b != a) {
                links.push(((a, b), self.start_link(regions, a, b).await?));
            }
        }
        let epoch = wait_for(Duration::from_secs(30), || regions[0].leads())
            .await
            .context("the initial leader did not take the lease")?;
        println!("    {} leads at epoch {epoch} (lease ttl {TTL_MS} ms, renewed every third)", REGIONS[0]);

        println!(
            "2/4 a producer in each region writes {name} ({} ops) to {} documents of its own, {} ops/s, routed to the leader ({} ops in all)",
            ops.len(),
            self.copies,
            self.rate,
            ops.len() * self.copies * REGIONS.len()
        );
        let started = Instant::now();
        let writing = producers.spawn();
        let run_ms = ops.len() as u64 * 1000 / self.rate;
        tokio::time::sleep(Duration::from_millis(run_ms * 3 / 10)).await;

        let leader = 0;
        let killed_at = Instant::now();
        regions[leader].close_door();
        producers.set_phase(Phase::Outage);
        producers.killed(epoch);
        up[leader].take().context("leader up")?.kill().await;
        let (cut, kept): (Vec<_>, Vec<_>) =
            links.into_iter().partition(|((a, b), _)| *a == leader || *b == leader);
        links = kept;
        for (_, link) in cut {
            link.kill().await;
        }
        let at_risk = at_risk(regions, leader)?;
        println!(
            "3/4 {} killed at {:.1} s ({} ops acked before it); {at_risk} ops it acked were not mirrored anywhere: at risk until it heals",
            REGIONS[leader],
            started.elapsed().as_secs_f64(),
            producers.acked(Phase::Steady)
        );
        let (taker, epoch, first_write) =
            wait_for(Duration::from_secs(60), || producers.first_write_after_kill())
                .await
                .context("no standby took writes after the leader was killed")?;
        println!(
            "    {taker} leads at epoch {epoch}; RTO: {:.2} s (kill → first write accepted by {taker})",
            (first_write - killed_at).as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        producers.set_phase(Phase::Healed);
        up[leader] = Some(self.start_region(&regions[leader]).await?);
        for peer in (0..regions.len()).filter(|&p| p != leader) {
            links.push(((leader, peer), self.start_link(regions, leader, peer).await?));
            links.push(((peer, leader), self.start_link(regions, peer, leader).await?));
        }
        // A producer that still believes the old leader leads writes there once it is back
        // and has read the lease: the gate refuses it with the epoch.
        wait_for(Duration::from_secs(30), || regions[leader].has_seen_lease()).await?;
        producers.send_one_to(leader);
        println!(
            "    {} healed at {:.1} s: outage {:.1} s, {} ops acked during it, {} writes refused (no leader, region down)",
            REGIONS[leader],
            started.elapsed().as_secs_f64(),
            killed_at.elapsed().as_secs_f64(),
            producers.acked(Phase::Outage),
            producers.refused(Phase::Outage)
        );
        for result in writing {
            result.await??;
        }
        let healed = producers.acked(Phase::Healed);
        match producers.stale_refusal() {
            Some(refusal) => {
                println!("    a write sent to the old leader after the heal was refused: {refusal}")
            }
            None => {
                println!("    (every producer had finished before the heal: no write went to the old leader)")
            }
        }
        println!(
            "    {healed} ops acked after the heal; every producer done at {:.1} s",
            started.elapsed().as_secs_f64()
        );

        let converging = Instant::now();
        wait_for(Duration::from_secs(120), || converged(regions))
            .await
            .context("the regions did not converge")?;
        println!(
            "4/4 every region folded every topic {:.2} s after the last write",
            converging.elapsed().as_secs_f64()
        );
        let mut result = Ok(());
        for link in links.into_iter().map(|(_, link)| link).chain(up.into_iter().flatten()) {
            result = result.and(link.stop().await);
        }
        result.context("a region's task failed")?;
        let ok = check(regions, &ops, &trace.end_content, &producers.doc_ids()).await?;
        Ok(ok)
    }

    /// Starts a region's fold and role, and opens the gate in front of its log.
    async fn start_region(&self, region: &Region) -> anyhow::Result<Up> {
        let config = region.config.clone();
        let settings = config.region.as_ref().context("[region]")?;
        let (view, role) = watch::channel(RoleMachine::new(settings.role()));
        region.open_door(open_writer(&config)?, role);
        let leases = Leases::of(settings).await.context("the lease store")?;
        let mut up = Up::new();
        let cancel = up.cancel.clone();
        let job = config.job.clone();
        up.tasks.push(tokio::spawn(async move {
            keep_role(leases, job, view, cancel).await;
            Ok(())
        }));
        let cancel = up.cancel.clone();
        up.tasks.push(tokio::spawn(async move {
            pipeline::run(&config, Until::Cancelled, cancel).await?;
            Ok(())
        }));
        Ok(up)
    }

    /// Starts the mirror from region `a` into region `b`.
    async fn start_link(&self, regions: &[Region], a: usize, b: usize) -> anyhow::Result<Up> {
        let delay = self.delay(REGIONS[a], REGIONS[b]);
        let Link { mirror, mut reader, mut writer, partitions, .. } =
            open_link(&regions[a].config, &regions[b].config, delay)?;
        let store = Store::open(regions[b].config.store.url.expose()).await?;
        let mut up = Up::new();
        let cancel = up.cancel.clone();
        up.tasks.push(tokio::spawn(async move {
            let copied =
                copy::run(&mirror, reader.as_mut(), (writer.as_mut(), partitions), &store, false, &cancel)
                    .await;
            store.close().await;
            copied?;
            Ok(())
        }));
        Ok(up)
    }
}

/// Polls `ready` every 20 ms until it gives a value, or `limit` passes.
async fn wait_for<T, F: Future<Output = Option<T>>>(
    limit: Duration,
    mut ready: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let until = Instant::now() + limit;
    loop {
        if let Some(value) = ready().await {
            return Ok(value);
        }
        anyhow::ensure!(Instant::now() < until, "gave up after {} s", limit.as_secs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Records of `leader`'s own topic that no peer's mirrored topic holds yet (the mirrors
/// copy in offset order and nothing repeated before the kill, so it is the difference of
/// the ends).
fn at_risk(regions: &[Region], leader: usize) -> anyhow::Result<u64> {
    let source = &regions[leader];
    let ends = |region: &Region, topic: &str| -> anyhow::Result<Vec<u64>> {
        let mut reader = Topic::open(&region.config, topic, true)?.reader()?;
        Ok((0..reader.partitions()).map(|p| reader.end_offset(p)).collect::<Result<_, _>>()?)
    };
    let own = ends(source, &source.config.log.topic)?;
    let mirrored = docfold::mirror::mirrored_topic(source.name, &source.config.log.topic);
    let mut copied = vec![0; own.len()];
    for peer in regions.iter().filter(|r| r.name != source.name) {
        for (best, end) in copied.iter_mut().zip(ends(peer, &mirrored)?) {
            *best = (*best).max(end);
        }
    }
    Ok(own.iter().zip(copied).map(|(own, copied)| own.saturating_sub(copied)).sum())
}

/// Whether every region has mirrored every peer's topic to its end and folded every
/// source topic to its end (`docfold region status`'s lags, all zero).
async fn converged(regions: &[Region]) -> Option<()> {
    for region in regions {
        let peers = &region.config.region.as_ref()?.peers;
        let (folded, mirrored) = lags(&region.config, Some(&region.file), peers).await;
        if folded != Ok(0) || mirrored.iter().any(|(_, lag)| *lag != Ok(0)) {
            return None;
        }
    }
    Some(())
}

/// Every (document, op id) in a region's source topics: its own and the mirrored ones.
fn ops_in_log(config: &JobConfig) -> anyhow::Result<HashSet<(String, OpId)>> {
    let mut held = HashSet::new();
    let mut batch = Vec::new();
    for topic in pipeline::source_topics(config) {
        let mut reader = Topic::open(config, &topic, true)?.reader()?;
        for partition in 0..reader.partitions() {
            let mut next = reader.earliest_offset(partition)?;
            loop {
                batch.clear();
                reader.read(partition, next, 4096, &mut batch)?;
                let Some(last) = batch.last() else { break };
                next = last.offset + 1;
                for record in &batch {
                    if let Ok(envelope) = decode(&record.value) {
                        held.insert((envelope.doc_id, envelope.op.id));
                    }
                }
            }
        }
    }
    Ok(held)
}

/// Every region's documents against the reference fold of every op (text and identifiers),
/// and its projections against the text; prints a table and `lost after heal`.
async fn check(
    regions: &[Region],
    ops: &[Op],
    end_content: &str,
    doc_ids: &[String],
) -> anyhow::Result<bool> {
    let mut reference = Sequence::new();
    for op in ops {
        reference.apply(op)?;
    }
    let expected = reference.entries();
    anyhow::ensure!(
        reference.text() == end_content,
        "the reference fold differs from the trace's endContent"
    );
    println!(
        "    region          role       documents equal to the reference   projections   lost after heal"
    );
    let (mut all_ok, mut lost) = (true, 0);
    for region in regions {
        let store = Store::open(region.config.store.url.expose()).await?;
        let objects = docfold::sink::objects::Objects::open(&region.config.objects)?;
        let projections = docfold::sink::projection::Projections::open(&region.config.projection, objects)
            .await?
            .context("the region's projections")?;
        let held = tokio::task::block_in_place(|| ops_in_log(&region.config))?;
        let region_lost = doc_ids
            .iter()
            .flat_map(|doc| ops.iter().map(move |op| (doc.clone(), op.id)))
            .filter(|key| !held.contains(key))
            .count();
        let (mut equal, mut projected) = (0, 0);
        for doc_id in doc_ids {
            let Some(stored) = store.load_doc(&region.config.job, doc_id).await? else { continue };
            let state = snapshot::decode(&stored.state)?;
            equal += usize::from(state.text() == end_content && state.entries() == expected);
            let text = projections.get_text(doc_id).await?.map(|(_, text)| text);
            projected += usize::from(text.as_deref() == Some(end_content));
        }
        store.close().await;
        let ok = equal == doc_ids.len() && projected == doc_ids.len() && region_lost == 0;
        all_ok &= ok;
        lost += region_lost;
        println!(
            "    {:<15} {:<10} {:>20}/{:<13} {:>5}/{:<7} {region_lost:>6}",
            region.name,
            region.role_name(),
            equal,
            doc_ids.len(),
            projected,
            doc_ids.len()
        );
    }
    println!("lost after heal: {lost}");
    if all_ok {
        println!(
            "every region's documents equal the reference fold of every acked op ({} characters)",
            end_content.chars().count()
        );
    } else {
        println!("DIFFERS: a region's documents are not the reference fold");
    }
    println!(
        "\nthe regions' job files: {}",
        regions.iter().map(|r| r.file.display().to_string()).collect::<Vec<_>>().join(", ")
    );
    println!("    docfold region status --config {}", regions[0].file.display());
    Ok(all_ok)
}
