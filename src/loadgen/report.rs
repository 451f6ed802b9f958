//! A load run's figures, second by second, and its report: `report.md`, `figures.json` and two
//! PNG charts in a folder.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// One second of a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Second {
    /// Ops published, and ops an invalidation showed folded, in this second.
    pub sent: u64,
    pub visible: u64,
    /// Published → invalidation of the ops that became visible in this second (ms).
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
    /// Published ops not visible yet, at the end of the second.
    pub waiting: u64,
    /// Invalidations seen (one per projection write and per Redis script), and the
    /// DynamoDB write units those projection writes cost (1 per KB of the document's text).
    #[serde(default)]
    pub invalidations: u64,
    #[serde(default)]
    pub write_units: u64,
    /// The pipeline's resident memory at the end of the second (0: not sampled).
    pub rss_mb: u64,
    /// How far the generator itself was behind its schedule (it shares the machine).
    #[serde(default)]
    pub behind_ms: u64,
}

/// Where the time of an op goes, from the pipeline's stamps on the invalidation that made it
/// visible ([`crate::sink::invalidate::Invalidation`]): taken for the oldest op each
/// invalidation covers (the one whose fold the stamp is: the first of its document since
/// the last flush, which waited longest), in ms, as p50 / p95 / p99 / max.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stages {
    /// Ops timed this way (invalidations with stamps).
    pub samples: u64,
    /// Published → folded: the log, the consumer and the fold.
    pub folded: [u64; 4],
    /// Folded → projection written: the wait for the flush and the projection writes.
    pub projected: [u64; 4],
    /// Projection written → invalidation seen: the invalidation's send and delivery.
    pub seen: [u64; 4],
}

impl Stages {
    /// From the samples of each stage (sorted here).
    pub fn new(samples: &mut [Vec<u64>; 3]) -> Stages {
        let [folded, projected, seen] = samples.each_mut().map(|stage| {
            stage.sort_unstable();
            [0.5, 0.95, 0.99, 1.0].map(|q| quantile(stage, q))
        });
        Stages { samples: samples[0].len() as u64, folded, projected, seen }
    }
}

/// A whole run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Figures {
    pub users: u32,
    pub docs: u32,
    pub rate: u32,
    pub seconds: u32,
    pub seed: u64,
    /// `file://…` or `kafka://…`, and the state store's backend.
    pub log: String,
    pub store: String,
    pub flush_interval_ms: u64,
    pub sent: u64,
    pub visible: u64,
    /// Ops made offline and sent when their users came back.
    pub late: u64,
    /// Over every visible op (ms).
    pub p50_ms: u64,
    pub p95_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
    pub peak_rss_mb: u64,
    /// CPU seconds the pipeline process used in the run (user + system; 0: not measured).
    #[serde(default)]
    pub pipeline_cpu_seconds: f64,
    #[serde(default)]
    pub stages: Stages,
    pub timeline: Vec<Second>,
}

/// The `q`-th quantile (0..=1) of sorted `values`; 0 when empty.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// `a / b / c / d`.
fn slashed(values: &[u64]) -> String {
    values.iter().map(u64::to_string).collect::<Vec<_>>().join(" / ")
}

impl Second {
    /// A second whose visible ops had `latencies` (sorted here), with `invalidations` and
    /// their `write_units`.
    pub fn new(
        sent: u64,
        latencies: &mut [u64],
        (invalidations, write_units): (u64, u64),
        waiting: u64,
        rss_mb: u64,
    ) -> Second {
        latencies.sort_unstable();
        Second {
            sent,
            invalidations,
            write_units,
            visible: latencies.len() as u64,
            p50_ms: quantile(latencies, 0.5),
            p95_ms: quantile(latencies, 0.95),
            p99_ms: quantile(latencies, 0.99),
            max_ms: latencies.last().copied().unwrap_or(0),
            waiting,
            rss_mb,
            behind_ms: 0,
        }
    }
}

impl Figures {
    /// Sets the overall percentiles from every latency of the run (sorted here).
    pub fn set_latencies(&mut self, latencies: &mut [u64]) {
        latencies.sort_unstable();
        self.visible = latencies.len() as u64;
        self.p50_ms = quantile(latencies, 0.5);
        self.p95_ms = quantile(latencies, 0.95);
        self.p99_ms = quantile(latencies, 0.99);
        self.max_ms = latencies.last().copied().unwrap_or(0);
        self.peak_rss_mb = self.timeline.iter().map(|s| s.rss_mb).max().unwrap_or(0);
    }

