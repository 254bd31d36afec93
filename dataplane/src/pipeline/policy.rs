//! Stages 3b and 4b: anti-spoofing before learning, then ACLs and the security group once the
//! FDB has said where the frame goes (the direction "to the tenant" depends on it).
//!
//! Tenants with no guard, no rule and no group skip both stages after one test.

use crate::batch::{BATCH_SIZE, FrameRef, Meta};
use crate::pipeline::Disposition;
use crate::policy::acl::{AclVerdict, key_of};
use crate::policy::cache::{FlowCache, hash};
use crate::policy::classifier::Key;
use crate::policy::conntrack::{ConnTable, Verdict};
use crate::policy::{Action, Direction};
use crate::port::FrameArea;
use crate::snapshot::{PortId, PortKind, Snapshot, TenantId, TenantSpec};
use crate::time::Nanos;
use crate::trace::DropReason;

/// One worker's policy state: the flow cache and the connection table.
#[derive(Debug)]
pub struct PolicyState {
    /// ACL verdicts by flow.
    pub cache: FlowCache,
    /// Connections of tenants with a security group.
    pub conns: ConnTable,
}

impl PolicyState {
    /// Sized for `snap`.
    pub fn new(snap: &Snapshot) -> Self {
        let l = snap.limits;
        let mut s = PolicyState {
            cache: FlowCache::new(l.flow_cache_entries as usize, l.flow_cache_share_percent),
            conns: ConnTable::new(l.conntrack_capacity as usize),
        };
        s.install(snap);
        s
    }

    /// Adopts a new snapshot's rules: cached verdicts are dropped, connections kept.
    pub fn install(&mut self, snap: &Snapshot) {
        let rules = snap.tenants.iter().any(|t| t.policy.acl.iter().any(|a| !a.is_open()));
        self.cache.install(snap.tenants.len(), rules);
        let groups: Vec<_> = snap.tenants.iter().map(|t| t.policy.group.as_ref()).collect();
        self.conns.install(&groups);
    }
}

/// Drops a frame whose source the attachment does not own.
#[inline]
pub fn guard_one(t: &TenantSpec, m: &Meta, frame: &[u8]) -> Result<(), DropReason> {
    match t.guards.get(usize::from(m.attachment.0)) {
        Some(g) if !g.is_empty() && !g.allows(m, frame) => Err(DropReason::Spoof),
        _ => Ok(()),
    }
}

/// Which directions a frame crosses, given where the FDB sends it.
#[inline]
pub(crate) fn directions(
    snap: &Snapshot,
    ingress: PortId,
    d: Disposition,
) -> ([Direction; 2], usize) {
    let tenant_port =
        |p: PortId| snap.ports.get(p.index()).is_some_and(|s| s.kind == PortKind::Tenant);
    let mut dirs = [Direction::FromTenant; 2];
    let mut n = 0;
    let from = tenant_port(ingress);
    if from {
        n += 1;
    }
    let to = match d {
        Disposition::Tx { port, .. } => tenant_port(port),
        // A flood from the uplink enters the tenant. A flood from a tenant port (unknown
        // unicast, broadcast) is judged as leaving it only: the rules are the tenant's, and a
        // to-tenant verdict on the whole flood would also cut the copy to the uplink.
        Disposition::Flood => !from,
        Disposition::Drop(_) => false,
    };
    if to {
        dirs[n] = Direction::ToTenant;
        n += 1;
    }
    (dirs, n)
}

#[inline]
pub(crate) fn masked(k: &Key, m: &Key) -> Key {
    let mut out = *k;
    for (o, w) in out.iter_mut().zip(m) {
        *o &= w;
    }
    out
}

/// The frames of one batch that need the policy stage, and their flow keys and hashes.
#[derive(Debug)]
pub struct Scratch {
    /// Batch indexes of the frames to check, in order.
    idx: [u8; BATCH_SIZE],
    n: usize,
    /// Per marked frame: the directions, then the masked key and the hash per direction.
    dirs: [([Direction; 2], u8); BATCH_SIZE],
    keys: [[Key; 2]; BATCH_SIZE],
    hashes: [[u64; 2]; BATCH_SIZE],
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            idx: [0; BATCH_SIZE],
            n: 0,
            dirs: [([Direction::FromTenant; 2], 0); BATCH_SIZE],
            keys: [[[0; 8]; 2]; BATCH_SIZE],
            hashes: [[0; 2]; BATCH_SIZE],
        }
    }
}

impl Scratch {
    /// Starts a batch.
    #[inline]
    pub fn reset(&mut self) {
        self.n = 0;
    }

    /// Marks frame `i` of the batch for the policy stage.
    #[inline]
    pub fn mark(&mut self, i: usize) {
        if self.n < BATCH_SIZE {
            self.idx[self.n] = i as u8;
            self.n += 1;
        }
    }

