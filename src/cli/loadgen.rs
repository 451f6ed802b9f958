//! `docfold loadgen`: simulated users editing documents, open loop at a target rate, into the
//! job's log (file or Kafka), with `docfold run` started beside it (unless `--no-run`). It
//! tails the invalidation topic to time each op from publish to invalidation, samples the
//! pipeline's memory, prints progress every second, checks at the end that every document's
//! stored text and version are what its users made, and writes a report folder.

use anyhow::{Context, bail};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ConfigArg;
use docfold::loadgen::report::{Figures, Second, Stages};
use docfold::loadgen::{Edit, Sessions, Settings, Visibility};
use docfold::log::{LogReader, LogWriter, Topic};
use docfold::op::{Envelope, encode};
use docfold::sink::invalidate::Invalidation;
use docfold::store::{IDS_PER_QUERY, Store};

/// How often the generator wakes to send what is due and read invalidations…
const TICK: Duration = Duration::from_millis(5);
/// …and the most it sends between two flushes, in time's worth of the rate.
const BATCH: Duration = Duration::from_millis(100);

#[derive(Debug, clap::Args)]
pub struct LoadgenArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Simulated users.
    #[arg(long, default_value_t = 100_000)]
    users: u32,
    /// Documents they edit (Zipf popularity).
    #[arg(long, default_value_t = 20_000)]
    docs: u32,
    /// Ops per second from all users (open loop).
    #[arg(long, default_value_t = 100_000)]
    rate: u32,
    /// Length of the run.
    #[arg(long, default_value_t = 60)]
    seconds: u32,
    /// Zipf exponent of document popularity.
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Share of users who start offline, and how long they stay away (their ops arrive late).
    #[arg(long, default_value_t = 0.01)]
    offline_share: f64,
    #[arg(long, default_value_t = 20_000)]
    offline_ms: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Folder for report.md, figures.json, the charts and the pipeline's log.
    #[arg(long, default_value = "loadgen-report")]
    out: PathBuf,
    /// Do not start `docfold run`: time a pipeline that runs elsewhere.
    #[arg(long)]
    no_run: bool,
    /// After the last op, how long to wait for every op to be seen folded.
    #[arg(long, default_value_t = 60)]
    drain_seconds: u64,
}

#[derive(Debug, clap::Args)]
pub struct CapacityArgs {
    /// `figures.json` files of `docfold loadgen` runs (or their report folders).
    #[arg(required = true)]
    figures: Vec<PathBuf>,
    /// Where to write the page.
    #[arg(long, default_value = "docs/capacity.md")]
    out: PathBuf,
}

impl CapacityArgs {
    pub fn run(self) -> anyhow::Result<bool> {
        let mut runs = Vec::new();
        for path in &self.figures {
            let path = if path.is_dir() { path.join("figures.json") } else { path.clone() };
            let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            runs.push(
                serde_json::from_slice::<Figures>(&text)
                    .with_context(|| format!("{} is not a loadgen figures.json", path.display()))?,
            );
        }
        std::fs::write(&self.out, docfold::loadgen::capacity::markdown(&runs))
            .with_context(|| format!("writing {}", self.out.display()))?;
        println!("wrote {}", self.out.display());
        Ok(true)
    }
}

/// Where the run is.
struct Run {
    writer: Box<dyn LogWriter>,
    invalidations: Box<dyn LogReader>,
    next: Vec<u64>,
    sessions: Sessions,
    visibility: Visibility,
    epoch_ms: i64,
    /// This second's invalidations and the projection write units they stand for.
    writes: (u64, u64),
    /// When the sending began (ms since the epoch): the ops' publish times count from it.
    started_ms: i64,
    /// Samples of each of [`Stages`]' stages.
    stages: [Vec<u64>; 3],
}

