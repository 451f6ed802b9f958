//! `docfold produce`: ops into the log, from JSON lines (one envelope per line, the JSON
//! mapping of schemas/docfold/op/v1/op.proto) or from an editing trace.

use anyhow::Context;
use clap::Args;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;

use docfold::config::JobConfig;
use docfold::log::{LogError, LogWriter};
use docfold::lseq::doc_seed;
use docfold::op::{decode_json, encode};
use docfold::region::Mode;
use docfold::region::home_writer::{HomeWriter, OpenLog};
use docfold::region::leases::Leases;
use docfold::trace::{Trace, publish, replay};

use super::region::{peer_file, route};
use super::{ConfigArg, open_writer, runtime};
use docfold::region::residency::check;

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Files: `*.jsonl` (or `-` for stdin) hold JSON envelopes, one per line; anything else
    /// is read as an editing trace (.json or .json.gz) and replayed into ops.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    config: ConfigArg,
    /// Traces: the document id (default: the file name up to the first dot).
    #[arg(long)]
    doc_id: Option<String>,
    /// Traces: publish the edits to this many documents, `<doc id>-<i>`.
    #[arg(long)]
    copies: Option<usize>,
    /// The producer's region: the origin written in each trace envelope (default: the
    /// config's `region.name`, else `local`). With `[region]` the records go where
    /// `region::Router` says from there: the leader's log (active-passive) or this region's
    /// (active-active); region R's job file is `R.toml` beside `--config`.
    #[arg(long)]
    region: Option<String>,
}

impl ProduceArgs {
    pub fn run(self) -> anyhow::Result<bool> {
        let config = self.config.load()?;
        let origin = self.region.clone().or_else(|| config.region.as_ref().map(|r| r.name.clone()));
        let origin = origin.unwrap_or_else(|| "local".into());
        let rt = runtime()?;
        // The region whose log takes the records and the residency rules it must keep; in
        // home mode each document's home, by a writer that routes every record.
        let mut bound = None;
        let (mut writer, to): (Box<dyn LogWriter>, String) = match &config.region {
            Some(region) => {
                let regions = region.regions();
                anyhow::ensure!(
                    regions.contains(&origin.as_str()),
                    "--region {origin:?} is not a region of this job (region.name and region.peers: {})",
                    regions.join(", ")
                );
                if region.mode == Mode::Home {
                    let leases = rt.block_on(Leases::of(region))?;
                    let path = self.config.path().map(Path::to_path_buf);
                    let (own, name) = (config.clone(), region.name.clone());
                    let open: OpenLog = Box::new(move |to| {
                        let config = if to == name {
                            own.clone()
                        } else {
                            JobConfig::load(&peer_file(path.as_deref(), to))
                                .map_err(|e| LogError::Route(format!("the job file of region {to}: {e}")))?
                        };
                        open_writer(&config).map_err(|e| LogError::Route(format!("region {to}'s log: {e:#}")))
                    });
                    let routed = HomeWriter::new(
                        rt.handle().clone(),
                        leases,
                        &config.job,
                        region.clone(),
                        &origin,
                        open,
                    );
                    (Box::new(routed), "each document's home region".into())
                } else {
                    let (to, routed) = rt.block_on(route(&config, self.config.path(), &origin))?;
                    eprintln!("routed to region {to}");
                    bound = Some((to.clone(), region.residency.clone()));
                    (open_writer(&routed)?, routed.log.url.to_string())
                }
            }
            None => (open_writer(&config)?, config.log.url.to_string()),
        };
        let resident = |doc_id: &str| match &bound {
            Some((to, rules)) => Ok(check(rules, doc_id.as_bytes(), to)?),
            None => anyhow::Ok(()),
        };
        let started = Instant::now();
        let mut total = 0u64;
        for file in &self.files {
            let produced = if file.as_os_str() == "-" || file.extension().is_some_and(|e| e == "jsonl") {
                produce_lines(writer.as_mut(), file, &resident)
            } else {
                self.produce_trace(writer.as_mut(), file, &origin, &resident)
            };
            let count = match produced {
                Ok(count) => count,
                Err(error) => {
                    // Keep what was accepted before the bad input.
                    writer.flush()?;
                    return Err(error);
                }
            };
            writer.flush().with_context(|| format!("flushing the records of {}", file.display()))?;
            eprintln!("{}: {count} records", file.display());
            total += count;
        }
        let seconds = started.elapsed().as_secs_f64();
        println!("produced {total} records to {to} in {seconds:.2} s ({:.0}/s)", total as f64 / seconds);
        Ok(true)
    }

    fn produce_trace(
        &self,
        writer: &mut dyn LogWriter,
        file: &Path,
        origin: &str,
        resident: &dyn Fn(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        let trace = Trace::read(file)?;
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let doc_id =
            self.doc_id.clone().unwrap_or_else(|| name.split('.').next().unwrap_or("trace").to_string());
        let ops =
            replay(&trace, doc_seed(&doc_id)).with_context(|| format!("replaying {}", file.display()))?.ops;
        let doc_ids: Vec<String> = match self.copies {
            None => vec![doc_id],
            Some(n) => (0..n).map(|i| format!("{doc_id}-{i}")).collect(),
        };
        doc_ids.iter().try_for_each(|id| resident(id))?;
        Ok(publish(writer, &ops, &doc_ids, origin, |n| eprintln!("{}: {n} records…", file.display()))?)
    }
}

/// Appends each line's envelope; stops at the first bad line, naming it (lines before it are
/// kept), and at a resident document this region's log may not hold.
fn produce_lines(
    writer: &mut dyn LogWriter,
    file: &Path,
    resident: &dyn Fn(&str) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let input: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
        ))
    };
    let mut count = 0;
    for (index, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let envelope = decode_json(&line).with_context(|| {
            format!(
                "{} line {}: not an op envelope ({count} records before it were produced)",
                file.display(),
                index + 1
            )
        })?;
        resident(&envelope.doc_id).with_context(|| {
            format!(
                "{} line {}: refused ({count} records before it were produced)",
                file.display(),
                index + 1
            )
        })?;
        writer.append(envelope.doc_id.as_bytes(), &encode(&envelope))?;
        count += 1;
    }
    Ok(count)
}
