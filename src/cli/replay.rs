//! `docfold replay`: fold a range of partitions again, from the log or the archive, into a
//! fresh state store or the live store and sinks (`docfold::replay`), with a progress bar;
//! Ctrl-C drains every partition and leaves a consistent store.

use anyhow::Context;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use docfold::replay::{self, Bound, Plan, ReplaySource, Request, Target};

use super::{ConfigArg, runtime};

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Partitions to replay, e.g. `0,3`. Default: all (with --doc: the document's).
    #[arg(long, value_delimiter = ',')]
    partitions: Vec<u32>,
    /// Only this document's records (with --live: only it is projected and announced
    /// again).
    #[arg(long)]
    doc: Option<String>,
    /// The first record: an offset, or a time (RFC 3339, e.g. 2026-11-30T08:00Z) for the
    /// first record stamped at or after it. Default: the source's earliest.
    #[arg(long, value_parser = parse_bound)]
    from: Option<Bound>,
    /// The end: an offset (not replayed), or a time (every record stamped at or before it).
    /// Default: the source's end (with --live: where the live job has got to).
    #[arg(long, value_parser = parse_bound)]
    to: Option<Bound>,
    /// Read the records from the log, or rebuild them from the Parquet archive (when the
    /// log's retention has passed).
    #[arg(long, value_enum, default_value_t = SourceArg::Log)]
    source: SourceArg,
    /// Rebuild into this fresh state store (sqlite://PATH or postgres://…): documents and
    /// checkpoints only. Run the same command again after an interrupt to go on.
    #[arg(long, required_unless_present = "live", conflicts_with = "live")]
    into: Option<String>,
    /// Repair: replay into the job's own store and sinks with a new generation, so every
    /// document the range touches is projected and announced again. Refused while a live
    /// owner holds a partition.
    #[arg(long)]
    live: bool,
    /// Claim partitions even from a live owner (it is fenced off and steps down).
    #[arg(long)]
    force: bool,
    /// Say what would be replayed, and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Where records come from: the log, or rebuilt from the Parquet archive.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(super) enum SourceArg {
    Log,
    Archive,
}

impl From<SourceArg> for ReplaySource {
    fn from(source: SourceArg) -> ReplaySource {
        match source {
            SourceArg::Log => ReplaySource::Log,
            SourceArg::Archive => ReplaySource::Archive,
        }
    }
}

fn parse_bound(text: &str) -> Result<Bound, String> {
    match text.parse::<u64>() {
        Ok(offset) => Ok(Bound::Offset(offset)),
        Err(_) => super::doc::parse_time(text).map(Bound::Time),
    }
}

impl ReplayArgs {
    pub fn run(self) -> anyhow::Result<bool> {
        let config = self.config.load()?;
        let request = Request {
            partitions: self.partitions,
            doc: self.doc,
            from: self.from,
            to: self.to,
            source: self.source.into(),
            target: match self.into {
                Some(url) => Target::Fresh(url),
                None => Target::Live,
            },
            force: self.force,
        };
        let runtime = runtime()?;
        let plan = runtime.block_on(replay::plan(&config, &request))?;
        print_plan(&plan, &request);
        if self.dry_run {
            println!("dry run: nothing was written");
            return Ok(true);
        }
        let progress = Arc::new(AtomicU64::new(0));
        let cancel = CancellationToken::new();
        let bar = (!self.quiet).then(|| progress_bar(plan.records()));
        let summaries = runtime.block_on(async {
            let signal = cancel.clone();
            tokio::spawn(async move {
                super::run::shutdown_signal().await;
                signal.cancel();
            });
            let ticker = bar.clone().map(|bar| {
                let progress = progress.clone();
                tokio::spawn(async move {
                    loop {
                        bar.set_position(progress.load(Ordering::Relaxed));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
            });
            let done = replay::replay(&config, &request, &plan, progress.clone(), cancel.clone()).await;
            if let Some(ticker) = ticker {
                ticker.abort();
            }
            done
        });
        if let Some(bar) = bar {
            bar.set_position(progress.load(Ordering::Relaxed));
            bar.finish();
        }
        let summaries = summaries.context("replay")?;
        super::run::print_summaries(&summaries);
        if cancel.is_cancelled() {
            println!(
                "interrupted: every partition drained and wrote its checkpoint; {}",
                match request.target {
                    Target::Fresh(_) => "the same command goes on from there",
                    Target::Live =>
                        "`docfold run` goes on from there with the new generation (or run the same command again)",
                }
            );
        } else {
            let records = progress.load(Ordering::Relaxed);
            println!("replayed {records} records of {} partitions", summaries.len());
        }
        Ok(true)
    }
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(
        "{bar:40} {human_pos}/{human_len} records  {per_sec}  ETA {eta}",
    )
    .expect("a valid template");
    bar.set_style(style);
    bar
}

fn print_plan(plan: &Plan, request: &Request) {
    let source = match request.source {
        ReplaySource::Log => "the log",
        ReplaySource::Archive => "the Parquet archive",
    };
    let sinks = if plan.sinks { "live sinks, new generation" } else { "sinks off" };
    let doc = request.doc.as_deref().map(|d| format!(", document {d:?} only")).unwrap_or_default();
    println!("replay from {source} into {} ({sinks}{doc})", plan.store);
    println!("partition  from offset  to offset  starts at  records");
    for step in &plan.steps {
        println!(
            "{:>9}  {:>11}  {:>9}  {:>9}  {:>7}",
            step.partition,
            step.from,
            step.to,
            step.start,
            step.records()
        );
    }
    println!("{} records to read", plan.records());
}
