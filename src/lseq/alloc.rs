//! Allocation of new identifiers between two neighbours: base doubling, boundary 10,
//! boundary+ or boundary− per depth chosen by a hash of (document seed, depth).

use super::ident::{Ident, Level, MAX_DEPTH, SiteId, base};

/// Largest distance from the chosen neighbour at which a new digit is placed.
pub const BOUNDARY: u64 = 10;

/// Where a level's new digits are placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Just after the left neighbour: appending leaves room to the right.
    BoundaryPlus,
    /// Just before the right neighbour: prepending leaves room to the left.
    BoundaryMinus,
}

/// The strategy of `depth` for a document: every replica of the document agrees on it.
pub fn strategy(doc_seed: u64, depth: usize) -> Strategy {
    if splitmix64(doc_seed ^ (depth as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) & 1 == 0 {
        Strategy::BoundaryPlus
    } else {
        Strategy::BoundaryMinus
    }
}

/// The SplitMix64 finaliser: a fast, well-mixed hash of a `u64`.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A small deterministic random source for digit offsets (seeded per replica).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A number in `1..=n` (`n ≥ 1`).
    pub fn one_to(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(1);
        1 + splitmix64(self.0) % n
    }
}

/// Allocation needs a level deeper than [`MAX_DEPTH`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no identifier of depth <= {MAX_DEPTH} fits between the neighbours (max_ident_depth)")]
pub struct DepthExhausted;

/// A run of consecutive identifiers: `start` and the `len - 1` members after it
/// (same prefix, last digit and counter increasing by one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub start: Ident,
    pub len: u64,
}

/// Allocates up to `want` consecutive identifiers strictly between `p` and `q`
/// (`p` empty = document start, `q` `None` = document end), at the shallowest depth with
/// room. The run's characters get counters `counter..counter + len`.
pub fn allocate(
    p: &[Level],
    q: Option<&[Level]>,
    want: u64,
    (site, counter): (SiteId, u64),
    doc_seed: u64,
    rng: &mut Rng,
) -> Result<Allocation, DepthExhausted> {
    debug_assert!(want >= 1);
    let q = q.unwrap_or(&[]);
    let mut levels = Vec::with_capacity(p.len().max(q.len()) + 1);
    // `tight_p`: the levels so far equal p's; `tight_q`: they equal q's.
    let (mut tight_p, mut tight_q) = (true, !q.is_empty());
    for depth in 0..MAX_DEPTH {
        let on_p = tight_p && depth < p.len();
        let low = if on_p { p[depth].digit } else { 0 };
        let high = if tight_q { q[depth].digit } else { base(depth) };
        let room = high.saturating_sub(low + 1);
        if room > 0 {
            let len = want.min(room);
            let offset = rng.one_to(BOUNDARY.min(room - len + 1));
            let digit = match strategy(doc_seed, depth) {
                Strategy::BoundaryPlus => low + offset,
                Strategy::BoundaryMinus => high - offset - (len - 1),
            };
            levels.push(Level { digit, site, counter });
            return Ok(Allocation { start: Ident(levels), len });
        }
        let level = if on_p {
            p[depth]
        } else if q[depth].digit > 0 {
            // A padding level of our own just below q's: from here on nothing bounds us.
            Level { digit: q[depth].digit - 1, site, counter }
        } else {
            q[depth]
        };
        tight_p = on_p;
        tight_q = tight_q && q[depth] == level;
        levels.push(level);
    }
    Err(DepthExhausted)
}

/// The allocation seed of a document: a stable hash of its id (FNV-1a, then mixed), so
/// every replica of the document picks the same strategy per depth.
pub fn doc_seed(doc_id: &str) -> u64 {
    let fnv = doc_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    splitmix64(fnv)
}
