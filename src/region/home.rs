//! A home region per document (`mode = "home"`): a document's writes go to its home region's
//! log, every other region folds them as a warm replica. A document's home is a row of the
//! lease store (scope `<job>/doc/<id>`: home region, per-document epoch, and when the home
//! takes writes), written by compare-and-set like a lease:
//!
//! - **placed** by its first writer: the region of the first `[[region.home]]` rule whose prefix
//!   matches, else the writer's own region; either way inside the document's residency rule;
//! - **moved** by an operator (`docfold region move-doc ID REGION`): epoch + 1, and the new home
//!   takes writes only after the ttl + the skew bound. A producer routes by a view of the row
//!   no older than the ttl, so every write routed to the old home is sent before the new one
//!   takes any: never two homes at one epoch, nor two at one time. Nothing is lost either way:
//!   a late write to the old home is still in a log every region folds.
//!
//! The writes of a home region's documents go to whichever region holds that home's group
//! lease (scope `<job>/home/<region>`): the home itself, until it fails and another region
//! takes its lease like a standby takes a leader's (`role`), so a lost home's documents fail
//! over by the same code as a lost leader.

use super::lease::{Lease, LeaseError, LeaseStore, Replaced};
use super::residency::Residency;
use serde::{Deserialize, Serialize};

/// A document's home as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Home {
    pub region: String,
    /// Grows by one on every move.
    pub epoch: u64,
    /// From when (ms since the Unix epoch) the home takes the document's writes.
    pub since_ms: i64,
}

/// `[[region.home]]`: documents whose id starts with `prefix` are first homed in `region`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HomeRule {
    pub prefix: String,
    pub region: String,
}

/// The lease scope of a document's home row.
pub fn doc_scope(job: &str, doc_id: &str) -> String {
    format!("{job}/doc/{doc_id}")
}

/// The lease scope of the region that takes the writes of `home`'s documents.
pub fn group_scope(job: &str, home: &str) -> String {
    format!("{job}/home/{home}")
}

/// Where a document is first homed when `writer` writes it first: the first matching home
/// rule's region, else the writer's, unless its residency rule keeps it elsewhere (then the
/// rule's first region).
pub fn first_home(rules: &[HomeRule], residency: &[Residency], doc_id: &str, writer: &str) -> String {
    let home = rules.iter().find(|r| doc_id.starts_with(&r.prefix)).map_or(writer, |r| r.region.as_str());
    match residency.iter().find(|r| doc_id.starts_with(&r.prefix)) {
        Some(rule) if !rule.regions.iter().any(|r| r == home) => rule.regions[0].clone(),
        _ => home.to_string(),
    }
}

/// The home `move-doc` writes over `current`, or `Err` with the home as it is when the
/// document already lives in `to`. A document never placed takes `to` at once (nobody can
/// have written it: a producer places a document before its first write).
pub fn decide_move(
    current: Option<&Home>,
    to: &str,
    (now_ms, ttl_ms, skew_ms): (i64, i64, i64),
) -> Result<Home, Home> {
    match current {
        None => Ok(Home { region: to.to_string(), epoch: 1, since_ms: now_ms }),
        Some(home) if home.region == to => Err(home.clone()),
        Some(home) => Ok(Home {
            region: to.to_string(),
            epoch: home.epoch + 1,
            since_ms: now_ms.saturating_add(ttl_ms).saturating_add(skew_ms),
        }),
    }
}

/// A producer's view of a home: usable until `valid_until_ms`, after which it must be read
/// again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub home: Home,
    pub valid_until_ms: i64,
}

impl Seen {
    /// The view of a read sent at `asked_ms`: usable for two thirds of the ttl; the last
    /// third is for the writes routed by it to be flushed (a producer flushes at least every
    /// third of the ttl), so they are all durable before a move's new home takes writes.
    pub fn new(home: Home, asked_ms: i64, ttl_ms: i64) -> Seen {
        Seen { home, valid_until_ms: asked_ms.saturating_add(ttl_ms / 3 * 2) }
    }
}

