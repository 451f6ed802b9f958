//! The leadership lease: (holder region, epoch, expiry) per scope, kept in a strongly
//! consistent store that every region reaches. Backends only read and compare-and-set one
//! row ([`LeaseStore`]); every decision (may this region take the lease, renew it, force
//! it, release it) is here, pure, so the runtime and the simulator make the same ones.
//!
//! Invariants: the epoch only grows; it grows on every change of holder, so no two regions
//! ever hold one epoch; a region takes a lease from another only after it expired by more
//! than the clock-skew bound (or by force, which also bumps the epoch).

use std::future::Future;

/// A lease as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub epoch: u64,
    /// Milliseconds since the Unix epoch, by the holder's clock when it wrote it.
    pub expires_ms: i64,
}

impl Lease {
    /// Whether another region may take it at `now_ms`, allowing `skew_ms` of clock
    /// difference between regions.
    pub fn is_free(&self, now_ms: i64, skew_ms: i64) -> bool {
        self.expires_ms.saturating_add(skew_ms) < now_ms
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The store did not answer (unreachable, timed out, throttled): the caller keeps its
    /// role until its own lease runs out.
    #[error("lease store unavailable: {0}")]
    Unavailable(String),
    /// The store refused (no table, no permission, bad data): a setting to fix.
    #[error("lease store: {0}")]
    Refused(String),
}

/// One lease row per scope, read and conditionally replaced. Both operations are
/// linearizable in a conforming backend (a transaction, a conditional write).
pub trait LeaseStore: Send + Sync {
    fn read(&self, scope: &str) -> impl Future<Output = Result<Option<Lease>, LeaseError>> + Send;
    /// Writes `new` if the stored lease is still `expected` (`None`: there is none); else
    /// returns the lease that is there instead.
    fn replace(
        &self,
        scope: &str,
        expected: Option<&Lease>,
        new: &Lease,
    ) -> impl Future<Output = Result<Replaced, LeaseError>> + Send;
}

/// What a compare-and-set found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replaced {
    Written,
    /// Someone else wrote first: this is the lease now (`None`: it was deleted).
    Conflict(Option<Lease>),
}

/// What a region asks of the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Take it if it is free (or already ours), or renew it.
    Acquire,
    /// Renew our lease at `epoch`; refused if it is no longer ours at that epoch.
    Renew { epoch: u64 },
    /// Take it whatever its state (an operator's forced promotion): epoch + 1 at once, so
    /// the old holder's renewals are refused; from a holder whose lease still runs it is a
    /// hand-over: the lease runs until the old one would have ended + the skew bound, and
    /// only then may the new holder take it up (a new term), so the two never overlap.
    Force,
    /// Give up our lease at `epoch` (a planned demotion): it expires now.
    Release { epoch: u64 },
}

/// The outcome of a claim, as the role machine sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// We hold this lease (acquired, renewed, forced).
    Ours(Lease),
    /// Another region holds it, or we no longer hold it at the epoch we asked for; the
    /// lease as it is (`None`: there is none).
    Theirs(Option<Lease>),
    /// Released: nobody holds it now.
    Released,
}

/// The lease `claim` would write over `current`, or the answer without a write.
pub fn decide(
    current: Option<&Lease>,
    region: &str,
    claim: Claim,
    (now_ms, ttl_ms, skew_ms): (i64, i64, i64),
) -> Result<Lease, Answer> {
    let next_epoch = current.map_or(1, |l| l.epoch + 1);
    let lease = |epoch| Lease { holder: region.to_string(), epoch, expires_ms: now_ms + ttl_ms };
    match (claim, current) {
        (Claim::Force, Some(l)) if l.holder != region && !l.is_free(now_ms, 0) => Ok(Lease {
            holder: region.to_string(),
            epoch: next_epoch,
            expires_ms: l.expires_ms.saturating_add(skew_ms),
        }),
        (Claim::Force, _) => Ok(lease(next_epoch)),
        (Claim::Acquire, None) => Ok(lease(1)),
        // Ours but not held by this process (a restart, or handed over by force): a new term
        // once it has run out, never while an earlier process of ours, or the holder it was
        // taken from, may still take writes under it.
        (Claim::Acquire, Some(l)) if l.holder == region && l.is_free(now_ms, 0) => Ok(lease(next_epoch)),
        (Claim::Acquire, Some(l)) if l.holder == region => Err(Answer::Theirs(Some(l.clone()))),
        // Another holder's, expired by more than the skew bound: a new epoch.
        (Claim::Acquire, Some(l)) if l.is_free(now_ms, skew_ms) => Ok(lease(next_epoch)),
        (Claim::Acquire, Some(l)) => Err(Answer::Theirs(Some(l.clone()))),
        (Claim::Renew { epoch }, Some(l))
            if l.holder == region && l.epoch == epoch && !l.is_free(now_ms, 0) =>
        {
            Ok(lease(epoch))
        }
        (Claim::Renew { .. }, other) => Err(Answer::Theirs(other.cloned())),
        (Claim::Release { epoch }, Some(l)) if l.holder == region && l.epoch == epoch => {
            Ok(Lease { expires_ms: now_ms - skew_ms - 1, ..l.clone() })
        }
        (Claim::Release { .. }, other) => Err(Answer::Theirs(other.cloned())),
    }
}

/// Runs `claim` against `store`: read, decide, compare-and-set; a lost race is decided
/// again on what won (at most a few rounds: every round someone else made progress).
pub async fn claim(
    store: &impl LeaseStore,
    scope: &str,
    region: &str,
    claim: Claim,
    times: (i64, i64, i64),
) -> Result<Answer, LeaseError> {
    let mut current = store.read(scope).await?;
    for _ in 0..8 {
        let new = match decide(current.as_ref(), region, claim, times) {
            Ok(new) => new,
            Err(answer) => return Ok(answer),
        };
        match store.replace(scope, current.as_ref(), &new).await? {
            Replaced::Written if matches!(claim, Claim::Release { .. }) => return Ok(Answer::Released),
            Replaced::Written => return Ok(Answer::Ours(new)),
            Replaced::Conflict(now) => current = now,
        }
    }
    Ok(Answer::Theirs(current))
}
