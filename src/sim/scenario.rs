//! What happens to the regions during a simulated run: region kills, link cuts and users
//! who come back after days offline, at given virtual times. Built in by name
//! (`Scenario::builtin`) or read from a TOML file.

use serde::{Deserialize, Serialize};

/// Three days: the brief's offline editor.
const THREE_DAYS_MS: i64 = 3 * 24 * 3_600_000;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// How long users edit; the run then drains (no new edits) until every region is quiet.
    pub duration_ms: i64,
    #[serde(default)]
    pub faults: Vec<Fault>,
    #[serde(default)]
    pub offline: Option<Offline>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fault {
    /// Every process of `region` stops at `at_ms` (its log and store survive) and starts again
    /// `for_ms` later.
    Kill { region: String, at_ms: i64, for_ms: i64 },
    /// The link between regions `a` and `b` carries nothing from `at_ms` for `for_ms`.
    Cut { a: String, b: String, at_ms: i64, for_ms: i64 },
    /// Every link of `region` (to the other regions and to the lease store) is cut; the
    /// region itself goes on, and its own users still reach it.
    Isolate { region: String, at_ms: i64, for_ms: i64 },
}

impl Fault {
    /// When it starts and when it heals.
    pub fn window(&self) -> (i64, i64) {
        match self {
            Fault::Kill { at_ms, for_ms, .. }
            | Fault::Cut { at_ms, for_ms, .. }
            | Fault::Isolate { at_ms, for_ms, .. } => (*at_ms, at_ms + for_ms),
        }
    }
}

/// Users who edited while offline and come back: their ops carry the old editor time.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Offline {
    pub users: usize,
    pub ops_each: u32,
    pub away_ms: i64,
    pub returns_at_ms: i64,
}

impl Scenario {
    /// The scenarios of the report, by name.
    pub const BUILTIN: [&'static str; 4] = ["steady", "region-lost", "partition", "offline"];

    pub fn builtin(name: &str, regions: &[String]) -> Option<Scenario> {
        let (first, second) = (regions.first()?.clone(), regions.get(1)?.clone());
        let at_ms = 20_000;
        let scenario =
            |duration_ms, faults, offline| Scenario { name: name.into(), duration_ms, faults, offline };
        Some(match name {
            "steady" => scenario(40_000, vec![], None),
            "region-lost" => {
                scenario(100_000, vec![Fault::Kill { region: first, at_ms, for_ms: 60_000 }], None)
            }
            "partition" => {
                scenario(100_000, vec![Fault::Cut { a: first, b: second, at_ms, for_ms: 60_000 }], None)
            }
            "offline" => scenario(
                40_000,
                vec![],
                Some(Offline { users: 500, ops_each: 40, away_ms: THREE_DAYS_MS, returns_at_ms: at_ms }),
            ),
            _ => return None,
        })
    }

    /// A built-in scenario's name, or a TOML file.
    pub fn resolve(name_or_file: &str, regions: &[String]) -> Result<Scenario, String> {
        if let Some(scenario) = Scenario::builtin(name_or_file, regions) {
            return Ok(scenario);
        }
        let text = std::fs::read_to_string(name_or_file).map_err(|e| {
            format!(
                "scenario {name_or_file:?}: not one of {} and not a readable file ({e})",
                Scenario::BUILTIN.join(", ")
            )
        })?;
        let scenario: Scenario =
            toml::from_str(&text).map_err(|e| format!("scenario {name_or_file}: {e}"))?;
        scenario.check(regions).map_err(|e| format!("scenario {name_or_file}: {e}"))?;
        Ok(scenario)
    }

    /// Refuses faults naming unknown regions, negative times and overlapping faults of one
    /// region.
    pub fn check(&self, regions: &[String]) -> Result<(), String> {
        if self.duration_ms <= 0 {
            return Err("duration_ms must be positive".into());
        }
        let known = |r: &String| {
            if regions.contains(r) {
                Ok(())
            } else {
                Err(format!("unknown region {r:?} (regions: {})", regions.join(", ")))
            }
        };
        for fault in &self.faults {
            let (at, until) = fault.window();
            if at < 0 || until <= at {
                return Err(format!("{fault:?}: at_ms must be ≥ 0 and for_ms > 0"));
            }
            match fault {
                Fault::Kill { region, .. } | Fault::Isolate { region, .. } => known(region)?,
                Fault::Cut { a, b, .. } if a == b => {
                    return Err(format!("cut {a:?}–{b:?}: two regions, please"));
                }
                Fault::Cut { a, b, .. } => {
                    known(a)?;
                    known(b)?;
                }
            }
        }
        if let Some(offline) = &self.offline
            && (offline.returns_at_ms < 0 || offline.away_ms < 0)
        {
            return Err("offline: returns_at_ms and away_ms must be ≥ 0".into());
        }
        Ok(())
    }
}
