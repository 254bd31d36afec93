//! Stage 4: L2 forwarding in the tenant's domain. Learns the source behind the ingress
//! attachment, then looks the destination up: a hit goes to that attachment, a miss or a group
//! destination floods the tenant's other attachments.

use crate::batch::Meta;
use crate::flow::Fdb;
use crate::flow::fdb::Learn;
use crate::pipeline::Disposition;
use crate::snapshot::{Attachment, PortId};
use crate::time::Nanos;
use crate::trace::{DropReason, counters::FdbStats};

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

/// Where one frame goes in its tenant's domain.
#[inline]
pub fn forward_one(fdb: &Fdb, now: Nanos, ingress: PortId, m: &Meta) -> Disposition {
    if m.dst.is_multicast() {
        return Disposition::Flood;
    }
    match fdb.lookup(now, m.tenant, m.dst) {
        None => Disposition::Flood,
        Some(a) if a.port == ingress => Disposition::Drop(DropReason::Hairpin),
        Some(a) => Disposition::Tx { port: a.port, vlan: a.vlan },
    }
}
