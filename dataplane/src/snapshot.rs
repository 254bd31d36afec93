//! The immutable, compiled view of the configuration that workers switch with.
//!
//! `control` compiles config text into a [`Snapshot`]; the dataplane owns the type because it
//! cannot depend on `control`. Names become dense ids (`PortId`, `TenantId`) and every table is
//! a `Vec` indexed by id, so a lookup on the packet path is an array index, never a string
//! compare or a hash of a name. A snapshot is shared as `Arc<Snapshot>` and never mutated.
#![forbid(unsafe_code)]

use std::fmt;

use crate::policy::{Guard, TenantPolicy};
use crate::time::Nanos;
use crate::wire::MacAddr;

pub use crate::vocab::{AttachmentId, PortId, TenantId, VACANT};

/// What a port faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    /// Towards the host fabric; tenants are told apart by VLAN tag.
    Uplink,
    /// A VF, veth or tap facing one tenant (untagged) or several (by VLAN).
    Tenant,
}

/// A port as the dataplane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// Config name (labels, logs).
    pub name: String,
    /// Kernel interface name.
    pub interface: String,
    /// What it faces.
    pub kind: PortKind,
    /// The rate its egress scheduler shares among the tenants (`None`: line rate).
    pub rate: Option<crate::shaping::Rate>,
    /// Largest IP packet it sends (its interface's MTU, or the config's), `None`: unknown, no
    /// limit. A frame may exceed it by its Ethernet header and one VLAN tag.
    pub mtu: Option<u32>,
    /// The generation in which this port took its id (see [`Snapshot`] on stable ids).
    pub since: u64,
}

impl PortSpec {
    /// An id no port holds (the port that had it was removed by a reload).
    pub fn vacant() -> Self {
        PortSpec {
            name: String::new(),
            interface: String::new(),
            kind: PortKind::Tenant,
            rate: None,
            mtu: None,
            since: VACANT,
        }
    }

    /// True for an id no port holds.
    #[inline]
    pub fn is_vacant(&self) -> bool {
        self.name.is_empty()
    }
}

/// One place a tenant is reachable: a port, and the VLAN its frames carry there (None: untagged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attachment {
    /// The port.
    pub port: PortId,
    /// The VLAN id on that port, 1..=4094, or untagged.
    pub vlan: Option<u16>,
}

/// A tenant: one isolated L2 domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSpec {
    /// Config name (labels, logs).
    pub name: String,
    /// Where the tenant is reachable. Floods go to all of them but the ingress one.
    pub attachments: Vec<Attachment>,
    /// Maximum learned MACs (static entries not included).
    pub fdb_quota: u32,
    /// A learned MAC not seen for this long is forgotten.
    pub mac_aging: Nanos,
    /// MACs pinned to an attachment; never aged, never moved by learning.
    pub static_macs: Vec<(MacAddr, AttachmentId)>,
    /// Anti-spoofing per attachment (same index as `attachments`; missing or empty: none).
    pub guards: Vec<Guard>,
    /// ACLs and security group.
    pub policy: TenantPolicy,
    /// Log this tenant's flows.
    pub flow_log: bool,
    /// Policer, egress shapers, weight, guarantee and queue size.
    pub shaping: crate::shaping::TenantShaping,
    /// The generation in which this tenant took its id (see [`Snapshot`] on stable ids).
    pub since: u64,
}

/// Sizes of each worker's flow cache and connection table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyLimits {
    /// Flow cache entries.
    pub flow_cache_entries: u32,
    /// Share of the flow cache one tenant may hold, in percent.
    pub flow_cache_share_percent: u32,
    /// Tracked connections, all tenants together (each also capped by its quota).
    pub conntrack_capacity: u32,
    /// Datagrams whose fragments are tracked at once, all tenants together (each tenant may
    /// hold `flow_cache_share_percent` of them).
    pub fragment_entries: u32,
    /// How long a datagram's later fragments may follow its first one.
    pub fragment_timeout: Nanos,
}

impl Default for PolicyLimits {
    fn default() -> Self {
        PolicyLimits {
            flow_cache_entries: 65536,
            flow_cache_share_percent: 25,
            conntrack_capacity: 65_536,
            fragment_entries: 1024,
            fragment_timeout: Nanos::from_secs(1),
        }
    }
}

/// Marker in the ingress map for "no tenant here".
const NO_TENANT: u32 = u32::MAX;
/// Slot of the untagged attachment in a port's ingress map (VLAN ids use 0..4096).
pub const UNTAGGED: usize = 4096;