    /// The per-second rows as markdown (every `step`-th second, and the last).
    fn table(&self, step: usize) -> String {
        let mut out = String::from(
            "| second | sent | visible | p50 ms | p95 ms | p99 ms | max ms | waiting | RSS MB | generator behind ms |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let last = self.timeline.len().saturating_sub(1);
        for (at, s) in self.timeline.iter().enumerate().filter(|(at, _)| at % step.max(1) == 0 || *at == last)
        {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                at + 1,
                s.sent,
                s.visible,
                s.p50_ms,
                s.p95_ms,
                s.p99_ms,
                s.max_ms,
                s.waiting,
                s.rss_mb,
                s.behind_ms
            );
        }
        out
    }

    pub fn markdown(&self) -> String {
        let achieved = self.sent as f64 / f64::from(self.seconds.max(1));
        let goal = 2 * self.flush_interval_ms;
        let verdict = if self.p99_ms <= goal { "met" } else { "not met" };
        format!(
            "# docfold loadgen: {users} users, {docs} documents, {rate} ops/s for {seconds} s\n\n\
             Log `{log}`, state store {store}, flush window {flush} ms, seed {seed}.\n\n\
             | | |\n|---|---|\n\
             | ops sent | {sent} ({achieved:.0}/s; {late} of them made offline and sent late) |\n\
             | ops seen folded (by an invalidation) | {visible} |\n\
             | published → invalidation p50 / p95 / p99 / max | {p50} / {p95} / {p99} / {max} ms |\n\
             | …of which published → folded | {folded} ms |\n\
             | …folded → projection written | {projected} ms |\n\
             | …projection written → invalidation seen ({stamped} ops: the oldest each invalidation covers) | {seen} ms |\n\
             | goal: p99 ≤ 2 × the flush window ({goal} ms) | {verdict} |\n\
             | the pipeline's peak RSS (goal ≤ 4 GB) | {rss} MB |\n\
             | the pipeline's CPU | {cpu:.1} s ({per_core:.0} ops folded per CPU second) |\n\n\
             ![latency](latency.png)\n\n![throughput](throughput.png)\n\n\
             ## Second by second\n\n{table}",
            users = self.users,
            docs = self.docs,
            rate = self.rate,
            seconds = self.seconds,
            log = self.log,
            store = self.store,
            flush = self.flush_interval_ms,
            seed = self.seed,
            sent = self.sent,
            late = self.late,
            visible = self.visible,
            p50 = self.p50_ms,
            p95 = self.p95_ms,
            p99 = self.p99_ms,
            max = self.max_ms,
            rss = self.peak_rss_mb,
            cpu = self.pipeline_cpu_seconds,
            per_core = self.visible as f64 / self.pipeline_cpu_seconds.max(0.001),
            folded = slashed(&self.stages.folded),
            projected = slashed(&self.stages.projected),
            seen = slashed(&self.stages.seen),
            stamped = self.stages.samples,
            table = self.table(self.timeline.len().div_ceil(30)),
        )
    }

    /// Writes `report.md`, `figures.json`, `latency.png` and `throughput.png` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let write = |name: &str, bytes: &[u8]| {
            std::fs::write(dir.join(name), bytes)
                .map_err(|e| format!("writing {}: {e}", dir.join(name).display()))
        };
        write("report.md", self.markdown().as_bytes())?;
        write("figures.json", serde_json::to_string_pretty(self).expect("plain struct").as_bytes())?;
        let column =
            |f: fn(&Second) -> u64| -> Vec<f64> { self.timeline.iter().map(|s| f(s) as f64).collect() };
        let chart = |e: crate::sim::charts::Error| format!("drawing a chart: {e}");
        crate::sim::charts::lines(
            &dir.join("latency.png"),
            "published → invalidation, per second",
            ("seconds", "milliseconds"),
            &[],
            &[
                ("p50".into(), column(|s| s.p50_ms)),
                ("p99".into(), column(|s| s.p99_ms)),
                ("max".into(), column(|s| s.max_ms)),
            ],
        )
        .map_err(chart)?;
        crate::sim::charts::lines(
            &dir.join("throughput.png"),
            "ops per second",
            ("seconds", "ops per second"),
            &[],
            &[("sent".into(), column(|s| s.sent)), ("seen folded".into(), column(|s| s.visible))],
        )
        .map_err(chart)
    }
}
