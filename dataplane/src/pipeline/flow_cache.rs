//! Stage 4 for tenants with policy or flow logs: the flow cache in front of learning,
//! forwarding and the ACLs, then the security group.
//!
//! The frames that need it are hashed as the first stages mark them, and their signature lines
//! asked for then; this stage asks for each frame's candidate entry a few frames before it
//! looks it up, so the cache's memory reads overlap with the work on other frames.
//!
//! - Hit, decision current: the cached decision, without touching the MAC table (a decision
//!   is made again every quarter of the tenant's aging time, which refreshes the source there,
//!   and when the destination's MAC entry expires). For a tenant that logs
//!   its flows without policy, that is the whole stage: the entry is found, its decision taken
//!   and the frame counted in one visit ([`FlowCache::hit_and_count`]), from what the first
//!   stages kept of the frame when they marked it (PERF(tracing) in docs/PERFORMANCE.md).
//! - Miss or stale: learn the source, look the destination up, classify each direction the
//!   frame crosses, and cache the result (in the flow's entry if it had one: its counters
//!   stay).
//!
//! Then, per packet whatever the cache said: `count` rules, ACL sets that look at TCP flags
//! (not part of the flow key), the rule counters, the security group (stateful), and the
//! flow's counters. Frames of a logging tenant that an earlier stage dropped (spoofed) are
//! only counted in their flow.

use super::{Disposition, Pipeline, classify, learn, policy};
use crate::batch::{BATCH_SIZE, Meta, PacketFlags};
use crate::flow::FlowCache;
use crate::flow::cache::{ALL_WAYS, AclOutcome, Decision, Key, Ways, hash, key_of};
use crate::flow::overlay::NO_VTEP;
use crate::frame::{FrameArea, FrameRef};
use crate::policy::Action;
use crate::policy::acl::{self, AclSet};
use crate::policy::classifier::Key as AclKey;
use crate::policy::conntrack::{ConnTable, Judgement, Verdict};
use crate::snapshot::{CHECK_POLICY, Snapshot, TenantSpec};
use crate::time::Nanos;
use crate::trace::record::{FlowPath, FrameTrace, Outcome};
use crate::vocab::{Direction, DropReason, PortId, TenantId};

/// A frame of the batch marked for this stage: its flow's key and hash, the ways of its set
/// whose signature matched, and what the common case needs of the frame (kept here, so a hit
/// reads nothing else of it).
#[derive(Debug, Clone, Copy)]
struct Marked {
    key: Key,
    hash: u64,
    ways: Ways,
    len: u32,
    tenant: TenantId,
    /// Index in the batch.
    frame: u8,
    tcp_flags: u8,
    /// Not dropped yet, and the tenant has no policy: a hit is decided by the cache alone.
    plain: bool,
}

/// The frames of one batch that go through the flow cache.
#[derive(Debug)]
pub struct Scratch {
    marked: [Marked; BATCH_SIZE],
    n: usize,
}

impl Default for Scratch {
    fn default() -> Self {
        let none = Marked {
            key: Key::ZERO,
            hash: 0,
            ways: 0,
            len: 0,
            tenant: TenantId(0),
            frame: 0,
            tcp_flags: 0,
            plain: false,
        };
        Scratch { marked: [none; BATCH_SIZE], n: 0 }
    }
}

impl Scratch {
    /// Starts a batch.
    #[inline]
    pub fn reset(&mut self) {
        self.n = 0;
    }

