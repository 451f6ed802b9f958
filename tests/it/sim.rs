//! The region simulator: one seed gives one output byte for byte; its latencies agree with
//! closed-form expectations on a plain link; and every strategy's claims (RPO 0 after a heal,
//! RTO bounds, converged text) hold over seeded runs. `DOCFOLD_SIM_RUNS` (default 2) and
//! `DOCFOLD_SIM_SEED` (default 1) set the seeded runs.

use docfold::sim::{Fault, MirrorMode, Net, Scenario, Settings, Strategy, run};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn small(strategy: Strategy, scenario: &str, seed: u64) -> Settings {
    let regions = Net::default().regions;
    let mut settings = Settings::new(strategy, Scenario::resolve(scenario, &regions).expect("built in"));
    settings.users = 1_500;
    settings.docs = 300;
    settings.seed = seed;
    settings
}

#[test]
fn one_seed_gives_one_output_byte_for_byte() {
    let seed = env("DOCFOLD_SIM_SEED", 1);
    let first = run(&small(Strategy::Home, "region-lost", seed)).expect("sim").markdown();
    let again = run(&small(Strategy::Home, "region-lost", seed)).expect("sim").markdown();
    assert_eq!(first, again, "seed {seed}: two runs differ");
    let other = run(&small(Strategy::Home, "region-lost", seed + 1)).expect("sim").markdown();
    assert_ne!(first, other, "seeds {seed} and {} gave the same run", seed + 1);
}

/// Two regions 100 ms apart, no jitter, a busy log (a fetch always finds records, so it never
/// waits at the source): a local write is acked after the client hop, the append and the hop
/// back; a write to the other region after two crossings; a record appended at a uniform
/// moment waits for the next fetch (they arrive every 2 × one-way), crosses once, is copied,
/// and shows at the next flush: from one-way + copy to 3 × one-way + copy + flush, median
/// 2 × one-way + copy + flush / 2.
#[test]
fn latencies_agree_with_the_closed_form_on_a_plain_link() {
    let one_way = 100;
    let net = Net {
        regions: vec!["a".into(), "b".into()],
        one_way_ms: vec![vec![0, one_way], vec![one_way, 0]],
        jitter_ms: 0,
        lease_one_way_ms: 10,
    };
    let steady = Scenario { name: "steady".into(), duration_ms: 8_000, faults: vec![], offline: None };
    let mut settings = Settings::new(Strategy::Aa, steady);
    (settings.users, settings.docs, settings.net) = (400, 100, net);
    settings.behaviour.think_mean_ms = 200.0;
    settings.behaviour.key_ms = (20, 40);
    settings.timing.flush_ms = 10;
    let t = settings.timing.clone();
    let aa = run(&settings).expect("sim");
    for ack in &aa.ack {
        assert_eq!((ack.p50, ack.p99), (t.local_ack_ms as u32 + 2, t.local_ack_ms as u32 + 2), "local ack");
    }
    // Plus 1 ms: the writer's hop to its own broker before the append.
    let (low, high) = (one_way + t.copy_ms + 1, 3 * one_way + t.copy_ms + t.flush_ms + 1);
    let median = (2 * one_way + t.copy_ms + t.flush_ms / 2 + 1) as f64;
    visible_within(&aa, (low, high), median, "pull");
    // A pushing mirror: a record waits at most the linger, crosses once, is copied, shows
    // at the next flush.
    settings.mirror = MirrorMode::Push;
    let push = run(&settings).expect("sim");
    let (low, high) = (one_way + t.copy_ms + 1, one_way + t.push_linger_ms + t.copy_ms + t.flush_ms + 1);
    let median = (one_way + t.copy_ms + (t.push_linger_ms + t.flush_ms) / 2 + 1) as f64;
    visible_within(&push, (low, high), median, "push");
    settings.mirror = MirrorMode::Pull;
    settings.strategy = Strategy::Ap;
    let ap = run(&settings).expect("sim");
    assert_eq!(ap.ack[0].p50, t.local_ack_ms as u32 + 2, "the leader's own users");
    let remote = (2 * one_way + t.local_ack_ms) as u32;
    assert_eq!((ap.ack[1].p50, ap.ack[1].p99), (remote, remote), "two crossings to the leader");
}

/// Every region's edit → visible lies within `low..=high` ms, its median within 5 % of `median`.
fn visible_within(f: &docfold::sim::Figures, (low, high): (i64, i64), median: f64, what: &str) {
    for (r, cdf) in f.visible_cdf.iter().enumerate() {
        let (min, p50, max) = (cdf[0] as i64, cdf[50] as f64, cdf[100] as i64);
        assert!(
            min >= low && max <= high,
            "{what}, region {r}: visible from {min} to {max} ms, expected {low}–{high}"
        );
        assert!(
            (p50 - median).abs() <= median * 0.05,
            "{what}, region {r}: visible p50 {p50} ms, expected {median} ± 5 %"
        );
    }
}

