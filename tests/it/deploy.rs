//! `deploy/`: the Prometheus alert rules pass `promtool check rules` and their unit tests
//! (`deploy/prometheus/alerts.test.yml`: a case that fires and one that does not per alert),
//! and every metric they and the Grafana dashboard use is one docfold exports
//! (`docs/metrics.md`, itself checked against the code): a rule on a misspelt metric would
//! never fire. A real Prometheus scrapes `docfold run`, evaluates the rules, and answers
//! every dashboard query.

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
    assert!(checked.contains("SUCCESS: 9 rules found"), "{checked}");
    promtool(&["test", "rules", "alerts.test.yml"]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).expect("rules");
    let documented = std::fs::read_to_string(root.join("docs/metrics.md")).expect("metrics doc");
    let both = format!("{rules}\n{}", dashboard_queries().join("\n"));
    let mut used: Vec<&str> = both
        .match_indices("docfold_")
        .map(|(at, _)| {
            let name = &both[at..];
            let name =
                &name[..name.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(name.len())];
            name.strip_suffix("_bucket").unwrap_or(name)
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

/// The PromQL of every panel of the Grafana dashboard.
fn dashboard_queries() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/docfold.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard"))
            .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let queries: Vec<String> = panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().into_iter().flatten())
        .map(|target| target["expr"].as_str().expect("a PromQL expression").to_string())
        .collect();
    assert_eq!(queries.len(), panels.len(), "one query per panel");
    queries
}