/// The compiled configuration.
///
/// **Stable ids.** A port or tenant keeps its id for as long as it exists: a reload that adds
/// one gives it a free id, and one that removes one leaves its id *vacant* (an empty name, no
/// attachments, nothing resolves to it) rather than moving the others. So everything a worker
/// keeps by id (counters, MAC entries, connections, flow-cache entries, egress queues, frames
/// in flight between workers) stays valid across reloads that do not touch it. An id is given
/// again only when it was already vacant in the snapshot before (`control::compile` sees to
/// that), and [`PortSpec::since`]/[`TenantSpec::since`] say in which generation the holder took
/// it, so a frame stamped with an older generation is not delivered to a new holder.
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Bumped on every compile; workers invalidate cached decisions when it changes.
    pub generation: u64,
    /// Ports by id.
    pub ports: Vec<PortSpec>,
    /// Tenants by id.
    pub tenants: Vec<TenantSpec>,
    /// Total MAC table capacity shared by all tenants (each also capped by its quota).
    pub fdb_capacity: u32,
    /// Sizes of the per-worker policy state.
    pub limits: PolicyLimits,
    /// Per port, 4097 slots (VLAN id, then [`UNTAGGED`]): tenant id << 16 | attachment id.
    ingress: Vec<Box<[u32]>>,
    /// Per tenant, which optional stages apply ([`CHECK_GUARD`], [`CHECK_POLICY`]): one byte
    /// from a small array, so tenants without policy pay one load for it per packet.
    checks: Vec<u8>,
    /// Per port, the longest untagged frame it sends (MTU + 14; `u32::MAX`: no limit).
    max_frames: Vec<u32>,
}

/// Some attachment of the tenant has an anti-spoofing guard.
pub const CHECK_GUARD: u8 = 1;
/// The tenant has ACL rules, a deny default or a security group.
pub const CHECK_POLICY: u8 = 2;
/// The tenant's flows are logged.
pub const CHECK_FLOWLOG: u8 = 4;
/// The tenant's frames go through the flow cache.
pub const CHECK_FLOW: u8 = CHECK_POLICY | CHECK_FLOWLOG;
/// The tenant's frames from its tenant-facing ports are policed.
pub const CHECK_POLICE: u8 = 8;

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .field("ports", &self.ports)
            .field("tenants", &self.tenants)
            .field("fdb_capacity", &self.fdb_capacity)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// The tenant and attachment for a frame arriving on `port` with outer VLAN `vlan`.
    #[inline]
    pub fn resolve(&self, port: PortId, vlan: Option<u16>) -> Option<(TenantId, AttachmentId)> {
        let slot = match vlan {
            Some(v) => usize::from(v & 0x0fff),
            None => UNTAGGED,
        };
        let v = *self.ingress.get(port.index())?.get(slot)?;
        if v == NO_TENANT {
            None
        } else {
            Some((TenantId((v >> 16) as u16), AttachmentId(v as u16)))
        }
    }

    /// The longest frame `port` sends with an outer tag (`tagged`) or without: its MTU plus
    /// the Ethernet header and the tag. `u32::MAX` when the MTU is unknown.
    #[inline]
    pub fn max_frame(&self, port: PortId, tagged: bool) -> u32 {
        let m = self.max_frames.get(port.index()).copied().unwrap_or(u32::MAX);
        if tagged { m.saturating_add(4) } else { m }
    }

    /// Sets the MTU of `port` (the switch reads it from the interface when the config gives
    /// none).
    pub fn set_port_mtu(&mut self, port: PortId, mtu: u32) {
        if let (Some(p), Some(m)) =
            (self.ports.get_mut(port.index()), self.max_frames.get_mut(port.index()))
        {
            p.mtu = Some(mtu);
            *m = max_frame(p);
        }
    }

    /// Which optional stages apply to tenant `t` (`CHECK_*` bits; 0 for an unknown tenant).
    #[inline]
    pub fn checks(&self, t: TenantId) -> u8 {
        self.checks.get(t.index()).copied().unwrap_or(0)
    }

    /// True when tenant `t`'s frames go through the flow cache (it has policy or logs flows).
    #[inline]
    pub fn uses_flows(&self, t: TenantId) -> bool {
        self.checks(t) & CHECK_FLOW != 0
    }

    /// An attachment of a tenant.
    #[inline]
    pub fn attachment(&self, t: TenantId, a: AttachmentId) -> Option<Attachment> {
        self.tenants.get(t.index())?.attachments.get(usize::from(a.0)).copied()
    }

    /// Looks a port up by config name.
    pub fn port_by_name(&self, name: &str) -> Option<PortId> {
        if name.is_empty() {
            return None;
        }
        self.ports.iter().position(|p| p.name == name).map(|i| PortId(i as u16))
    }

    /// Looks a tenant up by config name.
    pub fn tenant_by_name(&self, name: &str) -> Option<TenantId> {
        if name.is_empty() {
            return None;
        }
        self.tenants.iter().position(|t| t.name == name).map(|i| TenantId(i as u16))
    }

    /// The ports that exist (vacant ids left out), with their ids.
    pub fn live_ports(&self) -> impl Iterator<Item = (PortId, &PortSpec)> {
        self.ports
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.is_vacant())
            .map(|(i, p)| (PortId(i as u16), p))
    }

    /// The tenants that exist (vacant ids left out), with their ids.
    pub fn live_tenants(&self) -> impl Iterator<Item = (TenantId, &TenantSpec)> {
        self.tenants
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.is_vacant())
            .map(|(i, t)| (TenantId(i as u16), t))
    }

    /// The generation in which port `p`'s holder took its id ([`VACANT`] when none holds it).
    #[inline]
    pub fn port_since(&self, p: PortId) -> u64 {
        self.ports.get(p.index()).map_or(VACANT, |p| p.since)
    }
}

