//! Tuple-space search: one hash table per distinct mask, searched in priority order.
//!
//! A rule is a (value, mask) pair over the 8-word [`Key`]; rules with the same mask share one
//! table keyed by `key & mask`. A lookup masks the packet's key once per table and probes it;
//! tables are kept sorted by the best (lowest) priority they hold, so the search stops as soon
//! as no remaining table can beat the match in hand. The cost grows with the number of distinct
//! masks, not with the number of rules: 10 000 rules over a handful of masks are a handful of
//! probes (PERF(classifier) in docs/PERFORMANCE.md).
//!
//! Port ranges are not masks; [`range_prefixes`] turns a range into the few (value, mask)
//! pairs that cover it exactly, and a rule is inserted once per pair.

use std::collections::HashMap;

/// A packet's classification fields, packed (see [`super::acl::key_of`] for the layout).
pub type Key = [u64; 8];

/// The rule that matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// Index of the rule in its set.
    pub rule: u32,
    /// Its priority (lower is evaluated first).
    pub priority: u32,
}

impl Hit {
    /// True when `self` takes precedence over `o`: lower priority number, then earlier rule.
    #[inline]
    fn beats(&self, o: &Hit) -> bool {
        (self.priority, self.rule) < (o.priority, o.rule)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Subtable {
    mask: Key,
    /// The best (lowest) priority in this table.
    best: u32,
    map: HashMap<Key, Hit, ahash::RandomState>,
}

/// Rules by mask.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Classifier {
    tables: Vec<Subtable>,
    rules: usize,
}

#[inline]
fn masked(k: &Key, m: &Key) -> Key {
    [
        k[0] & m[0],
        k[1] & m[1],
        k[2] & m[2],
        k[3] & m[3],
        k[4] & m[4],
        k[5] & m[5],
        k[6] & m[6],
        k[7] & m[7],
    ]
}

impl Classifier {
    /// Adds one (value, mask) entry of a rule. Compile time only.
    pub fn insert(&mut self, value: Key, mask: Key, hit: Hit) {
        let v = masked(&value, &mask);
        let i = match self.tables.iter().position(|t| t.mask == mask) {
            Some(i) => i,
            None => {
                // A fixed seed: the same rules always build the same tables (snapshots compare
                // equal), and rule sets come from the operator, not from the traffic.
                let hasher = ahash::RandomState::with_seeds(1, 2, 3, 4);
                self.tables.push(Subtable {
                    mask,
                    best: hit.priority,
                    map: HashMap::with_hasher(hasher),
                });
                self.tables.len() - 1
            }
        };
        let t = &mut self.tables[i];
        t.best = t.best.min(hit.priority);
        match t.map.get_mut(&v) {
            Some(old) if hit.beats(old) => *old = hit,
            Some(_) => {}
            None => {
                t.map.insert(v, hit);
            }
        }
        self.rules += 1;
        self.tables.sort_by_key(|t| t.best);
    }

    /// The best rule matching `key`.
    #[inline]
    pub fn lookup(&self, key: &Key) -> Option<Hit> {
        let mut best: Option<Hit> = None;
        for t in &self.tables {
            if let Some(b) = best
                && t.best > b.priority
            {
                break;
            }
            if let Some(h) = t.map.get(&masked(key, &t.mask))
                && best.is_none_or(|b| h.beats(&b))
            {
                best = Some(*h);
            }
        }
        best
    }

    /// Distinct masks (tables).
    pub fn tables(&self) -> usize {
        self.tables.len()
    }

    /// Entries inserted (a rule with port ranges counts once per covering prefix).
    pub fn entries(&self) -> usize {
        self.rules
    }

    /// True when no rule is present.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// The union of every mask: the fields some rule looks at.
    pub fn used_fields(&self) -> Key {
        let mut u = [0u64; 8];
        for t in &self.tables {
            for (a, b) in u.iter_mut().zip(t.mask) {
                *a |= b;
            }
        }
        u
    }
}

/// The (value, mask) pairs, prefixes of a 16-bit field, that cover `lo..=hi` exactly.
pub fn range_prefixes(lo: u16, hi: u16) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    while lo <= hi {
        // The largest aligned block starting at `lo` that stays inside the range.
        let mut size = if lo == 0 { 1 << 16 } else { 1u32 << lo.trailing_zeros() };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, !((size - 1) as u16)));
        lo += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(w0: u64, w7: u64) -> Key {
        [w0, 0, 0, 0, 0, 0, 0, w7]
    }

    #[test]
    fn ranges_are_covered_exactly() {
        for (lo, hi) in [(0, 65535), (80, 80), (1000, 2000), (1, 65534), (1024, 65535), (0, 0)] {
            let ps = range_prefixes(lo, hi);
            for v in 0..=65535u16 {
                let n = ps.iter().filter(|(pv, m)| v & m == *pv).count();
                assert_eq!(n, usize::from((lo..=hi).contains(&v)), "{lo}-{hi}: {v}");
            }
            assert!(ps.len() <= 30, "{lo}-{hi}: {} prefixes", ps.len());
        }
        assert_eq!(range_prefixes(0, 65535), vec![(0, 0)]);
    }

    #[test]
    fn lowest_priority_number_wins_across_tables() {
        let mut c = Classifier::default();
        let exact = [u64::MAX, 0, 0, 0, 0, 0, 0, 0xffff];
        let w0_only = [u64::MAX, 0, 0, 0, 0, 0, 0, 0];
        c.insert(key(6, 22), exact, Hit { rule: 0, priority: 20 });
        c.insert(key(6, 0), w0_only, Hit { rule: 1, priority: 10 });
        c.insert(key(17, 53), exact, Hit { rule: 2, priority: 5 });
        assert_eq!(c.tables(), 2);
        // TCP/22 matches rules 0 and 1; rule 1 has the lower number.
        assert_eq!(c.lookup(&key(6, 22)).map(|h| h.rule), Some(1));
        assert_eq!(c.lookup(&key(17, 53)).map(|h| h.rule), Some(2));
        assert_eq!(c.lookup(&key(17, 54)), None);
        assert_eq!(c.used_fields(), exact);
    }

    #[test]
    fn equal_priorities_resolve_to_the_earlier_rule() {
        let mut c = Classifier::default();
        let m = [u64::MAX, 0, 0, 0, 0, 0, 0, 0];
        c.insert(key(1, 0), m, Hit { rule: 3, priority: 7 });
        c.insert(key(1, 0), m, Hit { rule: 2, priority: 7 });
        assert_eq!(c.lookup(&key(1, 0)).map(|h| h.rule), Some(2));
    }
}