// A home is kept in a lease row: its region as the holder, and its `since_ms` in the row's time.
fn to_row(home: &Home) -> Lease {
    Lease { holder: home.region.clone(), epoch: home.epoch, expires_ms: home.since_ms }
}

fn of_row(row: Lease) -> Home {
    Home { region: row.holder, epoch: row.epoch, since_ms: row.expires_ms }
}

/// A document's home, if it has one.
pub async fn read(store: &impl LeaseStore, job: &str, doc_id: &str) -> Result<Option<Home>, LeaseError> {
    Ok(store.read(&doc_scope(job, doc_id)).await?.map(of_row))
}

/// The document's home, placing it in `first` (from now on) if it has none yet.
pub async fn place(
    store: &impl LeaseStore,
    job: &str,
    doc_id: &str,
    first: &str,
    now_ms: i64,
) -> Result<Home, LeaseError> {
    let scope = doc_scope(job, doc_id);
    if let Some(row) = store.read(&scope).await? {
        return Ok(of_row(row));
    }
    let home = Home { region: first.to_string(), epoch: 1, since_ms: now_ms };
    match store.replace(&scope, None, &to_row(&home)).await? {
        Replaced::Written => Ok(home),
        Replaced::Conflict(Some(row)) => Ok(of_row(row)),
        Replaced::Conflict(None) => Err(LeaseError::Refused(format!("the home row {scope} vanished"))),
    }
}

/// What `move_doc` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Moved {
    /// The new home (it takes writes from `since_ms`) and the old one, if any.
    To { home: Home, from: Option<Home> },
    /// The document already lives there.
    Already(Home),
}

/// Moves a document's home to `to` (read, `decide_move`, compare-and-set; a lost race is
/// decided again on what won).
pub async fn move_doc(
    store: &impl LeaseStore,
    job: &str,
    doc_id: &str,
    to: &str,
    times: (i64, i64, i64),
) -> Result<Moved, LeaseError> {
    let scope = doc_scope(job, doc_id);
    let mut current = store.read(&scope).await?.map(of_row);
    for _ in 0..8 {
        let home = match decide_move(current.as_ref(), to, times) {
            Ok(home) => home,
            Err(home) => return Ok(Moved::Already(home)),
        };
        let expected = current.as_ref().map(to_row);
        match store.replace(&scope, expected.as_ref(), &to_row(&home)).await? {
            Replaced::Written => return Ok(Moved::To { home, from: current }),
            Replaced::Conflict(now) => current = now.map(of_row),
        }
    }
    Err(LeaseError::Unavailable(format!("the home row {scope} kept changing; try again")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_waits_out_every_view_of_the_old_home() {
        let old = Home { region: "a".into(), epoch: 3, since_ms: 100 };
        let moved = decide_move(Some(&old), "b", (1_000, 600, 100)).expect("moves");
        assert_eq!(moved, Home { region: "b".into(), epoch: 4, since_ms: 1_700 });
        assert_eq!(decide_move(Some(&moved), "b", (1_200, 600, 100)), Err(moved.clone()));
        let first = decide_move(None, "c", (5, 600, 100)).expect("places");
        assert_eq!(first, Home { region: "c".into(), epoch: 1, since_ms: 5 });
    }

    #[test]
    fn the_first_home_follows_the_rules_then_the_writer_inside_residency() {
        let rules = [HomeRule { prefix: "eu/".into(), region: "eu".into() }];
        let residency = [Residency { prefix: "ap/".into(), regions: vec!["ap".into(), "eu".into()] }];
        assert_eq!(first_home(&rules, &residency, "eu/x", "us"), "eu");
        assert_eq!(first_home(&rules, &residency, "x", "us"), "us");
        assert_eq!(first_home(&rules, &residency, "ap/x", "us"), "ap");
        assert_eq!(first_home(&rules, &residency, "ap/x", "eu"), "eu");
    }
}
