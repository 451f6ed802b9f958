//! `docfold demo`: the whole embedded pipeline on real editing traces (kept in the binary,
//! CC BY 4.0, see tests/data/traces/ATTRIBUTION.md): replay, produce, fold, check.
//! `docfold demo --regions`: three regions in one process, a failover and a heal (`regions`).

mod regions;

use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Instant;

use docfold::config::JobConfig;
use docfold::fold::snapshot;
use docfold::lseq::doc_seed;
use docfold::pipeline::Until;
use docfold::store::Store;
use docfold::trace::{Trace, publish, replay};

use super::run::{print_summaries, run_job};
use super::{open_writer, runtime};

const TRACES: [(&str, &[u8]); 4] = [
    ("automerge-paper", include_bytes!("../../../tests/data/traces/automerge-paper.json.gz")),
    ("rustcode", include_bytes!("../../../tests/data/traces/rustcode.json.gz")),
    ("sveltecomponent", include_bytes!("../../../tests/data/traces/sveltecomponent.json.gz")),
    ("friendsforever", include_bytes!("../../../tests/data/traces/friendsforever.json.gz")),
];
const JOB_FILE: &str = "job.toml";
/// The demo deletes `--dir` on its next run only when this file says the demo made it.
const MADE_BY_DEMO: &str = ".docfold-demo";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo keeps its log and state (replaced on each run). Default:
    /// docfold-data/demo, with --regions docfold-data/demo-regions.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Documents per trace (with --regions: per region's producer); each gets the trace's
    /// edits. Default 8, with --regions 2.
    #[arg(long)]
    copies: Option<usize>,
    /// Three regions in one process (active-passive, mirrors with one-way delays): the
    /// leader is killed mid-stream, a standby promoted, the old leader healed; prints the
    /// RTO, the ops at risk and `lost after heal`, and checks every region's documents.
    #[arg(long)]
    regions: bool,
    /// --regions: every mirror link's one-way delay in ms (default: half the measured round
    /// trips between us-east-1, eu-west-1 and ap-southeast-1).
    #[arg(long, requires = "regions")]
    one_way_ms: Option<u64>,
    /// --regions: ops per second each region's producer writes.
    #[arg(long, default_value_t = 2500, requires = "regions")]
    rate: u64,
}

/// Replaces `dir` with an empty folder, if the demo made it (or it does not exist).
fn fresh_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        anyhow::ensure!(
            dir.join(MADE_BY_DEMO).exists(),
            "{} exists and is not a folder docfold demo made (no {MADE_BY_DEMO}); pick another --dir",
            dir.display()
        );
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(MADE_BY_DEMO), "docfold demo made this folder and replaces it on each run.\n")?;
    Ok(())
}

impl DemoArgs {
    pub fn run(self) -> anyhow::Result<bool> {
        let copies = self.copies.unwrap_or(if self.regions { 2 } else { 8 });
        anyhow::ensure!(copies > 0, "--copies must be at least 1");
        let default_dir = if self.regions { "docfold-data/demo-regions" } else { "docfold-data/demo" };
        let dir = self.dir.clone().unwrap_or_else(|| default_dir.into());
        fresh_dir(&dir)?;
        if self.regions {
            anyhow::ensure!(self.rate > 0, "--rate must be at least 1");
            let demo = regions::RegionsDemo { dir, copies, rate: self.rate, one_way_ms: self.one_way_ms };
            return runtime()?.block_on(demo.run());
        }
        let config = JobConfig::in_dir(&dir);
        // The job file's paths are relative to its folder, so it works from anywhere.
        let job_file = toml::to_string(&JobConfig::in_dir(Path::new("")))?;
        std::fs::write(
            dir.join(JOB_FILE),
            format!(
                "# Written by `docfold demo`: the demo's job, for `docfold doc show ID --config {}`.\n{job_file}",
                dir.join(JOB_FILE).display(),
            ),
        )?;

        println!("1/3 replaying {} editing traces into LSEQ ops", TRACES.len());
        let mut expected = Vec::new();
        let mut writer = open_writer(&config)?;
        let mut produced = 0;
        let started = Instant::now();
        for (name, bytes) in TRACES {
            let trace = Trace::parse(bytes, name)?;
            let ops = replay(&trace, doc_seed(name)).with_context(|| format!("replaying {name}"))?.ops;
            let doc_ids: Vec<String> = (0..copies).map(|i| format!("{name}-{i}")).collect();
            produced += publish(writer.as_mut(), &ops, &doc_ids, "local", |_| {})?;
            println!("    {name:<16} {:>7} ops × {copies} documents", ops.len());
            expected.push((name, trace.end_content, ops.len(), doc_ids));
        }
        writer.flush()?;
        drop(writer);
        println!("    {produced} records in the embedded log in {:.1} s", started.elapsed().as_secs_f64());

        println!("2/3 folding every partition (file log → LSEQ fold → SQLite snapshots + checkpoints)");
        let rt = runtime()?;
        let started = Instant::now();
        let summaries = rt.block_on(run_job(&config, Until::Idle { idle_ms: 0 }))?;
        let seconds = started.elapsed().as_secs_f64();
        print_summaries(&summaries);
        let folded: u64 = summaries.iter().map(|s| s.folded).sum();
        println!(
            "    {folded} ops folded in {seconds:.2} s: {:.0} ops/s end to end",
            folded as f64 / seconds
        );

        println!(
            "3/3 checking each document in the state store and its projection against the trace's endContent"
        );
        let mut all_ok = true;
        rt.block_on(async {
            let store = Store::open(config.store.url.expose()).await?;
            let objects = docfold::sink::objects::Objects::open(&config.objects)?;
            let projections = docfold::sink::projection::Projections::open(&config.projection, objects)
                .await?
                .context("the demo's projections")?;
            for (name, end_content, ops, doc_ids) in &expected {
                let mut matching = 0;
                for doc_id in doc_ids {
                    let stored = store.load_doc(&config.job, doc_id).await?.context("document missing")?;
                    let text = snapshot::decode(&stored.state)?.text();
                    let (projected, projected_text) =
                        projections.get_text(doc_id).await?.context("projection missing")?;
                    matching += usize::from(
                        text == *end_content
                            && stored.version == *ops as u64
                            && projected_text == *end_content
                            && projected.version == stored.version,
                    );
                }
                let ok = matching == doc_ids.len();
                all_ok &= ok;
                println!(
                    "    {name:<16} {matching}/{} documents: {} ({} characters, version {ops})",
                    doc_ids.len(),
                    if ok { "endContent ok" } else { "DIFFERS" },
                    end_content.chars().count()
                );
            }
            store.close().await;
            anyhow::Ok(())
        })?;
        let job = dir.join(JOB_FILE);
        println!("\nwhere the data is:");
        println!("    log (segment files)   {}", config.log.url);
        println!("    state store (SQLite)  {}", config.store.url);
        println!("    projections (SQLite)  {}", config.projection.url);
        println!("    Parquet archive       {}/ops", config.objects.url);
        println!("    DR snapshots          {}/snapshots", config.objects.url);
        println!(
            "    dead letters, invalidations: topics doc-ops-dlq and doc-invalidations in the log folder"
        );
        println!("    look at a document:   docfold doc show automerge-paper-0 --config {}", job.display());
        println!(
            "    its projection:       docfold projections show automerge-paper-0 --config {}",
            job.display()
        );
        Ok(all_ok)
    }
}
