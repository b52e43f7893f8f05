//! A set of `u128` values kept as disjoint, merged runs `[start, end]`, so that claiming the next
//! free value costs O(log n) however long the run of claimed values before it is.
//!
//! The pools ([`crate::pool`]) keep their claims here: finding a free slot jumps over a whole
//! run of used values, or over a whole excluded prefix, in one step.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start → end (inclusive); runs never touch or overlap.
    runs: BTreeMap<u128, u128>,
    len: u128,
}

impl RangeSet {
    pub fn new() -> Self {
        RangeSet::default()
    }

    /// How many values the set holds.
    pub fn len(&self) -> u128 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The run holding `v`, if any.
    pub fn run_of(&self, v: u128) -> Option<(u128, u128)> {
        self.runs
            .range(..=v)
            .next_back()
            .filter(|(_, &e)| e >= v)
            .map(|(&s, &e)| (s, e))
    }

    pub fn contains(&self, v: u128) -> bool {
        self.run_of(v).is_some()
    }

    /// The last run that overlaps `[lo, hi]`, if any.
    pub fn overlapping(&self, lo: u128, hi: u128) -> Option<(u128, u128)> {
        self.runs
            .range(..=hi)
            .next_back()
            .filter(|(_, &e)| e >= lo)
            .map(|(&s, &e)| (s, e))
    }

    /// Adds `v`; returns whether it was absent.
    pub fn insert(&mut self, v: u128) -> bool {
        if self.contains(v) {
            return false;
        }
        let mut start = v;
        let mut end = v;
        // Merge with the run ending just before v.
        if let Some(before) = v.checked_sub(1) {
            if let Some((s, _)) = self.run_of(before) {
                self.runs.remove(&s);
                start = s;
            }
        }
        // Merge with the run starting just after v.
        if let Some(after) = v.checked_add(1) {
            if let Some(e) = self.runs.remove(&after) {
                end = e;
            }
        }
        self.runs.insert(start, end);
        self.len += 1;
        true
    }

    /// Removes `v`; returns whether it was present.
    pub fn remove(&mut self, v: u128) -> bool {
        let Some((s, e)) = self.run_of(v) else {
            return false;
        };
        self.runs.remove(&s);
        if s < v {
            self.runs.insert(s, v - 1);
        }
        if v < e {
            self.runs.insert(v + 1, e);
        }
        self.len -= 1;
        true
    }

    /// Merged runs from arbitrary (possibly overlapping, unsorted) inclusive intervals.
    pub fn from_intervals(mut v: Vec<(u128, u128)>) -> RangeSet {
        v.retain(|(a, b)| a <= b);
        v.sort_unstable();
        let mut out = RangeSet::new();
        let mut cur: Option<(u128, u128)> = None;
        for (a, b) in v {
            cur = match cur {
                Some((s, e)) if a <= e.saturating_add(1) => Some((s, e.max(b))),
                Some((s, e)) => {
                    out.runs.insert(s, e);
                    out.len = out.len.saturating_add(e - s + 1);
                    Some((a, b))
                }
                None => Some((a, b)),
            };
        }
        if let Some((s, e)) = cur {
            out.runs.insert(s, e);
            out.len = out.len.saturating_add(e - s + 1);
        }
        out
    }
}

/// The first slot `first + k*step` (k ≥ 0) at or after `from` and at most `last` whose `width`
/// values `[slot, slot + width - 1]` are all outside every set of `blocked`. Each step jumps past
/// a whole blocking run, so the cost is O(runs crossed × log n), not O(values crossed).
pub fn next_free(
    blocked: &[&RangeSet],
    first: u128,
    last: u128,
    step: u128,
    width: u128,
    from: u128,
) -> Option<u128> {
    let align = |v: u128| -> Option<u128> {
        if v <= first {
            return Some(first);
        }
        let k = (v - first).div_ceil(step);
        k.checked_mul(step)?.checked_add(first)
    };
    let mut c = align(from)?;
    'search: loop {
        if c > last {
            return None;
        }
        let hi = c.checked_add(width - 1)?;
        for set in blocked {
            if let Some((_, e)) = set.overlapping(c, hi) {
                c = align(e.checked_add(1)?)?;
                continue 'search;
            }
        }
        return Some(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Behaves like a BTreeSet, runs stay merged, and `next_free` agrees with a scan.
        #[test]
        fn like_a_set(ops in proptest::collection::vec((0u128..64, any::<bool>()), 0..200),
                      step in 1u128..4, width in 1u128..3, from in 0u128..70) {
            let mut ours = RangeSet::new();
            let mut reference = std::collections::BTreeSet::new();
            for (v, add) in ops {
                if add {
                    prop_assert_eq!(ours.insert(v), reference.insert(v));
                } else {
                    prop_assert_eq!(ours.remove(v), reference.remove(&v));
                }
                prop_assert_eq!(ours.len(), reference.len() as u128);
            }
            let mut prev_end: Option<u128> = None;
            for (&s, &e) in &ours.runs {
                prop_assert!(s <= e);
                if let Some(p) = prev_end { prop_assert!(s > p + 1, "runs touch"); }
                prev_end = Some(e);
            }
            let scan = (0..=63u128)
                .filter(|c| c % step == 0 && *c >= from)
                .find(|c| (*c..c + width).all(|x| !reference.contains(&x)));
            let got = next_free(&[&ours], 0, 63, step, width, from);
            prop_assert_eq!(got, scan);
        }
    }

    #[test]
    fn intervals_merge() {
        let s = RangeSet::from_intervals(vec![(5, 9), (0, 2), (3, 4), (20, 30), (25, 26)]);
        assert_eq!(s.runs.len(), 2);
        assert_eq!(s.len(), 10 + 11);
        assert_eq!(next_free(&[&s], 0, 100, 1, 1, 0), Some(10));
        assert_eq!(next_free(&[&s], 0, 100, 2, 2, 18), Some(18));
        assert_eq!(next_free(&[&s], 0, 100, 2, 2, 19), Some(32));
    }
}
