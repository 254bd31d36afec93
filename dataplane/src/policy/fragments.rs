//! Fragments of tenants with policy: a later fragment carries no ports, so it is judged by the
//! first fragment of its datagram (shallow virtual reassembly, as VPP's `ip4-sv-reassembly`
//! and Open vSwitch's fragment handling do, without reassembling any payload).
//!
//! # Design
//! One table per worker, of a fixed number of entries in sets of [`WAYS`], keyed by (tenant,
//! protocol, source, destination, IP identification). A first fragment opens (or restarts) its
//! datagram's entry with its ports and TCP flags; the pipeline judges it as any packet and then
//! [`FragTable::settle`]s the entry with the verdict. A later fragment takes the first's ports
//! and flags (so the flow cache, the ACLs and the flow logs see the flow it belongs to) and its
//! verdict: a datagram whose first fragment was dropped loses every later fragment, under the
//! same reason. Dropped as `fragment`, never passed unchecked:
//! - a later fragment whose first fragment was not seen (not yet, or too long ago: the entry
//!   expires after the timeout). Fragments are not held for their first one: a sender sends
//!   the first fragment first, and a datagram whose fragments were reordered is lost, as it
//!   would be at a stateless filter (RFC 1858);
//! - a fragment that overlaps another of its datagram (RFC 1858's overlapping attack,
//!   RFC 5722): the whole datagram is refused from then on;
//! - a first fragment the table has no room for (the tenant's share is full).
//!
//! A first fragment too short for its layer-4 header (the tiny-fragment attack) never gets
//! here: the parser drops it as malformed, and its later fragments find no entry.
//!
//! Memory is bounded: the table never grows, each tenant may hold at most its share of it, and
//! an entry is freed when its datagram is complete, reused when it has expired, and swept
//! between batches ([`FragTable::sweep`]).

use crate::time::Nanos;
use crate::vocab::DropReason;

/// Entries per set.
pub const WAYS: usize = 8;
/// Disjoint byte ranges remembered per datagram; a datagram whose fragments leave more holes
/// than this is refused (fragments sent in order always make one range).
const RANGES: usize = 4;
/// Entries one sweep call looks at.
const SWEEP: usize = 256;

/// A datagram: whose it is and its identification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    /// Tenant id.
    pub tenant: u16,
    /// IP protocol.
    pub proto: u8,
    /// Source address (IPv4 v4-mapped).
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// IP identification (IPv4: 16 bits; IPv6: the fragment header's 32).
    pub ident: u32,
}

/// Where one fragment lies in its datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragInfo {
    /// The datagram.
    pub key: FragKey,
    /// First byte of this fragment's data in the datagram's fragmentable part.
    pub start: u32,
    /// One past its last byte.
    pub end: u32,
    /// More fragments follow.
    pub more: bool,
}

/// What a later fragment borrows from its datagram's first fragment: the layer-4 identity
/// the policy judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FirstL4 {
    /// The upper-layer protocol (IPv6: after any extension headers behind the fragment
    /// header).
    pub proto: u8,
    /// Source port (ICMP: type).
    pub src_port: u16,
    /// Destination port (ICMP: code).
    pub dst_port: u16,
    /// TCP flags.
    pub tcp_flags: u8,
}

/// An entry as handed out for one batch: the slot and the stamp it had, so a slot reused in
/// the meantime is told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Handle {
    slot: u32,
    stamp: u32,
}

/// A later fragment admitted: its entry, the first fragment's layer-4 identity, and whether
/// the first fragment's verdict is still to come (it is in the same batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Later {
    /// The datagram's entry.
    pub handle: Handle,
    /// What the first fragment carried.
    pub l4: FirstL4,
    /// The first fragment is in the batch being processed: check its verdict after it.
    pub pending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pending,
    Allowed,
    Denied(DropReason),
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: FragKey,
    live: bool,
    /// The datagram is complete, but its first fragment's verdict is still pending: freed
    /// when it is settled.
    complete: bool,
    stamp: u32,
    expires: Nanos,
    l4: FirstL4,
    verdict: Verdict,
    ranges: [(u32, u32); RANGES],
    n: u8,
    /// End of the datagram, once its last fragment was seen (0: not yet).
    total: u32,
}

const EMPTY: Slot = Slot {
    key: FragKey { tenant: 0, proto: 0, src: [0; 16], dst: [0; 16], ident: 0 },
    live: false,
    complete: false,
    stamp: 0,
    expires: Nanos::ZERO,
    l4: FirstL4 { proto: 0, src_port: 0, dst_port: 0, tcp_flags: 0 },
    verdict: Verdict::Pending,
    ranges: [(0, 0); RANGES],
    n: 0,
    total: 0,
};