/// `text` percent-encoded for a URL's query.
fn encoded(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// The JSON body of `GET path` on Prometheus' API, once it answers.
fn prometheus_api(port: u16, path: &str) -> Option<serde_json::Value> {
    let answer = crate::services::http_get(port, path)?;
    serde_json::from_str(answer.split("\r\n\r\n").nth(1)?).ok()
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
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: docfold\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml").display()
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
        let Some(names) = prometheus_api(prometheus_port, "/api/v1/label/__name__/values") else { continue };
        let names: Vec<&str> =
            names["data"].as_array().into_iter().flatten().filter_map(|n| n.as_str()).collect();
        missing.retain(|name| !names.contains(&name.as_str()));
    }
    assert!(missing.is_empty(), "Prometheus never got {missing:?} from `docfold run`");
    // The listener's health: 200 and "ok" while every flush goes through.
    let health = crate::services::http_get(port, "/health").expect("/health answers");
    assert!(health.starts_with("HTTP/1.1 200") && health.contains(r#""status":"ok""#), "{health}");
    // Prometheus loaded the alert rules and evaluates each without an error.
    let rules = prometheus_api(prometheus_port, "/api/v1/rules").expect("rules");
    let rules: Vec<&serde_json::Value> = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(rules.len(), 9, "every alert rule is loaded");
    for rule in rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    // Every dashboard query is valid PromQL with an answer.
    for query in dashboard_queries() {
        let answer = prometheus_api(prometheus_port, &format!("/api/v1/query?query={}", encoded(&query)))
            .unwrap_or_else(|| panic!("no answer to {query}"));
        assert_eq!(answer["status"], "success", "{query}: {answer}");
    }
}

/// The summary of a checkov scan of `dir` (under `deploy/`) with `framework`; every failed
/// check is printed.
fn checkov(dir: &str, framework: &str) -> serde_json::Value {
    let checkov = std::env::var("DOCFOLD_TEST_CHECKOV").unwrap_or_else(|_| "checkov".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(dir);
    let out = Command::new(&checkov)
        .args(["--framework", framework, "--skip-download", "-o", "json", "-d"])
        .arg(&root)
        .output()
        .unwrap_or_else(|e| panic!("{checkov} ({e}): `./scripts/services up` installs it"));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("checkov's report ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    let failed: Vec<String> = report["results"]["failed_checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!("{} {} ({})", c["check_id"], c["check_name"], c["resource"]))
        .collect();
    assert!(failed.is_empty(), "checkov findings in deploy/{dir}:\n{}", failed.join("\n"));
    report["summary"].clone()
}

/// The Kubernetes manifests (the jobs and mirrors of a region) pass checkov's checks:
/// non-root, read-only root file system, no privilege escalation, probes, limits, a
/// network policy, a pinned image digest, a drain longer than the final flush's patience.
#[test]
fn the_kubernetes_manifests_pass_checkov() {
    let summary = checkov("k8s", "kubernetes");
    assert!(summary["passed"].as_u64().expect("passed") > 100, "{summary}");
    // The run's drain (its final flush retries a backend for up to 60 s) fits its grace.
    let manifests =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s/job.yaml"))
            .expect("manifests");
    let run = &manifests[manifests.find("name: docfold-run").expect("the run's Deployment")..];
    let grace: u64 = run
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a grace period");
    assert!(grace > 60, "the drain needs more than the final flush's 60 s: {grace}");
}

/// What the Terraform declares, read with python-hcl2: the providers' regions, each
/// module's source and region, the resource types of the region module, the global tables'
/// replica regions, and the accelerator's health-check paths.
const HCL_SUMMARY: &str = r#"
import glob, json, sys, hcl2
unq = lambda v: v.strip('"') if isinstance(v, str) else v
def blocks(path):
    with open(path) as f:
        return hcl2.load(f)
root = sys.argv[1]
out = {"providers": [], "modules": {}, "region_resources": [], "global_tables": {}, "health_checks": []}
for path in sorted(glob.glob(root + "/*.tf")):
    tf = blocks(path)
    for p in tf.get("provider", []):
        for body in p.values():
            out["providers"].append(unq(body["region"]))
    for m in tf.get("module", []):
        for name, body in m.items():
            if "region" in body:
                out["modules"][unq(name)] = {"source": unq(body["source"]), "region": unq(body["region"])}
    for r in tf.get("resource", []):
        for kind, named in r.items():
            for name, body in named.items():
                if unq(kind) == "aws_dynamodb_table":
                    names = [unq(k) for k in body["for_each"]] if "for_each" in body else [unq(body["name"])]
                    for table in names:
                        out["global_tables"][table] = sorted(unq(x["region_name"]) for x in body.get("replica", []))
                if unq(kind) == "aws_globalaccelerator_endpoint_group":
                    out["health_checks"].append(unq(body["health_check_path"]))
for path in sorted(glob.glob(root + "/region/*.tf")):
    for r in blocks(path).get("resource", []):
        out["region_resources"].extend(unq(k) for k in r)
out["region_resources"] = sorted(set(out["region_resources"]))
print(json.dumps(out))
"#;

/// The Terraform for three regions parses (python-hcl2) into what docfold needs in each
/// region and across them, and passes checkov (its skips carry their reasons in the files).
#[test]
fn the_terraform_declares_three_regions_and_passes_checkov() {
    let python = std::env::var("DOCFOLD_TEST_HCL2_PYTHON").unwrap_or_else(|_| "python3".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/terraform");
    let out = Command::new(&python)
        .args(["-c", HCL_SUMMARY])
        .arg(&root)
        .output()
        .unwrap_or_else(|e| panic!("{python} ({e}): `./scripts/services up` installs python-hcl2"));
    assert!(out.status.success(), "python-hcl2: {}", String::from_utf8_lossy(&out.stderr));
    let tf: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let regions = ["ap-southeast-1", "eu-west-1", "us-east-1"];
    let mut providers: Vec<&str> =
        tf["providers"].as_array().expect("providers").iter().filter_map(|p| p.as_str()).collect();
    providers.sort_unstable();
    assert_eq!(providers, regions, "{tf}");
    for region in regions {
        let module = &tf["modules"][region.replace('-', "_")];
        assert_eq!(
            (module["source"].as_str(), module["region"].as_str()),
            (Some("./region"), Some(region)),
            "{tf}"
        );
    }
    for kind in [
        "aws_msk_cluster",
        "aws_rds_cluster",
        "aws_elasticache_replication_group",
        "aws_s3_bucket_replication_configuration",
        "aws_dynamodb_table",
    ] {
        assert!(tf["region_resources"].as_array().expect("types").iter().any(|t| t == kind), "{kind}: {tf}");
    }
    for table in ["docfold-projections-global", "docfold-leases"] {
        assert_eq!(
            tf["global_tables"][table],
            serde_json::json!(["ap-southeast-1", "us-east-1"]),
            "{table}: {tf}"
        );
    }
    assert_eq!(tf["health_checks"], serde_json::json!(["/health"]), "{tf}");
    let summary = checkov("terraform", "terraform");
    assert!(summary["passed"].as_u64().expect("passed") > 200, "{summary}");
}
