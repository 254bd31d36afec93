//! The exact-match flow cache in front of ACL classification.
//!
//! Keyed by (tenant, direction, the packet's key masked to the fields the tenant's rules look
//! at), holding the ACL verdict. An 8-way set-associative table of fixed size, allocated once:
//! no allocation, no rehash on the packet path. Each set has a line of 32-bit signatures
//! (hash bits) beside the slots, so a lookup reads one signature line and then only the slot
//! whose signature matches; [`FlowCache::touch`] and [`FlowCache::touch_slot`] let the
//! pipeline issue those reads for a whole batch before it needs them (with 100 000 flows the
//! table is larger than the L2 cache, and waiting for each read in turn cost more than
//! classifying: PERF(flow-cache) in docs/PERFORMANCE.md). Entries carry the snapshot generation they
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

const WAYS: usize = 8;

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
    /// Signature of each slot (0: never written), `WAYS` per set.
    sigs: Vec<u32>,
    size: usize,
    set_mask: usize,
    generation: u32,
    per_tenant: Vec<u32>,
    share: u32,
    tick: u32,
    /// Events.
    pub stats: CacheStats,
}

/// The hash of a flow (for the `*_hashed` calls). Each word is multiplied by its own odd
/// constant independently of the others, so the multiplies run in parallel instead of as one
/// dependent chain (the chained fold cost about 20 ns per packet here), then one mixing step.
#[inline]
pub fn hash(t: TenantId, dir: Direction, k: &Key) -> u64 {
    const K: [u64; 9] = [
        0x9e37_79b9_7f4a_7c15,
        0xc2b2_ae3d_27d4_eb4f,
        0x1656_67b1_9e37_79f9,
        0x85eb_ca77_c2b2_ae63,
        0x27d4_eb2f_1656_67c5,
        0xff51_afd7_ed55_8ccd,
        0xc4ce_b9fe_1a85_ec53,
        0x94d0_49bb_1331_11eb,
        0xbf58_476d_1ce4_e5b9,
    ];
    let mut h = (u64::from(t.0) << 8 | dir as u64).wrapping_mul(K[8]);
    for (i, w) in k.iter().enumerate() {
        h ^= w.wrapping_mul(K[i]).rotate_left(i as u32 * 7);
    }
    h = (h ^ (h >> 32)).wrapping_mul(K[0]);
    h ^ (h >> 29)
}

/// Key equality without a `memcmp` call: one pass of xors folded together.
#[inline]
fn same(a: &Key, b: &Key) -> bool {
    a.iter().zip(b).fold(0u64, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FlowCache {
    /// A cache of at least `entries` entries (rounded up to a power of two, at least one set),
    /// where one tenant may hold at most `share_percent` % of them.
    pub fn new(entries: usize, share_percent: u32) -> Self {
        let n = entries.max(WAYS).next_power_of_two();
        FlowCache {
            slots: Vec::new(),
            sigs: Vec::new(),
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
            self.sigs = vec![0; self.size];
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

    /// Reads the signature line of `h`'s set and returns a word of it: a load the caller issues
    /// early (for a whole batch) so the later lookup finds the line in cache. Combine the
    /// results into something the caller keeps, so the loads are not optimised away.
    #[inline]
    pub fn touch(&self, h: u64) -> u32 {
        self.sigs.get(self.set(h)).copied().unwrap_or(0)
    }

    /// The ways of the set at `base` whose signature is `sg`, as a bit mask (branch-free: the
    /// way a flow sits in is random, and a mispredicted early exit would flush the loads the
    /// batch has in flight).
    #[inline]
    fn matches(&self, base: usize, sg: u32) -> u32 {
        match self.sigs.get(base..base + WAYS) {
            Some(sigs) => sigs.iter().enumerate().fold(0, |m, (w, &s)| m | u32::from(s == sg) << w),
            None => 0,
        }
    }

    /// Reads the first slot of `h`'s set whose signature matches (after [`FlowCache::touch`]).
    #[inline]
    pub fn touch_slot(&self, h: u64) -> u32 {
        let base = self.set(h);
        let w = (self.matches(base, sig(h)).trailing_zeros() as usize).min(WAYS - 1);
        self.slots.get(base + w).map_or(0, |s| s.generation)
    }

    /// The cached verdict for a flow.
    #[inline]
    pub fn get(&mut self, t: TenantId, dir: Direction, key: &Key) -> Option<AclVerdict> {
        self.get_hashed(hash(t, dir, key), t, dir, key)
    }

    /// [`FlowCache::get`] with the flow's [`hash`] already computed.
    #[inline]
    pub fn get_hashed(
        &mut self,
        h: u64,
        t: TenantId,
        dir: Direction,
        key: &Key,
    ) -> Option<AclVerdict> {
        if self.slots.is_empty() {
            return None;
        }
        let base = self.set(h);
        let mut ways = self.matches(base, sig(h));
        self.tick = self.tick.wrapping_add(1);
        while ways != 0 {
            let w = ways.trailing_zeros() as usize;
            ways &= ways - 1;
            let s = &mut self.slots[base + w];
            if s.generation == self.generation
                && s.tenant == t.0
                && s.dir == dir as u8
                && same(&s.key, key)
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
        self.put_hashed(hash(t, dir, key), t, dir, key, verdict)
    }

    /// [`FlowCache::put`] with the flow's [`hash`] already computed.
    #[inline]
    pub fn put_hashed(
        &mut self,
        h: u64,
        t: TenantId,
        dir: Direction,
        key: &Key,
        verdict: AclVerdict,
    ) {
        let Some(&held) = self.per_tenant.get(t.index()) else { return };
        if self.slots.is_empty() {
            return;
        }
        let base = self.set(h);
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
        self.sigs[base + i] = sig(h);
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

/// The signature of a hash: bits the set index does not use; never 0 (an empty slot).
#[inline]
fn sig(h: u64) -> u32 {
    (h >> 32) as u32 | 1
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
        // One set of eight ways.
        let mut c = FlowCache::new(8, 100);
        c.install(1, true);
        let t = TenantId(0);
        for i in 0..8 {
            c.put(t, Direction::FromTenant, &key(i), ALLOW);
        }
        for i in [0, 2, 3, 4, 5, 6, 7] {
            assert!(c.get(t, Direction::FromTenant, &key(i)).is_some());
        }
        c.put(t, Direction::FromTenant, &key(9), ALLOW);
        assert!(c.get(t, Direction::FromTenant, &key(1)).is_none(), "key 1 was the LRU");
        assert!(c.get(t, Direction::FromTenant, &key(0)).is_some());
        assert_eq!(c.len(), 8);
        // The touch calls read what a lookup would.
        let h = hash(t, Direction::FromTenant, &key(9));
        assert_ne!(c.touch(h), 0);
        assert_eq!(c.touch_slot(h), c.generation);
    }
}
