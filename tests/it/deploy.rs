//! `deploy/`: the Prometheus alert rules pass `promtool check rules` and their unit tests
//! (`deploy/prometheus/alerts.test.yml`: a case that fires and one that does not per alert),
//! and every metric they use is one docfold exports (`docs/metrics.md`, itself checked
//! against the code): a rule on a misspelt metric would never fire.

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    let out = Command::new("promtool").args(args).current_dir(&dir).output().unwrap_or_else(|e| {
        panic!("promtool ({e}): `./scripts/services up` installs it (Debian package prometheus)")
    });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_alert_rules_pass_promtool() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(checked.contains("SUCCESS: 8 rules found"), "{checked}");
    promtool(&["test", "rules", "alerts.test.yml"]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).expect("rules");
    let documented = std::fs::read_to_string(root.join("docs/metrics.md")).expect("metrics doc");
    let mut used: Vec<&str> = rules
        .match_indices("docfold_")
        .map(|(at, _)| {
            let name = &rules[at..];
            &name[..name.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(name.len())]
        })
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 8, "{used:?}");
    for name in used {
        assert!(
            documented.contains(&format!("`{name}`")),
            "alerts.yml uses {name}, which docfold does not export"
        );
    }
}

/// Kills a child process when dropped (a failed assertion leaves no server behind).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The metrics `docs/metrics.md` documents, as Prometheus names them (a histogram by its
/// `_bucket` series), with their types.
fn documented_metrics() -> Vec<(String, String)> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md")).expect("doc");
    doc.lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let name = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let kind = cells.next()?;
            let series = if kind == "histogram" { format!("{name}_bucket") } else { name.to_string() };
            Some((series, kind.to_string()))
        })
        .collect()
}

/// A real Prometheus (Debian's) scrapes a running `docfold run` every second; its query API
/// then lists every documented metric that a job without regions exports: all but the
/// regions' (`docfold run` with `[region]`), the mirror's (`docfold mirror`) and the count
/// of failed flushes (only after a failure).
#[test]
fn a_real_prometheus_scrapes_every_metric_docfold_run_exports() {
    let dir = crate::services::temp_dir("scrape");
    let port = crate::services::free_port();
    let mut config = docfold::config::JobConfig::in_dir(&dir);
    config.log.partitions = 2;
    config.archive.max_file_age_ms = 100;
    config.metrics.listen = Some(format!("127.0.0.1:{port}").parse().expect("address"));
    let job = dir.join("job.toml");
    std::fs::write(&job, toml::to_string(&config).expect("toml")).expect("config");
    let log = docfold::log::file::FileLog::create(&dir.join("log"), &config.log.topic, 2).expect("topic");
    crate::pipeline::fill(&mut log.writer(docfold::log::file::Fsync::Never, 1 << 20), 1, 1);
    let _run = Killed(
        Command::new(env!("CARGO_BIN_EXE_docfold")).args(["run", "--config"]).arg(&job).spawn().expect("run"),
    );
    let prometheus_port = crate::services::free_port();
    let scrape = dir.join("prometheus.yml");
    std::fs::write(
        &scrape,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: docfold\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .expect("prometheus config");
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", scrape.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus (`./scripts/services up` installs Debian's package)"),
    );
    let conditional = |name: &str| {
        name.starts_with("docfold_region_")
            || name.starts_with("docfold_mirror_")
            || name == "docfold_sink_failures_total"
    };
    let expected: Vec<String> =
        documented_metrics().into_iter().map(|(name, _)| name).filter(|name| !conditional(name)).collect();
    assert!(expected.len() >= 12, "{expected:?}");
    let since = std::time::Instant::now();
    let mut missing = expected.clone();
    while !missing.is_empty() && since.elapsed() < std::time::Duration::from_secs(90) {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let Some(answer) = crate::services::http_get(prometheus_port, "/api/v1/label/__name__/values") else {
            continue;
        };
        let Some(body) = answer.split("\r\n\r\n").nth(1) else { continue };
        let Ok(names) = serde_json::from_str::<serde_json::Value>(body) else { continue };
        let names: Vec<&str> =
            names["data"].as_array().into_iter().flatten().filter_map(|n| n.as_str()).collect();
        missing.retain(|name| !names.contains(&name.as_str()));
    }
    assert!(missing.is_empty(), "Prometheus never got {missing:?} from `docfold run`");
}
