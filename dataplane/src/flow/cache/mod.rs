//! The exact-match flow cache in front of forwarding and policy, which also counts every
//! flow's packets and bytes (flow logs, `xswitch ctl flows`).
//!
//! # What it holds
//! One entry per flow of the tenants that have policy or log their flows (the others forward
//! through the MAC table alone, which is cheaper for them). The key is everything the cached
//! decision depends on: ingress port, outer VLAN, ether type, protocol, both MACs, both
//! addresses and both ports (ICMP type and code), in seven words ([`key_of`]); TCP flags are
//! never part of it, so a connection is one flow. The entry holds
//! - the decision: where the MAC table sends the frame (port and VLAN, flood, or hairpin),
//!   which directions it crosses, and each direction's ACL verdict and deciding rule;
//! - the flow's counters since its current span began: packets, bytes, first and last frame,
//!   whether any frame was accepted, the last drop reason, and whether TCP said FIN or RST.
//!
//! A hit therefore skips the MAC learning probe, the MAC lookup and ACL classification; the
//! stage still runs the security group (stateful) and `count` rules per packet. A decision is
//! made again a quarter of the tenant's aging time after it was made, which refreshes the
//! source in the MAC table, so a host that talks keeps its entry and its announcements.
//!
//! # When a decision is stale
//! A decision is used only if it was made under the current snapshot (the cache's generation,
//! bumped by [`FlowCache::install`]) and the tenant's current MAC-table generation
//! ([`crate::flow::Fdb::generation`], which moves when one of the tenant's MACs is learned,
//! moves or ages out, or an expired one is seen again), and no later than the destination's
//! MAC entry expires (lookups ignore an expired entry at once, before the aging pass removes
//! it and moves the generation): a cached flow is forwarded exactly as the MAC table would
//! forward it. A stale entry keeps its counters; only its decision is made again. So one
//! tenant's MAC churn re-decides only that tenant's flows.
//!
//! # Layout
//! Sets of eight ways, allocated once at full size (no allocation, no rehash on the packet
//! path). Each set has a word of 8-bit signatures beside the entries (eight sets to a cache
//! line; one compare of all eight ways); an entry is two cache lines, aligned: the first holds
//! what a lookup compares (key, tenant), the second what a hit uses (decision, counters). The
//! pipeline hashes a whole batch and prefetches each set's signatures, then each candidate
//! entry, then looks up ([`FlowCache::prefetch_set`], [`FlowCache::prefetch_entry`]): with
//! 100 000 flows the table is far larger than L2 and the waits overlap (PERF(flow-cache) in
//! docs/PERFORMANCE.md).
//!
//! # Fairness
//! A tenant holds at most `share` entries. Below its share a new flow may evict the least
//! recently used entry of its set, whoever owns it; at its share only one of its own. A flow
//! that finds no room is decided without caching and its counters are not kept (counted as
//! `refused`, and as `full` in the flow-log figures when the tenant logs flows).
//!
//! # Flow logs
//! [`FlowCache::sweep`] walks the table a slice at a time between breaths (the whole table
//! every [`SWEEP_PERIOD`]) and reports, for tenants that log, flows that ended (FIN or RST,
//! then a second of quiet), went idle, or have run for a whole interval; an evicted entry is
//! reported before it is reused. Reports leave through [`FlowExport`]; one the writer cannot
//! take is counted lost, never a reason to hold a packet.
//!
//! The hash is a multiply-rotate fold over the key words, written here rather than taken from
//! a crate because it runs once per packet on 7 words and needs no DoS resistance: colliding
//! flows only compete within one set, bounded by the tenant's share.

use super::decision::NO_RULE;
pub use super::decision::{AclOutcome, Decision};
pub use super::key::{Key, hash, key_of};
use crate::mem::{HugeSlice, prefetch};
use crate::snapshot::{CHECK_FLOWLOG, Snapshot};
use crate::time::Nanos;
use crate::trace::flowlog::{FlowExport, FlowLogStats, FlowView, RecordReason};
use crate::vocab::{Disposition, DropReason, TenantId};
use crate::wire::MacAddr;

mod sweep;

const WAYS: usize = 8;
/// A TCP FIN or RST.
const FIN_RST: u8 = 0x01 | 0x04;
/// Quiet after a FIN or RST before an ended TCP flow is reported.
const ENDED_QUIET: Nanos = Nanos::from_secs(1);
/// The sweep visits every entry once per period.
pub const SWEEP_PERIOD: Nanos = Nanos::from_millis(500);

/// Key equality without a `memcmp` call: one pass of xors folded together.
#[inline]
fn same(a: &Key, b: &Key) -> bool {
    a.words().iter().zip(b.words()).fold(0u64, |acc, (x, y)| acc | (x ^ y)) == 0
}

