//! The cluster map as a worker sees it: which host (tunnel endpoint, VTEP) has each remote MAC
//! of a tenant, and which hosts carry each tenant, for head-end replication of its floods.
//!
//! The control plane builds it from the cluster's store (etcd) and sends it to every worker
//! whole, as an `Arc` in a typed command; a worker swaps it between batches, so a lookup is a
//! hash read with no lock, and a map being rebuilt never shows half of a change. Maps change
//! when hosts, tenants or VMs come and go (seconds apart), not per packet.
#![forbid(unsafe_code)]

use std::collections::HashMap;

use crate::wire::MacAddr;

/// Another host's tunnel endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Vtep {
    /// Its tunnel address (the outer destination).
    pub ip: [u8; 4],
    /// Its MAC on the underlay (the outer destination MAC when there is no gateway).
    pub mac: MacAddr,
}

/// Index of a [`Vtep`] in its map.
pub type VtepId = u16;

/// No host ([`VtepId`]): ask the map.
pub const NO_VTEP: VtepId = VtepId::MAX;

type Hasher = ahash::RandomState;

/// Remote MACs and hosts per VNI. Empty by default: a switch with no cluster sends nothing
/// to other hosts.
#[derive(Debug, Clone, Default)]
pub struct OverlayMap {
    /// The store's revision the map was built from (for status and logs).
    pub revision: u64,
    vteps: Vec<Vtep>,
    /// (VNI, MAC) → the host that has it.
    macs: HashMap<(u32, u64), VtepId, Hasher>,
    /// VNI → the other hosts that carry it, each once.
    members: HashMap<u32, Vec<VtepId>, Hasher>,
    /// (VNI, IPv4 or v4-mapped IPv6 address) → MAC, for answering ARP and neighbour
    /// solicitations locally.
    ips: HashMap<(u32, [u8; 16]), MacAddr, Hasher>,
}

impl OverlayMap {
    /// The host that has `mac` in `vni`, if the map knows it.
    #[inline]
    pub fn host_of(&self, vni: u32, mac: MacAddr) -> Option<&Vtep> {
        let i = *self.macs.get(&(vni, mac.to_u64()))?;
        self.vteps.get(usize::from(i))
    }

    /// The index of the host that has `mac` in `vni`.
    #[inline]
    pub fn host_id(&self, vni: u32, mac: MacAddr) -> Option<VtepId> {
        self.macs.get(&(vni, mac.to_u64())).copied()
    }

    /// The other hosts that carry `vni` (empty when none does).
    #[inline]
    pub fn members(&self, vni: u32) -> &[VtepId] {
        self.members.get(&vni).map_or(&[], Vec::as_slice)
    }

    /// A host by index.
    #[inline]
    pub fn vtep(&self, i: VtepId) -> Option<&Vtep> {
        self.vteps.get(usize::from(i))
    }

    /// The MAC the map has for address `ip` (v4-mapped for IPv4) in `vni`.
    #[inline]
    pub fn mac_of(&self, vni: u32, ip: &[u8; 16]) -> Option<MacAddr> {
        self.ips.get(&(vni, *ip)).copied()
    }

    /// Remote MACs, hosts and addresses in the map.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.macs.len(), self.vteps.len(), self.ips.len())
    }

    /// Every (VNI, MAC, host index) the map holds, in no order.
    pub fn entry_ids(&self) -> impl Iterator<Item = (u32, MacAddr, VtepId)> + '_ {
        self.macs.iter().map(|(&(vni, mac), &i)| (vni, MacAddr::from_u64(mac), i))
    }
}

/// Builds an [`OverlayMap`].
#[derive(Debug, Default)]
pub struct OverlayBuilder {
    map: OverlayMap,
    index: HashMap<Vtep, VtepId>,
}

impl OverlayBuilder {
    /// An empty map of `revision`.
    pub fn new(revision: u64) -> Self {
        OverlayBuilder { map: OverlayMap { revision, ..Default::default() }, ..Default::default() }
    }

    fn vtep(&mut self, v: Vtep) -> Option<VtepId> {
        if let Some(&i) = self.index.get(&v) {
            return Some(i);
        }
        let i = VtepId::try_from(self.map.vteps.len()).ok().filter(|&i| i < NO_VTEP - 1)?;
        self.map.vteps.push(v);
        self.index.insert(v, i);
        Some(i)
    }

    /// Host `v` carries `vni`. False when the map has no room for another host (65 534).
    pub fn member(&mut self, vni: u32, v: Vtep) -> bool {
        let Some(i) = self.vtep(v) else { return false };
        let m = self.map.members.entry(vni).or_default();
        if !m.contains(&i) {
            m.push(i);
        }
        true
    }

    /// `mac` of `vni` is behind host `v` (which then also carries `vni`), with addresses
    /// `ips` (v4-mapped for IPv4).
    pub fn mac(&mut self, vni: u32, mac: MacAddr, v: Vtep, ips: &[[u8; 16]]) -> bool {
        if !self.member(vni, v) {
            return false;
        }
        let i = self.index[&v];
        self.map.macs.insert((vni, mac.to_u64()), i);
        for ip in ips {
            self.map.ips.insert((vni, *ip), mac);
        }
        true
    }

    /// The map.
    pub fn build(self) -> OverlayMap {
        self.map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hosts_by_vni_and_mac() {
        let a = Vtep { ip: [10, 0, 0, 2], mac: MacAddr([2, 0, 0, 0, 0, 2]) };
        let b = Vtep { ip: [10, 0, 0, 3], mac: MacAddr([2, 0, 0, 0, 0, 3]) };
        let m1 = MacAddr([2, 1, 1, 1, 1, 1]);
        let mut bld = OverlayBuilder::new(7);
        assert!(bld.mac(100, m1, a, &[[0; 16]]));
        assert!(bld.member(100, b));
        assert!(bld.member(100, b));
        assert!(bld.member(200, b));
        let m = bld.build();
        assert_eq!(m.host_of(100, m1), Some(&a));
        assert_eq!(m.host_of(200, m1), None, "a MAC belongs to one VNI");
        assert_eq!(m.members(100).len(), 2, "each host once");
        assert_eq!(m.members(200).len(), 1);
        assert!(m.members(300).is_empty());
        assert_eq!(m.mac_of(100, &[0; 16]), Some(m1));
        assert_eq!(m.sizes(), (1, 2, 1));
        assert_eq!(m.revision, 7);
    }
}
