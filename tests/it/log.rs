//! The log: Java-compatible partitioning, one conformance body run against the embedded
//! file log and Kafka (tansu), and the file log's crash recovery.

use docfold::log::file::{FileLog, Fsync};
use docfold::log::kafka::KafkaLog;
use docfold::log::{LogError, LogReader, LogWriter, Record, murmur2, partition_for};
use std::collections::BTreeMap;

use crate::services;

#[test]
fn murmur2_matches_the_java_client_and_librdkafka() {
    // Kafka's UtilsTest.testMurmur2 (Java ints).
    let java = [
        ("21", -973932308),
        ("foobar", -790332482),
        ("a-little-bit-long-string", -985981536),
        ("a-little-bit-longer-string", -1486304829),
        ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        ("abc", 479470107),
        // akka's Murmur2Spec (from the Kafka implementation).
        ("1", -1993445489),
        ("12", 126087238),
        ("123", -267702483),
        ("1234", -1614185708),
        ("12345", -1188365604),
    ];
    for (key, expected) in java {
        assert_eq!(murmur2(key.as_bytes()), expected, "key {key:?}");
    }
    // librdkafka's rdmurmur2.c unit test (checked there against Java), empty key included.
    let librdkafka: [(&str, u32); 11] = [
        ("kafka", 0xd067cf64),
        ("giberish123456789", 0x8f552b0c),
        ("1234", 0x9fc97b14),
        ("234", 0xe7c009ca),
        ("34", 0x873930da),
        ("4", 0x5a4b5ca1),
        ("PreAmbleWillBeRemoved,ThePrePartThatIs", 0x78424f1c),
        ("reAmbleWillBeRemoved,ThePrePartThatIs", 0x4a62b377),
        ("eAmbleWillBeRemoved,ThePrePartThatIs", 0xe0e4e09e),
        ("AmbleWillBeRemoved,ThePrePartThatIs", 0x62b8b43f),
        ("", 0x106e08d9),
    ];
    for (key, expected) in librdkafka {
        assert_eq!(murmur2(key.as_bytes()) as u32, expected, "key {key:?}");
    }
}

#[test]
fn partitions_match_the_java_client() {
    // kafka-python's test_murmur2_java_compatibility (1000 partitions, from Java's partitioner).
    let vectors: [(&[u8], u32); 6] =
        [(b"", 681), (b"a", 524), (b"ab", 434), (b"abc", 107), (b"123456789", 566), (b"\x00 ", 742)];
    for (key, partition) in vectors {
        assert_eq!(partition_for(key, 1000), partition, "key {key:?}");
    }
    // kafkajs issue 357 (Java output, 12 partitions) and afkak (checked with a Java program).
    assert_eq!(partition_for(b"100:48069", 12), 9);
    assert_eq!(partition_for(b"cc54d7f5-8508-4302-bc23-c5d16cfb50fd", 10), 4);
    // UTF-8 keys are checked against librdkafka's murmur2_random in kafka_log_conformance.
}

const PARTITIONS: u32 = 4;

type KeyValue = (Vec<u8>, Vec<u8>);