// Counter flags.
const S_ACCEPTED: u8 = 1;
const S_CLOSING: u8 = 2;

/// One flow, two cache lines.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Entry {
    // Line 1: what a lookup compares.
    key: Key,
    /// Cache generation of the decision (0: none made).
    generation: u32,
    tenant: u16,
    occupied: bool,
    _pad: u8,
    // Line 2: what a hit uses.
    fdb_generation: u32,
    decision: Decision,
    flags: u8,
    reason: Option<DropReason>,
    /// When the decision must be made again (see the module docs).
    recheck_at: Nanos,
    packets: u64,
    bytes: u64,
    start: Nanos,
    last: Nanos,
}

const _: () = assert!(core::mem::size_of::<Entry>() == 128, "an entry is two cache lines");

const EMPTY: Entry = Entry {
    key: Key::ZERO,
    generation: 0,
    // No tenant's (there are at most `u16::MAX` of them, numbered from 0): a lookup told to
    // search every way of a set ([`ALL_WAYS`]) never takes an empty way for a flow.
    tenant: u16::MAX,
    occupied: false,
    _pad: 0,
    fdb_generation: 0,
    decision: Decision { out: Disposition::Flood, dirs: 0, rules: [NO_RULE; 2] },
    flags: 0,
    reason: None,
    recheck_at: Nanos::ZERO,
    packets: 0,
    bytes: 0,
    start: Nanos::ZERO,
    last: Nanos::ZERO,
};

/// Cache events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found a valid decision.
    pub hits: u64,
    /// Lookups that did not (no entry, or a stale decision).
    pub misses: u64,
    /// Of the misses: an entry was there, but its decision was stale.
    pub stale: u64,
    /// Entries written for new flows.
    pub inserts: u64,
    /// Live entries replaced by another flow.
    pub evictions: u64,
    /// New flows not cached because their tenant was at its share with no own entry in the set.
    pub refused: u64,
}

impl Entry {
    /// True when the decision was made under cache generation `generation` and MAC-table
    /// generation `fdb_generation`, and is not due to be made again at `now`.
    #[inline(always)]
    fn current(&self, generation: u32, fdb_generation: u32, now: Nanos) -> bool {
        self.generation == generation
            && self.fdb_generation == fdb_generation
            && now < self.recheck_at
    }

    /// Counts one frame of the flow and what became of it.
    #[inline(always)]
    fn count(&mut self, now: Nanos, len: u32, d: &Disposition, tcp_flags: u8) {
        if self.packets == 0 {
            self.start = now;
            self.bytes = 0;
            self.flags = 0;
            self.reason = None;
        }
        self.packets += 1;
        self.bytes += u64::from(len);
        self.last = now;
        match d {
            Disposition::Drop(r) => self.reason = Some(*r),
            _ => self.flags |= S_ACCEPTED,
        }
        // Only TCP frames carry flags (the parser leaves 0 for everything else).
        if tcp_flags & FIN_RST != 0 {
            self.flags |= S_CLOSING;
        }
    }

    /// The flow this entry holds, decoded from its key (the one place that reads the key's
    /// layout back).
    fn view(&self) -> FlowView {
        let k = &self.key;
        FlowView {
            tenant: TenantId(self.tenant),
            in_port: k.in_port(),
            vlan: k.vlan(),
            ethertype: k.ethertype(),
            proto: k.proto(),
            src: (k.src_addr(), k.src_port()),
            dst: (k.dst_addr(), k.dst_port()),
            packets: self.packets,
            bytes: self.bytes,
            start: self.start,
            last: self.last,
            accepted: self.flags & S_ACCEPTED != 0,
            reason: self.reason,
        }
    }
}

/// The eight ways of a set.
type Set = [Entry; WAYS];

/// The signatures of a set's ways, a byte each (way `w` in bits `8 * w..`): a lookup compares
/// all eight at once ([`ways_matching`]). Eight bits make a signature match by chance one time
/// in 255 per occupied way, which costs a key compare; a wider signature costs more to compare
/// on every lookup than it saves.
type SigLine = u64;

/// A set of ways whose signature matched ([`FlowCache::prefetch_entry`]): bit `8 * w + 7` for
/// way `w`.
pub type Ways = u64;

/// Every way of a set.
pub const ALL_WAYS: Ways = 0x8080_8080_8080_8080;

/// Where a flow sits in the cache (valid until the next insert).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(usize);

