//! The Kafka consumer's per-partition batches (pure: `kafka.rs` drives it with the clock and
//! the workers' queues). A batch goes to its partition's worker when it is full or its
//! oldest record has waited `batch_ms`, so a quiet partition never waits behind a busy one.
//! A batch the worker cannot take yet is held and its partition paused, so one slow
//! partition stops only itself, and the consumer keeps polling (and stays in its group).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::log::Record;

pub struct Batches {
    batch: usize,
    max_wait: Duration,
    /// Records not handed over yet, with the arrival of the oldest.
    open: HashMap<u32, (Instant, Vec<Record>)>,
    /// Batches a worker did not take: its partition is paused until it does.
    held: HashMap<u32, Vec<Record>>,
}

impl Batches {
    pub fn new(batch: usize, max_wait: Duration) -> Batches {
        Batches { batch, max_wait, open: HashMap::new(), held: HashMap::new() }
    }

    pub fn push(&mut self, partition: u32, record: Record, now: Instant) {
        self.open.entry(partition).or_insert_with(|| (now, Vec::new())).1.push(record);
    }

    /// The batches to offer now: held ones first (they are older), then the open batches
    /// of partitions not held that are full, have waited `max_wait`, or all of them when
    /// `all` (the consumer is idle, or stopping).
    pub fn due(&mut self, now: Instant, all: bool) -> Vec<(u32, Vec<Record>)> {
        let mut due: Vec<(u32, Vec<Record>)> = self.held.drain().collect();
        let ready: Vec<u32> = self
            .open
            .iter()
            .filter(|(partition, (since, records))| {
                !due.iter().any(|(held, _)| held == *partition)
                    && (all || records.len() >= self.batch || now.duration_since(*since) >= self.max_wait)
            })
            .map(|(&partition, _)| partition)
            .collect();
        for partition in ready {
            let (_, records) = self.open.remove(&partition).expect("listed above");
            due.push((partition, records));
        }
        due
    }

    /// Gives back a batch its worker could not take (its queue is full): it is offered
    /// again first. The caller pauses the partition until an offer succeeds.
    pub fn hold(&mut self, partition: u32, records: Vec<Record>) {
        self.held.insert(partition, records);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: u64) -> Record {
        use crate::log::TimestampType;
        Record {
            topic: "doc-ops".into(),
            offset,
            timestamp_ms: 0,
            timestamp_type: TimestampType::LogAppend,
            key: vec![],
            value: vec![],
            headers: vec![],
        }
    }

    fn offsets(due: &[(u32, Vec<Record>)]) -> Vec<(u32, Vec<u64>)> {
        let mut out: Vec<_> = due.iter().map(|(p, r)| (*p, r.iter().map(|r| r.offset).collect())).collect();
        out.sort();
        out
    }

    #[test]
    fn a_quiet_partition_is_handed_over_within_max_wait_while_another_is_busy() {
        let start = Instant::now();
        let mut batches = Batches::new(3, Duration::from_millis(20));
        batches.push(1, record(0), start); // quiet
        for offset in 0..4 {
            batches.push(0, record(offset), start); // busy: a full batch and one more
        }
        assert_eq!(offsets(&batches.due(start, false)), [(0, vec![0, 1, 2, 3])]);
        assert!(batches.due(start + Duration::from_millis(5), false).is_empty());
        assert_eq!(offsets(&batches.due(start + Duration::from_millis(20), false)), [(1, vec![0])]);
    }

    #[test]
    fn a_held_batch_goes_first_and_holds_back_only_its_partition() {
        let start = Instant::now();
        let mut batches = Batches::new(2, Duration::from_millis(20));
        batches.push(0, record(0), start);
        batches.push(0, record(1), start);
        let due = batches.due(start, false);
        batches.hold(0, due.into_iter().next().expect("full").1); // the worker is busy
        batches.push(0, record(2), start);
        batches.push(0, record(3), start);
        batches.push(1, record(7), start);
        batches.push(1, record(8), start);
        // Partition 0's held batch is offered again; its newer records wait behind it.
        assert_eq!(offsets(&batches.due(start, false)), [(0, vec![0, 1]), (1, vec![7, 8])]);
        assert_eq!(offsets(&batches.due(start, false)), [(0, vec![2, 3])]);
        assert!(batches.due(start, true).is_empty());
    }
}