/// What every log backend must do, given a writer and a reader of a fresh 4-partition topic.
fn conformance(writer: &mut dyn LogWriter, reader: &mut dyn LogReader) {
    assert_eq!(reader.partitions(), PARTITIONS);
    let mut sent: BTreeMap<u32, Vec<KeyValue>> = BTreeMap::new();
    for i in 0..240u32 {
        // ASCII, UTF-8 and empty keys: on Kafka, librdkafka's murmur2_random must agree.
        let key = match i % 23 {
            0 => Vec::new(),
            k if k % 3 == 0 => format!("документ-{k}-文档").into_bytes(),
            k => format!("doc-{k}").into_bytes(),
        };
        let value = format!("op {i} of doc {}", i % 23).into_bytes();
        writer.append(&key, &value).expect("append");
        sent.entry(partition_for(&key, PARTITIONS)).or_default().push((key, value));
    }
    writer.flush().expect("flush");
    assert!(sent.len() > 1, "23 keys spread over partitions");
    for partition in 0..PARTITIONS {
        let expected = sent.remove(&partition).unwrap_or_default();
        let mut got: Vec<Record> = Vec::new();
        while got.len() < expected.len() {
            let before = got.len();
            let from = got.last().map_or(0, |r| r.offset + 1);
            reader.read(partition, from, 50, &mut got).expect("read");
            assert!(
                got.len() > before,
                "partition {partition} stopped at {} of {}",
                got.len(),
                expected.len()
            );
        }
        let pairs: Vec<KeyValue> = got.iter().map(|r| (r.key.clone(), r.value.clone())).collect();
        assert_eq!(
            pairs, expected,
            "partition {partition}: every record, in append order, in the key's partition"
        );
        assert!(got.iter().enumerate().all(|(i, r)| r.offset == i as u64), "offsets count from 0");
        assert!(got.iter().all(|r| r.timestamp_ms > 1_600_000_000_000), "create time set");
        assert_eq!(reader.end_offset(partition).expect("end offset"), expected.len() as u64);
        if expected.len() > 3 {
            let mut tail = Vec::new();
            reader.read(partition, 3, 2, &mut tail).expect("read from the middle");
            assert_eq!(tail, got[3..5], "a read from an offset starts there");
        }
        let mut none = Vec::new();
        reader.read(partition, expected.len() as u64, 10, &mut none).expect("read at the end");
        assert!(none.is_empty(), "nothing past the end");
    }
    assert!(matches!(
        reader.read(PARTITIONS, 0, 1, &mut Vec::new()),
        Err(LogError::NoSuchPartition { partition: PARTITIONS, partitions: PARTITIONS })
    ));
}

#[test]
fn file_log_conformance() {
    let root = services::temp_dir("log");
    let log = FileLog::create(&root, "doc-ops", PARTITIONS).expect("create topic");
    // Small segments, so reads cross segment boundaries.
    let mut writer = log.writer(Fsync::Always, 512);
    conformance(&mut writer, &mut log.reader());
    let segments = std::fs::read_dir(root.join("doc-ops/0")).expect("partition dir").count();
    assert!(segments > 3, "rolled into several segments ({segments})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_log_conformance() {
    let brokers = services::kafka();
    let topic = format!("conformance-{}", services::unique());
    KafkaLog::create_topic(&brokers, &topic, (PARTITIONS, 1), &[], &[]).await.expect("create topic");
    // tansu's high watermark is only right with one record per batch (SERVICES.md).
    let overrides = [("batch.num.messages".to_string(), "1".to_string())];
    let log = KafkaLog::connect(&brokers, &topic, &overrides).expect("connect");
    let mut writer = log.writer().expect("producer");
    let mut reader = log.reader().expect("consumer");
    tokio::task::block_in_place(|| conformance(&mut writer, &mut reader));
}

#[test]
fn a_torn_tail_is_truncated_and_reported() {
    let root = services::temp_dir("torn");
    let log = FileLog::create(&root, "t", 1).expect("create");
    {
        let mut writer = log.writer(Fsync::Always, 1 << 20);
        for i in 0..10u8 {
            writer.append_to(0, b"k", &[i; 100]).expect("append");
        }
        writer.flush().expect("flush");
    }
    let segment = root.join("t/0/00000000000000000000.seg");
    let len = std::fs::metadata(&segment).expect("segment").len();
    // A crash in the middle of the 10th record's frame.
    let file = std::fs::OpenOptions::new().write(true).open(&segment).expect("open");
    file.set_len(len - 30).expect("tear");
    let mut reader = log.reader();
    let mut got = Vec::new();
    reader.read(0, 0, 100, &mut got).expect("read up to the tear");
    assert_eq!(got.len(), 9, "the torn record is not delivered");
    let mut writer = log.writer(Fsync::Always, 1 << 20);
    let offset = writer.append_to(0, b"k", b"after").expect("append");
    assert_eq!(offset, 10, "the torn record's offset (9) was handed out: it is never handed out again");
    assert_eq!(writer.truncations().len(), 1);
    assert_eq!(writer.truncations()[0].offset, 9);
    assert_eq!(writer.truncations()[0].resumes_at, 10);
    assert_eq!(writer.truncations()[0].bytes, 100 + 1 + 12 + 8 - 30);
    writer.flush().expect("flush");
    got.clear();
    reader.read(0, 9, 10, &mut got).expect("read the new record");
    assert_eq!(
        got.iter().map(|r| (r.offset, r.value.as_slice())).collect::<Vec<_>>(),
        [(10, b"after".as_slice())]
    );
}

/// The disk after a power loss: the files as the running writer left them, less the records
/// not yet fsynced (the writer syncs only on its interval). A consumer had read and
/// checkpointed all ten; the offsets of the lost ones must never be handed out again, or the
/// consumer would skip the new records that got them.
#[test]
fn offsets_lost_to_a_power_loss_are_never_handed_out_again() {
    let root = services::temp_dir("power-loss");
    let log = FileLog::create(&root, "t", 1).expect("create");
    let segment = "t/0/00000000000000000000.seg";
    let mut writer = log.writer(Fsync::Never, 1 << 20);
    for i in 0..5u8 {
        writer.append_to(0, b"k", &[i; 10]).expect("append");
    }
    writer.flush().expect("flush");
    let synced = std::fs::metadata(root.join(segment)).expect("segment").len();
    for i in 5..10u8 {
        writer.append_to(0, b"k", &[i; 10]).expect("append");
    }
    writer.flush().expect("flush");
    let mut reader = log.reader();
    let mut got = Vec::new();
    reader.read(0, 0, 100, &mut got).expect("the consumer reads all ten");
    assert_eq!(got.len(), 10);
    let checkpoint = got.last().expect("records").offset + 1;

    let disk = services::temp_dir("power-loss-disk");
    copy_folder(&root.join("t"), &disk.join("t"));
    drop(writer);
    let file = std::fs::OpenOptions::new().write(true).open(disk.join(segment)).expect("open");
    file.set_len(synced).expect("the unsynced records are gone");

    let after = FileLog::open(&disk, "t").expect("open after the power loss");
    let mut writer = after.writer(Fsync::Always, 1 << 20);
    let offset = writer.append_to(0, b"k", b"new").expect("append");
    assert!(
        offset >= checkpoint,
        "offset {offset} was handed out before the power loss (checkpoint {checkpoint})"
    );
    let lost = &writer.truncations()[0];
    assert_eq!((lost.offset, lost.resumes_at), (5, offset), "the loss is reported: {lost:?}");
    writer.flush().expect("flush");
    let mut reader = after.reader();
    got.clear();
    reader.read(0, checkpoint, 10, &mut got).expect("read from the consumer's checkpoint");
    assert_eq!(
        got.iter().map(|r| (r.offset, r.value.as_slice())).collect::<Vec<_>>(),
        [(offset, b"new".as_slice())]
    );
    got.clear();
    reader.read(0, 0, 100, &mut got).expect("read from the start");
    let offsets: Vec<u64> = got.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [0, 1, 2, 3, 4, offset], "the surviving records, then the new one past the gap");
    assert_eq!(reader.end_offset(0).expect("end"), offset + 1);
    drop(writer);
    let mut writer = after.writer(Fsync::Always, 1 << 20);
    assert_eq!(
        writer.append_to(0, b"k", b"next").expect("append"),
        offset + 1,
        "a clean close leaves no gap"
    );
    assert!(writer.truncations().is_empty());
}