/// Over seeded runs of every strategy and fault: nothing acked is lost after the heal, every
/// region ends with the reference fold's text, active-active and home mode never stop taking
/// their own regions' writes, and active-passive is back within 10 s.
#[test]
fn every_strategy_loses_nothing_and_keeps_its_recovery_bound() {
    let (runs, first) = (env("DOCFOLD_SIM_RUNS", 2), env("DOCFOLD_SIM_SEED", 1));
    for seed in first..first + runs {
        for strategy in Strategy::ALL {
            let runs = [
                ("region-lost", MirrorMode::Pull),
                ("partition", MirrorMode::Pull),
                ("offline", MirrorMode::Pull),
            ];
            let pushed = [("region-lost", MirrorMode::Push), ("partition", MirrorMode::Push)];
            for (scenario, mirror) in runs.into_iter().chain(pushed) {
                let mut settings = small(strategy, scenario, seed);
                (settings.users, settings.mirror) = (600, mirror);
                let f = run(&settings).expect("sim");
                let what = format!("seed {seed}, {strategy:?}, {scenario}, {mirror:?}");
                assert_eq!(f.lost, 0, "{what}: acked ops lost after the heal");
                assert!(f.identical, "{what}: {} documents differ between regions", f.diverged);
                if scenario == "region-lost" {
                    let rto = f.rto_ms.expect("a fault");
                    match strategy {
                        Strategy::Aa => assert!(rto < 100, "{what}: RTO {rto} ms"),
                        Strategy::Ap | Strategy::Home => assert!(rto < 10_000, "{what}: RTO {rto} ms"),
                    }
                }
                if scenario == "offline" {
                    let late = f.late.expect("offline ops");
                    assert_eq!(late.count, 500 * 40, "{what}: every offline op shows everywhere");
                }
            }
        }
    }
}

#[test]
fn bad_scenarios_are_refused_with_the_reason() {
    let regions = Net::default().regions;
    let fault = Fault::Kill { region: "mars-1".into(), at_ms: 0, for_ms: 10 };
    let scenario = Scenario { name: "x".into(), duration_ms: 1_000, faults: vec![fault], offline: None };
    let error = scenario.check(&regions).expect_err("unknown region");
    assert!(error.contains("mars-1") && error.contains("us-east-1"), "{error}");
    let error = Scenario::resolve("no-such-scenario", &regions).expect_err("neither built in nor a file");
    assert!(error.contains("steady") && error.contains("no-such-scenario"), "{error}");
    let dir = tempfile_dir();
    let file = dir.join("cut.toml");
    std::fs::write(&file, "name = \"cut\"\nduration_ms = 5000\n[[faults]]\nkind = \"cut\"\na = \"eu-west-1\"\nb = \"eu-west-1\"\nat_ms = 1\nfor_ms = 2\n").unwrap();
    let error = Scenario::resolve(file.to_str().unwrap(), &regions).expect_err("a cut needs two regions");
    assert!(error.contains("two regions"), "{error}");
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("docfold-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `docfold sim report` end to end, small: the page names every scenario and the
/// recommendation, links three charts that exist as PNG files, and shows the calibration
/// measurement when there is one.
#[test]
fn the_report_writes_its_page_and_charts() {
    let dir = tempfile_dir().join("report");
    std::fs::create_dir_all(dir.join("multi-region")).unwrap();
    let real =
        std::fs::read_to_string("docs/multi-region/real.json").expect("the bench's measurement is kept");
    std::fs::write(dir.join("multi-region/real.json"), real).unwrap();
    let out = dir.join("multi-region.md");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_docfold"))
        .args(["sim", "report", "--users", "300", "--docs", "60", "--out"])
        .arg(&out)
        .output()
        .expect("runs");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let page = std::fs::read_to_string(&out).expect("the page");
    for section in [
        "## Steady state",
        "lost for 60 s",
        "cut for 60 s",
        "offline",
        "Recommended default",
        "| figure | real | simulated |",
    ] {
        assert!(page.contains(section), "the page has {section:?}");
    }
    let rto = page.lines().find(|l| l.starts_with("| RTO |")).expect("the calibration's RTO row");
    assert!(!rto.ends_with("| 0 ms |"), "the simulated cut-off leader is replaced after a while: {rto}");
    for chart in ["ack-cdf.png", "visible-cdf.png", "failover.png"] {
        assert!(page.contains(&format!("multi-region/{chart}")), "the page links {chart}");
        let png = std::fs::read(dir.join("multi-region").join(chart)).expect("the chart");
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{chart} is a drawn PNG");
    }
}