/// Table events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FragStats {
    /// Datagrams whose first fragment was seen.
    pub tracked: u64,
    /// Datagrams seen whole (their entry freed at once).
    pub completed: u64,
    /// Entries that expired before their datagram was whole.
    pub expired: u64,
    /// Live entries pushed out of a full set by another datagram.
    pub evicted: u64,
}

/// One worker's fragment table.
#[derive(Debug)]
pub struct FragTable {
    slots: Vec<Slot>,
    sets: usize,
    hasher: ahash::RandomState,
    per_tenant: Vec<u32>,
    quota: u32,
    timeout: Nanos,
    sweep_at: usize,
    /// Events.
    pub stats: FragStats,
}

impl FragTable {
    /// A table of about `entries` entries (rounded up to whole sets of [`WAYS`], a power of
    /// two of them), of which one tenant may hold `share_percent`, each kept `timeout`.
    pub fn new(entries: usize, share_percent: u32, timeout: Nanos) -> Self {
        let sets = entries.div_ceil(WAYS).max(1).next_power_of_two();
        let n = sets * WAYS;
        let quota = (n as u64 * u64::from(share_percent.clamp(1, 100)) / 100).max(WAYS as u64);
        FragTable {
            slots: vec![EMPTY; n],
            sets,
            hasher: ahash::RandomState::new(),
            per_tenant: Vec::new(),
            quota: quota as u32,
            timeout,
            sweep_at: 0,
            stats: FragStats::default(),
        }
    }

    /// Adopts a new snapshot of `tenants` tenants: tenant ids may have changed, so every
    /// datagram in flight is forgotten (its later fragments are dropped as `fragment`).
    pub fn install(&mut self, tenants: usize) {
        self.slots.fill(EMPTY);
        self.per_tenant = vec![0; tenants];
    }

    /// Entries in use.
    pub fn len(&self) -> usize {
        self.per_tenant.iter().map(|&n| n as usize).sum()
    }

    /// True when no datagram is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries of tenant `t`.
    pub fn entries_of(&self, t: u16) -> u32 {
        self.per_tenant.get(usize::from(t)).copied().unwrap_or(0)
    }

    #[inline]
    fn set_of(&self, k: &FragKey) -> std::ops::Range<usize> {
        let set = (self.hasher.hash_one(k) as usize) & (self.sets - 1);
        set * WAYS..(set + 1) * WAYS
    }

    /// The live, current entry of `k`.
    #[inline]
    fn find(&self, now: Nanos, k: &FragKey) -> Option<usize> {
        self.set_of(k).find(|&i| {
            let s = &self.slots[i];
            s.live && s.key == *k && now.0 <= s.expires.0
        })
    }

