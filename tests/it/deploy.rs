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