impl LoadgenArgs {
    pub fn run(self) -> anyhow::Result<bool> {
        let config = self.config.load()?;
        let epoch_ms = docfold::store::now_ms();
        let settings = Settings {
            users: self.users,
            docs: self.docs,
            rate: self.rate,
            zipf_s: self.zipf,
            delete_share: 0.1,
            paste_share: 0.02,
            offline_share: self.offline_share,
            offline_ms: self.offline_ms,
            seed: self.seed,
            // Fresh ids per run: a store that holds an earlier run's documents is not mixed in.
            prefix: format!("lg{}-", epoch_ms / 1000),
        };
        let sessions = Sessions::new(settings).map_err(anyhow::Error::msg)?;
        std::fs::create_dir_all(&self.out).with_context(|| format!("creating {}", self.out.display()))?;
        let writer = super::open_writer(&config)?;
        let mut invalidations = Topic::open(&config, &config.invalidations.topic, true)
            .and_then(|topic| topic.reader())
            .context("the invalidation topic (invalidations.topic must be set: loadgen times ops by it)")?;
        let next =
            (0..invalidations.partitions()).map(|p| invalidations.end_offset(p)).collect::<Result<_, _>>()?;
        let mut child = if self.no_run { None } else { Some(self.spawn_pipeline()?) };
        let mut run = Run {
            writer,
            invalidations,
            next,
            sessions,
            visibility: Visibility::new(self.docs),
            epoch_ms,
            started_ms: epoch_ms,
            stages: Default::default(),
            writes: (0, 0),
        };
        let driven = self.drive(&mut run, child.as_ref().map(Child::id));
        let cpu = child.as_ref().map_or(0.0, |child| cpu_seconds(child.id()));
        if let Some(child) = &mut child {
            stop(child);
        }
        let mut figures = driven?;
        figures.pipeline_cpu_seconds = cpu;
        figures.log = config.log.url.expose().split("://").next().unwrap_or_default().to_string();
        figures.store = config.store.url.expose().split("://").next().unwrap_or_default().to_string();
        figures.flush_interval_ms = config.pipeline.flush_interval_ms;
        figures.write(&self.out).map_err(anyhow::Error::msg)?;
        println!("{}", figures.markdown().lines().take(9).collect::<Vec<_>>().join("\n"));
        println!("report: {}", self.out.join("report.md").display());
        let checked =
            super::runtime()?.block_on(check(config.store.url.expose(), &config.job, &run, self.docs));
        match checked {
            Ok(docs) => {
                println!(
                    "checked: the {docs} documents' stored texts and versions are what their users made"
                );
                Ok(figures.visible == figures.sent)
            }
            Err(error) => {
                eprintln!("check failed: {error:#}");
                Ok(false)
            }
        }
    }

    fn spawn_pipeline(&self) -> anyhow::Result<Child> {
        let log = std::fs::File::create(self.out.join("pipeline.log")).context("creating pipeline.log")?;
        let mut command = Command::new(std::env::current_exe().context("finding docfold")?);
        command.arg("run");
        if let Some(path) = self.config.path() {
            command.arg("--config").arg(path);
        }
        command.stdout(Stdio::null()).stderr(Stdio::from(log)).spawn().context("starting docfold run")
    }

    /// Sends the users' ops for `seconds`, then waits for the rest to be seen folded.
    fn drive(&self, run: &mut Run, pipeline: Option<u32>) -> anyhow::Result<Figures> {
        let started = Instant::now();
        run.started_ms = docfold::store::now_ms();
        let end_ms = u64::from(self.seconds) * 1000;
        let (mut edits, mut latencies, mut all) = (Vec::new(), Vec::new(), Vec::new());
        let (mut sent, mut late, mut second_sent) = (0u64, 0u64, 0u64);
        let mut timeline = Vec::new();
        let mut returned = false;
        let per_tick = (self.rate as usize * BATCH.as_millis() as usize / 1000).max(1);
        loop {
            let now_ms = started.elapsed().as_millis() as u64;
            if now_ms < end_ms {
                // At most a batch's worth at a time (a Kafka flush waits for its acks): a
                // generator that falls behind goes on reading invalidations and reporting,
                // and says how far behind it is.
                run.sessions.edits_until(now_ms, per_tick, &mut edits)?;
            } else if !returned {
                run.sessions.return_everyone(&mut edits);
                returned = true;
            }
            for edit in edits.drain(..) {
                late += u64::from(edit.late);
                publish(run, &edit, now_ms)?;
                second_sent += 1;
            }
            run.writer.flush()?;
            read_invalidations(run, now_ms, &mut latencies)?;
            if now_ms / 1000 > timeline.len() as u64 {
                let rss = pipeline.map_or(0, rss_mb);
                if pipeline.is_some() && rss == 0 {
                    bail!("docfold run stopped; its log is {}", self.out.join("pipeline.log").display());
                }
                let writes = std::mem::take(&mut run.writes);
                let mut second =
                    Second::new(second_sent, &mut latencies, writes, run.visibility.waiting() as u64, rss);
                let behind = run
                    .sessions
                    .next_due()
                    .filter(|_| now_ms < end_ms)
                    .map_or(0, |due| now_ms.saturating_sub(due));
                second.behind_ms = behind;
                eprintln!(
                    "{:>4} s  sent {:>8}/s  folded {:>8}/s  p99 {:>6} ms  waiting {:>8}  held offline {:>7}  RSS {:>5} MB{}",
                    timeline.len() + 1,
                    second.sent,
                    second.visible,
                    second.p99_ms,
                    second.waiting,
                    run.sessions.held(),
                    rss,
                    if behind > 1000 {
                        format!("  (the generator is {behind} ms behind)")
                    } else {
                        String::new()
                    }
                );
                sent += second_sent;
                second_sent = 0;
                all.append(&mut latencies);
                timeline.push(second);
            }
            let drained = returned && run.visibility.waiting() == 0;
            if drained || now_ms > end_ms + self.drain_seconds * 1000 {
                break;
            }
            if run.sessions.next_due().is_none_or(|due| due > now_ms) {
                std::thread::sleep(TICK);
            }
        }
        sent += second_sent;
        all.append(&mut latencies);
        let mut figures = Figures {
            users: self.users,
            docs: self.docs,
            rate: self.rate,
            seconds: self.seconds,
            seed: self.seed,
            sent,
            late,
            timeline,
            ..Figures::default()
        };
        figures.set_latencies(&mut all);
        figures.stages = Stages::new(&mut run.stages);
        if run.visibility.waiting() > 0 {
            eprintln!(
                "{} ops were not seen folded within {} s of the last one (is `docfold run` running?)",
                run.visibility.waiting(),
                self.drain_seconds
            );
        }
        Ok(figures)
    }
}

