//! Stage 4: L2 forwarding in the tenant's domain. Learns the source behind the ingress
//! attachment, then looks the destination up: a hit goes to that attachment, a miss or a group
//! destination floods the tenant's other attachments.

use crate::batch::Meta;
use crate::flow::Fdb;
use crate::flow::fdb::Learn;
use crate::flow::overlay::{NO_VTEP, OverlayMap, VtepId};
use crate::snapshot::{Attachment, Snapshot};
use crate::time::Nanos;
use crate::trace::counters::FdbStats;
use crate::vocab::{Disposition, DropReason, PortId};

/// Learns the source of one frame behind its ingress attachment.
#[inline]
pub fn learn_one(
    fdb: &mut Fdb,
    stats: &mut FdbStats,
    now: Nanos,
    ingress: PortId,
    m: &Meta,
) -> Learn {
    let here = Attachment { port: ingress, vlan: m.outer_vlan };
    let l = fdb.learn(now, m.tenant, m.src, here);
    l.count(stats);
    l
}

/// The MAC table's answer `out`, unless it floods a unicast destination the cluster map has
/// on another host of the tenant: then to the tenant's underlay attachment, and `host` says
/// which host (the output sends it there alone without asking the map again). A frame from
/// another host for a third one is a hairpin.
#[inline]
pub fn or_remote(
    snap: &Snapshot,
    map: &OverlayMap,
    ingress: PortId,
    m: &Meta,
    out: Disposition,
    host: &mut VtepId,
) -> Disposition {
    if out != Disposition::Flood || m.dst.is_multicast() {
        return out;
    }
    let Some((vni, port)) = snap.overlay_of(m.tenant) else { return out };
    match map.host_id(vni, m.dst) {
        Some(_) if port == ingress => Disposition::Drop(DropReason::Hairpin),
        Some(v) => {
            *host = v;
            Disposition::Tx { port, vlan: None }
        }
        None => out,
    }
}

/// Where one frame goes in its tenant's domain, until when the answer holds unless the
/// tenant's MAC table changes (never, for a flood or an unknown destination: learning it moves
/// the generation), and for a destination the cluster map put in the table, its host
/// ([`NO_VTEP`] otherwise).
#[inline(always)]
pub fn forward_host(
    fdb: &Fdb,
    now: Nanos,
    ingress: PortId,
    m: &Meta,
) -> (Disposition, Nanos, VtepId) {
    const NEVER: Nanos = Nanos(u64::MAX);
    if m.dst.is_multicast() {
        return (Disposition::Flood, NEVER, NO_VTEP);
    }
    match fdb.lookup_host(now, m.tenant, m.dst) {
        None => (Disposition::Flood, NEVER, NO_VTEP),
        Some((a, until, _)) if a.port == ingress => {
            (Disposition::Drop(DropReason::Hairpin), until, NO_VTEP)
        }
        Some((a, until, host)) => (Disposition::Tx { port: a.port, vlan: a.vlan }, until, host),
    }
}