/// Why a set of ports and tenants cannot form a snapshot. `control` validates config first and
/// reports these with file and field; this is the dataplane's own last line of defence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// More ports or tenants than ids.
    #[error("too many {what}: {n} (at most {max})")]
    TooMany {
        /// "ports", "tenants" or "attachments".
        what: &'static str,
        /// How many were given.
        n: usize,
        /// The limit.
        max: usize,
    },
    /// An attachment names a port id that does not exist.
    #[error("tenant {tenant}: attachment to unknown port id {port}")]
    UnknownPort {
        /// Tenant name.
        tenant: String,
        /// Port id.
        port: u16,
    },
    /// A VLAN id outside 1..=4094.
    #[error("tenant {tenant}: VLAN {vlan} out of range 1..=4094")]
    VlanRange {
        /// Tenant name.
        tenant: String,
        /// VLAN id.
        vlan: u16,
    },
    /// Two attachments claim the same (port, VLAN).
    #[error("tenant {tenant}: port {port} {vlan} is already attached to tenant {other}")]
    Overlap {
        /// Tenant name.
        tenant: String,
        /// Port name.
        port: String,
        /// "vlan N" or "untagged".
        vlan: String,
        /// The tenant that has it.
        other: String,
    },
    /// An uplink attachment without a VLAN: uplink tenants are told apart by tag.
    #[error("tenant {tenant}: attachment to uplink port {port} needs a VLAN")]
    UntaggedUplink {
        /// Tenant name.
        tenant: String,
        /// Port name.
        port: String,
    },
    /// A static MAC names an attachment the tenant does not have, or is a group address.
    #[error("tenant {tenant}: static MAC {mac} is invalid")]
    BadStaticMac {
        /// Tenant name.
        tenant: String,
        /// The MAC.
        mac: MacAddr,
    },
}

/// Assembles and checks a [`Snapshot`].
#[derive(Debug, Clone, Default)]
pub struct SnapshotBuilder {
    generation: u64,
    ports: Vec<PortSpec>,
    tenants: Vec<TenantSpec>,
    fdb_capacity: u32,
    limits: PolicyLimits,
}

impl SnapshotBuilder {
    /// An empty builder for the given generation.
    pub fn new(generation: u64) -> Self {
        SnapshotBuilder { generation, fdb_capacity: 65536, ..Default::default() }
    }

    /// Sets the sizes of the per-worker policy state.
    pub fn limits(mut self, l: PolicyLimits) -> Self {
        self.limits = l;
        self
    }

    /// Sets the total MAC table capacity.
    pub fn fdb_capacity(mut self, n: u32) -> Self {
        self.fdb_capacity = n;
        self
    }

    /// Adds a port; returns its id.
    pub fn port(&mut self, name: &str, interface: &str, kind: PortKind) -> PortId {
        self.ports.push(PortSpec {
            name: name.into(),
            interface: interface.into(),
            kind,
            rate: None,
            mtu: None,
            since: self.generation,
        });
        PortId((self.ports.len() - 1) as u16)
    }

    /// Puts a port at id `id` (vacant ids fill the gap before it), taken in generation
    /// `since`; for a reload that keeps ids stable.
    pub fn port_at(
        &mut self,
        id: PortId,
        name: &str,
        interface: &str,
        kind: PortKind,
        since: u64,
    ) -> PortId {
        if self.ports.len() <= id.index() {
            self.ports.resize(id.index() + 1, PortSpec::vacant());
        }
        self.ports[id.index()] = PortSpec {
            name: name.into(),
            interface: interface.into(),
            kind,
            rate: None,
            mtu: None,
            since,
        };
        id
    }

