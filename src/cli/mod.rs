//! The command line: one file per command.

mod trace;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "docfold",
    version,
    about = "Event-sourced stream processor for collaborative documents (LSEQ CRDT)"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with editing traces.
    #[command(subcommand)]
    Trace(trace::TraceCommand),
}

impl Cli {
    /// Runs the command; `Ok(false)` means it ran but found a failure (exit code 1).
    pub fn run(self) -> anyhow::Result<bool> {
        match self.command {
            Command::Trace(command) => command.run(),
        }
    }
}