fn copy_folder(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_folder(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn a_flipped_bit_is_reported_as_corruption_with_its_offset() {
    let root = services::temp_dir("corrupt");
    let log = FileLog::create(&root, "t", 1).expect("create");
    let mut writer = log.writer(Fsync::Never, 1 << 20);
    for i in 0..5u8 {
        writer.append_to(0, b"key", &[i; 40]).expect("append");
    }
    writer.flush().expect("flush");
    let segment = root.join("t/0/00000000000000000000.seg");
    let mut bytes = std::fs::read(&segment).expect("read");
    let frame = 8 + 12 + 3 + 40;
    bytes[2 * frame + 30] ^= 1;
    std::fs::write(&segment, bytes).expect("write");
    let mut got = Vec::new();
    let error = log.reader().read(0, 0, 10, &mut got).expect_err("corruption is an error");
    assert!(matches!(error, LogError::Corrupt { partition: 0, offset: 2, .. }), "{error}");
    assert_eq!(got.len(), 2, "records before the damage are delivered");
    let error = log.reader().offset_after(0, i64::MAX).expect_err("a time lookup meets the damage");
    assert!(matches!(error, LogError::Corrupt { partition: 0, offset: 2, .. }), "{error}");
    drop(writer);

    // Valid records follow the damage: it is no torn tail, so a writer must not cut it off.
    let len = std::fs::metadata(&segment).expect("segment").len();
    let mut writer = log.writer(Fsync::Never, 1 << 20);
    let error = writer.append_to(0, b"key", b"more").expect_err("the writer refuses a damaged partition");
    let message = error.to_string();
    assert!(matches!(error, LogError::Corrupt { partition: 0, offset: 2, .. }), "{message}");
    assert!(
        message.contains("00000000000000000000.seg") && message.contains("docfold log repair"),
        "{message}"
    );
    assert_eq!(std::fs::metadata(&segment).expect("segment").len(), len, "not a byte cut");

    // A damaged first record: a time lookup says so (it is not an empty segment).
    let mut bytes = std::fs::read(&segment).expect("read");
    bytes[30] ^= 1;
    std::fs::write(&segment, bytes).expect("write");
    let error = log.reader().offset_after(0, 0).expect_err("the first record is damaged");
    assert!(matches!(error, LogError::Corrupt { partition: 0, offset: 0, .. }), "{error}");
}

#[test]
fn a_second_writer_of_a_partition_is_refused() {
    let root = services::temp_dir("lock");
    let log = FileLog::create(&root, "t", 2).expect("create");
    let mut first = log.writer(Fsync::Never, 1 << 20);
    first.append_to(1, b"a", b"1").expect("append");
    let mut second = log.writer(Fsync::Never, 1 << 20);
    assert!(matches!(second.append_to(1, b"a", b"2"), Err(LogError::Locked { partition: 1, .. })));
    second.append_to(0, b"a", b"2").expect("another partition is free");
    assert!(matches!(FileLog::create(&root, "t", 3), Err(LogError::Io { .. })), "no silent repartition");
    assert!(matches!(FileLog::open(&root, "nope"), Err(LogError::NoSuchTopic { .. })));
}

/// Several readers of one Kafka topic in one process (a replay reads each partition with a
/// reader of its own, on the blocking pool), each reading its partition in batches from
/// offset 0 to the end: every record arrives, in order, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_readers_side_by_side_read_every_record() {
    let brokers = services::kafka();
    let topic = format!("readers-{}", services::unique());
    let partitions = 4;
    KafkaLog::create_topic(&brokers, &topic, (partitions, 1), &[], &[]).await.expect("create topic");
    let log = KafkaLog::connect(&brokers, &topic, &[]).expect("connect");
    let mut writer = log.writer().expect("producer");
    let per_partition = 5_000u64;
    let keys: Vec<String> = (0..)
        .map(|i| format!("doc-{i}"))
        .scan(vec![false; partitions as usize], |seen, key| {
            let p = partition_for(key.as_bytes(), partitions) as usize;
            let fresh = !seen[p];
            seen[p] = true;
            Some(fresh.then_some(key))
        })
        .flatten()
        .take(partitions as usize)
        .collect();
    tokio::task::block_in_place(|| {
        for i in 0..per_partition {
            for key in &keys {
                writer.append(key.as_bytes(), &i.to_be_bytes()).expect("append");
            }
        }
        writer.flush().expect("flush");
    });
    let mut readers = Vec::new();
    for partition in 0..partitions {
        let mut reader = log.reader().expect("reader");
        readers.push(tokio::task::spawn_blocking(move || {
            let (mut next, mut empty) = (0u64, 0);
            while next < per_partition && empty < 10 {
                let mut records = Vec::new();
                reader.read(partition, next, 500, &mut records).expect("read");
                empty = if records.is_empty() { empty + 1 } else { 0 };
                for record in records {
                    assert_eq!(record.offset, next, "partition {partition}: in order, none twice");
                    next += 1;
                }
            }
            (partition, next)
        }));
    }
    for reader in readers {
        let (partition, read) = reader.await.expect("reader task");
        assert_eq!(read, per_partition, "partition {partition}: every record was read");
    }
}

/// One record as the index test wrote it: offset, timestamp, value.
type Written = (u64, i64, Vec<u8>);

/// Reads from random offsets and time lookups on partition 0 of `log` equal what a scan of
/// `written` says.
fn check_lookups(log: &FileLog, written: &[Written], rng: &mut impl rand::Rng, what: &str) {
    let mut reader = log.reader();
    let end = written.last().map_or(0, |w| w.0 + 1);
    assert_eq!(reader.end_offset(0).expect("end"), end, "{what}: the end");
    for _ in 0..200 {
        let from = rng.random_range(0..=end);
        let mut got = Vec::new();
        reader.read(0, from, 5, &mut got).expect("read");
        let got: Vec<Written> = got.into_iter().map(|r| (r.offset, r.timestamp_ms, r.value)).collect();
        let expected: Vec<Written> = written.iter().filter(|w| w.0 >= from).take(5).cloned().collect();
        assert_eq!(got, expected, "{what}: a read from offset {from}");
    }
    let (first, last) = (written[0].1, written[written.len() - 1].1);
    for _ in 0..200 {
        let time = rng.random_range(first - 5..=last + 5);
        let expected = written.iter().find(|w| w.1 > time).map_or(end, |w| w.0);
        assert_eq!(reader.offset_after(0, time).expect("offset after"), expected, "{what}: after {time}");
    }
}

/// The embedded log's segment indexes: reads from any offset, time lookups and the end
/// equal a scan of every record, across segments, after a torn tail and a reopen (a gap in
/// the offsets), and with the index files damaged, cut short or gone; a writer indexes
/// again the segments left without one. Seeded:
/// `DOCFOLD_INDEX_SEED`, `DOCFOLD_INDEX_RUNS` (default 3).
#[test]
fn file_log_indexes_find_offsets_and_times_even_when_damaged() {
    use rand::{Rng, SeedableRng};
    let env =
        |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (seed, runs) = (env("DOCFOLD_INDEX_SEED", 0x1de), env("DOCFOLD_INDEX_RUNS", 3));
    for seed in seed..seed + runs {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let root = services::temp_dir("index");
        let log = FileLog::create(&root, "t", 1).expect("create");
        let partition = root.join("t/0");
        let (mut written, mut time): (Vec<Written>, i64) = (Vec::new(), 1_700_000_000_000);
        for round in 0..2 {
            let mut writer = log.writer(Fsync::Never, 64 << 10);
            for i in 0..3_000 {
                time += rng.random_range(0..3);
                let value = vec![rng.random::<u8>(); rng.random_range(1..600)];
                let record = Record {
                    topic: "t".into(),
                    offset: 0,
                    timestamp_ms: time,
                    timestamp_type: docfold::log::TimestampType::LogAppend,
                    key: b"k".to_vec(),
                    value: value.clone(),
                    headers: Vec::new(),
                };
                writer.copy(0, &record).expect("copy");
                // After the torn tail, the writer resumes past the torn record's offset.
                let offset = match (round, i) {
                    (1, 0) => writer.truncations()[0].resumes_at,
                    _ => written.last().map_or(0, |w| w.0 + 1),
                };
                written.push((offset, time, value));
            }
            drop(writer);
            if round == 0 {
                let last = std::fs::read_dir(&partition)
                    .expect("partition")
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                    .max()
                    .expect("a segment");
                let len = std::fs::metadata(&last).expect("segment").len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&last)
                    .expect("open")
                    .set_len(len - 7)
                    .expect("tear");
                written.pop();
            }
        }
        let indexes: Vec<_> = std::fs::read_dir(&partition)
            .expect("partition")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "idx"))
            .collect();
        assert!(indexes.len() > 10, "seed {seed}: one index per segment ({})", indexes.len());
        assert!(
            indexes.iter().all(|i| std::fs::metadata(i).expect("index").len() > 0),
            "seed {seed}: every index has entries"
        );
        check_lookups(&log, &written, &mut rng, &format!("seed {seed}"));
        for (i, index) in indexes.iter().enumerate() {
            let len = std::fs::metadata(index).expect("index").len() as usize;
            match i % 3 {
                0 => std::fs::write(index, (0..len).map(|_| rng.random::<u8>()).collect::<Vec<_>>()),
                1 => std::fs::OpenOptions::new()
                    .write(true)
                    .open(index)
                    .and_then(|f| f.set_len(len as u64 / 2)),
                _ => std::fs::remove_file(index),
            }
            .expect("damage the index");
        }
        check_lookups(&log, &written, &mut rng, &format!("seed {seed}, indexes damaged"));
        // A writer indexes the sealed segments that have none (as a log from before indexes).
        log.writer(Fsync::Never, 64 << 10).append_to(0, b"k", b"v").expect("append");
        let missing: Vec<_> = indexes.iter().filter(|i| !i.exists()).collect();
        assert!(missing.is_empty(), "seed {seed}: indexed again on open: {missing:?}");
    }
}
