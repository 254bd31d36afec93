//! Stage 4 for tenants with policy or flow logs: the flow cache in front of learning,
//! forwarding and the ACLs, then the security group.
//!
//! The frames that need it are hashed as the first stages mark them, and their signature lines
//! asked for then; this stage asks for each frame's candidate entry a few frames before it
//! looks it up, so the cache's memory reads overlap with the work on other frames.
//!
//! - Hit, decision current: the cached decision, without touching the MAC table (the source is
//!   refreshed there once every quarter of the tenant's aging time).
//! - Miss or stale: learn the source, look the destination up, classify each direction the
//!   frame crosses, and cache the result (in the flow's entry if it had one: its counters
//!   stay).
//!
//! Then, per packet whatever the cache said: `count` rules, ACL sets that look at TCP flags
//! (not part of the flow key), the rule counters, the security group (stateful), and the
//! flow's counters. Frames of a logging tenant that an earlier stage dropped (spoofed) are
//! only counted in their flow.

use super::{Disposition, Pipeline, classify, learn, policy};
use crate::batch::{BATCH_SIZE, FrameRef, Meta};
use crate::flow::FlowCache;
use crate::flow::cache::{AclOutcome, Decision, Key, hash, key_of};
use crate::policy::acl::{self, AclSet};
use crate::policy::classifier::Key as AclKey;
use crate::policy::conntrack::{ConnTable, Verdict};
use crate::policy::{Action, Direction};
use crate::port::FrameArea;
use crate::snapshot::{CHECK_POLICY, PortId, Snapshot, TenantSpec};
use crate::time::Nanos;
use crate::trace::DropReason;
use crate::trace::sample::FlowPath;

/// The frames of one batch that go through the flow cache, and their keys and hashes.
#[derive(Debug)]
pub struct Scratch {
    idx: [u8; BATCH_SIZE],
    n: usize,
    keys: [Key; BATCH_SIZE],
    hashes: [u64; BATCH_SIZE],
    /// The ways of each frame's set whose signature matched.
    ways: [u32; BATCH_SIZE],
    /// Batch indexes (bits) of the frames marked, and of those the cache decided.
    marked: u64,
    hits: u64,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            idx: [0; BATCH_SIZE],
            n: 0,
            keys: [[0; 7]; BATCH_SIZE],
            hashes: [0; BATCH_SIZE],
            ways: [0; BATCH_SIZE],
            marked: 0,
            hits: 0,
        }
    }
}

impl Scratch {
    /// Starts a batch.
    #[inline]
    pub fn reset(&mut self) {
        self.n = 0;
        self.marked = 0;
        self.hits = 0;
    }

    /// How the flow cache took part in frame `i`'s decision (for live traces).
    #[inline]
    pub fn path(&self, i: usize) -> FlowPath {
        if self.marked >> i & 1 == 0 {
            FlowPath::NotCached
        } else if self.hits >> i & 1 != 0 {
            FlowPath::Hit
        } else {
            FlowPath::Miss
        }
    }

    /// Marks frame `i` (`m`, from `port`) of the batch for this stage, and asks for its flow's
    /// signature line now: the rest of the first stages' loop runs while it comes.
    #[inline(always)]
    pub fn mark(&mut self, flows: &FlowCache, i: usize, m: &Meta, port: PortId) {
        if self.n < BATCH_SIZE {
            let j = self.n;
            self.idx[j] = i as u8;
            self.marked |= 1 << i;
            self.keys[j] = key_of(m, port);
            self.hashes[j] = hash(m.tenant, &self.keys[j]);
            flows.prefetch_set(self.hashes[j]);
            self.n += 1;
        }
    }

    /// True when some frame was marked.
    #[inline]
    pub fn any(&self) -> bool {
        self.n > 0
    }
}

/// How many frames ahead an entry is asked for, relative to its lookup (PERF(flow-cache)).
const AHEAD: usize = 8;

