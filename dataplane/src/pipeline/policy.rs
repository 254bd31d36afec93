//! Stages 3b and 4b: anti-spoofing before learning, then ACLs and the security group once the
//! FDB has said where the frame goes (the direction "to the tenant" depends on it).
//!
//! Tenants with no guard, no rule and no group skip both stages after one test.

use crate::batch::Meta;
use crate::pipeline::Disposition;
use crate::policy::acl::{AclVerdict, key_of};
use crate::policy::cache::FlowCache;
use crate::policy::classifier::Key;
use crate::policy::conntrack::{ConnTable, Verdict};
use crate::policy::{Action, Direction};
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
fn directions(snap: &Snapshot, ingress: PortId, d: Disposition) -> ([Direction; 2], usize) {
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
fn masked(k: &Key, m: &Key) -> Key {
    let mut out = *k;
    for (o, w) in out.iter_mut().zip(m) {
        *o &= w;
    }
    out
}

/// ACLs then the security group, for a frame the FDB decided to send (`d`). `hits` are the
/// tenant's ACL rule counters (from-tenant rules first).
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn check_one(
    st: &mut PolicyState,
    snap: &Snapshot,
    t: &TenantSpec,
    tenant: TenantId,
    now: Nanos,
    ingress: PortId,
    m: &Meta,
    frame: &[u8],
    d: Disposition,
    hits: &mut [u64],
) -> Result<(), DropReason> {
    let (dirs, n) = directions(snap, ingress, d);
    let dirs = &dirs[..n];
    if dirs.is_empty() {
        return Ok(());
    }
    let mut key: Option<Key> = None;
    for &dir in dirs {
        let set = &t.policy.acl[dir.index()];
        if set.is_open() {
            continue;
        }
        let k = masked(key.get_or_insert_with(|| key_of(m, ingress)), set.used_fields());
        let offset = if dir == Direction::ToTenant { t.policy.acl[0].rules.len() } else { 0 };
        if set.has_counts() {
            set.count(&k, |r| {
                if let Some(h) = hits.get_mut(offset + r as usize) {
                    *h += 1;
                }
            });
        }
        let v: AclVerdict = match st.cache.get(tenant, dir, &k) {
            Some(v) => v,
            None => {
                let v = set.classify(&k);
                st.cache.put(tenant, dir, &k, v);
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
        match st.conns.check(now, g, dirs, m, frame) {
            Verdict::Denied => return Err(DropReason::Policy),
            Verdict::Full => return Err(DropReason::ConntrackFull),
            Verdict::Established | Verdict::Opened | Verdict::Untracked => {}
        }
    }
    Ok(())
}
