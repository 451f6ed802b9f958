//! Job configs and the commands around `docfold run`: the shipped configs load, a wrong
//! config names the file and the field, and produce → run → doc show works end to end.

use docfold::config::{ConfigError, JobConfig, LogLocation};
use std::path::Path;

use crate::services;
use crate::spine::docfold;

#[test]
fn the_shipped_job_configs_load() {
    let local = JobConfig::load(Path::new("jobs/local.toml")).expect("local.toml");
    // Relative paths in a config file are relative to its folder.
    assert_eq!(local.log_location(), Ok(LogLocation::File("jobs/../docfold-data/log".into())));
    let defaults = JobConfig::default();
    let from_root = |url: &str| url.replace("jobs/../", "");
    assert_eq!(
        [&local.log.url, &local.store.url, &local.objects.url, &local.projection.url]
            .map(|u| from_root(u.expose())),
        [defaults.log.url, defaults.store.url, defaults.objects.url, defaults.projection.url]
            .map(|u| u.expose().to_string()),
        "local.toml is the default"
    );
    let kafka = JobConfig::load(Path::new("jobs/kafka.toml")).expect("kafka.toml");
    assert_eq!(kafka.log_location(), Ok(LogLocation::Kafka("127.0.0.1:9092".into())));
    // Three regions, each a peer of the other two, sharing one lease store.
    let names = ["us-east-1", "eu-west-1", "ap-southeast-1"];
    let mut leases = std::collections::BTreeSet::new();
    for name in names {
        let config = JobConfig::load(&Path::new("jobs/regions").join(format!("{name}.toml"))).expect(name);
        let region = config.region.expect("[region]");
        assert_eq!(region.name, name);
        let mut all = region.regions();
        all.sort_unstable();
        let mut expected = names.to_vec();
        expected.sort_unstable();
        assert_eq!(all, expected, "{name}: its peers are the other two");
        leases.insert(region.leases.expose().to_string());
    }
    assert_eq!(leases.len(), 1, "one lease store: {leases:?}");
    // The same three regions on AWS: one lease table, and nothing else shared.
    let mut seen = std::collections::BTreeSet::new();
    let mut leases = std::collections::BTreeSet::new();
    for name in names {
        let config =
            JobConfig::load(&Path::new("jobs/regions-aws").join(format!("{name}.toml"))).expect(name);
        assert!(matches!(config.log_location(), Ok(LogLocation::Kafka(_))), "{name}: on Kafka");
        let region = config.region.as_ref().expect("[region]");
        assert_eq!((region.name.as_str(), region.regions().len()), (name, 3));
        leases.insert(region.leases.expose().to_string());
        let own = [&config.log.url, &config.store.url, &config.objects.url, &config.projection.url];
        for url in own
            .iter()
            .map(|u| u.expose().to_string())
            .chain(config.invalidations.redis.iter().map(|u| u.expose().to_string()))
        {
            assert!(seen.insert(url.clone()), "{name}: {url} is another region's too");
        }
    }
    assert_eq!(leases.len(), 1, "one lease table: {leases:?}");
    // Every pair of shipped regions agrees on what must be the same (who leads first, where
    // the lease is).
    for folder in ["jobs/regions", "jobs/regions-aws"] {
        let regions: Vec<_> = names
            .iter()
            .map(|n| {
                JobConfig::load(&Path::new(folder).join(format!("{n}.toml")))
                    .expect(n)
                    .region
                    .expect("[region]")
            })
            .collect();
        for a in &regions {
            for b in regions.iter().filter(|b| b.name != a.name) {
                assert_eq!(a.disagreement(b), None, "{folder}: {} and {}", a.name, b.name);
            }
        }
    }
}

