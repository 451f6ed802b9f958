//! `docfold doc show`: a folded document as the state store holds it; `docfold doc at`: as
//! it was at an offset of its partition (`docfold::history`).

use anyhow::Context;
use clap::Subcommand;

use docfold::fold::snapshot;
use docfold::history::At;
use docfold::store::Store;

use super::replay::SourceArg;
use super::{ConfigArg, runtime};

#[derive(Debug, Subcommand)]
pub enum DocCommand {
    /// Print a document's text, version and log offset.
    Show {
        doc_id: String,
        #[command(flatten)]
        config: ConfigArg,
        /// Print only the text.
        #[arg(long)]
        text_only: bool,
    },
    /// Print a document as it was before an offset of its partition (past the log's end:
    /// as it is now) or at a time, from the newest stored state before it plus the log.
    At {
        doc_id: String,
        /// The partition's offset: records before it are in the document shown.
        #[arg(long, required_unless_present = "time", conflicts_with = "time")]
        offset: Option<u64>,
        /// A time (RFC 3339, e.g. 2026-11-30T08:00:00Z or 2026-11-30T08:00Z): records the
        /// log stamped at or before it are in the document shown.
        #[arg(long, value_parser = parse_time)]
        time: Option<i64>,
        /// Read the document's records from the log, or rebuild them from the Parquet
        /// archive (when the log's retention has passed).
        #[arg(long, value_enum, default_value_t = SourceArg::Log)]
        source: SourceArg,
        #[command(flatten)]
        config: ConfigArg,
        /// Print only the text.
        #[arg(long)]
        text_only: bool,
    },
}

impl DocCommand {
    pub fn run(self) -> anyhow::Result<bool> {
        match self {
            DocCommand::Show { doc_id, config, text_only } => show(&doc_id, &config.load()?, text_only),
            DocCommand::At { doc_id, offset, time, source, config, text_only } => {
                let config = config.load()?;
                let at = match (offset, time) {
                    (Some(offset), _) => At::Offset(offset),
                    (None, Some(time)) => At::Time(time),
                    (None, None) => anyhow::bail!("give --offset or --time"),
                };
                let at =
                    runtime()?.block_on(docfold::history::doc_at(&config, &doc_id, at, source.into()))?;
                let read = match source {
                    SourceArg::Log => "the log",
                    SourceArg::Archive => "the archive",
                };
                let rebuilt = format!(
                    "from {}, then {} of its ops from {read} ({} refused)",
                    at.from, at.folded, at.refused
                );
                print_doc(
                    &at.doc.state,
                    text_only,
                    &[
                        ("doc", doc_id),
                        ("partition", at.partition.to_string()),
                        ("before", format!("offset {}", at.offset)),
                        ("version", at.doc.version.to_string()),
                        ("rebuilt", rebuilt),
                    ],
                );
                Ok(true)
            }
        }
    }
}

fn show(doc_id: &str, config: &docfold::config::JobConfig, text_only: bool) -> anyhow::Result<bool> {
    let stored = runtime()?.block_on(async {
        let store = Store::open(config.store.url.expose()).await?;
        let doc = store.load_doc(&config.job, doc_id).await;
        store.close().await;
        doc
    })?;
    let Some(stored) = stored else {
        anyhow::bail!("no document {doc_id:?} in job {:?} of {}", config.job, config.store.url);
    };
    let state = snapshot::decode(&stored.state).with_context(|| format!("document {doc_id:?}"))?;
    print_doc(
        &state,
        text_only,
        &[
            ("doc", doc_id.to_string()),
            ("partition", stored.partition.to_string()),
            ("version", stored.version.to_string()),
            ("offset", stored.offset.to_string()),
            ("pending", format!("{} deletes waiting for their insert", state.pending_tombstones())),
        ],
    );
    Ok(true)
}

/// A document's `fields`, its length and its text; only the text with `text_only`.
fn print_doc(state: &docfold::lseq::Sequence, text_only: bool, fields: &[(&str, String)]) {
    let text = state.text();
    if text_only {
        print!("{text}");
        return;
    }
    for (name, value) in fields {
        println!("{:<11}{value}", format!("{name}:"));
    }
    println!("{:<11}{} characters", "length:", state.len());
    println!("---");
    println!("{text}");
}

/// Milliseconds since the epoch of an RFC 3339 time; the seconds may be left out.
pub(super) fn parse_time(text: &str) -> Result<i64, String> {
    let with_seconds = |t: &str| {
        let (date, rest) = t.split_once('T')?;
        let zone = rest.find(['Z', 'z', '+', '-'])?;
        (rest[..zone].matches(':').count() == 1)
            .then(|| format!("{date}T{}:00{}", &rest[..zone], &rest[zone..]))
    };
    chrono::DateTime::parse_from_rfc3339(text)
        .or_else(|e| with_seconds(text).ok_or(e).and_then(|t| chrono::DateTime::parse_from_rfc3339(&t)))
        .map(|time| time.timestamp_millis())
        .map_err(|e| format!("{text:?} is not a time like 2026-11-30T08:00:00Z: {e}"))
}