    /// True when some frame was marked.
    #[inline]
    pub fn any(&self) -> bool {
        self.n > 0
    }
}

/// ACLs then the security group for the marked frames of a batch, in three passes so that
/// the flow-cache reads of all of them are in flight at once: keys and hashes (touching each
/// set's signature line), then the matching slots, then the lookups and decisions. `hits` are
/// the tenants' ACL rule counters (from-tenant rules first).
#[allow(clippy::too_many_arguments)]
pub fn check_batch(
    st: &mut PolicyState,
    sc: &mut Scratch,
    snap: &Snapshot,
    now: Nanos,
    ingress: PortId,
    area: &FrameArea,
    frames: &[FrameRef],
    meta: &[Meta],
    out: &mut [Disposition],
    hits: &mut [Vec<u64>],
) {
    let mut touched = 0u32;
    for j in 0..sc.n {
        sc.dirs[j].1 = 0;
        let i = usize::from(sc.idx[j]);
        let m = &meta[i];
        let Some(t) = snap.tenants.get(m.tenant.index()) else { continue };
        let (dirs, n) = directions(snap, ingress, out[i]);
        sc.dirs[j] = (dirs, n as u8);
        let mut key: Option<Key> = None;
        for (k, &dir) in dirs[..n].iter().enumerate() {
            let set = &t.policy.acl[dir.index()];
            if set.is_open() {
                continue;
            }
            let full = key.get_or_insert_with(|| key_of(m, ingress));
            let mk = masked(full, set.used_fields());
            let h = hash(m.tenant, dir, &mk);
            sc.keys[j][k] = mk;
            sc.hashes[j][k] = h;
        }
    }
    // Tight loops of loads only, so many of them are in flight at once.
    for j in 0..sc.n {
        for k in 0..usize::from(sc.dirs[j].1) {
            touched ^= st.cache.touch(sc.hashes[j][k]);
        }
    }
    for j in 0..sc.n {
        for k in 0..usize::from(sc.dirs[j].1) {
            touched ^= st.cache.touch_slot(sc.hashes[j][k]);
        }
    }
    // Keeps the touching loads: their result feeds nothing else.
    std::hint::black_box(touched);
    for j in 0..sc.n {
        let i = usize::from(sc.idx[j]);
        let m = &meta[i];
        let Some(t) = snap.tenants.get(m.tenant.index()) else { continue };
        let (dirs, n) = sc.dirs[j];
        let dirs = &dirs[..usize::from(n)];
        let tenant_hits = match hits.get_mut(m.tenant.index()) {
            Some(h) => h.as_mut_slice(),
            None => &mut [],
        };
        let frame = || area.frame(frames[i]).unwrap_or(&[]);
        if let Err(r) =
            check_one(st, t, m.tenant, now, m, dirs, &sc.keys[j], &sc.hashes[j], frame, tenant_hits)
        {
            out[i] = Disposition::Drop(r);
        }
    }
}

/// ACLs then the security group for one frame crossing `dirs`, with its masked keys and
/// hashes per direction.
#[allow(clippy::too_many_arguments)]
#[inline]
fn check_one<'a>(
    st: &mut PolicyState,
    t: &TenantSpec,
    tenant: TenantId,
    now: Nanos,
    m: &Meta,
    dirs: &[Direction],
    keys: &[Key; 2],
    hashes: &[u64; 2],
    frame: impl Fn() -> &'a [u8],
    hits: &mut [u64],
) -> Result<(), DropReason> {
    for (k, &dir) in dirs.iter().enumerate() {
        let set = &t.policy.acl[dir.index()];
        if set.is_open() {
            continue;
        }
        let key = &keys[k];
        let offset = if dir == Direction::ToTenant { t.policy.acl[0].rules.len() } else { 0 };
        if set.has_counts() {
            set.count(key, |r| {
                if let Some(h) = hits.get_mut(offset + r as usize) {
                    *h += 1;
                }
            });
        }
        let v: AclVerdict = match st.cache.get_hashed(hashes[k], tenant, dir, key) {
            Some(v) => v,
            None => {
                let v = set.classify(key);
                st.cache.put_hashed(hashes[k], tenant, dir, key, v);
                v
            }
        };
        if let Some(h) = v.rule.and_then(|r| hits.get_mut(offset + r as usize)) {
            *h += 1;
        }
        if v.action == Action::Deny {
            return Err(DropReason::Policy);
        }
    }
    if let Some(g) = &t.policy.group {
        match st.conns.check(now, g, dirs, m, frame()) {
            Verdict::Denied => return Err(DropReason::Policy),
            Verdict::Full => return Err(DropReason::ConntrackFull),
            Verdict::Established | Verdict::Opened | Verdict::Untracked => {}
        }
    }
    Ok(())
}
