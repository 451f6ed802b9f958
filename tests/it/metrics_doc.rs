//! `docs/metrics.md` is generated from `src/telemetry/mod.rs`, where every metric is named
//! with its doc comment and recorded by one typed function: this test renders the page from
//! the code and fails when the committed page differs (`DOCFOLD_BLESS=1` writes it).

/// (name, kind, description) of every metric constant in the telemetry module.
fn metrics(source: &str) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    let mut comment: Vec<&str> = Vec::new();
    let mut last_comment = String::new();
    for line in source.lines().map(str::trim) {
        if let Some(text) = line.strip_prefix("///") {
            comment.push(text.trim());
        } else if let Some(rest) = line.strip_prefix("pub const ") {
            let (constant, value) = rest.split_once(": &str = ").expect("a string constant");
            let name = value.trim_end_matches(';').trim_matches('"').to_string();
            if !comment.is_empty() {
                last_comment = comment.join(" ");
            }
            comment.clear();
            let kind = ["counter", "gauge", "histogram"]
                .into_iter()
                .find(|kind| source.contains(&format!("{kind}!({constant}")))
                .unwrap_or_else(|| panic!("{constant} is recorded by no counter!, gauge! or histogram!"));
            found.push((name, kind.to_string(), last_comment.clone()));
        } else {
            comment.clear();
        }
    }
    found
}

fn render(metrics: &[(String, String, String)]) -> String {
    let mut page = String::from(
        "# Metrics\n\n\
         Served in Prometheus' text format at `/metrics` when `[metrics] listen = \"HOST:PORT\"`\n\
         is set (`docfold run`, `docfold mirror`). Generated from `src/telemetry/mod.rs` by the\n\
         test `metrics_doc` (`DOCFOLD_BLESS=1 cargo nextest run metrics_doc` rewrites it): a\n\
         metric named there and not here, or here and not there, fails the tests.\n\n\
         | metric | type | what it measures (labels) |\n|---|---|---|\n",
    );
    for (name, kind, description) in metrics {
        page.push_str(&format!("| `{name}` | {kind} | {description} |\n"));
    }
    page
}

#[test]
fn docs_metrics_md_lists_every_metric_of_the_code() {
    let root = env!("CARGO_MANIFEST_DIR");
    let source = std::fs::read_to_string(format!("{root}/src/telemetry/mod.rs")).expect("telemetry module");
    let metrics = metrics(&source);
    assert!(metrics.len() >= 18, "{metrics:?}");
    assert!(
        metrics.iter().all(|(name, _, text)| name.starts_with("docfold_") && !text.is_empty()),
        "{metrics:?}"
    );
    let page = render(&metrics);
    let path = format!("{root}/docs/metrics.md");
    if std::env::var("DOCFOLD_BLESS").is_ok() {
        std::fs::write(&path, &page).expect("write docs/metrics.md");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == page,
        "docs/metrics.md is not the page the code makes; run DOCFOLD_BLESS=1 cargo nextest run metrics_doc"
    );
}