    /// Sets a port's MTU.
    pub fn port_mtu(&mut self, port: PortId, mtu: Option<u32>) {
        if let Some(p) = self.ports.get_mut(port.index()) {
            p.mtu = mtu;
        }
    }

    /// Sets the rate a port's egress scheduler shares among its tenants.
    pub fn port_rate(&mut self, port: PortId, rate: Option<crate::shaping::Rate>) {
        if let Some(p) = self.ports.get_mut(port.index()) {
            p.rate = rate;
        }
    }

    /// Adds a tenant; returns its id.
    pub fn tenant(&mut self, mut spec: TenantSpec) -> TenantId {
        spec.since = self.generation;
        self.tenants.push(spec);
        TenantId((self.tenants.len() - 1) as u16)
    }

    /// Leaves port id `id` vacant (its port was removed).
    pub fn vacant_port(&mut self, id: PortId) {
        if self.ports.len() <= id.index() {
            self.ports.resize(id.index() + 1, PortSpec::vacant());
        }
        self.ports[id.index()] = PortSpec::vacant();
    }

    /// Leaves tenant id `id` vacant (its tenant was removed).
    pub fn vacant_tenant(&mut self, id: TenantId) {
        if self.tenants.len() <= id.index() {
            self.tenants.resize(id.index() + 1, TenantSpec::vacant());
        }
        self.tenants[id.index()] = TenantSpec::vacant();
    }

    /// Puts a tenant at id `id` (vacant ids fill the gap before it); `spec.since` is kept.
    pub fn tenant_at(&mut self, id: TenantId, spec: TenantSpec) -> TenantId {
        if self.tenants.len() <= id.index() {
            self.tenants.resize(id.index() + 1, TenantSpec::vacant());
        }
        self.tenants[id.index()] = spec;
        id
    }

    /// Checks and freezes.
    pub fn build(self) -> Result<Snapshot, SnapshotError> {
        let max = usize::from(u16::MAX);
        if self.ports.len() > max {
            return Err(SnapshotError::TooMany { what: "ports", n: self.ports.len(), max });
        }
        if self.tenants.len() > max {
            return Err(SnapshotError::TooMany { what: "tenants", n: self.tenants.len(), max });
        }
        // A vacant id has no table (nothing resolves there) and costs a few bytes.
        let mut ingress: Vec<Box<[u32]>> =
            self.ports
                .iter()
                .map(|p| {
                    if p.is_vacant() {
                        Box::default()
                    } else {
                        vec![NO_TENANT; UNTAGGED + 1].into()
                    }
                })
                .collect();
        for (ti, t) in self.tenants.iter().enumerate() {
            if t.attachments.len() > max {
                return Err(SnapshotError::TooMany {
                    what: "attachments",
                    n: t.attachments.len(),
                    max,
                });
            }
            for (ai, a) in t.attachments.iter().enumerate() {
                let port =
                    self.ports.get(a.port.index()).filter(|p| !p.is_vacant()).ok_or_else(|| {
                        SnapshotError::UnknownPort { tenant: t.name.clone(), port: a.port.0 }
                    })?;
                let slot = match a.vlan {
                    Some(v) if !(1..=4094).contains(&v) => {
                        return Err(SnapshotError::VlanRange { tenant: t.name.clone(), vlan: v });
                    }
                    Some(v) => usize::from(v),
                    None if port.kind == PortKind::Uplink => {
                        return Err(SnapshotError::UntaggedUplink {
                            tenant: t.name.clone(),
                            port: port.name.clone(),
                        });
                    }
                    None => UNTAGGED,
                };
                let cell = &mut ingress[a.port.index()][slot];
                if *cell != NO_TENANT {
                    let other = &self.tenants[(*cell >> 16) as usize].name;
                    return Err(SnapshotError::Overlap {
                        tenant: t.name.clone(),
                        port: port.name.clone(),
                        vlan: a.vlan.map_or("untagged".into(), |v| format!("vlan {v}")),
                        other: other.clone(),
                    });
                }
                *cell = ((ti as u32) << 16) | ai as u32;
            }
            for (mac, att) in &t.static_macs {
                if mac.is_multicast()
                    || *mac == MacAddr::ZERO
                    || usize::from(att.0) >= t.attachments.len()
                {
                    return Err(SnapshotError::BadStaticMac { tenant: t.name.clone(), mac: *mac });
                }
            }
        }
        let checks = self
            .tenants
            .iter()
            .map(|t| {
                let guard = if t.guards.iter().any(|g| !g.is_empty()) { CHECK_GUARD } else { 0 };
                let log = if t.flow_log { CHECK_FLOWLOG } else { 0 };
                let police = if t.shaping.police.is_some() { CHECK_POLICE } else { 0 };
                guard | log | police | if t.policy.is_open() { 0 } else { CHECK_POLICY }
            })
            .collect();
        let max_frames = self.ports.iter().map(max_frame).collect();
        Ok(Snapshot {
            checks,
            max_frames,
            generation: self.generation,
            ports: self.ports,
            tenants: self.tenants,
            fdb_capacity: self.fdb_capacity,
            limits: self.limits,
            ingress,
        })
    }
}

