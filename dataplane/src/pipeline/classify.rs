//! Stage 4: L2 forwarding in the tenant's domain. Learns the source behind the ingress
//! attachment, then looks the destination up: a hit goes to that attachment, a miss or a group
//! destination floods the tenant's other attachments.

use crate::batch::Meta;
use crate::flow::Fdb;
use crate::flow::fdb::Learn;
use crate::snapshot::Attachment;
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

/// Where one frame goes in its tenant's domain.
#[inline]
pub fn forward_one(fdb: &Fdb, now: Nanos, ingress: PortId, m: &Meta) -> Disposition {
    forward_until(fdb, now, ingress, m).0
}

/// [`forward_one`], and until when the answer holds unless the tenant's MAC table changes
/// ([`Fdb::lookup_until`]; never, for a flood or an unknown destination: learning it moves the
/// generation).
#[inline(always)]
pub fn forward_until(fdb: &Fdb, now: Nanos, ingress: PortId, m: &Meta) -> (Disposition, Nanos) {
    const NEVER: Nanos = Nanos(u64::MAX);
    if m.dst.is_multicast() {
        return (Disposition::Flood, NEVER);
    }
    match fdb.lookup_until(now, m.tenant, m.dst) {
        None => (Disposition::Flood, NEVER),
        Some((a, until)) if a.port == ingress => (Disposition::Drop(DropReason::Hairpin), until),
        Some((a, until)) => (Disposition::Tx { port: a.port, vlan: a.vlan }, until),
    }
}