/// One worker's flow cache.
#[derive(Debug)]
pub struct FlowCache {
    /// Empty until some tenant needs it (then allocated once, at its full size, on huge pages
    /// where the kernel has them: PERF(flow-cache)).
    sets: HugeSlice<Set>,
    /// Per set, the 8-bit signature of each way (0: never written).
    sigs: HugeSlice<SigLine>,
    /// Where the table starts in the padded allocations (hot paths index those directly).
    ent0: usize,
    sig0: usize,
    size: usize,
    set_mask: usize,
    generation: u32,
    per_tenant: Vec<u32>,
    /// Per tenant: its flows are logged.
    logs: Vec<bool>,
    /// Some tenant's flows are logged.
    any_logs: bool,
    share: u32,
    share_percent: u32,
    export: Option<FlowExport>,
    cursor: usize,
    swept_at: Nanos,
    /// Events.
    pub stats: CacheStats,
}

impl FlowCache {
    /// A cache of at least `entries` entries (rounded up to a power of two, at least one set),
    /// where one tenant may hold at most `share_percent` % of them.
    pub fn new(entries: usize, share_percent: u32) -> Self {
        let n = entries.max(WAYS).next_power_of_two();
        let pct = share_percent.clamp(1, 100);
        FlowCache {
            sets: HugeSlice::default(),
            sigs: HugeSlice::default(),
            ent0: 0,
            sig0: 0,
            size: n,
            set_mask: n / WAYS - 1,
            // Generation 0 marks "no decision".
            generation: 1,
            per_tenant: Vec::new(),
            logs: Vec::new(),
            any_logs: false,
            share: ((n as u64 * u64::from(pct)) / 100).max(1) as u32,
            share_percent: pct,
            export: None,
            cursor: 0,
            swept_at: Nanos::ZERO,
            stats: CacheStats::default(),
        }
    }

    /// Adopts a snapshot: every cached decision becomes stale (counters are kept), and the
    /// table is allocated the first time some tenant needs it (`CHECK_FLOW`).
    pub fn install(&mut self, snap: &Snapshot) {
        let needed = (0..snap.tenants.len()).any(|t| snap.uses_flows(TenantId(t as u16)));
        if needed && self.sets.is_empty() {
            self.sets = HugeSlice::new(self.size / WAYS, [EMPTY; WAYS]);
            self.sigs = HugeSlice::new(self.size / WAYS, 0);
            (self.ent0, self.sig0) = (self.sets.start(), self.sigs.start());
        }
        self.generation = self.generation.wrapping_add(1).max(1);
        self.per_tenant.resize(snap.tenants.len(), 0);
        self.logs.clear();
        self.logs.extend(
            (0..snap.tenants.len()).map(|t| snap.checks(TenantId(t as u16)) & CHECK_FLOWLOG != 0),
        );
        self.any_logs = self.logs.contains(&true);
    }

    /// Reports the flows of logging tenants through `export` from now on.
    pub fn log_flows(&mut self, export: FlowExport) {
        self.export = Some(export);
    }

    /// The flow-log figures, when flows are logged.
    pub fn log_stats(&self) -> Option<FlowLogStats> {
        self.export.as_ref().map(|e| e.stats)
    }

    /// Entries one tenant may hold.
    pub fn share(&self) -> u32 {
        self.share
    }