/// Runs the stage on the marked frames of a batch from `port`.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    p: &mut Pipeline,
    snap: &Snapshot,
    now: Nanos,
    port: PortId,
    area: &FrameArea,
    frames: &[FrameRef],
    meta: &[Meta],
    out: &mut [Disposition],
) {
    let Pipeline { fdb, flows, policy, scratch, counters, announcements, .. } = p;
    let sc = &mut **scratch;
    // A software pipeline: the signature lines were asked for while the frames were marked;
    // frame j's entry is asked for AHEAD frames before it is looked up. A bounded distance
    // keeps the prefetches in flight within what the core tracks (asking for a whole batch at
    // once had most of them dropped, and the lookups waited for each line in turn).
    for j in 0..sc.n + AHEAD {
        if j < sc.n {
            sc.ways[j] = flows.prefetch_entry(sc.hashes[j]);
        }
        let Some(j) = j.checked_sub(AHEAD) else { continue };
        let i = usize::from(sc.idx[j]);
        let (m, f, h, key) = (&meta[i], frames[i], sc.hashes[j], &sc.keys[j]);
        let t = m.tenant;
        let found = flows.find_in(h, sc.ways[j], t, key);
        if let Disposition::Drop(_) = out[i] {
            // Dropped before a decision (spoofed): counted in its flow, nothing decided. (A new
            // entry may have replaced a way another frame of this batch found: later frames
            // look their flow up again.)
            let s = found.or_else(|| flows.store(h, t, key, None, None, 0, Nanos::ZERO));
            if found.is_none() {
                sc.ways[j + 1..sc.n].fill(u32::MAX);
            }
            if let Some(s) = s {
                flows.record(s, now, f.len, &out[i], m.tcp_flags);
            }
            continue;
        }
        let Some(spec) = snap.tenants.get(t.index()) else { continue };
        // The source is refreshed in the MAC table every quarter of its aging time.
        let refresh = || now.add(Nanos(spec.mac_aging.0 / 4));
        let (dec, slot) = match flows.decision(found, fdb.generation(t), now) {
            Some((d, due)) => {
                sc.hits |= 1 << i;
                if due && let Some(s) = found {
                    learn(fdb, counters, announcements, now, port, m);
                    flows.refreshed(s, refresh());
                }
                (d, found)
            }
            None => {
                learn(fdb, counters, announcements, now, port, m);
                let dec = decide(snap, spec, port, m, classify::forward_one(fdb, now, port, m));
                let g = fdb.generation(t);
                if found.is_none() {
                    // An insert may take a way a later frame of the batch found: they search
                    // their whole set instead.
                    sc.ways[j + 1..sc.n].fill(u32::MAX);
                }
                (dec, flows.store(h, t, key, found, Some(&dec), g, refresh()))
            }
        };
        let d = if snap.checks(t) & CHECK_POLICY != 0 {
            let hits = match counters.acl_hits.get_mut(t.index()) {
                Some(h) => h.as_mut_slice(),
                None => &mut [],
            };
            let frame = || area.frame(f).unwrap_or(&[]);
            apply(&dec, spec, &mut policy.conns, now, port, m, frame, hits)
        } else {
            // Flows logged, no policy: where the MAC table sends it.
            dec.out()
        };
        out[i] = d;
        if let Some(s) = slot {
            flows.record(s, now, f.len, &d, m.tcp_flags);
        }
    }
}

/// Decides a flow from scratch: the MAC table's answer `out`, the directions it crosses and
/// each direction's ACL verdict.
pub(crate) fn decide(
    snap: &Snapshot,
    t: &TenantSpec,
    port: PortId,
    m: &Meta,
    out: Disposition,
) -> Decision {
    if let Disposition::Drop(_) = out {
        return Decision::new(out, &[], &[]);
    }
    let (dirs, n) = policy::directions(snap, port, out);
    let mut acl = [AclOutcome::Allow(None); 2];
    let mut key = None;
    for (a, dir) in acl.iter_mut().zip(&dirs[..n]) {
        let set = &t.policy.acl[dir.index()];
        if set.is_open() {
            continue;
        }
        *a = if set.uses_tcp_flags() {
            AclOutcome::PerPacket
        } else {
            let v = set.classify(&masked_key(&mut key, set, m, port));
            if v.action == Action::Deny {
                AclOutcome::Deny(v.rule)
            } else {
                AclOutcome::Allow(v.rule)
            }
        };
    }
    Decision::new(out, &dirs[..n], &acl[..n])
}

/// The ACL key of `m` masked to what `set` looks at (the full key computed once per frame).
#[inline]
fn masked_key(key: &mut Option<AclKey>, set: &AclSet, m: &Meta, port: PortId) -> AclKey {
    policy::masked(key.get_or_insert_with(|| acl::key_of(m, port)), set.used_fields())
}

/// Carries a decision out for one frame: the per-packet parts of the ACLs (`count` rules, sets
/// that look at TCP flags, the rule counters `hits`, from-tenant rules first), then the
/// security group.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn apply<'a>(
    dec: &Decision,
    t: &TenantSpec,
    conns: &mut ConnTable,
    now: Nanos,
    port: PortId,
    m: &Meta,
    frame: impl Fn() -> &'a [u8],
    hits: &mut [u64],
) -> Disposition {
    let out = dec.out();
    if let Disposition::Drop(_) = out {
        return out;
    }
    let [from, to] = &t.policy.acl;
    let (dirs, n) = dec.dirs();
    if dec.allowed() && !from.has_counts() && !to.has_counts() {
        // The common case: cached allows; only the rule counters move.
        for (r, dir) in dec.rules().iter().zip(&dirs[..n]) {
            let offset = if *dir == Direction::ToTenant { from.rules.len() } else { 0 };
            if let Some(h) = r.and_then(|r| hits.get_mut(offset + r as usize)) {
                *h += 1;
            }
        }
    } else {
        let mut key = None;
        for (k, &dir) in dirs[..n].iter().enumerate() {
            let set = &t.policy.acl[dir.index()];
            let offset = if dir == Direction::ToTenant { from.rules.len() } else { 0 };
            let mut hit = |r: u32| {
                if let Some(h) = hits.get_mut(offset + r as usize) {
                    *h += 1;
                }
            };
            if set.has_counts() {
                set.count(&masked_key(&mut key, set, m, port), &mut hit);
            }
            let (deny, rule) = match dec.acl(k) {
                AclOutcome::Allow(r) => (false, r),
                AclOutcome::Deny(r) => (true, r),
                AclOutcome::PerPacket => {
                    let v = set.classify(&masked_key(&mut key, set, m, port));
                    (v.action == Action::Deny, v.rule)
                }
            };
            if let Some(r) = rule {
                hit(r);
            }
            if deny {
                return Disposition::Drop(DropReason::Policy);
            }
        }
    }
    if let Some(g) = &t.policy.group {
        match conns.check(now, g, &dirs[..n], m, frame()) {
            Verdict::Denied => return Disposition::Drop(DropReason::Policy),
            Verdict::Full => return Disposition::Drop(DropReason::ConntrackFull),
            Verdict::Established | Verdict::Opened | Verdict::Untracked => {}
        }
    }
    out
}
