//! `docfold log repair`: an operator's answer to a damaged segment of the embedded log.

use clap::Subcommand;

use docfold::log::Topic;

use super::ConfigArg;

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Repair damaged segments of the embedded log: every valid record is kept, each damaged
    /// stretch becomes one placeholder record (the fold dead-letters it with the raw bytes),
    /// and the damaged original is kept under `<partition>/damaged/`. Stop writers first.
    Repair {
        #[command(flatten)]
        config: ConfigArg,
        /// The topic (default: the job's `log.topic`).
        #[arg(long)]
        topic: Option<String>,
        /// Only this partition (default: all).
        #[arg(long)]
        partition: Option<u32>,
    },
}

impl LogCommand {
    pub fn run(self) -> anyhow::Result<bool> {
        let LogCommand::Repair { config, topic, partition } = self;
        let config = config.load()?;
        let topic = topic.unwrap_or_else(|| config.log.topic.clone());
        let Topic::File(log) = Topic::open(&config, &topic, false)? else {
            anyhow::bail!(
                "log repair works on the embedded log; Kafka keeps its own replicas ({})",
                config.log.url
            );
        };
        let partitions: Vec<u32> = match partition {
            Some(p) => vec![p],
            None => (0..log.partitions()).collect(),
        };
        let mut repaired = 0;
        for partition in partitions {
            for repair in log.repair(partition)? {
                repaired += 1;
                println!(
                    "partition {partition}: {} repaired, {} valid records kept",
                    repair.segment.display(),
                    repair.records
                );
                for damage in &repair.damage {
                    let exact = if damage.one_record {
                        "one record"
                    } else {
                        "counted as one record: later offsets may have moved"
                    };
                    println!(
                        "    offset {}: {} damaged bytes → a placeholder ({exact})",
                        damage.offset, damage.bytes
                    );
                }
                if repair.torn_tail > 0 {
                    println!("    a torn tail of {} bytes dropped", repair.torn_tail);
                }
                println!("    the damaged original: {}", repair.moved_to.display());
            }
        }
        println!("{repaired} damaged segments repaired in topic {topic}");
        Ok(true)
    }
}
