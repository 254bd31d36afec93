//! Per-worker counters in plain `u64` arrays, and the closed list of reasons a packet is dropped.
//!
//! # Design
//! `DropReason` is the only way the pipeline drops a packet, so every drop is counted under
//! exactly one reason. Drops are counted per ingress port and, when the tenant is known, per
//! tenant as well (two views of the same single reason, not two reasons). Why a frame was
//! malformed is counted again by [`ParseError`] so an operator can tell truncation from bad IHL.
//! The arrays are sized when a snapshot is installed, never on the packet path.

pub use crate::vocab::{DropReason, ParseError};
use crate::vocab::{PortId, TenantId};

/// Packet and byte counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PktBytes {
    /// Packets.
    pub packets: u64,
    /// Bytes (frame length as received or sent).
    pub bytes: u64,
}

impl PktBytes {
    /// Adds one packet of `len` bytes.
    #[inline]
    pub fn add(&mut self, len: u32) {
        self.packets += 1;
        self.bytes += u64::from(len);
    }

    /// Adds another count.
    #[inline]
    pub fn add_all(&mut self, o: PktBytes) {
        self.packets += o.packets;
        self.bytes += o.bytes;
    }
}

/// Adds packets to per-tenant counters a run at a time: consecutive packets of one tenant
/// (the common case: a port that faces one tenant) become one addition to the array instead
/// of one per packet, each waiting for the previous one's store (PERF(pipeline)).
#[derive(Debug, Clone, Copy)]
pub struct TenantRun {
    tenant: TenantId,
    sum: PktBytes,
}

impl Default for TenantRun {
    fn default() -> Self {
        TenantRun { tenant: TenantId(u16::MAX), sum: PktBytes::default() }
    }
}

impl TenantRun {
    /// Counts one packet of `t`, adding the previous run to `into` when the tenant changes.
    #[inline]
    pub fn add(&mut self, into: &mut [PktBytes], t: TenantId, len: u32) {
        if t != self.tenant {
            self.flush(into);
            self.tenant = t;
        }
        self.sum.add(len);
    }

    /// Adds the current run to `into`.
    #[inline]
    pub fn flush(&mut self, into: &mut [PktBytes]) {
        if let Some(c) = into.get_mut(self.tenant.index()) {
            c.packets += self.sum.packets;
            c.bytes += self.sum.bytes;
        }
        self.sum = PktBytes::default();
    }
}

/// MAC learning events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FdbStats {
    /// New entries learned.
    pub learned: u64,
    /// Entries whose port changed (a host moved).
    pub moved: u64,
    /// Source MACs not learned because the tenant's quota or the table was full.
    pub quota_exceeded: u64,
    /// Entries removed by aging.
    pub aged: u64,
    /// Entries learned by another worker and applied here.
    pub remote: u64,
    /// Announcements to other workers lost because a buffer or ring was full (the other
    /// workers flood that MAC's traffic until the next announcement).
    pub unannounced: u64,
}

/// Traffic that crossed the overlay (VXLAN on the underlay port).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverlayStats {
    /// Tenant frames sent to other hosts (each copy of a replicated frame counts), with their
    /// inner bytes.
    pub encap: PktBytes,
    /// Tenant frames received from other hosts, with their inner bytes.
    pub decap: PktBytes,
    /// Copies made for head-end replication (a flood or an unknown destination sent to every
    /// host of the tenant), beyond the original.
    pub replicas: u64,
    /// ARP requests for another host's address answered from the cluster map.
    pub arp_suppressed: u64,
    /// IPv6 neighbour solicitations for another host's address answered from the cluster map.
    pub nd_suppressed: u64,
    /// ARP requests for this host's tunnel address answered on the underlay.
    pub tunnel_arp: u64,
}

