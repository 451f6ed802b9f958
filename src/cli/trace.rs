//! `docfold trace replay`: replays an editing trace through the codec into a fold-side
//! state and checks the result against the trace's `endContent`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use docfold::trace::{Trace, replay_through_codec};

#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Replay a trace (.json or .json.gz) and check the final text.
    Replay {
        /// The trace file.
        file: PathBuf,
        /// Document id to replay as (its hash seeds identifier allocation); defaults to
        /// the file name.
        #[arg(long)]
        doc_id: Option<String>,
    },
}

impl TraceCommand {
    pub fn run(self) -> anyhow::Result<bool> {
        let TraceCommand::Replay { file, doc_id } = self;
        let trace = Trace::read(&file)?;
        let doc_id = doc_id
            .unwrap_or_else(|| file.file_name().map_or("trace".into(), |n| n.to_string_lossy().into_owned()));
        let r =
            replay_through_codec(&trace, &doc_id).with_context(|| format!("replaying {}", file.display()))?;
        println!(
            "trace:            {} ({})",
            file.display(),
            if trace.is_concurrent() { "concurrent" } else { "sequential" }
        );
        println!("patches:          {}", r.patches);
        println!("ops:              {}", r.ops);
        println!("messages:         {}", r.messages);
        println!(
            "encoded bytes:    {} ({:.1} per message, max {})",
            r.encoded_bytes,
            r.encoded_bytes as f64 / r.messages.max(1) as f64,
            r.max_message_bytes
        );
        println!("identifier bytes: mean {:.2}, max {}", r.mean_ident_bytes(), r.max_ident_bytes);
        println!("identifier depth: mean {:.2}, max {}", r.mean_ident_depth(), r.max_ident_depth);
        println!("generate:         {:.3} s ({} forks)", r.generate.as_secs_f64(), r.forks);
        println!("decode + fold:    {:.3} s, {:.0} ops/s", r.fold.as_secs_f64(), r.fold_ops_per_sec());
        println!("state:            {} bytes", r.state_bytes);
        println!("final length:     {}", r.text.chars().count());
        match r.divergence(&trace.end_content) {
            None => {
                println!("endContent: ok");
                Ok(true)
            }
            Some(d) => {
                println!(
                    "endContent: DIFFERS at code point {} (got {} code points, expected {})",
                    d.at, d.got_len, d.want_len
                );
                println!("  got:      {:?}", d.got);
                println!("  expected: {:?}", d.want);
                Ok(false)
            }
        }
    }
}
