//! Compiling a validated [`Config`] into the dataplane's immutable [`Snapshot`]. At start,
//! names become dense ids in name order, so the same config always compiles to the same
//! snapshot. A reload compiles against the running snapshot ([`compile_next`]): every port and
//! tenant that is still there keeps its id, a removed one leaves its id vacant, and a new one
//! takes an id that was vacant already before this reload (the lowest), else the next unused
//! one. So the dataplane's state, kept by id, stays with its owner (see `Snapshot` on stable
//! ids), and no id is given to a new owner while the workers may still hold frames or messages
//! for its old one.

use dataplane::snapshot::{
    Attachment, AttachmentId, PolicyLimits, PortId, PortKind, Snapshot, SnapshotBuilder,
    SnapshotError, TenantId, TenantSpec, Underlay,
};
use dataplane::time::Nanos;
use dataplane::wire::MacAddr;

use crate::config::model::{Config, PortConfig, PortKindConfig};

/// Why a config could not be compiled. A validated config compiles; this is the backstop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompileError {
    /// The dataplane refused the result.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A reference validation should have caught.
    #[error("{0}")]
    Dangling(String),
}

/// Builds the snapshot for `cfg` with the given generation, ids in name order.
pub fn compile(cfg: &Config, generation: u64) -> Result<Snapshot, CompileError> {
    compile_next(cfg, None, generation)
}

/// Gives each name an id: its id in `before` (with the generation it took it in), else a
/// vacant one of `before`'s, else a new one. `what` names them for the error when the ids run
/// out (a vacant id counts: it is given again only after a reload that keeps it vacant).
fn assign<'a>(
    what: &'static str,
    names: impl Iterator<Item = &'a str>,
    before: &[(&str, u64)],
    generation: u64,
) -> Result<Vec<(u16, u64)>, CompileError> {
    let mut free = before.iter().enumerate().filter(|(_, (n, _))| n.is_empty()).map(|(i, _)| i);
    let mut next = before.len();
    let max = usize::from(u16::MAX);
    names
        .map(|n| {
            let (i, since) = match before.iter().position(|(b, _)| *b == n) {
                Some(i) => (i, before[i].1),
                None => (
                    free.next().unwrap_or_else(|| {
                        next += 1;
                        next - 1
                    }),
                    generation,
                ),
            };
            let id = u16::try_from(i).ok().filter(|&id| usize::from(id) < max);
            id.map(|id| (id, since)).ok_or(CompileError::Snapshot(SnapshotError::TooMany {
                what,
                n: i + 1,
                max,
            }))
        })
        .collect()
}