/// One worker's counters. Indexed by dense ids; sized by [`Counters::resize`].
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Received, per port.
    pub port_rx: Vec<PktBytes>,
    /// Transmitted, per port.
    pub port_tx: Vec<PktBytes>,
    /// Drops per ingress port and reason.
    pub port_drops: Vec<[u64; DropReason::COUNT]>,
    /// From the tenant into the switch, per tenant.
    pub tenant_rx: Vec<PktBytes>,
    /// From the switch to the tenant, per tenant.
    pub tenant_tx: Vec<PktBytes>,
    /// Put into an egress scheduler's queue, per tenant.
    pub tenant_queued: Vec<PktBytes>,
    /// Drops per tenant and reason (only where the tenant was resolved).
    pub tenant_drops: Vec<[u64; DropReason::COUNT]>,
    /// Malformed frames by parse check.
    pub parse_errors: [u64; ParseError::COUNT],
    /// MAC learning.
    pub fdb: FdbStats,
    /// Flood copies made (frames beyond the original).
    pub flood_copies: u64,
    /// Port wakeups (`sendto`/`poll` kicks) that failed.
    pub kick_errors: u64,
    /// TCP and UDP checksums a sender left partial (checksum offload) that the switch
    /// completed.
    pub checksums_completed: u64,
    /// Large TCP segments that crossed the switch whole, cut into MTU-sized ones on their way
    /// out of a port that does not take them whole.
    pub segmented: u64,
    /// VXLAN encapsulation and decapsulation.
    pub overlay: OverlayStats,
    /// Per tenant, matches of each ACL rule: the from-tenant set's rules, then the to-tenant
    /// set's (count rules every time they match, deciding rules when they decide).
    pub acl_hits: Vec<Vec<u64>>,
}

impl Counters {
    /// Counters for `ports` ports and `tenants` tenants, all zero.
    pub fn new(ports: usize, tenants: usize) -> Self {
        let mut c = Counters::default();
        c.resize(ports, tenants);
        c
    }

    /// Grows or shrinks the tables (on a snapshot change; never on the packet path).
    pub fn resize(&mut self, ports: usize, tenants: usize) {
        self.port_rx.resize(ports, PktBytes::default());
        self.port_tx.resize(ports, PktBytes::default());
        self.port_drops.resize(ports, [0; DropReason::COUNT]);
        self.tenant_rx.resize(tenants, PktBytes::default());
        self.tenant_tx.resize(tenants, PktBytes::default());
        self.tenant_queued.resize(tenants, PktBytes::default());
        self.tenant_drops.resize(tenants, [0; DropReason::COUNT]);
    }

    /// Port `p`'s id was given to a new port: its counters start again at zero.
    pub fn clear_port(&mut self, p: PortId) {
        let i = p.index();
        if i < self.port_rx.len() {
            self.port_rx[i] = PktBytes::default();
            self.port_tx[i] = PktBytes::default();
            self.port_drops[i] = [0; DropReason::COUNT];
        }
    }

    /// Tenant `t`'s id was given to a new tenant: its counters start again at zero.
    pub fn clear_tenant(&mut self, t: TenantId) {
        let i = t.index();
        if i < self.tenant_rx.len() {
            self.tenant_rx[i] = PktBytes::default();
            self.tenant_tx[i] = PktBytes::default();
            self.tenant_queued[i] = PktBytes::default();
            self.tenant_drops[i] = [0; DropReason::COUNT];
        }
    }

    /// Counts one dropped packet under `reason`.
    #[inline]
    pub fn drop(&mut self, port: PortId, tenant: Option<TenantId>, reason: DropReason) {
        if let Some(p) = self.port_drops.get_mut(port.index()) {
            p[reason.index()] += 1;
        }
        if let Some(t) = tenant.and_then(|t| self.tenant_drops.get_mut(t.index())) {
            t[reason.index()] += 1;
        }
    }