    /// Size in entries.
    pub fn capacity(&self) -> usize {
        self.size
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

    /// The set of hash `h`.
    #[inline]
    fn set(&self, h: u64) -> usize {
        h as usize & self.set_mask
    }

    /// The entry in slot `s`.
    #[inline]
    fn entry(&self, s: Slot) -> Option<&Entry> {
        let set = self.sets.padded().get(self.ent0 + s.0 / WAYS)?;
        Some(&set[s.0 % WAYS])
    }

    /// The entry in slot `s`, to change.
    #[inline]
    fn entry_mut(&mut self, s: Slot) -> Option<&mut Entry> {
        let set = self.sets.padded_mut().get_mut(self.ent0 + s.0 / WAYS)?;
        Some(&mut set[s.0 % WAYS])
    }

    /// The signature of slot `i` (0: never written).
    #[inline]
    fn sig_at(&self, i: usize) -> u8 {
        self.sigs.get(i / WAYS).map_or(0, |l| (l >> (8 * (i % WAYS))) as u8)
    }

    /// Asks for the signature line of `h`'s set (first of the three batch passes).
    #[inline]
    pub fn prefetch_set(&self, h: u64) {
        if let Some(s) = self.sigs.padded().get(self.sig0 + self.set(h)) {
            prefetch(s);
        }
    }

    /// The ways of `set` whose signature is `sg`.
    #[inline]
    fn matches(&self, set: usize, sg: u8) -> Ways {
        self.sigs.padded().get(self.sig0 + set).map_or(0, |l| ways_matching(*l, sg))
    }

    /// Asks for both lines of the first entry whose signature matches `h` (after
    /// [`FlowCache::prefetch_set`]); returns the matching ways for [`FlowCache::find_in`].
    #[inline]
    pub fn prefetch_entry(&self, h: u64) -> Ways {
        let set = self.set(h);
        let ways = self.matches(set, sig(h));
        if ways != 0
            && let Some(s) = self.sets.padded().get(self.ent0 + set)
        {
            prefetch(&s[ways.trailing_zeros() as usize / 8 % WAYS]);
        }
        ways
    }

    /// The entry of flow `key` of tenant `t`, if cached.
    #[inline]
    pub fn find(&self, h: u64, t: TenantId, key: &Key) -> Option<Slot> {
        let ways = self.matches(self.set(h), sig(h));
        self.find_in(h, ways, t, key)
    }

    /// [`FlowCache::find`] among the ways [`FlowCache::prefetch_entry`] returned (valid until
    /// the next insert).
    #[inline]
    pub fn find_in(&self, h: u64, ways: Ways, t: TenantId, key: &Key) -> Option<Slot> {
        let set = self.set(h);
        let w = way_of(self.sets.padded().get(self.ent0 + set)?, ways, t, key)?;
        Some(Slot(set * WAYS + w))
    }

    /// The decision cached in `s`, if it is current at `now` under MAC-table generation
    /// `fdb_generation` (see the module docs); counts the lookup.
    #[inline]
    pub fn decision(
        &mut self,
        s: Option<Slot>,
        fdb_generation: u32,
        now: Nanos,
    ) -> Option<Decision> {
        let Some(e) = s.and_then(|s| self.entry(s)) else {
            self.stats.misses += 1;
            return None;
        };
        if e.current(self.generation, fdb_generation, now) {
            let d = e.decision;
            self.stats.hits += 1;
            Some(d)
        } else {
            self.stats.misses += 1;
            self.stats.stale += 1;
            None
        }
    }

    /// The decision cached in `s`, if it is current; counts nothing (a dry run's lookup).
    #[inline]
    pub fn decision_at(
        &self,
        s: Option<Slot>,
        fdb_generation: u32,
        now: Nanos,
    ) -> Option<Decision> {
        let e = s.and_then(|s| self.entry(s))?;
        e.current(self.generation, fdb_generation, now).then_some(e.decision)
    }

    /// Caches `d` for the flow: in its entry `s` if it has one, else in a new entry; it is to
    /// be made again at `recheck_at`. `None` when the tenant is at its share and the set has
    /// no entry of its own to give.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn store(
        &mut self,
        h: u64,
        t: TenantId,
        key: &Key,
        s: Option<Slot>,
        d: Option<&Decision>,
        fdb_generation: u32,
        recheck_at: Nanos,
    ) -> Option<Slot> {
        let s = match s {
            Some(s) => s,
            None => self.insert(h, t, key)?,
        };
        let generation = self.generation;
        let e = self.entry_mut(s)?;
        // Without a decision (a frame dropped before one was made, e.g. spoofed) only the
        // counters are wanted: a new entry stays undecided (generation 0), an old one keeps its
        // decision.
        if let Some(d) = d {
            e.decision = *d;
            e.generation = generation;
            e.fdb_generation = fdb_generation;
            e.recheck_at = recheck_at;
        }
        Some(s)
    }

    /// A new entry for `key` (evicting the least recently used one the share rule allows).
    fn insert(&mut self, h: u64, t: TenantId, key: &Key) -> Option<Slot> {
        let held = *self.per_tenant.get(t.index())?;
        let base = self.set(h);
        let set = self.sets.get(base)?;
        let free = set.iter().position(|e| !e.occupied);
        let victim = match free {
            Some(i) if held < self.share => Some(i),
            _ if held < self.share => lru(set, |_| true),
            // At its share: only one of its own entries may go.
            _ => lru(set, |e| e.occupied && e.tenant == t.0),
        };
        let Some(i) = victim else {
            self.stats.refused += 1;
            if self.logs.get(t.index()).copied().unwrap_or(false)
                && let Some(x) = &mut self.export
            {
                x.stats.full += 1;
            }
            return None;
        };
        let old = set[i];
        if old.occupied {
            self.stats.evictions += 1;
            if let Some(c) = self.per_tenant.get_mut(usize::from(old.tenant)) {
                *c -= 1;
            }
            self.report_later(&old, RecordReason::Evicted);
        }
        self.per_tenant[t.index()] += 1;
        self.stats.inserts += 1;
        let line = &mut self.sigs[base];
        *line = *line & !(0xff << (8 * i)) | u64::from(sig(h)) << (8 * i);
        self.sets[base][i] = Entry { key: *key, tenant: t.0, occupied: true, ..EMPTY };
        Some(Slot(base * WAYS + i))
    }

    /// Counts one frame of the flow and what became of it.
    #[inline]
    pub fn record(&mut self, s: Slot, now: Nanos, len: u32, d: &Disposition, tcp_flags: u8) {
        if let Some(e) = self.entry_mut(s) {
            e.count(now, len, d, tcp_flags);
        }
    }

