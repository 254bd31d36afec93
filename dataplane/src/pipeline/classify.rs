//! Stage 4: L2 forwarding in the tenant's domain. Learns the source behind the ingress
//! attachment, then looks the destination up: a hit goes to that attachment, a miss or a group
//! destination floods the tenant's other attachments.

use crate::batch::Meta;
use crate::flow::Fdb;
use crate::pipeline::Disposition;
use crate::snapshot::{PortId, Snapshot};
use crate::time::Nanos;
use crate::trace::{DropReason, counters::FdbStats};

/// Learns and forwards one frame.
#[inline]
pub fn classify_one(
    fdb: &mut Fdb,
    stats: &mut FdbStats,
    now: Nanos,
    snap: &Snapshot,
    ingress: PortId,
    m: &Meta,
) -> Disposition {
    fdb.learn(now, m.tenant, m.src, m.attachment).count(stats);
    if m.dst.is_multicast() {
        return Disposition::Flood;
    }
    let Some(att) = fdb.lookup(now, m.tenant, m.dst) else {
        return Disposition::Flood;
    };
    match snap.attachment(m.tenant, att) {
        Some(a) if a.port == ingress => Disposition::Drop(DropReason::Hairpin),
        Some(a) => Disposition::Tx {
            port: a.port,
            vlan: a.vlan,
        },
        None => Disposition::Flood,
    }
}
