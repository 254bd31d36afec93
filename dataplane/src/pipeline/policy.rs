//! Policy helpers of the stages: anti-spoofing before learning (stage 3b), and the directions
//! a frame crosses once the FDB has said where it goes (the flow-cache stage decides and
//! caches the ACL verdicts of those directions, [`super::flow_cache`]).
//!
//! Tenants with no guard skip the guard after one test; tenants without policy or flow logs
//! never reach the flow cache.

use crate::batch::Meta;
use crate::policy::classifier::Key;
use crate::policy::conntrack::ConnTable;
pub use crate::policy::spoof::Refusal;
use crate::snapshot::{CHECK_GUARD, PortKind, Snapshot, TenantSpec};
use crate::vocab::{Direction, Disposition, ParseError, PortId};
use crate::wire::{Ipv4Packet, checksum};

const ETH_IPV4: u16 = 0x0800;

/// One worker's stateful policy: the connection table.
#[derive(Debug)]
pub struct PolicyState {
    /// Connections of tenants with a security group.
    pub conns: ConnTable,
}

impl PolicyState {
    /// Sized for `snap`.
    pub fn new(snap: &Snapshot) -> Self {
        let mut s = PolicyState { conns: ConnTable::new(snap.limits.conntrack_capacity as usize) };
        s.install(snap);
        s
    }

    /// Adopts a new snapshot's groups: connections are kept.
    pub fn install(&mut self, snap: &Snapshot) {
        let groups: Vec<_> = snap.tenants.iter().map(|t| t.policy.group.as_ref()).collect();
        self.conns.install(&groups);
    }
}

/// Drops a frame whose source the attachment does not own.
#[inline]
pub fn guard_one(t: &TenantSpec, m: &Meta, frame: &[u8]) -> Result<(), Refusal> {
    match t.guards.get(usize::from(m.attachment.0)) {
        Some(g) if !g.is_empty() => g.check(m, frame),
        _ => Ok(()),
    }
}

/// True when the attachment `m` came in on has a guard (anti-spoofing configured).
#[inline]
pub fn guarded(snap: &Snapshot, m: &Meta) -> bool {
    snap.tenants
        .get(m.tenant.index())
        .and_then(|t| t.guards.get(usize::from(m.attachment.0)))
        .is_some_and(|g| !g.is_empty())
}

/// The checks of tenants with anti-spoofing or policy, before learning: the attachment's
/// guard ([`guard_one`]), and the IPv4 header checksum (a frame the receiver would discard is
/// not worth judging, and a forged header must not reach a policy that trusts its fields).
#[inline]
pub fn check_one(snap: &Snapshot, checks: u8, m: &Meta, frame: &[u8]) -> Result<(), Refusal> {
    if checks & CHECK_GUARD != 0
        && let Some(t) = snap.tenants.get(m.tenant.index())
    {
        guard_one(t, m, frame)?;
    }
    if m.key.ethertype == ETH_IPV4 {
        // The parser checked the header's lengths: it is all in the frame.
        let l3 = usize::from(m.l3_offset);
        let ok = match frame.get(l3..).and_then(|b| b.first_chunk::<20>()) {
            Some(h) if h[0] == 0x45 => checksum::ipv4_header_ok(h),
            _ => frame
                .get(l3..)
                .and_then(|b| Ipv4Packet::new_checked(b).ok())
                .is_some_and(|ip| ip.checksum_ok()),
        };
        if !ok {
            return Err(Refusal::Malformed(ParseError::Ipv4));
        }
    }
    Ok(())
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
