//! The exact-match flow cache in front of ACL classification.
//!
//! Keyed by (tenant, direction, the packet's key masked to the fields the tenant's rules look
//! at), holding the ACL verdict. A 4-way set-associative table of fixed size, allocated once:
//! no allocation, no rehash on the packet path. Entries carry the snapshot generation they
//! were computed under; after a rule change ([`FlowCache::install`]) every older entry is a
//! miss and a free slot, without a sweep.
//!
//! Fairness: a tenant holds at most `share` entries. Below its share a new flow may evict the
//! least recently used entry of its set, whoever owns it; at its share it may only replace one
//! of its own, so a tenant opening flows as fast as it can cannot push out more than `share`
//! of everybody else's entries.
//!
//! The hash is a multiply-rotate fold over the key words, written here rather than taken from
//! a crate because it runs once per packet on 9 words and needs no DoS resistance: colliding
//! flows only compete within one set, bounded by the tenant's share.

use super::Direction;
use super::acl::AclVerdict;
use super::classifier::Key;
use crate::snapshot::TenantId;

const WAYS: usize = 4;

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: Key,
    generation: u32,
    tenant: u16,
    dir: u8,
    verdict: AclVerdict,
    used: u32,
}

const EMPTY: Slot = Slot {
    key: [0; 8],
    generation: 0,
    tenant: 0,
    dir: 0,
    verdict: AclVerdict { action: super::Action::Allow, rule: None },
    used: 0,
};

/// Cache events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found a verdict.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Entries written.
    pub inserts: u64,
    /// Live entries replaced by another flow.
    pub evictions: u64,
    /// New flows not cached because their tenant was at its share with no own entry in the set.
    pub refused: u64,
}

/// One worker's flow cache.
#[derive(Debug)]
pub struct FlowCache {
    /// Empty until some tenant has rules (then allocated once, at its full size).
    slots: Vec<Slot>,
    size: usize,
    set_mask: usize,
    generation: u32,
    per_tenant: Vec<u32>,
    share: u32,
    tick: u32,
    /// Events.
    pub stats: CacheStats,
}

#[inline]
fn hash(t: TenantId, dir: Direction, k: &Key) -> u64 {
    const M: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = (u64::from(t.0) << 8 | dir as u64).wrapping_mul(M);
    for w in k {
        h = (h.rotate_left(23) ^ w).wrapping_mul(M);
    }
    h ^ (h >> 29)
}

impl FlowCache {
    /// A cache of at least `entries` entries (rounded up to a power of two, at least one set),
    /// where one tenant may hold at most `share_percent` % of them.
    pub fn new(entries: usize, share_percent: u32) -> Self {
        let n = entries.max(WAYS).next_power_of_two();
        FlowCache {
            slots: Vec::new(),
            size: n,
            set_mask: n / WAYS - 1,
            // Generation 0 marks never-written slots.
            generation: 1,
            per_tenant: Vec::new(),
            share: ((n as u64 * u64::from(share_percent.clamp(1, 100))) / 100).max(1) as u32,
            tick: 0,
            stats: CacheStats::default(),
        }
    }

    /// Forgets every entry (lazily) and sizes the per-tenant counts; call when the rules change.
    /// `needed`: some tenant has rules (the table is allocated the first time it is).
    pub fn install(&mut self, tenants: usize, needed: bool) {
        if needed && self.slots.is_empty() {
            self.slots = vec![EMPTY; self.size];
        }
        self.generation = self.generation.wrapping_add(1).max(1);
        self.per_tenant.clear();
        self.per_tenant.resize(tenants, 0);
    }

    /// Entries one tenant may hold.
    pub fn share(&self) -> u32 {
        self.share
    }

    /// Live entries of a tenant.
    pub fn entries_of(&self, t: TenantId) -> u32 {
        self.per_tenant.get(t.index()).copied().unwrap_or(0)
    }

    /// Live entries in all.
    pub fn len(&self) -> u32 {
        self.per_tenant.iter().sum()
    }

