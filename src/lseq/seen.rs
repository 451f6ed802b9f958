//! Which character counters of each site a document has seen: the dedupe set that makes
//! inserts idempotent, kept as sorted ranges (editing sessions count up, so one site's
//! counters collapse into a few ranges).

use rustc_hash::FxHashMap;

use super::ident::SiteId;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeenCounters {
    sites: FxHashMap<SiteId, Ranges>,
}

/// Sorted, disjoint, non-adjacent half-open ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Ranges(Vec<(u64, u64)>);

impl SeenCounters {
    pub fn contains(&self, site: SiteId, counter: u64) -> bool {
        self.sites.get(&site).is_some_and(|r| r.contains(counter))
    }

    /// Records `counter`; returns false when it was already there.
    pub fn insert(&mut self, site: SiteId, counter: u64) -> bool {
        self.sites.entry(site).or_default().insert(counter)
    }

    pub fn heap_bytes(&self) -> usize {
        self.sites.capacity() * (size_of::<SiteId>() + size_of::<Ranges>() + 8)
            + self.sites.values().map(|r| r.0.capacity() * 16).sum::<usize>()
    }

    /// [`Self::heap_bytes`] at one range per site, without visiting the sites.
    pub fn estimated_bytes(&self) -> usize {
        self.sites.capacity() * (size_of::<SiteId>() + size_of::<Ranges>() + 8 + 16)
    }
}

impl Ranges {
    /// Index of the first range whose end is > counter.
    fn find(&self, counter: u64) -> usize {
        // Fast path: counters usually grow, so check the last range first.
        match self.0.last() {
            Some(&(_, end)) if counter >= end => self.0.len(),
            _ => self.0.partition_point(|&(_, end)| end <= counter),
        }
    }

    fn contains(&self, counter: u64) -> bool {
        self.0.get(self.find(counter)).is_some_and(|&(start, _)| start <= counter)
    }

    fn insert(&mut self, counter: u64) -> bool {
        let i = self.find(counter);
        if self.0.get(i).is_some_and(|&(start, _)| start <= counter) {
            return false;
        }
        let joins_left = i > 0 && self.0[i - 1].1 == counter;
        let joins_right = self.0.get(i).is_some_and(|&(start, _)| start == counter + 1);
        match (joins_left, joins_right) {
            (true, true) => {
                self.0[i - 1].1 = self.0[i].1;
                self.0.remove(i);
            }
            (true, false) => self.0[i - 1].1 = counter + 1,
            (false, true) => self.0[i].0 = counter,
            (false, false) => self.0.insert(i, (counter, counter + 1)),
        }
        true
    }
}

/// Why ranges read from storage are not valid seen counters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seen counters of site {site:016x} are not sorted, disjoint, non-empty ranges")]
pub struct BadRanges {
    pub site: SiteId,
}

impl SeenCounters {
    /// Each site with its sorted half-open counter ranges.
    pub fn sites(&self) -> impl Iterator<Item = (SiteId, &[(u64, u64)])> {
        self.sites.iter().map(|(&site, ranges)| (site, ranges.0.as_slice()))
    }

    /// Adds a site's ranges as [`SeenCounters::sites`] gives them (checked).
    pub fn add_site(&mut self, site: SiteId, ranges: Vec<(u64, u64)>) -> Result<(), BadRanges> {
        let ordered = ranges.iter().all(|&(start, end)| start < end)
            && ranges.windows(2).all(|pair| pair[0].1 < pair[1].0);
        if !ordered || ranges.is_empty() || self.sites.contains_key(&site) {
            return Err(BadRanges { site });
        }
        self.sites.insert(site, Ranges(ranges));
        Ok(())
    }
}