    /// [`FlowCache::find_in`] for a frame of a tenant without policy (its flows are logged),
    /// and, when the flow's decision is current, the hit: the cached disposition, the frame
    /// counted, in the same visit of the entry. Otherwise the flow's slot, if it has one, for
    /// the general path ([`FlowCache::decision`]), and nothing counted.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn hit_and_count(
        &mut self,
        h: u64,
        ways: Ways,
        t: TenantId,
        key: &Key,
        fdb_generation: u32,
        now: Nanos,
        len: u32,
        tcp_flags: u8,
    ) -> Result<Disposition, Option<Slot>> {
        let (set, generation) = (self.set(h), self.generation);
        let entries = self.sets.padded_mut().get_mut(self.ent0 + set).ok_or(None)?;
        let w = way_of(entries, ways, t, key).ok_or(None)?;
        let e = &mut entries[w];
        if !e.current(generation, fdb_generation, now) {
            return Err(Some(Slot(set * WAYS + w)));
        }
        let d = e.decision.out;
        e.count(now, len, &d, tcp_flags);
        self.stats.hits += 1;
        Ok(d)
    }

    /// The cached flows of tenant `t` that counted something (for the control API; walks the
    /// whole table).
    pub fn flows(&self, t: TenantId) -> impl Iterator<Item = FlowView> + '_ {
        self.sets
            .iter()
            .flatten()
            .filter(move |e| e.occupied && e.tenant == t.0 && e.packets > 0)
            .map(Entry::view)
    }

    /// The source MAC of a flow of tenant `t` sent from address `ip`, the most recent one (for
    /// the decision trace, which needs a MAC for an address; walks the whole table).
    pub fn source_mac(&self, t: TenantId, ip: &[u8; 16]) -> Option<MacAddr> {
        self.sets
            .iter()
            .flatten()
            .filter(|e| e.occupied && e.tenant == t.0 && e.key.src_addr() == *ip)
            .max_by_key(|e| e.last.0)
            .map(|e| e.key.src_mac())
    }

    /// The configured share, in percent.
    pub fn share_percent(&self) -> u32 {
        self.share_percent
    }
}

/// The signature of a hash: bits the set index does not use; never 0 (an empty slot).
#[inline]
fn sig(h: u64) -> u8 {
    ((h >> 56) as u8).max(1)
}

/// The ways whose signature in `line` is `sg`, without a branch (the way a flow sits in is
/// random: an early exit would be mispredicted) and without SIMD intrinsics (`unsafe` here):
/// the eight bytes are compared at once in ordinary arithmetic. A byte of `line ^ sg` is zero
/// where they are equal; subtracting one from each byte sets the top bit of a zero byte. A
/// byte can also be flagged by a borrow from a zero byte below it, but the lowest flagged way
/// is always a real match and the key compare rejects the others, so only a key compare is
/// ever wasted.
#[inline(always)]
fn ways_matching(line: SigLine, sg: u8) -> Ways {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let x = line ^ (ONES * u64::from(sg));
    x.wrapping_sub(ONES) & !x & ALL_WAYS
}

/// The way among `ways` of a set's `entries` that holds flow `key` of tenant `t`.
#[inline(always)]
fn way_of(entries: &Set, ways: Ways, t: TenantId, key: &Key) -> Option<usize> {
    // A way with a signature holds an entry (signatures are not 0, written with the entry); an
    // empty way searched anyway ([`ALL_WAYS`]) belongs to no tenant.
    let mut ways = ways & ALL_WAYS;
    while ways != 0 {
        let w = ways.trailing_zeros() as usize / 8 % WAYS;
        ways &= ways - 1;
        let e = &entries[w];
        if e.tenant == t.0 && same(&e.key, key) {
            return Some(w);
        }
    }
    None
}