    /// Adds another worker's counters to these (for reports; tables grow to the larger size).
    pub fn merge(&mut self, o: &Counters) {
        fn sum_pb(a: &mut Vec<PktBytes>, b: &[PktBytes]) {
            if a.len() < b.len() {
                a.resize(b.len(), PktBytes::default());
            }
            for (x, y) in a.iter_mut().zip(b) {
                x.packets += y.packets;
                x.bytes += y.bytes;
            }
        }
        fn sum_drops(a: &mut Vec<[u64; DropReason::COUNT]>, b: &[[u64; DropReason::COUNT]]) {
            if a.len() < b.len() {
                a.resize(b.len(), [0; DropReason::COUNT]);
            }
            for (x, y) in a.iter_mut().zip(b) {
                for (u, v) in x.iter_mut().zip(y) {
                    *u += v;
                }
            }
        }
        sum_pb(&mut self.port_rx, &o.port_rx);
        sum_pb(&mut self.port_tx, &o.port_tx);
        sum_drops(&mut self.port_drops, &o.port_drops);
        sum_pb(&mut self.tenant_rx, &o.tenant_rx);
        sum_pb(&mut self.tenant_tx, &o.tenant_tx);
        sum_pb(&mut self.tenant_queued, &o.tenant_queued);
        sum_drops(&mut self.tenant_drops, &o.tenant_drops);
        for (x, y) in self.parse_errors.iter_mut().zip(&o.parse_errors) {
            *x += y;
        }
        let (f, g) = (&mut self.fdb, &o.fdb);
        f.learned += g.learned;
        f.moved += g.moved;
        f.quota_exceeded += g.quota_exceeded;
        f.aged += g.aged;
        f.remote += g.remote;
        f.unannounced += g.unannounced;
        self.flood_copies += o.flood_copies;
        self.kick_errors += o.kick_errors;
        self.checksums_completed += o.checksums_completed;
        self.segmented += o.segmented;
        let (v, w) = (&mut self.overlay, &o.overlay);
        v.encap.add_all(w.encap);
        v.decap.add_all(w.decap);
        v.replicas += w.replicas;
        v.arp_suppressed += w.arp_suppressed;
        v.nd_suppressed += w.nd_suppressed;
        v.tunnel_arp += w.tunnel_arp;
        if self.acl_hits.len() < o.acl_hits.len() {
            self.acl_hits.resize(o.acl_hits.len(), Vec::new());
        }
        for (a, b) in self.acl_hits.iter_mut().zip(&o.acl_hits) {
            if a.len() < b.len() {
                a.resize(b.len(), 0);
            }
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
    }

    /// Total drops under `reason`, summed over ports.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.port_drops.iter().map(|p| p[reason.index()]).sum()
    }

    /// Total drops, all reasons.
    pub fn total_drops(&self) -> u64 {
        self.port_drops.iter().flatten().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_snake_case_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in DropReason::ALL {
            let l = r.as_label();
            assert!(l.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{l}");
            assert!(seen.insert(l), "duplicate label {l}");
        }
        assert_eq!(DropReason::ALL[DropReason::TxFull.index()], DropReason::TxFull);
    }

    #[test]
    fn merge_adds_every_table() {
        let mut a = Counters::new(1, 1);
        let mut b = Counters::new(2, 1);
        a.port_rx[0].add(100);
        b.port_rx[0].add(60);
        b.port_tx[1].add(60);
        b.drop(PortId(1), Some(TenantId(0)), DropReason::TxFull);
        b.fdb.remote = 3;
        a.merge(&b);
        assert_eq!((a.port_rx[0].packets, a.port_rx[0].bytes), (2, 160));
        assert_eq!(a.port_tx[1].packets, 1);
        assert_eq!(a.drops(DropReason::TxFull), 1);
        assert_eq!(a.tenant_drops[0][DropReason::TxFull.index()], 1);
        assert_eq!(a.fdb.remote, 3);
    }

    #[test]
    fn one_drop_one_reason() {
        let mut c = Counters::new(2, 1);
        c.drop(PortId(1), Some(TenantId(0)), DropReason::Hairpin);
        c.drop(PortId(0), None, DropReason::UnknownTenant);
        assert_eq!(c.total_drops(), 2);
        assert_eq!(c.drops(DropReason::Hairpin), 1);
        assert_eq!(c.tenant_drops[0][DropReason::Hairpin.index()], 1);
        assert_eq!(c.tenant_drops[0].iter().sum::<u64>(), 1);
    }
}
