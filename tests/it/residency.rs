//! Residency on three embedded regions in active-active: documents under `eu/` may live in
//! region b only. A producer elsewhere is refused, the mirrors withhold their records, and
//! afterwards no byte of the resident document (its id, its text) is in any file of regions
//! a or c (log segments, state store, projections, objects) nor in their caches (Redis,
//! preloaded with text), while region b holds it and every region holds the shared document.

use std::path::Path;

use crate::region::region_job;
use crate::services;

const MARKER: &str = "RESIDENT-7f3a";

/// An op inserting `text` at digit `digit` of the first level.
fn op(doc_id: &str, site: &str, digit: u32, text: &str) -> String {
    format!(
        r#"{{"schema_version":1,"doc_id":"{doc_id}","origin_region":"b","client_time_ms":0,"op":{{"id":{{"site":"{site}","counter":1}},"inserts":[{{"start":[[{digit},"{site}",1]],"text":"{text}"}}],"deletes":[]}}}}"#
    )
}

fn docfold(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_docfold"))
        .current_dir(dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("runs docfold");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

/// Every file under `root` that contains `needle`.
fn files_with(root: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).expect("read dir").map(|e| e.expect("entry").path()));
        } else if std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle)) {
            found.push(path.display().to_string());
        }
    }
    found
}

#[test]
fn a_resident_document_never_leaves_its_regions() {
    let dir = services::temp_dir("residency");
    // Each region's cache: a key prefix of its own in the test's Redis, preloaded with text.
    let (redis, unique) = (services::redis(), services::unique());
    let prefix = |name: &str| format!("test:{unique}:{name}:");
    for name in ["a", "b", "c"] {
        let extra = format!(
            "mode = \"active-active\"\n[[region.residency]]\nprefix = \"eu/\"\nregions = [\"b\"]\n\
             [invalidations]\nredis = \"{redis}\"\nkey_prefix = \"{}\"\nchannel = \"test:{unique}:{name}\"\npreload = true",
            prefix(name)
        );
        let log = format!("url = \"file://{name}/log\"\npartitions = 2");
        region_job(&dir, name, &log, &extra);
        let (ok, _, err) = docfold(&dir, &["setup", "--config", &format!("{name}.toml")]);
        assert!(ok, "setup {name}: {err}");
    }
    let write = |file: &str, lines: &[String]| {
        std::fs::write(dir.join(file), lines.join("\n") + "\n").expect("write")
    };
    write(
        "resident.jsonl",
        &[op("eu/contract", "00000000000000b1", 5, MARKER), op("shared", "00000000000000b2", 5, "hello ")],
    );
    write(
        "elsewhere.jsonl",
        &[op("shared", "00000000000000a1", 20, "world"), op("eu/contract", "00000000000000a2", 5, "x")],
    );
    let (ok, _, err) = docfold(&dir, &["produce", "resident.jsonl", "--config", "b.toml"]);
    assert!(ok, "b takes its resident document: {err}");
    let (ok, _, err) = docfold(&dir, &["produce", "elsewhere.jsonl", "--config", "a.toml"]);
    assert!(!ok && err.contains("\"eu/contract\" may live only in b") && err.contains("line 2"), "{err}");

    let mut withheld = 0;
    for (from, to) in [("a", "b"), ("a", "c"), ("b", "a"), ("b", "c"), ("c", "a"), ("c", "b")] {
        let args = [
            "mirror",
            "--exit-when-idle",
            "--from",
            &format!("{from}.toml"),
            "--config",
            &format!("{to}.toml"),
        ];
        let (ok, out, err) = docfold(&dir, &args);
        assert!(ok, "mirror {from} → {to}: {err}");
        withheld +=
            out.lines().skip(2).filter_map(|l| l.split_whitespace().nth(4)?.parse::<u64>().ok()).sum::<u64>();
    }
    assert_eq!(withheld, 2, "b's resident record withheld from a and from c");
    for name in ["a", "b", "c"] {
        let (ok, _, err) = docfold(&dir, &["run", "--exit-when-idle", "--config", &format!("{name}.toml")]);
        assert!(ok, "run {name}: {err}");
        let (ok, out, err) =
            docfold(&dir, &["doc", "show", "shared", "--text-only", "--config", &format!("{name}.toml")]);
        assert!(ok && out.trim_end() == "hello world", "{name} holds the shared document: {out}{err}");
    }
    // The caches: b holds the resident document's text, a and c hold no key of it and no
    // value with its text.
    let mut cache = redis::Client::open(redis.as_str()).expect("redis").get_connection().expect("connect");
    let text_of = |cache: &mut redis::Connection, key: &str| -> Option<String> {
        redis::cmd("HGET").arg(key).arg("text").query(cache).expect("HGET")
    };
    assert_eq!(text_of(&mut cache, &format!("{}eu/contract", prefix("b"))).as_deref(), Some(MARKER));
    for name in ["a", "c"] {
        assert_eq!(text_of(&mut cache, &format!("{}shared", prefix(name))).as_deref(), Some("hello world"));
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}*", prefix(name))).query(&mut cache).expect("KEYS");
        for key in keys {
            let text = text_of(&mut cache, &key).unwrap_or_default();
            assert!(
                !key.contains("eu/contract") && !text.contains(MARKER),
                "{key} in {name}'s cache: {text}"
            );
        }
    }
    for needle in [MARKER, "eu/contract"] {
        assert!(
            !files_with(&dir.join("b"), needle.as_bytes()).is_empty(),
            "the scan finds {needle} in region b"
        );
        for name in ["a", "c"] {
            let found = files_with(&dir.join(name), needle.as_bytes());
            assert!(found.is_empty(), "{needle:?} reached region {name}: {found:?}");
        }
    }
}
