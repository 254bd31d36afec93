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
    /// Towards the other hosts of the cluster: tenants' frames cross it inside VXLAN, told
    /// apart by VNI ([`Underlay`]).
    Underlay,
}

/// What an underlay port needs to carry tenants' frames to other hosts inside VXLAN
/// (RFC 7348).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Underlay {
    /// This host's tunnel address: the outer source, and the only outer destination taken.
    pub ip: [u8; 4],
    /// The port's own MAC: the outer source MAC.
    pub mac: MacAddr,
    /// The VXLAN UDP port (4789 by default), the outer destination port both ways.
    pub udp_port: u16,
    /// The outer destination MAC for every remote host (a router between the hosts); `None`:
    /// the hosts share one L2 segment and each remote host's own MAC is used.
    pub gateway: Option<MacAddr>,
}

/// Bytes VXLAN puts in front of a tenant's frame: outer Ethernet, IPv4, UDP and VXLAN headers.
pub const VXLAN_OVERHEAD: u32 = 14 + 20 + 8 + 8;

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
    /// The tunnel endpoint of an [`PortKind::Underlay`] port (`None` on the others).
    pub underlay: Option<Underlay>,
    /// The generation in which this port took its id (see [`Snapshot`] on stable ids).
    pub since: u64,
    /// Takes a large TCP segment whole ([`crate::frame::FrameRef::is_gso`]): a vhost-user
    /// port, which writes it into its guest whole or cuts it there as the guest negotiated.
    /// Toward any other port such a segment is cut into MTU-sized ones on its way out.
    pub whole_segments: bool,
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
            underlay: None,
            since: VACANT,
            whole_segments: false,
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
    /// The tenant's VXLAN network identifier (24 bits) on the underlay, if it spans hosts.
    /// Its attachment on the underlay port (untagged) is where its frames to and from other
    /// hosts come in and go out.
    pub vni: Option<u32>,
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
    /// Tenants by VNI, with their attachment on the underlay port, sorted by VNI.
    vnis: Vec<(u32, TenantId, AttachmentId)>,
    /// Per tenant, its VNI and underlay port, if it spans hosts.
    overlays: Vec<Option<(u32, PortId)>>,
    /// The underlay port's id (`u32::MAX`: none; the switch has one at most): a compare per
    /// frame sent, where the port's spec would be a cache line of its own.
    underlay_port: u32,
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

    /// True when `port` takes a large TCP segment whole ([`PortSpec::whole_segments`]).
    #[inline]
    pub fn takes_whole_segments(&self, port: PortId) -> bool {
        self.ports.get(port.index()).is_some_and(|p| p.whole_segments)
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

    /// True when `port` is an underlay port.
    #[inline]
    pub fn is_underlay(&self, port: PortId) -> bool {
        self.underlay_port == u32::from(port.0)
    }

    /// The tunnel endpoint of `port` when it is an underlay port.
    #[inline]
    pub fn underlay(&self, port: PortId) -> Option<&Underlay> {
        self.ports.get(port.index())?.underlay.as_ref()
    }

    /// The tenant that owns `vni` on the underlay, and its attachment there.
    #[inline]
    pub fn tenant_by_vni(&self, vni: u32) -> Option<(TenantId, AttachmentId)> {
        let i = self.vnis.binary_search_by_key(&vni, |v| v.0).ok()?;
        let (_, t, a) = self.vnis[i];
        Some((t, a))
    }

    /// The VNI of tenant `t` and its underlay port, if it spans hosts.
    #[inline]
    pub fn overlay_of(&self, t: TenantId) -> Option<(u32, PortId)> {
        self.overlays.get(t.index()).copied().flatten()
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
    /// An attachment to an underlay port, but the tenant has no VNI; or a VNI beyond 24 bits.
    #[error("tenant {tenant}: attachment to underlay port {port} needs a VNI (1..=16777215)")]
    NoVni {
        /// Tenant name.
        tenant: String,
        /// Port name.
        port: String,
    },
    /// Two tenants have one VNI.
    #[error("tenant {tenant}: VNI {vni} is already tenant {other}'s")]
    VniTaken {
        /// Tenant name.
        tenant: String,
        /// The VNI.
        vni: u32,
        /// The tenant that has it.
        other: String,
    },
    /// An underlay port without its tunnel endpoint.
    #[error("port {port}: an underlay port needs its tunnel address")]
    NoTunnel {
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
            underlay: None,
            since: self.generation,
            whole_segments: false,
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
            underlay: None,
            since,
            whole_segments: false,
        };
        id
    }

    /// Sets the tunnel endpoint of an underlay port.
    pub fn port_underlay(&mut self, port: PortId, u: Underlay) {
        if let Some(p) = self.ports.get_mut(port.index()) {
            p.underlay = Some(u);
        }
    }

    /// Says that a port takes large TCP segments whole ([`PortSpec::whole_segments`]).
    pub fn port_whole_segments(&mut self, port: PortId, whole: bool) {
        if let Some(p) = self.ports.get_mut(port.index()) {
            p.whole_segments = whole;
        }
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
        for p in &self.ports {
            if p.kind == PortKind::Underlay && p.underlay.is_none() {
                return Err(SnapshotError::NoTunnel { port: p.name.clone() });
            }
        }
        if self.ports.iter().filter(|p| p.underlay.is_some()).count() > 1 {
            return Err(SnapshotError::TooMany { what: "underlay ports", n: 2, max: 1 });
        }
        let mut vnis: Vec<(u32, TenantId, AttachmentId)> = Vec::new();
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
                if port.kind == PortKind::Underlay {
                    // Told apart by VNI, not by VLAN: no slot in the port's VLAN table.
                    match t.vni {
                        Some(v) if a.vlan.is_none() && (1..1 << 24).contains(&v) => {
                            vnis.push((v, TenantId(ti as u16), AttachmentId(ai as u16)));
                        }
                        _ => {
                            return Err(SnapshotError::NoVni {
                                tenant: t.name.clone(),
                                port: port.name.clone(),
                            });
                        }
                    }
                    continue;
                }
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
        vnis.sort_unstable_by_key(|v| v.0);
        if let Some(w) = vnis.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(SnapshotError::VniTaken {
                tenant: self.tenants[w[1].1.index()].name.clone(),
                vni: w[0].0,
                other: self.tenants[w[0].1.index()].name.clone(),
            });
        }
        let mut overlays = vec![None; self.tenants.len()];
        for &(vni, t, a) in &vnis {
            overlays[t.index()] =
                Some((vni, self.tenants[t.index()].attachments[usize::from(a.0)].port));
        }
        let max_frames = self.ports.iter().map(max_frame).collect();
        let underlay_port =
            self.ports.iter().position(|p| p.underlay.is_some()).map_or(u32::MAX, |i| i as u32);
        Ok(Snapshot {
            vnis,
            overlays,
            underlay_port,
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

/// The longest untagged frame of a port: MTU plus the Ethernet header; on an underlay port,
/// the longest tenant frame whose encapsulation fits the MTU.
fn max_frame(p: &PortSpec) -> u32 {
    let over = if p.kind == PortKind::Underlay { VXLAN_OVERHEAD } else { 0 };
    p.mtu.map_or(u32::MAX, |m| m.saturating_add(14).saturating_sub(over))
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
            vni: None,
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