    /// True when no entry is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn set(&self, h: u64) -> usize {
        (h as usize & self.set_mask) * WAYS
    }

    /// The cached verdict for a flow.
    #[inline]
    pub fn get(&mut self, t: TenantId, dir: Direction, key: &Key) -> Option<AclVerdict> {
        if self.slots.is_empty() {
            return None;
        }
        let base = self.set(hash(t, dir, key));
        self.tick = self.tick.wrapping_add(1);
        for s in &mut self.slots[base..base + WAYS] {
            if s.generation == self.generation
                && s.tenant == t.0
                && s.dir == dir as u8
                && s.key == *key
            {
                s.used = self.tick;
                self.stats.hits += 1;
                return Some(s.verdict);
            }
        }
        self.stats.misses += 1;
        None
    }

    /// Caches a verdict (after a miss).
    #[inline]
    pub fn put(&mut self, t: TenantId, dir: Direction, key: &Key, verdict: AclVerdict) {
        let Some(&held) = self.per_tenant.get(t.index()) else { return };
        if self.slots.is_empty() {
            return;
        }
        let base = self.set(hash(t, dir, key));
        let gen_now = self.generation;
        let set = &self.slots[base..base + WAYS];
        let free = set.iter().position(|s| s.generation != gen_now);
        let victim = match free {
            Some(i) if held < self.share => Some(i),
            _ if held < self.share => lru(set, |_| true),
            // At its share: only one of its own entries may go.
            _ => lru(set, |s| s.generation == gen_now && s.tenant == t.0),
        };
        let Some(i) = victim else {
            self.stats.refused += 1;
            return;
        };
        let old = self.slots[base + i];
        if old.generation == gen_now {
            self.stats.evictions += 1;
            if let Some(c) = self.per_tenant.get_mut(usize::from(old.tenant)) {
                *c -= 1;
            }
        }
        self.per_tenant[t.index()] += 1;
        self.stats.inserts += 1;
        self.slots[base + i] = Slot {
            key: *key,
            generation: gen_now,
            tenant: t.0,
            dir: dir as u8,
            verdict,
            used: self.tick,
        };
    }
}

/// The least recently used slot among those `eligible`.
#[inline]
fn lru(set: &[Slot], eligible: impl Fn(&Slot) -> bool) -> Option<usize> {
    set.iter().enumerate().filter(|(_, s)| eligible(s)).min_by_key(|(_, s)| s.used).map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Action;

    const ALLOW: AclVerdict = AclVerdict { action: Action::Allow, rule: Some(1) };
    const DENY: AclVerdict = AclVerdict { action: Action::Deny, rule: None };

    fn key(i: u64) -> Key {
        [i, 0, 0, 0, 0, 0, 0, i * 7]
    }

    #[test]
    fn hits_after_put_and_misses_after_a_rules_change() {
        let mut c = FlowCache::new(64, 100);
        c.install(2, true);
        let (a, b) = (TenantId(0), TenantId(1));
        assert_eq!(c.get(a, Direction::FromTenant, &key(1)), None);
        c.put(a, Direction::FromTenant, &key(1), ALLOW);
        assert_eq!(c.get(a, Direction::FromTenant, &key(1)), Some(ALLOW));
        // Another direction or tenant is another entry.
        assert_eq!(c.get(a, Direction::ToTenant, &key(1)), None);
        assert_eq!(c.get(b, Direction::FromTenant, &key(1)), None);
        c.put(b, Direction::FromTenant, &key(1), DENY);
        assert_eq!(c.get(b, Direction::FromTenant, &key(1)), Some(DENY));
        assert_eq!(c.len(), 2);
        // New rules: everything cached before is gone.
        c.install(2, true);
        assert_eq!(c.get(a, Direction::FromTenant, &key(1)), None);
        assert_eq!(c.len(), 0);
        assert_eq!(c.stats.hits, 2);
    }

    #[test]
    fn a_flooding_tenant_keeps_to_its_share() {
        let mut c = FlowCache::new(1024, 25);
        c.install(2, true);
        let (quiet, loud) = (TenantId(0), TenantId(1));
        for i in 0..200 {
            c.put(quiet, Direction::FromTenant, &key(i), ALLOW);
        }
        let quiet_held = c.entries_of(quiet);
        assert!(quiet_held >= 190, "{quiet_held}");
        for i in 0..100_000 {
            c.put(loud, Direction::FromTenant, &key(1_000_000 + i), ALLOW);
        }
        assert_eq!(c.entries_of(loud), c.share());
        assert_eq!(c.share(), 256);
        // The loud tenant evicted at most its share of the quiet one's entries.
        let kept =
            (0..200).filter(|&i| c.get(quiet, Direction::FromTenant, &key(i)).is_some()).count();
        assert!(kept as u32 + c.share() >= quiet_held, "kept {kept} of {quiet_held}");
        assert!(kept >= 100, "kept {kept}");
        assert!(c.stats.refused > 0);
    }

    #[test]
    fn least_recently_used_goes_first() {
        // One set of four ways.
        let mut c = FlowCache::new(4, 100);
        c.install(1, true);
        let t = TenantId(0);
        for i in 0..4 {
            c.put(t, Direction::FromTenant, &key(i), ALLOW);
        }
        for i in [0, 2, 3] {
            assert!(c.get(t, Direction::FromTenant, &key(i)).is_some());
        }
        c.put(t, Direction::FromTenant, &key(9), ALLOW);
        assert!(c.get(t, Direction::FromTenant, &key(1)).is_none(), "key 1 was the LRU");
        assert!(c.get(t, Direction::FromTenant, &key(0)).is_some());
        assert_eq!(c.len(), 4);
    }
}