/// Builds the snapshot for `cfg` that follows `before` (the running one): the ports and
/// tenants `before` has keep their ids (see the module docs).
pub fn compile_next(
    cfg: &Config,
    before: Option<&Snapshot>,
    generation: u64,
) -> Result<Snapshot, CompileError> {
    let limits = PolicyLimits {
        flow_cache_entries: cfg.switch.flow_cache_entries,
        flow_cache_share_percent: cfg.switch.flow_cache_tenant_share,
        conntrack_capacity: cfg.switch.conntrack_capacity,
        fragment_entries: cfg.switch.fragment_entries,
        fragment_timeout: Nanos::from_millis(u64::from(cfg.switch.fragment_timeout_ms)),
    };
    let mut b =
        SnapshotBuilder::new(generation).fdb_capacity(cfg.switch.fdb_capacity).limits(limits);
    let old_ports: Vec<(&str, u64)> = before
        .map_or_else(Vec::new, |s| s.ports.iter().map(|p| (p.name.as_str(), p.since)).collect());
    let old_tenants: Vec<(&str, u64)> = before
        .map_or_else(Vec::new, |s| s.tenants.iter().map(|t| (t.name.as_str(), t.since)).collect());
    let port_ids = assign("ports", cfg.ports.keys().map(String::as_str), &old_ports, generation)?;
    let tenant_ids =
        assign("tenants", cfg.tenants.keys().map(String::as_str), &old_tenants, generation)?;
    // Ids a removed port or tenant leaves behind stay vacant.
    for (i, (name, _)) in old_ports.iter().enumerate() {
        if !name.is_empty() && !cfg.ports.contains_key(*name) {
            b.vacant_port(PortId(i as u16));
        }
    }
    for (i, (name, _)) in old_tenants.iter().enumerate() {
        if !name.is_empty() && !cfg.tenants.contains_key(*name) {
            b.vacant_tenant(TenantId(i as u16));
        }
    }
    let mut ids = std::collections::HashMap::new();
    for ((name, p), (id, since)) in cfg.ports.iter().zip(&port_ids) {
        let kind = match p.kind {
            PortKindConfig::Uplink => PortKind::Uplink,
            PortKindConfig::Tenant => PortKind::Tenant,
            PortKindConfig::Underlay => PortKind::Underlay,
        };
        let id = b.port_at(PortId(*id), name, &p.interface, kind, *since);
        if kind == PortKind::Underlay {
            b.port_underlay(id, underlay(name, p)?);
        }
        let mut issues = Vec::new();
        b.port_rate(id, crate::config::shaping::port(name, cfg, &mut issues));
        b.port_mtu(id, p.mtu);
        b.port_whole_segments(id, p.vhost_user.is_some());
        if let Some(i) = issues.first() {
            return Err(CompileError::Dangling(i.to_string()));
        }
        ids.insert(name.as_str(), id);
    }
    for ((name, t), &(id, since)) in cfg.tenants.iter().zip(&tenant_ids) {
        let mut attachments = Vec::with_capacity(t.attach.len());
        for a in &t.attach {
            let port = *ids
                .get(a.port.as_str())
                .ok_or_else(|| CompileError::Dangling(format!("tenant {name}: port {}", a.port)))?;
            attachments.push(Attachment { port, vlan: a.vlan });
        }
        if t.vni.is_some() {
            // Validation makes sure there is exactly one underlay port when a tenant has a VNI.
            let (up, _) =
                cfg.ports.iter().find(|(_, p)| p.kind == PortKindConfig::Underlay).ok_or_else(
                    || CompileError::Dangling(format!("tenant {name}: no underlay port")),
                )?;
            attachments.push(Attachment { port: ids[up.as_str()], vlan: None });
        }
        let mut spec = TenantSpec::new(name, attachments);
        spec.vni = t.vni;
        spec.fdb_quota = t.fdb_quota;
        spec.mac_aging = Nanos::from_secs(u64::from(t.mac_aging_secs));
        for m in &t.static_macs {
            let mac: MacAddr = m
                .mac
                .parse()
                .map_err(|_| CompileError::Dangling(format!("tenant {name}: MAC {}", m.mac)))?;
            let idx = t
                .attach
                .iter()
                .position(|a| a.port == m.port && (m.vlan.is_none() || a.vlan == m.vlan))
                .ok_or_else(|| CompileError::Dangling(format!("tenant {name}: MAC {mac}")))?;
            spec.static_macs.push((mac, AttachmentId(idx as u16)));
        }
        let port_id = |p: &str| ids.get(p).copied();
        let built = crate::config::policy::build(name, t, &port_id);
        if let Some(i) = built.issues.first() {
            return Err(CompileError::Dangling(i.to_string()));
        }
        spec.policy = built.policy;
        spec.flow_log = t.flow_log.is_some();
        if let Some(s) = &t.shaping {
            let mut issues = Vec::new();
            spec.shaping = crate::config::shaping::tenant(name, s, cfg, &mut issues);
            if let Some(i) = issues.first() {
                return Err(CompileError::Dangling(i.to_string()));
            }
        }
        if built.guards.iter().any(|g| !g.is_empty()) {
            spec.guards = built.guards;
        }
        spec.since = since;
        b.tenant_at(TenantId(id), spec);
    }
    Ok(b.build()?)
}

/// The tunnel endpoint of underlay port `name`: its address, its MAC (the config's, else its
/// interface's, read from sysfs), the gateway's MAC and the UDP port.
fn underlay(name: &str, p: &PortConfig) -> Result<Underlay, CompileError> {
    let bad = |what: String| CompileError::Dangling(format!("port {name}: {what}"));
    let t = p.tunnel.as_ref().ok_or_else(|| bad("an underlay port needs [tunnel]".into()))?;
    let ip: std::net::Ipv4Addr =
        t.address.parse().map_err(|_| bad(format!("{:?} is not an IPv4 address", t.address)))?;
    let mac = match &t.mac {
        Some(m) => m.parse().map_err(|_| bad(format!("{m:?} is not a MAC address")))?,
        None => interface_mac(&p.interface).ok_or_else(|| {
            bad(format!(
                "cannot read the MAC of interface {:?}; set ports.{name}.tunnel.mac",
                p.interface
            ))
        })?,
    };
    let gateway = match &t.gateway_mac {
        Some(m) => Some(m.parse().map_err(|_| bad(format!("{m:?} is not a MAC address")))?),
        None => None,
    };
    Ok(Underlay { ip: ip.octets(), mac, udp_port: t.udp_port, gateway })
}

/// The MAC of interface `ifname`, from sysfs.
fn interface_mac(ifname: &str) -> Option<MacAddr> {
    if ifname.is_empty() || ifname.contains('/') {
        return None;
    }
    let s = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address")).ok()?;
    s.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Review of issue 17: ids were cast to u16 unchecked, so the 65 536th would have wrapped
    // onto a live one.
    #[test]
    fn ids_that_run_out_are_an_error_not_a_wrap() {
        let names: Vec<String> = (0..65_534).map(|i| format!("t{i}")).collect();
        let before: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 1)).collect();
        // The last id below TenantId::NONE (65 535) is still there; one more is not.
        let ok = assign("tenants", ["new"].into_iter(), &before, 2).unwrap();
        assert_eq!(ok, [(65_534, 2)]);
        let mut full = before.clone();
        full.push(("new", 2));
        let e = assign("tenants", ["newer"].into_iter(), &full, 3).unwrap_err();
        assert!(e.to_string().contains("too many tenants"), "{e}");
        // A vacant id is taken before a new one.
        full[7] = ("", dataplane::snapshot::VACANT);
        assert_eq!(assign("tenants", ["newer"].into_iter(), &full, 3).unwrap(), [(7, 3)]);
    }
}
