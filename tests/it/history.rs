//! Time travel (`docfold doc at`): a document as it was before an offset equals the fold of
//! its records before that offset, whichever stored state the rebuild starts from, from the
//! log or from the Parquet archive.

use std::path::Path;
use std::process::Command;

use docfold::log::file::{FileLog, Fsync};
use docfold::log::{LogReader, LogWriter, partition_for};
use docfold::lseq::{Sequence, doc_seed};
use docfold::op::{Envelope, decode, encode};
use docfold::trace::{Trace, replay};

use crate::services;

const PARTITIONS: u32 = 2;

fn docfold(args: &[&str], config: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_docfold"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("runs");
    assert!(out.status.success(), "docfold {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The text of `doc` folded from its records in the log before `offset`.
fn reference(log: &FileLog, doc: &str, offset: u64) -> String {
    let partition = partition_for(doc.as_bytes(), PARTITIONS);
    let mut reader = log.reader();
    let (mut records, mut state) = (Vec::new(), Sequence::new());
    let end = reader.end_offset(partition).expect("end");
    reader.read(partition, 0, offset.min(end) as usize, &mut records).expect("read");
    for record in records.iter().filter(|r| r.offset < offset && r.key == doc.as_bytes()) {
        state.apply(&decode(&record.value).expect("op").op).expect("applies");
    }
    state.text()
}

/// automerge-paper's first 3,000 ops to "paper" and friendsforever's to "friends", in three
/// thirds with a `docfold run` after the first two (each leaves a disaster-recovery
/// manifest and a stored state): `doc at` at seeded offsets in each third (rebuilt from the
/// log, from a manifest, from the stored state) and past the end equals the fold of the
/// records before the offset, and `--time` at the end of each third the fold of the records
/// stamped by then. `DOCFOLD_HISTORY_SEED` picks other offsets.
#[test]
fn a_document_at_an_offset_is_the_fold_of_its_records_before_it() {
    let seed: u64 = std::env::var("DOCFOLD_HISTORY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    eprintln!("DOCFOLD_HISTORY_SEED={seed}");
    let dir = services::temp_dir("history");
    let log = FileLog::create(&dir.join("log"), "doc-ops", PARTITIONS).expect("topic");
    let config = dir.join("job.toml");
    std::fs::write(
        &config,
        format!(
            "job = \"history\"\n[log]\nurl = \"file://{d}/log\"\npartitions = {PARTITIONS}\n\
             [store]\nurl = \"sqlite://{d}/state.db\"\n[objects]\nurl = \"file://{d}/objects\"\n\
             [projection]\nurl = \"sqlite://{d}/projections.db\"\n[snapshots]\ninterval_ms = 1\n",
            d = dir.display()
        ),
    )
    .expect("config");
    let ops = |name: &str| {
        let path = format!("{}/tests/data/traces/{name}.json.gz", env!("CARGO_MANIFEST_DIR"));
        let trace = Trace::read(Path::new(&path)).expect("trace");
        replay(&trace, doc_seed(name)).expect("replay").ops
    };
    let (paper, friends) = (ops("automerge-paper"), ops("friendsforever"));
    let mut writer = log.writer(Fsync::Never, 1 << 20);
    let mut ends = Vec::new();
    for third in 0..3 {
        for at in third * 1000..(third + 1) * 1000 {
            for (doc, op) in [("paper", &paper[at]), ("friends", &friends[at])] {
                writer
                    .append(doc.as_bytes(), &encode(&Envelope::new(doc, "r", 0, op.clone())))
                    .expect("append");
            }
        }
        writer.flush().expect("flush");
        let mut reader = log.reader();
        ends.push((0..PARTITIONS).map(|p| reader.end_offset(p).expect("end")).collect::<Vec<_>>());
        if third < 2 {
            docfold(&["run", "--exit-when-idle", "--idle-ms", "0"], &config);
        }
    }
    let mut rng = seed;
    let mut next = |below: u64| {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (rng >> 33) % below.max(1)
    };
    let mut starts = std::collections::BTreeSet::new();
    for doc in ["paper", "friends"] {
        let mut offsets: Vec<u64> = Vec::new();
        let mut low = 0;
        for end in ends.iter().map(|ends| ends[partition_for(doc.as_bytes(), PARTITIONS) as usize]) {
            offsets.extend([low + 1 + next(end - low), low + 1 + next(end - low)]);
            low = end;
        }
        offsets.push(u64::MAX / 2);
        for offset in offsets {
            let shown = docfold(&["doc", "at", doc, "--offset", &offset.to_string()], &config);
            let from =
                shown.lines().find_map(|l| l.strip_prefix("rebuilt:   from ")).expect("says where from");
            starts.insert(from.split(',').next().unwrap_or_default().to_string());
            let text = docfold(&["doc", "at", doc, "--offset", &offset.to_string(), "--text-only"], &config);
            assert_eq!(text, reference(&log, doc, offset), "{doc} at {offset} (from {from}), seed {seed}");
        }
    }
    // By time: the log stamped each third after the run before it, so the time of a third's
    // last record shows the document as it was at that third's end.
    let partition = partition_for(b"paper", PARTITIONS);
    let mut reader = log.reader();
    for end in ends.iter().map(|ends| ends[partition as usize]) {
        let mut last = Vec::new();
        reader.read(partition, end - 1, 1, &mut last).expect("read");
        let stamp = chrono::DateTime::from_timestamp_millis(last[0].timestamp_ms).expect("a time");
        let time = stamp.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        let text = docfold(&["doc", "at", "paper", "--time", &time, "--text-only"], &config);
        assert_eq!(text, reference(&log, "paper", end), "paper at {time} (offset {end})");
    }
    // From the archive: the two runs archived the first two thirds (a drain writes every
    // row), so up to there it equals the log's fold, and past it the archive's end.
    for doc in ["paper", "friends"] {
        let archived = ends[1][partition_for(doc.as_bytes(), PARTITIONS) as usize];
        for offset in [1 + next(archived - 1), 1 + next(archived - 1), archived + 500] {
            let args =
                ["doc", "at", doc, "--offset", &offset.to_string(), "--source", "archive", "--text-only"];
            let text = docfold(&args, &config);
            assert_eq!(
                text,
                reference(&log, doc, offset.min(archived)),
                "{doc} at {offset} from the archive, seed {seed}"
            );
        }
    }
    let before = docfold(&["doc", "at", "paper", "--time", "2020-01-01T08:00Z", "--text-only"], &config);
    assert_eq!(before, "", "before the first record the document is empty");
    let out = Command::new(env!("CARGO_BIN_EXE_docfold"))
        .args(["doc", "at", "paper", "--time", "yesterday", "--config"])
        .arg(&config)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("is not a time like 2026-11-30T08:00:00Z"), "{stderr}");
    assert_eq!(
        starts.into_iter().collect::<Vec<_>>(),
        ["disaster-recovery snapshot", "state store", "the log"],
        "every kind of start was taken"
    );
}
