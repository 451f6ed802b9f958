//! The command line: one file per command.

mod dead_letters;
mod demo;
mod doc;
mod loadgen;
mod log;
mod mirror;
mod produce;
mod region;
mod region_view;
mod replay;
mod run;
mod sim;
mod sinks;
mod status;
mod topics;
mod trace;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

use docfold::config::{JobConfig, LogLocation};
use docfold::log::LogWriter;
use docfold::log::file::FileLog;

#[derive(Debug, Parser)]
#[command(
    name = "docfold",
    version,
    about = "Event-sourced stream processor for collaborative documents (LSEQ CRDT)"
)]
pub struct Cli {
    /// Logs on stderr as text, or as one JSON object per line (for a log pipeline).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "DOCFOLD_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fold the log into document states (runs until Ctrl-C, or --exit-when-idle).
    Run(run::RunArgs),
    /// Publish ops (JSON lines, or the edits of a trace file) to the log.
    Produce(produce::ProduceArgs),
    /// Read folded documents from the state store.
    #[command(subcommand)]
    Doc(doc::DocCommand),
    /// Create the job's topics (Kafka, or the embedded log's partitions).
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
    /// Everything the job needs on its engines, idempotently: its topics, the projection
    /// table, and a check that object storage answers.
    Setup(topics::TopicArgs),
    /// One command, nothing to install: produce real editing traces into the embedded log,
    /// fold them, check every document and say where the data is.
    Demo(demo::DemoArgs),
    /// Work with editing traces.
    #[command(subcommand)]
    Trace(trace::TraceCommand),
    /// The read model: create its table, read a document's projection.
    #[command(subcommand)]
    Projections(sinks::ProjectionsCommand),
    /// Disaster-recovery snapshots in object storage.
    #[command(subcommand)]
    Snapshots(sinks::SnapshotsCommand),
    /// The embedded log's files: repair damaged segments.
    #[command(subcommand)]
    Log(log::LogCommand),
    /// Records the fold could not take: re-publish them where they belong.
    #[command(subcommand)]
    DeadLetters(dead_letters::DeadLettersCommand),
    /// Copy another region's op topic into this region's log, as `<region>.<topic>`.
    Mirror(mirror::MirrorArgs),
    /// Regions: who leads (the lease), promote a region, demote this one.
    #[command(subcommand)]
    Region(region::RegionCommand),
    /// Simulate the regions under virtual time (deterministic; see docs/multi-region.md).
    #[command(subcommand)]
    Sim(sim::SimCommand),
    /// Simulated users editing documents at a target rate into the log, with `docfold run`
    /// beside them: publish → invalidation latency, memory, and a report folder.
    Loadgen(loadgen::LoadgenArgs),
    /// Write docs/capacity.md (cores, partitions, DynamoDB, S3 and Redis per region for 100k
    /// and 1 M users) from loadgen runs' figures.
    Capacity(loadgen::CapacityArgs),
    /// Where each partition stands (log offsets, checkpoint, archive, lag in records and
    /// seconds, the newest disaster-recovery snapshot), whether each sink answers, and the
    /// region's role, lease and replication lag. Exit code 1 when a sink does not answer.
    Status(status::StatusArgs),
    /// Fold a range of partitions again, from the log or the Parquet archive, into a fresh
    /// state store (a rebuild) or the live store and sinks (a repair, with a new generation).
    Replay(replay::ReplayArgs),
}

/// `--config`, shared by the commands that touch the log or the store.
#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// Job configuration (jobs/*.toml). Default: everything embedded under ./docfold-data.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl ConfigArg {
    fn path(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    fn load(&self) -> anyhow::Result<JobConfig> {
        match &self.config {
            Some(path) => Ok(JobConfig::load(path)?),
            None => Ok(JobConfig::default()),
        }
    }
}

impl Cli {
    /// Runs the command; `Ok(false)` means it ran but found a failure (exit code 1).
    pub fn run(self) -> anyhow::Result<bool> {
        // The demo and one-shot commands talk to people: only warnings; `run` logs its work.
        let level =
            if matches!(self.command, Command::Run(_) | Command::Mirror(_)) { "info" } else { "warn" };
        docfold::telemetry::init_logs(level, self.log_format == LogFormat::Json);
        // The stream processor keeps SIGPIPE ignored (a peer's closed socket is an error to
        // handle there); the other commands print to people and pipes.
        if !matches!(self.command, Command::Run(_) | Command::Demo(_) | Command::Mirror(_)) {
            restore_sigpipe();
        }
        match self.command {
            Command::Run(args) => args.run(),
            Command::Produce(args) => args.run(),
            Command::Doc(command) => command.run(),
            Command::Topics(command) => command.run(),
            Command::Setup(args) => args.setup(),
            Command::Demo(args) => args.run(),
            Command::Trace(command) => command.run(),
            Command::Projections(command) => command.run(),
            Command::Snapshots(command) => command.run(),
            Command::Log(command) => command.run(),
            Command::DeadLetters(command) => command.run(),
            Command::Mirror(args) => args.run(),
            Command::Region(command) => command.run(),
            Command::Sim(command) => command.run(),
            Command::Loadgen(args) => args.run(),
            Command::Capacity(args) => args.run(),
            Command::Status(args) => args.run(),
            Command::Replay(args) => args.run(),
        }
    }
}

/// Rust ignores SIGPIPE, so a write to a closed pipe (`docfold … | head -1`) is an error and
/// `println!` panics on it; a command-line tool should end quietly, as Unix tools do.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called before the command starts any thread; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

/// The embedded log's topic, created with the configured partitions if it is new.
fn file_topic(config: &JobConfig, dir: &Path) -> anyhow::Result<FileLog> {
    FileLog::create(dir, &config.log.topic, config.log.partitions)
        .with_context(|| format!("embedded log {}", dir.display()))
}

/// A writer for the configured log.
fn open_writer(config: &JobConfig) -> anyhow::Result<Box<dyn LogWriter>> {
    if let LogLocation::File(dir) = config.log_location().map_err(anyhow::Error::msg)? {
        file_topic(config, &dir)?; // the job's topic gets the configured partitions
    }
    Ok(docfold::sink::topic_writer(config, &config.log.topic)?)
}