    /// Marks frame `i` (`m`, `len` bytes, from `port`) of the batch for this stage, and asks
    /// for its flow's signature line now: the rest of the first stages' loop runs while it
    /// comes. `plain`: not dropped, and the tenant has no policy.
    #[inline(always)]
    pub fn mark(
        &mut self,
        flows: &FlowCache,
        i: usize,
        m: &Meta,
        len: u32,
        port: PortId,
        plain: bool,
    ) {
        if let Some(s) = self.marked.get_mut(self.n) {
            s.key = key_of(m, port);
            s.hash = hash(m.tenant, &s.key);
            s.len = len;
            s.tenant = m.tenant;
            s.frame = i as u8;
            s.tcp_flags = m.tcp_flags;
            s.plain = plain;
            flows.prefetch_set(s.hash);
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

/// Runs the stage on the marked frames of a batch from `port`. `REC` and `DRY` as in
/// `Pipeline::process_as`: record each frame's outcomes; change nothing that outlives the
/// batch (no learning, no entry stored or counted, no connection opened).
#[allow(clippy::too_many_arguments)]
pub(super) fn run<const REC: bool, const DRY: bool>(
    p: &mut Pipeline,
    snap: &Snapshot,
    now: Nanos,
    port: PortId,
    area: &FrameArea,
    frames: &[FrameRef],
    meta: &[Meta],
    out: &mut [Disposition],
) {
    let Pipeline {
        fdb,
        flows,
        policy,
        scratch,
        counters,
        announcements,
        records,
        overlay,
        remote,
        remote_any,
        ..
    } = p;
    let Scratch { marked, n } = &mut **scratch;
    let marked = &mut marked[..(*n).min(BATCH_SIZE)];
    // A software pipeline: the signature lines were asked for while the frames were marked;
    // frame j's entry is asked for AHEAD frames before it is looked up. A bounded distance
    // keeps the prefetches in flight within what the core tracks (asking for a whole batch at
    // once had most of them dropped, and the lookups waited for each line in turn).
    for a in marked.iter_mut().take(AHEAD) {
        a.ways = flows.prefetch_entry(a.hash);
    }
    for j in 0..marked.len() {
        if let Some(a) = marked.get_mut(j + AHEAD) {
            a.ways = flows.prefetch_entry(a.hash);
        }
        let Some((cur, later)) = marked.get_mut(j..).and_then(|r| r.split_first_mut()) else {
            break;
        };
        let i = usize::from(cur.frame);
        let Some(o) = out.get_mut(i) else { continue };
        let mut rec = if REC { records.frame_mut(i) } else { None };
        let (h, key, t) = (cur.hash, &cur.key, cur.tenant);
        let found = if cur.plain && !DRY {
            // The common case of a tenant that logs its flows without policy: a current
            // decision, counted in the same visit of the entry.
            let g = fdb.generation(t);
            match flows.hit_and_count(h, cur.ways, t, key, g, now, cur.len, cur.tcp_flags) {
                Ok(d) => {
                    *o = d;
                    if let Some(r) = rec.as_deref_mut() {
                        r.push(Outcome::FlowCache(FlowPath::Hit));
                        r.push(Outcome::Fdb(d));
                    }
                    continue;
                }
                Err(found) => found,
            }
        } else {
            flows.find_in(h, cur.ways, t, key)
        };
        let (Some(m), Some(f)) = (meta.get(i), frames.get(i)) else { continue };
        if let Disposition::Drop(_) = *o {
            // Dropped before a decision (spoofed): counted in its flow, nothing decided. (A new
            // entry may have replaced a way another frame of this batch found: later frames
            // look their flow up again.)
            if DRY {
                continue;
            }
            let s = found.or_else(|| flows.store(h, t, key, None, None, 0, Nanos::ZERO));
            if found.is_none() {
                later.iter_mut().for_each(|a| a.ways = ALL_WAYS);
            }
            if let Some(s) = s {
                flows.record(s, now, f.len(), o, m.tcp_flags);
            }
            continue;
        }
        let Some(spec) = snap.tenants.get(t.index()) else { continue };
        let cached = if DRY {
            flows.decision_at(found, fdb.generation(t), now)
        } else {
            flows.decision(found, fdb.generation(t), now)
        };
        let (dec, slot) = match cached {
            Some(d) => {
                if let Some(r) = rec.as_deref_mut() {
                    r.push(Outcome::FlowCache(FlowPath::Hit));
                    r.push(Outcome::Fdb(d.out()));
                }
                (d, found)
            }
            None => {
                if !DRY {
                    learn(fdb, counters, announcements, now, port, m);
                }
                let (out, until, found_host) = classify::forward_host(fdb, now, port, m);
                let host = &mut remote[i];
                if found_host != NO_VTEP {
                    *host = found_host;
                    *remote_any = true;
                }
                let out = classify::or_remote(snap, overlay, port, m, out, host);
                *remote_any |= *host != NO_VTEP;
                if let Some(r) = rec.as_deref_mut() {
                    let path = if found.is_some() { FlowPath::Stale } else { FlowPath::Miss };
                    r.push(Outcome::FlowCache(path));
                    r.push(Outcome::Fdb(out));
                }
                let dec = decide(snap, spec, port, m, out);
                if DRY {
                    (dec, None)
                } else {
                    let g = fdb.generation(t);
                    // Made again a quarter of the tenant's aging time from now (which refreshes
                    // the source in the MAC table), or when the destination's entry expires.
                    let recheck = now.add(Nanos(spec.mac_aging.0 / 4)).min(until);
                    if found.is_none() {
                        // An insert may take a way a later frame of the batch found: they
                        // search their whole set instead.
                        later.iter_mut().for_each(|a| a.ways = ALL_WAYS);
                    }
                    (dec, flows.store(h, t, key, found, Some(&dec), g, recheck))
                }
            }
        };
        let d = if snap.checks(t) & CHECK_POLICY != 0 {
            let hits = match counters.acl_hits.get_mut(t.index()) {
                Some(h) => h.as_mut_slice(),
                None => &mut [],
            };
            let frame = || area.frame(f).unwrap_or(&[]);
            apply::<DRY>(&dec, spec, &mut policy.conns, now, port, m, frame, hits, rec)
        } else {
            // Flows logged, no policy: where the MAC table sends it.
            dec.out()
        };
        *o = d;
        if let Some(s) = slot {
            flows.record(s, now, f.len(), &d, m.tcp_flags);
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
/// security group. Each step's outcome goes to `rec` when the frame is recorded. `DRY`: the
/// security group judges without opening or moving a connection.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn apply<'a, const DRY: bool>(
    dec: &Decision,
    t: &TenantSpec,
    conns: &mut ConnTable,
    now: Nanos,
    port: PortId,
    m: &Meta,
    frame: impl Fn() -> &'a [u8],
    hits: &mut [u64],
    mut rec: Option<&mut FrameTrace>,
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
            if let Some(x) = rec.as_deref_mut() {
                let open = t.policy.acl[dir.index()].is_open();
                x.push(Outcome::Acl { dir: *dir, open, rule: *r, deny: false });
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
                set.count(&masked_key(&mut key, set, m, port), |r| {
                    hit(r);
                    if let Some(x) = rec.as_deref_mut() {
                        x.push(Outcome::Counted { dir, rule: r });
                    }
                });
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
            if let Some(x) = rec.as_deref_mut() {
                x.push(Outcome::Acl { dir, open: set.is_open(), rule, deny });
            }
            if deny {
                return Disposition::Drop(DropReason::Policy);
            }
        }
    }
    // A later fragment was judged with its first fragment, whose verdict it takes (the
    // fragment stage drops it if that was a drop); it carries no header to track.
    let Some(g) = &t.policy.group else {
        if let Some(x) = rec {
            x.push(Outcome::Group(None));
        }
        return out;
    };
    if m.flags.has(PacketFlags::PORTS_FROM_FIRST) {
        if let Some(x) = rec {
            x.push(Outcome::GroupFromFirstFragment);
        }
        return out;
    }
    let dirs = &dirs[..n];
    if DRY || rec.is_some() {
        // What the table decides, before anything changes (the same judgement `check` makes).
        let j = conns.judge(now, g, dirs, m, frame());
        if let Some(x) = rec {
            x.push(Outcome::Group(Some(j)));
        }
        if DRY {
            return match j {
                Judgement::Denied(_) => Disposition::Drop(DropReason::Policy),
                Judgement::Full => Disposition::Drop(DropReason::ConntrackFull),
                Judgement::Untracked
                | Judgement::Known(_)
                | Judgement::Open
                | Judgement::Reopen => out,
            };
        }
    }
    match conns.check(now, g, dirs, m, frame()) {
        Verdict::Denied => Disposition::Drop(DropReason::Policy),
        Verdict::Full => Disposition::Drop(DropReason::ConntrackFull),
        Verdict::Established | Verdict::Opened | Verdict::Untracked => out,
    }
}
