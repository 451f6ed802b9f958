//! Secrets never printed: a marker password in every configurable URL and secret-like client
//! setting, the failure paths driven through the binary (with debug logs on), and the
//! marker found in no output.

use std::path::Path;
use std::process::Command;

use crate::services;

const MARKER: &str = "Marker-Passw0rd-7f3a";

/// Runs `docfold ARGS` with debug logs; all it printed.
fn output_of(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_docfold"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "debug")
        .output()
        .expect("runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_the_config_is_never_printed() {
    let dir = services::temp_dir("secrets");
    let reachable = services::postgres_database("secrets").await.replacen(
        "://postgres@",
        &format!("://postgres:{MARKER}@"),
        1,
    );
    let server = services::postgres_server();
    let host = server.split('@').nth(1).and_then(|h| h.split('/').next()).expect("host:port");
    let redis = services::host_port(&services::redis());
    // A store that refuses (no such database), a Redis that refuses AUTH, Kafka settings.
    let config = format!(
        "[log]\nurl = \"file://log\"\npartitions = 1\n[log.kafka]\n\"sasl.password\" = \"{MARKER}\"\n\"ssl.key.password\" = \"{MARKER}\"\n\
         [store]\nurl = \"postgres://docfold:{MARKER}@{host}/no_such_database_{}\"\n\
         [objects]\nurl = \"file://objects\"\n[projection]\nurl = \"sqlite://projections.db\"\n\
         [invalidations]\nredis = \"redis://:{MARKER}@{redis}\"\n",
        services::unique()
    );
    std::fs::write(dir.join("bad-store.toml"), &config).expect("write");
    let redis_only =
        config.replace(&format!("postgres://docfold:{MARKER}@{host}/no_such_database_"), "sqlite://state-");
    std::fs::write(dir.join("bad-redis.toml"), &redis_only).expect("write");
    // A store that answers (trust authentication ignores the password): its URL is named
    // in messages about what it holds.
    let good_store = config
        .lines()
        .map(|line| {
            if line.starts_with("url = \"postgres://") {
                format!("url = \"{reachable}\"")
            } else {
                line.into()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.join("good-store.toml"), good_store).expect("write");
    let op = r#"{"schema_version":1,"doc_id":"d","origin_region":"r","client_time_ms":0,"op":{"id":{"site":"00000000000000aa","counter":1},"inserts":[{"start":[[5,"00000000000000aa",1]],"text":"x"}],"deletes":[]}}"#;
    std::fs::write(dir.join("op.jsonl"), op).expect("write");
    let runs: [&[&str]; 8] = [
        &["doc", "show", "nobody", "--config", "good-store.toml"],
        &["snapshots", "restore", "--config", "good-store.toml"],
        &["produce", "op.jsonl", "--config", "bad-store.toml"],
        &["run", "--exit-when-idle", "--config", "bad-store.toml"],
        &["doc", "show", "d", "--config", "bad-store.toml"],
        &["snapshots", "restore", "--config", "bad-store.toml"],
        &["run", "--exit-when-idle", "--config", "bad-redis.toml"],
        &["projections", "show", "d", "--config", "bad-redis.toml"],
    ];
    let mut failures = 0;
    for args in runs {
        let (code, text) = tokio::task::block_in_place(|| output_of(&dir, args));
        assert!(!text.contains(MARKER), "docfold {args:?} printed the password:\n{text}");
        if code != 0 {
            failures += 1;
        }
    }
    assert!(failures >= 6, "the failure paths were driven ({failures} of {} runs failed)", runs.len());
}
