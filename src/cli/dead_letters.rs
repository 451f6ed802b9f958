//! `docfold dead-letters replay`: re-publishes dead letters to the partition their document
//! belongs to (the log routes by the document id). Idempotent: the fold dedupes ops, so a
//! letter replayed twice changes nothing.

use anyhow::Context;
use clap::Subcommand;
use prost::Message;
use std::collections::BTreeMap;

use docfold::log::{LogWriter, Record, Topic};
use docfold::op::decode;
use docfold::sink::dead_letter::DeadLetter;
use docfold::sink::objects::Objects;

use super::{ConfigArg, runtime};

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// Re-publish the dead letters of one reason to their source topic, keyed by their
    /// document id so they land on its partition.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        /// Which letters: `misrouted` (the default; an op on another document's partition),
        /// or any other reason the dead letters carry.
        #[arg(long, default_value = "misrouted")]
        reason: String,
        /// Count what would be re-published; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

impl DeadLettersCommand {
    pub fn run(self) -> anyhow::Result<bool> {
        let DeadLettersCommand::Replay { config, reason, dry_run } = self;
        let config = config.load()?;
        let topic = &config.dead_letters.topic;
        anyhow::ensure!(!topic.is_empty(), "dead letters are off in this job (dead_letters.topic is empty)");
        let mut reader = Topic::open(&config, topic, false)?.reader()?;
        let objects = Objects::open(&config.objects)?;
        let rt = runtime()?;
        let mut writers: BTreeMap<String, Box<dyn LogWriter>> = BTreeMap::new();
        let (mut seen, mut chosen, mut replayed) = (0u64, 0u64, 0u64);
        for partition in 0..reader.partitions() {
            let mut next = 0;
            loop {
                let mut records: Vec<Record> = Vec::new();
                reader.read(partition, next, 1000, &mut records)?;
                let Some(last) = records.last() else { break };
                next = last.offset + 1;
                for record in &records {
                    seen += 1;
                    let letter = DeadLetter::decode(record.value.as_slice()).with_context(|| {
                        format!("{topic} partition {partition} offset {}: not a dead letter", record.offset)
                    })?;
                    if letter.reason != reason {
                        continue;
                    }
                    chosen += 1;
                    // Routed by the document id, wherever the original key pointed.
                    let value = rt.block_on(letter.value(&objects))?;
                    let Ok(envelope) = decode(&value) else { continue };
                    if dry_run {
                        continue;
                    }
                    let source =
                        if letter.source_topic.is_empty() { &config.log.topic } else { &letter.source_topic };
                    if !writers.contains_key(source) {
                        writers.insert(source.clone(), Topic::open(&config, source, false)?.writer(&config)?);
                    }
                    let writer = writers.get_mut(source).expect("inserted above");
                    writer.append(envelope.doc_id.as_bytes(), &value)?;
                    replayed += 1;
                }
            }
        }
        for writer in writers.values_mut() {
            writer.flush()?;
        }
        let verb = if dry_run { "would re-publish" } else { "re-published" };
        println!(
            "{verb} {} of {chosen} dead letters with reason {reason:?} ({seen} in {topic})",
            if dry_run { chosen } else { replayed }
        );
        Ok(true)
    }
}