/// The longest untagged frame of a port: MTU plus the Ethernet header.
fn max_frame(p: &PortSpec) -> u32 {
    p.mtu.map_or(u32::MAX, |m| m.saturating_add(14))
}

impl TenantSpec {
    /// A tenant with default quota (1024 MACs) and aging (300 s), no static MACs.
    pub fn new(name: &str, attachments: Vec<Attachment>) -> Self {
        TenantSpec {
            name: name.into(),
            attachments,
            fdb_quota: 1024,
            mac_aging: Nanos::from_secs(300),
            static_macs: Vec::new(),
            guards: Vec::new(),
            policy: TenantPolicy::default(),
            flow_log: false,
            shaping: crate::shaping::TenantShaping::default(),
            since: 0,
        }
    }

    /// An id no tenant holds: no attachments, no MACs (quota 0), no policy.
    pub fn vacant() -> Self {
        TenantSpec { fdb_quota: 0, since: VACANT, ..TenantSpec::new("", Vec::new()) }
    }

    /// True for an id no tenant holds.
    #[inline]
    pub fn is_vacant(&self) -> bool {
        self.name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_tenants() -> SnapshotBuilder {
        let mut b = SnapshotBuilder::new(1);
        let up = b.port("up", "eth0", PortKind::Uplink);
        let a = b.port("a", "veth-a", PortKind::Tenant);
        b.tenant(TenantSpec::new(
            "red",
            vec![Attachment { port: up, vlan: Some(100) }, Attachment { port: a, vlan: None }],
        ));
        b.tenant(TenantSpec::new("blue", vec![Attachment { port: up, vlan: Some(200) }]));
        b
    }

    #[test]
    fn resolves_by_port_and_vlan() {
        let s = two_tenants().build().unwrap();
        assert_eq!(s.resolve(PortId(0), Some(100)), Some((TenantId(0), AttachmentId(0))));
        assert_eq!(s.resolve(PortId(0), Some(200)), Some((TenantId(1), AttachmentId(0))));
        assert_eq!(s.resolve(PortId(1), None), Some((TenantId(0), AttachmentId(1))));
        assert_eq!(s.resolve(PortId(0), None), None);
        assert_eq!(s.resolve(PortId(1), Some(100)), None);
        assert_eq!(s.resolve(PortId(9), None), None);
        assert_eq!(s.tenant_by_name("blue"), Some(TenantId(1)));
        assert_eq!(s.port_by_name("a"), Some(PortId(1)));
    }

    #[test]
    fn rejects_overlap_and_bad_vlans() {
        let mut b = two_tenants();
        b.tenant(TenantSpec::new("green", vec![Attachment { port: PortId(0), vlan: Some(100) }]));
        assert!(matches!(b.build(), Err(SnapshotError::Overlap { .. })));

        let mut b = two_tenants();
        b.tenant(TenantSpec::new("green", vec![Attachment { port: PortId(0), vlan: None }]));
        assert!(matches!(b.build(), Err(SnapshotError::UntaggedUplink { .. })));

        let mut b = two_tenants();
        b.tenant(TenantSpec::new("green", vec![Attachment { port: PortId(0), vlan: Some(4095) }]));
        assert!(matches!(b.build(), Err(SnapshotError::VlanRange { .. })));

        let mut b = two_tenants();
        b.tenant(TenantSpec::new("green", vec![Attachment { port: PortId(7), vlan: None }]));
        assert!(matches!(b.build(), Err(SnapshotError::UnknownPort { .. })));

        let mut b = two_tenants();
        let mut t = TenantSpec::new("green", vec![Attachment { port: PortId(0), vlan: Some(5) }]);
        t.static_macs.push((MacAddr::BROADCAST, AttachmentId(0)));
        b.tenant(t);
        assert!(matches!(b.build(), Err(SnapshotError::BadStaticMac { .. })));
    }
}
