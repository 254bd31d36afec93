//! Compiling a validated [`Config`] into the dataplane's immutable [`Snapshot`]: names become
//! dense ids in name order, so the same config always compiles to the same snapshot.

use dataplane::snapshot::{
    Attachment, AttachmentId, PolicyLimits, PortKind, Snapshot, SnapshotBuilder, SnapshotError,
    TenantSpec,
};
use dataplane::time::Nanos;
use dataplane::wire::MacAddr;

use crate::config::model::{Config, PortKindConfig};

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

/// Builds the snapshot for `cfg` with the given generation.
pub fn compile(cfg: &Config, generation: u64) -> Result<Snapshot, CompileError> {
    let limits = PolicyLimits {
        flow_cache_entries: cfg.switch.flow_cache_entries,
        flow_cache_share_percent: cfg.switch.flow_cache_tenant_share,
        conntrack_capacity: cfg.switch.conntrack_capacity,
        fragment_entries: cfg.switch.fragment_entries,
        fragment_timeout: Nanos::from_millis(u64::from(cfg.switch.fragment_timeout_ms)),
    };
    let mut b =
        SnapshotBuilder::new(generation).fdb_capacity(cfg.switch.fdb_capacity).limits(limits);
    let mut ids = std::collections::HashMap::new();
    for (name, p) in &cfg.ports {
        let kind = match p.kind {
            PortKindConfig::Uplink => PortKind::Uplink,
            PortKindConfig::Tenant => PortKind::Tenant,
        };
        let id = b.port(name, &p.interface, kind);
        let mut issues = Vec::new();
        b.port_rate(id, crate::config::shaping::port(name, cfg, &mut issues));
        b.port_mtu(id, p.mtu);
        if let Some(i) = issues.first() {
            return Err(CompileError::Dangling(i.to_string()));
        }
        ids.insert(name.as_str(), id);
    }
    for (name, t) in &cfg.tenants {
        let mut attachments = Vec::with_capacity(t.attach.len());
        for a in &t.attach {
            let port = *ids
                .get(a.port.as_str())
                .ok_or_else(|| CompileError::Dangling(format!("tenant {name}: port {}", a.port)))?;
            attachments.push(Attachment { port, vlan: a.vlan });
        }
        let mut spec = TenantSpec::new(name, attachments);
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
        b.tenant(spec);
    }
    Ok(b.build()?)
}
