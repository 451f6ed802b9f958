//! `docfold doc show`: a folded document as the state store holds it.

use anyhow::Context;
use clap::Subcommand;

use docfold::fold::snapshot;
use docfold::store::Store;

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
}

impl DocCommand {
    pub fn run(self) -> anyhow::Result<bool> {
        let DocCommand::Show { doc_id, config, text_only } = self;
        let config = config.load()?;
        let stored = runtime()?.block_on(async {
            let store = Store::open(config.store.url.expose()).await?;
            let doc = store.load_doc(&config.job, &doc_id).await;
            store.close().await;
            doc
        })?;
        let Some(stored) = stored else {
            anyhow::bail!("no document {doc_id:?} in job {:?} of {}", config.job, config.store.url);
        };
        let state = snapshot::decode(&stored.state).with_context(|| format!("document {doc_id:?}"))?;
        let text = state.text();
        if text_only {
            print!("{text}");
            return Ok(true);
        }
        println!("doc:       {doc_id}");
        println!("partition: {}", stored.partition);
        println!("version:   {}", stored.version);
        println!("offset:    {}", stored.offset);
        println!("length:    {} characters", state.len());
        println!("pending:   {} deletes waiting for their insert", state.pending_tombstones());
        println!("---");
        println!("{text}");
        Ok(true)
    }
}
