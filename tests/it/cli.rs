//! The `docfold` binary: exit codes and what it prints.

use std::process::Command;

fn replay(trace_json: &str) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!("docfold-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{:x}.json", docfold::lseq::doc_seed(trace_json)));
    std::fs::write(&path, trace_json).expect("write trace");
    let out = Command::new(env!("CARGO_BIN_EXE_docfold"))
        .args(["trace", "replay"])
        .arg(&path)
        .output()
        .expect("runs");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8 output");
    (out.status.code().expect("exit code"), text(out.stdout), text(out.stderr))
}

#[test]
fn a_matching_trace_exits_0_with_its_statistics() {
    let (code, out, _) =
        replay(r#"{"endContent":"héllo","txns":[{"patches":[[0,0,"hllo"]]},{"patches":[[1,0,"é"]]}]}"#);
    assert_eq!(code, 0, "{out}");
    for line in ["patches:          2", "ops:              2", "final length:     5", "endContent: ok"] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
}

#[test]
fn a_diverging_trace_exits_1_and_shows_where() {
    let (code, out, _) = replay(r#"{"endContent":"abd","txns":[{"patches":[[0,0,"abc"]]}]}"#);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("endContent: DIFFERS at code point 2"), "{out}");
}

#[test]
fn bad_input_exits_2_with_a_reason() {
    let (code, _, err) = replay(r#"{"endContent":"","txns":[{"patches":[[3,0,"a"]]}]}"#);
    assert_eq!(code, 2);
    assert!(
        err.contains("txn 0, patch 0: edit at 3 deleting 0 is outside the document of length 0"),
        "{err}"
    );
    let (code, _, err) = replay(
        r#"{"kind":"concurrent","endContent":"","txns":[{"parents":[],"agent":99999999999,"patches":[]}]}"#,
    );
    assert_eq!(code, 2);
    assert!(err.contains("names agent 99999999999"), "{err}");
    let (code, _, err) = replay("not json");
    assert_eq!(code, 2);
    assert!(err.contains("is not a valid editing trace"), "{err}");
}

/// A reader that stops early (`docfold … | head -1`) ends the command quietly, as Unix
/// tools do, never with a panic.
#[test]
fn a_closed_stdout_is_no_panic() {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_docfold"))
        .args(["trace", "replay", "tests/data/traces/friendsforever.json.gz"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}

/// `docfold status` says where each partition stands: caught up after a run (checkpoint at
/// the end, a disaster-recovery snapshot there), then behind by exactly the records
/// published since, their age as the lag in seconds.
#[test]
fn status_shows_each_partition_caught_up_then_behind() {
    use docfold::log::file::{FileLog, Fsync};
    use docfold::log::{LogWriter, partition_for};
    use docfold::lseq::Replica;
    use docfold::op::{Envelope, encode};
    let dir = crate::services::temp_dir("status");
    let config = dir.join("job.toml");
    std::fs::write(
        &config,
        format!(
            "job = \"status\"\n[log]\nurl = \"file://{d}/log\"\npartitions = 2\n\
             [store]\nurl = \"sqlite://{d}/state.db\"\n[objects]\nurl = \"file://{d}/objects\"\n\
             [projection]\nurl = \"sqlite://{d}/projections.db\"\n[snapshots]\ninterval_ms = 1\n",
            d = dir.display()
        ),
    )
    .expect("config");
    let log = FileLog::create(&dir.join("log"), "doc-ops", 2).expect("topic");
    let mut writer = log.writer(Fsync::Never, 1 << 20);
    let mut editors: Vec<Replica> = (0..4).map(|i| Replica::new(i, i + 1)).collect();
    let mut publish = |writer: &mut dyn LogWriter, rounds: usize| {
        let mut per_partition = [0u64; 2];
        for _ in 0..rounds {
            for (i, editor) in editors.iter_mut().enumerate() {
                let doc = format!("doc-{i}");
                let op = editor.local_edit(editor.len(), 0, "ab").expect("edit");
                writer.append(doc.as_bytes(), &encode(&Envelope::new(&doc, "r", 0, op))).expect("append");
                per_partition[partition_for(doc.as_bytes(), 2) as usize] += 1;
            }
        }
        writer.flush().expect("flush");
        per_partition
    };
    let first = publish(&mut writer, 25);
    let status = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_docfold"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .expect("runs");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    };
    status(&["run", "--exit-when-idle", "--idle-ms", "0"]);
    let parsed = |text: String| -> Vec<serde_json::Value> {
        let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(value["region"], serde_json::Value::Null, "one region: {value}");
        assert_eq!(value["sinks"]["projections"], "ok", "{value}");
        assert_eq!(value["sinks"]["object storage"], "ok", "{value}");
        value["partitions"].as_array().expect("partitions").clone()
    };
    for p in parsed(status(&["status", "--json"])) {
        let end = first[p["partition"].as_u64().expect("partition") as usize];
        assert_eq!(
            (p["end"].as_u64(), p["checkpoint"].as_u64(), p["lag_records"].as_u64()),
            (Some(end), Some(end), Some(0)),
            "{p}"
        );
        assert_eq!(p["snapshot_offset"].as_u64(), Some(end), "the drain's snapshot is at the end: {p}");
    }
    let more = publish(&mut writer, 3);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    for p in parsed(status(&["status", "--json"])) {
        let at = p["partition"].as_u64().expect("partition") as usize;
        assert_eq!(p["lag_records"].as_u64(), Some(more[at]), "{p}");
        let lag = p["lag_seconds"].as_f64().expect("seconds");
        assert!(
            more[at] == 0 || (1.0..60.0).contains(&lag),
            "the oldest record not folded is over a second old: {p}"
        );
    }
    let table = status(&["status"]);
    assert!(table.contains("lag records") && table.contains("doc-ops"), "{table}");
    assert!(table.contains("sink projections: ok"), "{table}");
    // A cache that does not answer: named with its error, and the exit code says so.
    let broken = dir.join("broken.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&broken, format!("{text}[invalidations]\nredis = \"redis://127.0.0.1:1\"\n"))
        .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_docfold"))
        .args(["status", "--json", "--config"])
        .arg(&broken)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "an unhealthy sink fails the status");
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let cache = value["sinks"]["invalidations cache"].as_str().expect("the cache's health");
    assert_ne!(cache, "ok", "{value}");
}