#[test]
fn a_wrong_config_names_the_file_and_the_field() {
    let dir = services::temp_dir("config");
    let cases = [
        ("[log]\nurl = \"ftp://x\"\n", "log.url"),
        ("[pipeline]\nbatch = 0\n", "pipeline.batch"),
        ("[store]\nurl = \"mysql://x\"\n", "store.url"),
        ("[log]\npartitons = 3\n", "partitons"),
        ("[objects]\nurl = \"gs://bucket\"\n", "objects.url"),
        ("[projection]\nurl = \"mongodb://x\"\n", "projection.url"),
        ("[archive]\npart_bytes = 1024\n", "archive.part_bytes"),
        ("[metrics]\nlisten = \"0.0.0.0:9898\"\n", "metrics.listen"),
        ("[objects]\nregion = \"eu-west-1\"\n", "aws_region"),
        ("[region]\nname = \"a\"\npeers = [\"a\"]\nleases = \"sqlite://l.db\"\n", "region.peers"),
        ("[region]\nname = \"a\"\npeers = [\"b\"]\n", "region.leases"),
        ("[region]\nname = \"a b\"\nleases = \"sqlite://l.db\"\n", "region.name"),
        (
            "[region]\nname = \"a\"\nleases = \"sqlite://l.db\"\ninitial_leader = \"z\"\n",
            "region.initial_leader",
        ),
        ("[region]\nname = \"a\"\nleases = \"sqlite://l.db\"\nttl_ms = 100\n", "region.ttl_ms"),
    ];
    for (i, (text, field)) in cases.into_iter().enumerate() {
        let path = dir.join(format!("bad{i}.toml"));
        std::fs::write(&path, text).expect("write");
        let error = JobConfig::load(&path).expect_err(text);
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()) && message.contains(field), "{message}");
        assert!(matches!(error, ConfigError::Invalid { .. } | ConfigError::Parse { .. }));
    }
}

const GREETING: [&str; 2] = [
    r#"{"schema_version":1,"doc_id":"greeting","origin_region":"r","client_time_ms":0,"op":{"id":{"site":"00000000000000aa","counter":1},"inserts":[{"start":[[5,"00000000000000aa",1]],"text":"hi!"}],"deletes":[]}}"#,
    r#"{"schema_version":1,"doc_id":"greeting","origin_region":"r","client_time_ms":0,"op":{"id":{"site":"00000000000000aa","counter":4},"inserts":[],"deletes":[[[7,"00000000000000aa",3]]]}}"#,
];

#[test]
fn produce_run_and_doc_show_on_the_embedded_default() {
    let dir = services::temp_dir("cli-run");
    let lines = GREETING;
    std::fs::write(dir.join("ops.jsonl"), lines.join("\n")).expect("write ops");
    let (code, out, err) = docfold(&dir, &["produce", "ops.jsonl"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("produced 2 records"), "{out}");
    // A bad line is refused with its line number; the lines before it stay produced.
    std::fs::write(dir.join("bad.jsonl"), format!("{}\n{{\"nope\":1}}\n", lines[0])).expect("write");
    let (code, _, err) = docfold(&dir, &["produce", "bad.jsonl"]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.jsonl line 2") && err.contains("1 records before it were produced"), "{err}");

    let (code, out, err) = docfold(&dir, &["run", "--exit-when-idle"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = docfold(&dir, &["doc", "show", "greeting"]);
    assert_eq!(code, 0, "{err}");
    // "hi!" typed, "!" deleted: four characters inserted or deleted.
    assert!(out.contains("version:   4") && out.ends_with("---\nhi\n"), "{out}");
    // The projection (embedded: SQLite) says the same.
    let (code, out, err) = docfold(&dir, &["projections", "show", "greeting"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("version: 4") && out.ends_with("---\nhi\n"), "{out}");
    let (code, _, err) = docfold(&dir, &["doc", "show", "nobody"]);
    assert_eq!(code, 2);
    assert!(err.contains("no document \"nobody\""), "{err}");
}

/// With `invalidations.preload` the cache holds each folded document's text and version
/// (a warm cache, as a standby region keeps it), not only the absence of a stale entry.
#[test]
fn a_preloading_cache_holds_the_folded_text() {
    let dir = services::temp_dir("preload");
    let prefix = format!("test:preload:{}:", services::unique());
    let config = format!(
        "[invalidations]\nredis = \"{}\"\nkey_prefix = \"{prefix}\"\nchannel = \"{prefix}channel\"\npreload = true\n",
        services::redis()
    );
    std::fs::write(dir.join("job.toml"), config).expect("write config");
    std::fs::write(dir.join("ops.jsonl"), GREETING.join("\n")).expect("write ops");
    let (code, out, err) = docfold(&dir, &["produce", "ops.jsonl", "--config", "job.toml"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = docfold(&dir, &["run", "--exit-when-idle", "--config", "job.toml"]);
    assert_eq!(code, 0, "{out}{err}");
    let client = redis::Client::open(services::redis()).expect("redis url");
    let mut conn = client.get_connection().expect("connect to Redis");
    let cached: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg(format!("{prefix}greeting")).query(&mut conn).expect("hgetall");
    assert_eq!(cached.get("text").map(String::as_str), Some("hi"), "{cached:?}");
    assert_eq!(cached.get("version").map(String::as_str), Some("4"), "{cached:?}");
}
