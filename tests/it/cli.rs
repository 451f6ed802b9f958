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