fn publish(run: &mut Run, edit: &Edit, now_ms: u64) -> anyhow::Result<()> {
    let doc_id = run.sessions.doc_id(edit.doc);
    let client_ms = run.epoch_ms + edit.made_ms as i64;
    let envelope = Envelope::new(doc_id.as_str(), "loadgen", client_ms, edit.op.clone());
    run.writer.append(doc_id.as_bytes(), &encode(&envelope))?;
    run.visibility.published(edit.doc, edit.increment, now_ms);
    Ok(())
}

/// Reads what the invalidation topic has, timing the ops each invalidation covers.
fn read_invalidations(run: &mut Run, now_ms: u64, latencies: &mut Vec<u64>) -> anyhow::Result<()> {
    let mut records = Vec::new();
    for partition in 0..run.next.len() {
        records.clear();
        run.invalidations.read_ready(partition as u32, run.next[partition], 10_000, &mut records)?;
        for record in &records {
            run.next[partition] = record.offset + 1;
            let Ok(invalidation) = serde_json::from_slice::<Invalidation>(&record.value) else { continue };
            if let Some(doc) = run.sessions.doc_of(&invalidation.doc_id) {
                let oldest = run.visibility.invalidated(doc, invalidation.version, now_ms, latencies);
                if let Some(published) = oldest.filter(|_| invalidation.folded_ms > 0) {
                    let at = |relative_ms: u64| run.started_ms + relative_ms as i64;
                    let stamps =
                        [at(published), invalidation.folded_ms, invalidation.projected_ms, at(now_ms)];
                    for (stage, pair) in run.stages.iter_mut().zip(stamps.windows(2)) {
                        stage.push(u64::try_from(pair[1] - pair[0]).unwrap_or(0));
                    }
                }
                // The item: the text (its editor's length now, near enough) and ~100 bytes more.
                let bytes = run.sessions.len(doc) + 100;
                run.writes.0 += 1;
                run.writes.1 += bytes.div_ceil(1024) as u64;
            }
        }
    }
    Ok(())
}

/// Every document's stored text and version against its editor's; the documents checked.
async fn check(store_url: &str, job: &str, run: &Run, docs: u32) -> anyhow::Result<usize> {
    let store = Store::open(store_url).await?;
    let ids: Vec<(u32, String)> =
        (0..docs).filter(|&d| run.sessions.text(d).is_some()).map(|d| (d, run.sessions.doc_id(d))).collect();
    for chunk in ids.chunks(IDS_PER_QUERY) {
        let asked: Vec<&str> = chunk.iter().map(|(_, id)| id.as_str()).collect();
        let stored: std::collections::HashMap<String, docfold::store::StoredDoc> =
            store.load_docs(job, &asked).await?.into_iter().collect();
        for (doc, id) in chunk {
            let Some(found) = stored.get(id) else { bail!("document {id} is not in the store") };
            let state = docfold::fold::snapshot::decode(&found.state)?;
            if Some(state.text()) != run.sessions.text(*doc) {
                bail!("document {id}: the stored text differs from its editor's");
            }
            if found.version != run.visibility.version(*doc) {
                bail!(
                    "document {id}: stored version {} but its ops add up to {}",
                    found.version,
                    run.visibility.version(*doc)
                );
            }
        }
    }
    store.close().await;
    Ok(ids.len())
}

/// The resident memory of process `pid` in MiB (0 when it is gone).
fn rss_mb(pid: u32) -> u64 {
    docfold::telemetry::memory_kb(Some(pid), "VmRSS") / 1024
}

/// CPU seconds (user + system) process `pid` has used (0 when it is gone).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |at: usize| fields.get(at).and_then(|t| t.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / per_second
}

/// Asks `docfold run` to drain (SIGINT, as Ctrl-C) and waits for it; kills it after a minute.
fn stop(child: &mut Child) {
    // SAFETY: kill(2) with our own child's pid and a valid signal.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