    fn free(&mut self, i: usize) {
        let s = &mut self.slots[i];
        if s.live {
            s.live = false;
            if let Some(n) = self.per_tenant.get_mut(usize::from(s.key.tenant)) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// A first fragment (offset 0, more to come) with its layer-4 identity `l4`: opens its
    /// datagram's entry, or starts it again (a sender reusing an identification, or a
    /// duplicate: later fragments are judged by the newest first fragment). Err(`fragment`)
    /// when the tenant's share of the table is full.
    pub fn first(&mut self, now: Nanos, f: &FragInfo, l4: FirstL4) -> Result<Handle, DropReason> {
        let i =
            match self.set_of(&f.key).find(|&i| self.slots[i].live && self.slots[i].key == f.key) {
                Some(i) => i,
                None => {
                    let t = usize::from(f.key.tenant);
                    if self.per_tenant.get(t).is_none_or(|&n| n >= self.quota) {
                        return Err(DropReason::Fragment);
                    }
                    let set = self.set_of(&f.key);
                    let i = match set.clone().find(|&i| !self.slots[i].live) {
                        Some(i) => i,
                        None => {
                            // Expired first, else the entry nearest its expiry.
                            let i = set.min_by_key(|&i| self.slots[i].expires.0).unwrap_or(0);
                            if now.0 <= self.slots[i].expires.0 {
                                self.stats.evicted += 1;
                            } else {
                                self.stats.expired += 1;
                            }
                            self.free(i);
                            i
                        }
                    };
                    self.per_tenant[t] += 1;
                    i
                }
            };
        self.stats.tracked += 1;
        let s = &mut self.slots[i];
        *s = Slot {
            key: f.key,
            live: true,
            complete: false,
            stamp: s.stamp.wrapping_add(1),
            expires: now.add(self.timeout),
            l4,
            verdict: Verdict::Pending,
            ranges: [(0, 0); RANGES],
            n: 1,
            total: 0,
        };
        s.ranges[0] = (f.start, f.end);
        Ok(Handle { slot: i as u32, stamp: s.stamp })
    }

    /// A later fragment: what its first fragment said, or why it is dropped (no first
    /// fragment seen, its first fragment's drop reason, or an overlap).
    pub fn later(&mut self, now: Nanos, f: &FragInfo) -> Result<Later, DropReason> {
        let Some(i) = self.find(now, &f.key) else { return Err(DropReason::Fragment) };
        let s = &mut self.slots[i];
        if let Verdict::Denied(r) = s.verdict {
            return Err(r);
        }
        if !add_range(s, f.start, f.end) {
            s.verdict = Verdict::Denied(DropReason::Fragment);
            return Err(DropReason::Fragment);
        }
        if !f.more {
            s.total = f.end;
        }
        let pending = s.verdict == Verdict::Pending;
        let later = Later { handle: Handle { slot: i as u32, stamp: s.stamp }, l4: s.l4, pending };
        if s.total != 0 && s.n == 1 && s.ranges[0] == (0, s.total) {
            self.stats.completed += 1;
            if pending {
                s.complete = true;
            } else {
                self.free(i);
            }
        }
        Ok(later)
    }

    /// The verdict on a datagram's first fragment: `Some(reason)` when it was dropped.
    pub fn settle(&mut self, h: Handle, dropped: Option<DropReason>) {
        let i = h.slot as usize;
        let Some(s) = self.slots.get_mut(i) else { return };
        if !s.live || s.stamp != h.stamp {
            return;
        }
        if s.verdict == Verdict::Pending {
            s.verdict = dropped.map_or(Verdict::Allowed, Verdict::Denied);
        }
        if s.complete {
            self.free(i);
        }
    }

    /// After [`FragTable::settle`]: the reason a later fragment admitted while its first
    /// fragment's verdict was pending must be dropped, if it must. A slot reused in between
    /// (evicted within the batch) cannot vouch for it: `fragment`.
    pub fn denied(&self, h: Handle) -> Option<DropReason> {
        match self.slots.get(h.slot as usize) {
            Some(s) if s.stamp == h.stamp => match s.verdict {
                Verdict::Denied(r) => Some(r),
                Verdict::Allowed | Verdict::Pending => None,
            },
            _ => Some(DropReason::Fragment),
        }
    }

    /// Between batches: frees the expired entries of the next slice of the table.
    pub fn sweep(&mut self, now: Nanos) {
        if self.is_empty() {
            return;
        }
        let n = self.slots.len();
        for _ in 0..SWEEP.min(n) {
            let i = self.sweep_at;
            self.sweep_at = (self.sweep_at + 1) % n;
            let s = &self.slots[i];
            if s.live && now.0 > s.expires.0 && !(s.complete && s.verdict == Verdict::Pending) {
                self.stats.expired += 1;
                self.free(i);
            }
        }
    }
}

/// Adds [start, end) to the datagram's ranges, merging neighbours; false when it overlaps a
/// range already there, or leaves more holes than the entry remembers.
fn add_range(s: &mut Slot, start: u32, end: u32) -> bool {
    let n = usize::from(s.n);
    if end <= start || s.total != 0 && end > s.total {
        return false;
    }
    if s.ranges[..n].iter().any(|&(a, b)| start < b && a < end) {
        return false;
    }
    let (mut lo, mut hi) = (start, end);
    let mut kept = [(0, 0); RANGES];
    let mut k = 0;
    for &(a, b) in &s.ranges[..n] {
        if b == lo {
            lo = a;
        } else if a == hi {
            hi = b;
        } else {
            kept[k] = (a, b);
            k += 1;
        }
    }
    if k == RANGES {
        return false;
    }
    kept[k] = (lo, hi);
    s.ranges = kept;
    s.n = (k + 1) as u8;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(ident: u32, start: u32, end: u32, more: bool) -> FragInfo {
        let key = FragKey { tenant: 0, proto: 17, src: [1; 16], dst: [2; 16], ident };
        FragInfo { key, start, end, more }
    }

    fn l4(src_port: u16, dst_port: u16, tcp_flags: u8) -> FirstL4 {
        FirstL4 { proto: 17, src_port, dst_port, tcp_flags }
    }

    fn table() -> FragTable {
        let mut t = FragTable::new(64, 25, Nanos::from_secs(1));
        t.install(2);
        t
    }

    const T0: Nanos = Nanos::ZERO;

    #[test]
    fn later_fragments_take_the_first_ones_ports_and_verdict() {
        let mut t = table();
        let h = t.first(T0, &info(7, 0, 1480, true), l4(1234, 53, 0)).unwrap();
        let l = t.later(T0, &info(7, 1480, 2960, true)).unwrap();
        assert_eq!((l.l4, l.pending), (l4(1234, 53, 0), true));
        t.settle(h, None);
        assert_eq!(t.denied(l.handle), None);
        let last = t.later(T0, &info(7, 2960, 3008, false)).unwrap();
        assert!(!last.pending);
        assert!(t.is_empty(), "a whole datagram frees its entry");
        assert_eq!(t.stats.completed, 1);
    }

    #[test]
    fn a_denied_first_fragment_denies_the_rest() {
        let mut t = table();
        let h = t.first(T0, &info(8, 0, 1480, true), l4(1, 23, 0)).unwrap();
        let same_batch = t.later(T0, &info(8, 1480, 2960, true)).unwrap();
        t.settle(h, Some(DropReason::Policy));
        assert_eq!(t.denied(same_batch.handle), Some(DropReason::Policy));
        assert_eq!(t.later(T0, &info(8, 2960, 3000, false)), Err(DropReason::Policy));
    }

    #[test]
    fn orphans_overlaps_and_expiry_are_refused() {
        let mut t = table();
        assert_eq!(t.later(T0, &info(9, 8, 100, false)), Err(DropReason::Fragment));
        let h = t.first(T0, &info(9, 0, 40, true), l4(1, 80, 0x02)).unwrap();
        t.settle(h, None);
        // Offset 8 rewrites the TCP header the first fragment carried (RFC 1858).
        assert_eq!(t.later(T0, &info(9, 8, 100, true)), Err(DropReason::Fragment));
        // And the datagram stays refused.
        assert_eq!(t.later(T0, &info(9, 40, 100, false)), Err(DropReason::Fragment));
        let h = t.first(T0, &info(10, 0, 40, true), l4(1, 80, 0x02)).unwrap();
        t.settle(h, None);
        let late = Nanos::from_millis(1001);
        assert_eq!(t.later(late, &info(10, 40, 80, false)), Err(DropReason::Fragment));
        t.sweep(late);
        assert!(t.is_empty());
        assert_eq!(t.stats.expired, 2);
    }

    #[test]
    fn out_of_order_later_fragments_merge() {
        let mut t = table();
        let h = t.first(T0, &info(11, 0, 8, true), l4(5, 6, 0)).unwrap();
        t.settle(h, None);
        t.later(T0, &info(11, 24, 32, false)).unwrap();
        t.later(T0, &info(11, 16, 24, true)).unwrap();
        assert_eq!(t.len(), 1);
        t.later(T0, &info(11, 8, 16, true)).unwrap();
        assert!(t.is_empty(), "complete once the hole is filled");
    }

    #[test]
    fn one_tenant_cannot_take_the_whole_table() {
        let mut t = table(); // 64 entries, a quarter each
        let mut opened = 0;
        for id in 0..1000 {
            if t.first(T0, &info(id, 0, 8, true), l4(1, 2, 0)).is_ok() {
                opened += 1;
            }
        }
        assert_eq!(opened, 16);
        let mut other = info(1, 0, 8, true);
        other.key.tenant = 1;
        assert!(t.first(T0, &other, l4(1, 2, 0)).is_ok(), "another tenant still gets an entry");
    }

    mod prop {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Whatever the order and overlap of the fragments, a later fragment admitted
            /// after its first fragment was denied never comes back allowed, and the table
            /// never holds more than its size.
            #[test]
            fn denied_datagrams_stay_denied(
                frags in proptest::collection::vec((0u32..4, 0u32..16, 1u32..8, any::<bool>(), any::<bool>()), 1..60),
            ) {
                let mut t = FragTable::new(16, 50, Nanos::from_secs(1));
                t.install(1);
                let mut denied = [false; 4];
                for (id, off, len, first, deny) in frags {
                    let f = info(id, if first { 0 } else { off * 8 }, (if first { 0 } else { off * 8 }) + len * 8, true);
                    if first {
                        if let Ok(h) = t.first(T0, &f, l4(1, 2, 0)) {
                            t.settle(h, deny.then_some(DropReason::Policy));
                            denied[id as usize] = deny;
                        }
                    } else if let Ok(l) = t.later(T0, &f) {
                        prop_assert!(!denied[id as usize], "a fragment of a denied datagram passed");
                        prop_assert_eq!(t.denied(l.handle), None);
                    }
                    prop_assert!(t.len() <= 16);
                }
            }
        }
    }
}
