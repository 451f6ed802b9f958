//! `docfold sim`: the region simulator (`docfold::sim`) and the report made from it.

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Instant;

use docfold::sim::report::{ReportSettings, measure, write};
use docfold::sim::{MirrorMode, Net, Scenario, Settings, Strategy, run};

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Simulate the regions under virtual time: the same router, lease, mirror rules and
    /// fold as `docfold run`, with simulated users, links and faults. Same seed, same output.
    Regions(RegionsArgs),
    /// Run every strategy through every built-in scenario and write the comparison
    /// (markdown, with PNG charts in a folder beside it).
    Report(ReportArgs),
}

/// Who is simulated, and the seed.
#[derive(Debug, Args)]
pub struct Population {
    /// Simulated users across the regions (round robin).
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    /// Documents (Zipf popularity).
    #[arg(long, default_value_t = 20_000)]
    docs: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    population: Population,
    /// The page to write; its charts go to a folder of the same name without `.md`.
    #[arg(long, default_value = "docs/multi-region.md")]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub struct RegionsArgs {
    #[arg(long, value_enum, default_value = "ap")]
    strategy: Strategy,
    /// Where the mirrors run: in the target region, fetching (as built), or in the source
    /// region, pushing (a design to measure before it is built).
    #[arg(long, value_enum, default_value = "pull")]
    mirror: MirrorMode,
    #[command(flatten)]
    population: Population,
    /// A built-in scenario (steady, region-lost, partition, offline) or a TOML file.
    #[arg(long, default_value = "steady")]
    scenario: String,
}

impl SimCommand {
    pub fn run(self) -> anyhow::Result<bool> {
        match self {
            SimCommand::Regions(args) => args.run(),
            SimCommand::Report(args) => args.run(),
        }
    }
}

impl RegionsArgs {
    fn run(self) -> anyhow::Result<bool> {
        let scenario =
            Scenario::resolve(&self.scenario, &Net::default().regions).map_err(anyhow::Error::msg)?;
        let mut settings = Settings::new(self.strategy, scenario);
        settings.mirror = self.mirror;
        let Population { users, docs, seed } = self.population;
        (settings.users, settings.docs, settings.seed) = (users, docs, seed);
        let started = Instant::now();
        let figures = run(&settings).context("simulating the regions")?;
        print!("{}", figures.markdown());
        eprintln!("simulated in {:.1} s of wall time", started.elapsed().as_secs_f64());
        Ok(figures.identical && figures.lost == 0)
    }
}

impl ReportArgs {
    fn run(self) -> anyhow::Result<bool> {
        let Population { users, docs, seed } = self.population;
        let settings = ReportSettings { users, docs, seed, out: self.out };
        let started = Instant::now();
        let mut ok = true;
        let runs = measure(&settings, |f| {
            ok &= f.identical && f.lost == 0;
            eprintln!(
                "{:>24} · {:<11} {:>9} ops  {:>6.1} s",
                f.strategy.label(),
                f.scenario,
                f.ops,
                started.elapsed().as_secs_f64()
            );
        })
        .context("simulating the regions")?;
        write(&settings, &runs)?;
        eprintln!("wrote {} and its charts", settings.out.display());
        Ok(ok)
    }
}