/// The least recently used entry among those `eligible` (free ones first).
#[inline]
fn lru(set: &[Entry], eligible: impl Fn(&Entry) -> bool) -> Option<usize> {
    set.iter()
        .enumerate()
        .filter(|(_, e)| eligible(e))
        .min_by_key(|(_, e)| (e.occupied, e.last))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Attachment, PortKind, SnapshotBuilder, TenantSpec};
    use crate::trace::flowlog::FlowRecord;
    use crate::vocab::{Direction, PortId};
    use crossbeam_channel::Receiver;

    fn snap(tenants: usize, logged: bool) -> Snapshot {
        let mut b = SnapshotBuilder::new(1);
        let p = b.port("p", "p", PortKind::Uplink);
        for i in 0..tenants {
            let mut t = TenantSpec::new(
                &format!("t{i}"),
                vec![Attachment { port: p, vlan: Some(i as u16 + 1) }],
            );
            t.flow_log = logged;
            b.tenant(t);
        }
        b.build().unwrap()
    }

    fn key(i: u64) -> Key {
        Key::from_words([
            0x0800 << 32 | 6 << 48,
            1 | 40_000 << 48,
            2 | 80 << 48,
            0,
            0xffff_0a00_0001,
            0,
            i,
        ])
    }

    fn tx(port: u16) -> Decision {
        Decision::new(
            Disposition::Tx { port: PortId(port), vlan: Some(7) },
            &[Direction::FromTenant, Direction::ToTenant],
            &[AclOutcome::Allow(Some(3)), AclOutcome::Deny(None)],
        )
    }

    fn cache(entries: usize, share: u32, tenants: usize) -> FlowCache {
        let mut c = FlowCache::new(entries, share);
        // Tenants that log flows (without an export here): the table is allocated.
        c.install(&snap(tenants, true));
        c
    }

    /// Looks a flow up as the pipeline does; caches `d` on a miss.
    fn lookup(c: &mut FlowCache, t: TenantId, k: &Key, fdb: u32, d: &Decision) -> Option<Decision> {
        let h = hash(t, k);
        let s = c.find(h, t, k);
        let hit = c.decision(s, fdb, Nanos::ZERO);
        if hit.is_none() {
            c.store(h, t, k, s, Some(d), fdb, Nanos::from_secs(1));
        }
        hit
    }

    #[test]
    fn nothing_is_allocated_until_a_tenant_needs_flows() {
        let mut c = FlowCache::new(64, 100);
        c.install(&snap(2, false));
        let (t, k) = (TenantId(0), key(1));
        assert_eq!(c.store(hash(t, &k), t, &k, None, Some(&tx(1)), 1, Nanos::ZERO), None);
        c.install(&snap(2, true));
        assert!(c.store(hash(t, &k), t, &k, None, Some(&tx(1)), 1, Nanos::ZERO).is_some());
    }

    proptest::proptest! {
        /// The lane matcher finds every way whose signature equal the one sought, and flags
        /// no way below the lowest such way (the others a key compare sorts out).
        #[test]
        fn signature_lanes_match_like_a_loop(
            lanes in proptest::array::uniform8(1u8..),
            pick in 0usize..8,
            flip in proptest::prop_oneof![
                proptest::strategy::Just(0u8),
                proptest::strategy::Just(0x80),
                proptest::strategy::Just(1),
                proptest::strategy::Just(0xff),
            ],
        ) {
            let sg = (lanes[pick] ^ flip).max(1);
            let line = lanes.iter().enumerate().fold(0, |l, (w, &s)| l | u64::from(s) << (8 * w));
            let found = ways_matching(line, sg);
            let equal: Vec<usize> = (0..8).filter(|&w| lanes[w] == sg).collect();
            for &w in &equal {
                proptest::prop_assert!(found >> (8 * w + 7) & 1 == 1, "way {w} missed");
            }
            let lowest = equal.first().copied().unwrap_or(8);
            for w in 0..lowest {
                proptest::prop_assert!(found >> (8 * w + 7) & 1 == 0, "way {w} flagged");
            }
            proptest::prop_assert_eq!(found & !ALL_WAYS, 0);
        }
    }

    #[test]
    fn a_lookup_of_every_way_finds_the_flow_and_never_an_empty_way() {
        let mut c = cache(64, 100, 2);
        let (t, zero) = (TenantId(0), Key::ZERO);
        assert_eq!(c.find_in(hash(t, &zero), ALL_WAYS, t, &zero), None);
        let k = key(3);
        let h = hash(t, &k);
        let s = c.store(h, t, &k, None, Some(&tx(1)), 1, Nanos::ZERO);
        assert!(s.is_some());
        assert_eq!(c.find_in(h, ALL_WAYS, t, &k), s);
        assert_eq!(c.find(h, t, &k), s);
        assert_eq!(c.find_in(hash(t, &zero), ALL_WAYS, t, &zero), None);
    }

    #[test]
    fn decisions_pack_and_unpack() {
        use Direction::{FromTenant as F, ToTenant as T};
        let cases: [(Disposition, &[Direction], &[AclOutcome]); 4] = [
            (
                Disposition::Tx { port: PortId(3), vlan: Some(7) },
                &[F, T],
                &[AclOutcome::Allow(Some(3)), AclOutcome::Deny(None)],
            ),
            (Disposition::Flood, &[T], &[AclOutcome::PerPacket]),
            (Disposition::Drop(DropReason::Hairpin), &[], &[]),
            (
                Disposition::Tx { port: PortId(9), vlan: None },
                &[F],
                &[AclOutcome::Allow(Some(70_000))],
            ),
        ];
        for (out, dirs, acl) in cases {
            let d = Decision::new(out, dirs, acl);
            assert_eq!(d.out(), out);
            let (ds, n) = d.dirs();
            assert_eq!(&ds[..n], dirs);
            assert_eq!((0..n).map(|k| d.acl(k)).collect::<Vec<_>>(), acl);
            assert_eq!(d.allowed(), acl.iter().all(|a| matches!(a, AclOutcome::Allow(_))));
        }
    }

    #[test]
    fn hits_after_store_and_stale_after_a_snapshot_or_mac_change() {
        let mut c = cache(64, 100, 2);
        let (a, b) = (TenantId(0), TenantId(1));
        assert_eq!(lookup(&mut c, a, &key(1), 5, &tx(1)), None);
        assert_eq!(lookup(&mut c, a, &key(1), 5, &tx(2)), Some(tx(1)));
        // Another tenant is another entry.
        assert_eq!(lookup(&mut c, b, &key(1), 5, &tx(2)), None);
        assert_eq!(c.len(), 2);
        // The tenant's MAC table moved on: re-decided in place, no new entry.
        assert_eq!(lookup(&mut c, a, &key(1), 6, &tx(4)), None);
        assert_eq!(lookup(&mut c, a, &key(1), 6, &tx(2)), Some(tx(4)));
        assert_eq!(c.len(), 2);
        // A new snapshot: every decision is stale, the entries (and their counters) stay.
        c.install(&snap(2, true));
        assert_eq!(lookup(&mut c, b, &key(1), 5, &tx(5)), None);
        assert_eq!(lookup(&mut c, b, &key(1), 5, &tx(2)), Some(tx(5)));
        assert_eq!(c.len(), 2);
        assert_eq!((c.stats.hits, c.stats.stale, c.stats.inserts), (3, 2, 2));
    }

    #[test]
    fn a_flooding_tenant_keeps_to_its_share() {
        let mut c = cache(1024, 25, 2);
        let (quiet, loud) = (TenantId(0), TenantId(1));
        for i in 0..200 {
            lookup(&mut c, quiet, &key(i), 1, &tx(1));
        }
        let quiet_held = c.entries_of(quiet);
        assert!(quiet_held >= 190, "{quiet_held}");
        for i in 0..100_000 {
            lookup(&mut c, loud, &key(1_000_000 + i), 1, &tx(1));
        }
        assert_eq!(c.entries_of(loud), c.share());
        assert_eq!(c.share(), 256);
        let kept = (0..200).filter(|&i| c.find(hash(quiet, &key(i)), quiet, &key(i)).is_some());
        let kept = kept.count() as u32;
        assert!(kept + c.share() >= quiet_held, "kept {kept} of {quiet_held}");
        assert!(kept >= 100, "kept {kept}");
        assert!(c.stats.refused > 0);
    }

    #[test]
    fn least_recently_used_goes_first() {
        // One set of eight ways.
        let mut c = cache(8, 100, 1);
        let t = TenantId(0);
        let mut at = 0;
        let mut touch = |c: &mut FlowCache, i: u64| {
            at += 1;
            let (h, k) = (hash(t, &key(i)), key(i));
            let s =
                c.find(h, t, &k).or_else(|| c.store(h, t, &k, None, Some(&tx(1)), 1, Nanos::ZERO));
            c.record(s.unwrap(), Nanos(at), 64, &Disposition::Flood, 0);
        };
        for i in 0..8 {
            touch(&mut c, i);
        }
        for i in [0, 2, 3, 4, 5, 6, 7] {
            touch(&mut c, i);
        }
        touch(&mut c, 9);
        assert!(c.find(hash(t, &key(1)), t, &key(1)).is_none(), "key 1 was the LRU");
        assert!(c.find(hash(t, &key(0)), t, &key(0)).is_some());
        assert_eq!(c.len(), 8);
    }

    fn logged(entries: usize) -> (FlowCache, Receiver<FlowRecord>) {
        let (tx, rx) = crossbeam_channel::bounded(1024);
        let mut c = FlowCache::new(entries, 100);
        c.install(&snap(1, true));
        c.log_flows(FlowExport::new(Nanos::from_secs(60), Nanos::from_secs(10), tx));
        (c, rx)
    }

    fn count(c: &mut FlowCache, k: &Key, at: Nanos, flags: u8, d: Disposition) {
        let t = TenantId(0);
        let h = hash(t, k);
        let s = c.find(h, t, k);
        let s = c.store(h, t, k, s, Some(&tx(1)), 1, at.add(Nanos::from_secs(1))).unwrap();
        c.record(s, at, 100, &d, flags);
    }

    #[test]
    fn flows_are_reported_when_they_end_go_idle_or_run_long() {
        let (mut c, rx) = logged(64);
        let ok = Disposition::Flood;
        // A TCP flow of three frames ending with a FIN at 2 s.
        for (i, f) in [(0, 0x02), (1, 0x10), (2, 0x11)] {
            count(&mut c, &key(1), Nanos::from_secs(i), f, ok);
        }
        // A flow that goes quiet at 1 s, one dropped frame.
        count(&mut c, &key(2), Nanos::from_secs(1), 0, Disposition::Drop(DropReason::Policy));
        // Not reported before a second of quiet after the FIN.
        c.sweep(Nanos::from_millis(2_900));
        assert!(rx.try_recv().is_err());
        c.sweep(Nanos::from_millis(3_500));
        let r = rx.try_recv().expect("the ended flow");
        assert!(r.ended() && r.flow.accepted);
        assert_eq!(
            (r.flow.packets, r.flow.bytes, r.flow.start, r.flow.last),
            (3, 300, Nanos::ZERO, Nanos::from_secs(2))
        );
        assert_eq!((r.flow.proto, r.flow.src.1, r.flow.dst.1), (6, 40_000, 80));
        assert!(rx.try_recv().is_err(), "the other flow is not idle yet");
        c.sweep(Nanos::from_secs(12));
        let r = rx.try_recv().expect("the idle flow");
        assert_eq!(r.why, RecordReason::Idle);
        assert!(!r.flow.accepted);
        assert_eq!(r.flow.reason, Some(DropReason::Policy));
        // Nothing new: nothing more is reported.
        c.sweep(Nanos::from_secs(30));
        assert!(rx.try_recv().is_err());
        // A long flow is reported every interval, each span with its own counts.
        for s in 0..130 {
            count(&mut c, &key(3), Nanos::from_secs(100 + s), 0, ok);
            c.sweep(Nanos::from_secs(100 + s));
        }
        let spans: Vec<u64> = rx.try_iter().map(|r| r.flow.packets).collect();
        assert_eq!(spans, vec![61, 61], "spans of the long flow");
        c.flush();
        assert_eq!(rx.try_iter().map(|r| r.flow.packets).collect::<Vec<_>>(), vec![8]);
        assert_eq!(c.log_stats().unwrap().exported, 5);
    }

    #[test]
    fn an_evicted_flow_is_reported_before_its_entry_is_reused() {
        let (mut c, rx) = logged(8);
        for i in 0..8 {
            count(&mut c, &key(i), Nanos::from_secs(i), 0, Disposition::Flood);
        }
        assert!(rx.try_recv().is_err());
        count(&mut c, &key(99), Nanos::from_secs(20), 0, Disposition::Flood);
        // Made on the packet path, it waits for the breath's sweep (no channel send there).
        assert!(rx.try_recv().is_err(), "a record sent from the packet path");
        assert_eq!(c.export.as_ref().map(|x| x.held()), Some(1));
        c.sweep(Nanos::from_secs(20));
        let r = rx.try_recv().expect("the evicted flow");
        assert_eq!((r.flow.packets, r.flow.start), (1, Nanos::ZERO), "key 0 was the oldest");
        assert_eq!(c.export.as_ref().map(|x| x.held()), Some(0));
        // One more eviction, then a stop with no other flow to report: the flush hands the
        // held record over all the same. (The sweep reported every span; each flow counts a
        // frame again, so the one evicted has one; then the others' counts are cleared.)
        let _ = rx.try_iter().count();
        for k in (1..8).chain([99]) {
            count(&mut c, &key(k), Nanos::from_secs(21), 0, Disposition::Flood);
        }
        count(&mut c, &key(100), Nanos::from_secs(22), 0, Disposition::Flood);
        assert_eq!(c.export.as_ref().map(|x| x.held()), Some(1));
        for set in 0..c.sets.len() {
            for w in 0..WAYS {
                c.sets[set][w].packets = 0;
            }
        }
        c.flush();
        let evicted = rx.try_iter().filter(|r| r.why == RecordReason::Evicted).count();
        assert_eq!(evicted, 1, "the held record was lost at the stop");
        assert_eq!(c.export.as_ref().map(|x| x.held()), Some(0));
    }

    #[test]
    fn flows_of_a_tenant_are_listed_with_their_counts() {
        let (mut c, _rx) = logged(64);
        count(&mut c, &key(1), Nanos::from_secs(1), 0, Disposition::Flood);
        count(&mut c, &key(1), Nanos::from_secs(2), 0, Disposition::Flood);
        let v: Vec<FlowView> = c.flows(TenantId(0)).collect();
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].packets, v[0].bytes, v[0].ethertype), (2, 200, 0x0800));
        assert_eq!(v[0].dst.0[15], 1, "address words round-trip");
        assert_eq!(c.flows(TenantId(1)).count(), 0);
    }
}
