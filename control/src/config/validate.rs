//! Validation: every problem in one pass, each as an [`Issue`] with the field path
//! (`tenants.red.attach[1].vlan`) and the reason, so an operator fixes them all at once.

use std::collections::{BTreeMap, HashMap, HashSet};

use dataplane::wire::MacAddr;

use super::model::{Config, PortConfig, PortKindConfig, VhostUserConfig, XdpMode};

pub use super::issue::Issue;

/// Highest VLAN id usable for a tenant (4095 is reserved, 0 means priority-tagged).
const VLAN_MAX: u16 = 4094;
/// Linux interface names hold at most 15 bytes.
const IFNAMSIZ: usize = 15;

struct Issues(Vec<Issue>);

impl Issues {
    fn add(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Issue { path: path.into(), reason: reason.into() });
    }

    /// "`v`` unit` is out of range `a..=b`" when `v` is outside `r` (`unit`: "", " %", " ms").
    fn range<T: PartialOrd + std::fmt::Display>(
        &mut self,
        path: impl Into<String>,
        v: T,
        r: std::ops::RangeInclusive<T>,
        unit: &str,
    ) {
        if !r.contains(&v) {
            let reason = format!("{v}{unit} is out of range {}..={}", r.start(), r.end());
            self.add(path, reason);
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= IFNAMSIZ
        && !s.contains(['/', ':', ' ', '\0'])
        && s != "."
        && s != ".."
}

fn check_sriov(cfg: &Config, is: &mut Issues) {
    for (pf, s) in &cfg.sriov {
        let at = format!("sriov.{pf}");
        if !valid_ifname(pf) {
            is.add(&at, format!("{pf:?} is not a valid interface name"));
        }
        if s.numvfs.is_some_and(|n| n > 256) {
            is.add(format!("{at}.numvfs"), "at most 256 (PCIe SR-IOV offers no more per function)");
        }
        let mut seen = HashSet::new();
        for (i, v) in s.vf.iter().enumerate() {
            let vat = format!("{at}.vf[{i}]");
            if !seen.insert(v.index) {
                is.add(format!("{vat}.index"), format!("VF {} is listed twice", v.index));
            }
            if let Some(n) = s.numvfs
                && v.index >= n
            {
                is.add(format!("{vat}.index"), format!("VF {}, but numvfs is {n}", v.index));
            }
            if let Some(m) = &v.mac {
                match m.parse::<MacAddr>() {
                    Ok(mac) if mac.is_multicast() || mac == MacAddr::ZERO => {
                        is.add(format!("{vat}.mac"), format!("{m} is not a unicast address"));
                    }
                    Ok(_) => {}
                    Err(_) => is.add(format!("{vat}.mac"), format!("{m:?} is not a MAC address")),
                }
            }
            if v.vlan.is_some_and(|vl| vl > VLAN_MAX) {
                is.add(format!("{vat}.vlan"), format!("out of range 0..={VLAN_MAX}"));
            }
        }
    }
    if !matches!(cfg.switch.huge_page_size.as_str(), "2M" | "1G") {
        is.add(
            "switch.huge_page_size",
            format!("{:?}: \"2M\" or \"1G\"", cfg.switch.huge_page_size),
        );
    }
}

fn check_shaping(cfg: &Config, is: &mut Issues) {
    for name in cfg.ports.keys() {
        super::shaping::port(name, cfg, &mut is.0);
    }
    for (name, t) in &cfg.tenants {
        if let Some(s) = &t.shaping {
            super::shaping::tenant(name, s, cfg, &mut is.0);
        }
    }
}

/// Checks a config; an empty list means it is valid.
pub fn validate(cfg: &Config) -> Vec<Issue> {
    let mut is = Issues(Vec::new());
    check_switch(cfg, &mut is);
    check_ports(cfg, &mut is);
    check_tenants(cfg, &mut is);
    check_shaping(cfg, &mut is);
    check_sriov(cfg, &mut is);
    check_cluster(cfg, &mut is);
    if cfg.control.socket.is_empty() || !cfg.control.socket.starts_with('/') {
        is.add("control.socket", format!("{:?} is not an absolute path", cfg.control.socket));
    }
    if cfg.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
        is.add(
            "metrics.listen",
            format!("{:?} is not an address:port (for example 127.0.0.1:9724)", cfg.metrics.listen),
        );
    }
    is.0
}

/// The largest MTU a port can carry with frames of `frame_size` bytes: a packet is at most 18
/// frames (AF_XDP multi-buffer in copy mode: `MAX_SKB_FRAGS` + 1), each holding a frame less
/// its 256 bytes of headroom, and the frame carries the Ethernet header and up to two VLAN tags
/// (22 bytes) on top of the MTU.
pub fn longest_mtu(frame_size: u32) -> u32 {
    (frame_size.saturating_sub(256) * 18).saturating_sub(22)
}

fn check_switch(cfg: &Config, is: &mut Issues) {
    let s = &cfg.switch;
    is.range("switch.workers", s.workers, 1..=64, "");
    if !s.cores.is_empty() && s.cores.len() != s.workers as usize {
        is.add(
            "switch.cores",
            format!("{} cores listed for {} workers (one per worker)", s.cores.len(), s.workers),
        );
    }
    let mut seen = HashSet::new();
    for (i, c) in s.cores.iter().enumerate() {
        if !seen.insert(c) {
            is.add(format!("switch.cores[{i}]"), format!("core {c} is listed twice"));
        }
    }
    if !matches!(s.frame_size, 0 | 2048 | 4096) {
        is.add(
            "switch.frame_size",
            format!("{} must be 2048 or 4096 (or 0: from the ports' MTUs)", s.frame_size),
        );
    }
    if !s.ring_size.is_power_of_two() || !(64..=16384).contains(&s.ring_size) {
        is.add("switch.ring_size", format!("{} must be a power of two in 64..=16384", s.ring_size));
    }
    if s.busy_poll_us > 1_000_000 {
        is.add("switch.busy_poll_us", format!("{} is more than one second", s.busy_poll_us));
    }
    is.range("switch.busy_poll_budget", s.busy_poll_budget, 1..=1024, "");
    if s.fdb_capacity == 0 {
        is.add("switch.fdb_capacity", "must be at least 1");
    }
    if let Some(c) = &s.flow_log_ipfix
        && c.parse::<std::net::SocketAddr>().is_err()
    {
        is.add(
            "switch.flow_log_ipfix",
            format!("{c:?} is not an address and port (10.0.0.9:4739)"),
        );
    }
    for (f, v) in [("switch.user", &s.user), ("switch.group", &s.group)] {
        if let Some(name) = v
            && (name.is_empty() || name.contains([':', '/', '\n']))
        {
            is.add(f, format!("{name:?} is not an account name"));
        }
    }
    if s.group.is_some() && s.user.is_none() {
        is.add("switch.group", "needs switch.user (the switch runs as root otherwise)");
    }
    // 128 bytes an entry: 2^21 entries are 256 MiB per worker.
    is.range("switch.flow_cache_entries", s.flow_cache_entries, 64..=1 << 21, "");
    is.range("switch.flow_cache_tenant_share", s.flow_cache_tenant_share, 1..=100, " %");
    for (f, v) in [
        ("flow_log_interval_secs", s.flow_log_interval_secs),
        ("flow_log_idle_secs", s.flow_log_idle_secs),
    ] {
        if v == 0 {
            is.add(format!("switch.{f}"), "must be at least 1");
        }
    }
    // 0 takes 4096 when an MTU needs it ([`Config::frame_size`]).
    let frame_size = if s.frame_size == 0 { 4096 } else { s.frame_size };
    let longest = u64::from(longest_mtu(frame_size)) + 22;
    for (name, p) in &cfg.ports {
        if let Some(m) = p.mtu {
            is.range(format!("ports.{name}.mtu"), m, 68..=65_535, "");
            if matches!(frame_size, 2048 | 4096) && u64::from(m) + 22 > longest {
                let hint = if frame_size == 2048 { ": set switch.frame_size = 4096" } else { "" };
                is.add(
                    format!("ports.{name}.mtu"),
                    format!(
                        "{m} does not fit 18 frames of {} bytes ({} bytes with headers at most){hint}",
                        frame_size,
                        longest - 22
                    ),
                );
            }
        }
    }
    is.range("switch.fragment_entries", s.fragment_entries, 8..=1 << 20, "");
    is.range("switch.fragment_timeout_ms", s.fragment_timeout_ms, 1..=60_000, " ms");
    is.range("switch.conntrack_capacity", s.conntrack_capacity, 1..=1 << 24, "");
    // The sockets' rings, and a working set of batches, TX lists and flood copies.
    let sockets = cfg.sockets();
    let need = s.frames_needed(sockets);
    if s.frames != 0 && u64::from(s.frames) < need {
        is.add(
            "switch.frames",
            format!(
                "{} frames are too few for {sockets} socket(s) with rings of {}: need at least {need}",
                s.frames, s.ring_size
            ),
        );
    }
    if s.frames > 1 << 22 {
        is.add("switch.frames", format!("{} is more than 4194304", s.frames));
    }
}

fn check_ports(cfg: &Config, is: &mut Issues) {
    if cfg.ports.is_empty() {
        is.add("ports", "no port is configured");
    }
    let mut ifnames: HashMap<&str, &str> = HashMap::new();
    let mut vfs: HashMap<(&str, u32), &str> = HashMap::new();
    let mut sockets: HashMap<&str, &str> = HashMap::new();
    for (name, p) in &cfg.ports {
        let at = format!("ports.{name}");
        if !valid_name(name) {
            is.add(&at, "name must be 1-64 characters of [A-Za-z0-9_-]");
        }
        check_tunnel(&at, p, is);
        if let Some(v) = &p.vhost_user {
            check_vhost(&at, p, v, &mut sockets, name, is);
            continue;
        }
        match (&p.pf, p.vf, p.interface.is_empty()) {
            // A VF: its interface is found at start (control::sriov).
            (Some(pf), Some(vf), true) => {
                if !valid_ifname(pf) {
                    is.add(format!("{at}.pf"), format!("{pf:?} is not a valid interface name"));
                }
                if let Some(other) = vfs.insert((pf.as_str(), vf), name) {
                    is.add(format!("{at}.vf"), format!("VF {vf} of {pf} is already port {other}"));
                }
                if let Some(n) = cfg.sriov.get(pf).and_then(|s| s.numvfs)
                    && vf >= n
                {
                    is.add(
                        format!("{at}.vf"),
                        format!("VF {vf}, but sriov.{pf}.numvfs provisions VFs 0..{n}"),
                    );
                }
            }
            (None, None, false) => {
                if !valid_ifname(&p.interface) {
                    is.add(
                        format!("{at}.interface"),
                        format!(
                            "{:?} is not a valid interface name (1-15 bytes, no '/', ':' or space)",
                            p.interface
                        ),
                    );
                }
                if let Some(other) = ifnames.insert(&p.interface, name) {
                    is.add(
                        format!("{at}.interface"),
                        format!("interface {} is already used by port {other}", p.interface),
                    );
                }
            }
            _ => {
                is.add(&at, "give either interface, or pf with vf (one VF) or vfs (a range of VFs)")
            }
        }
        is.range(format!("{at}.queues"), p.queues, 1..=64, "");
    }
    // All sockets share one UMEM, and the kernel binds every socket of a shared UMEM in the
    // mode of the first one (xp_assign_dev_shared): zero-copy on one port and copy on another
    // cannot both hold. `auto` follows whichever mode the first port gets.
    let explicit = |m: XdpMode| cfg.ports.iter().find(|(_, p)| p.mode == m).map(|(n, _)| n);
    if let (Some(zc), Some(copy)) = (explicit(XdpMode::ZeroCopy), explicit(XdpMode::Copy)) {
        is.add(
            format!("ports.{copy}.mode"),
            format!(
                "copy here but zero-copy on port {zc}: all ports share one frame area (UMEM), \
                 whose sockets the kernel binds in one mode; use the same mode or auto"
            ),
        );
    }
}

/// An underlay port has a tunnel endpoint, and only an underlay port has one.
fn check_tunnel(at: &str, p: &PortConfig, is: &mut Issues) {
    let Some(t) = &p.tunnel else {
        if p.kind == PortKindConfig::Underlay {
            is.add(format!("{at}.tunnel"), "an underlay port needs [tunnel] with its address");
        }
        return;
    };
    if p.kind != PortKindConfig::Underlay {
        is.add(format!("{at}.tunnel"), "only a port of kind \"underlay\" has a tunnel");
    }
    if p.vhost_user.is_some() {
        is.add(at, "an underlay port is an interface, not a vhost-user socket");
    }
    match t.address.parse::<std::net::Ipv4Addr>() {
        Ok(a) if a.is_unspecified() || a.is_multicast() || a.is_broadcast() => {
            is.add(format!("{at}.tunnel.address"), format!("{a} is not a unicast address"))
        }
        Ok(_) => {}
        Err(_) => is.add(
            format!("{at}.tunnel.address"),
            format!("{:?} is not an IPv4 address (the underlay is IPv4)", t.address),
        ),
    }
    for (field, v) in [("mac", &t.mac), ("gateway_mac", &t.gateway_mac)] {
        if let Some(m) = v {
            match m.parse::<MacAddr>() {
                Ok(mac) if mac.is_multicast() || mac == MacAddr::ZERO => is.add(
                    format!("{at}.tunnel.{field}"),
                    format!("{mac} is a group or zero address"),
                ),
                Ok(_) => {}
                Err(_) => {
                    is.add(format!("{at}.tunnel.{field}"), format!("{m:?} is not a MAC address"))
                }
            }
        }
    }
    if t.udp_port == 0 {
        is.add(format!("{at}.tunnel.udp_port"), "must be 1..=65535");
    }
}

/// The cluster section, and what tenants with a VNI need: one underlay port, VNIs of their
/// own.
fn check_cluster(cfg: &Config, is: &mut Issues) {
    let underlays: Vec<&String> = cfg
        .ports
        .iter()
        .filter(|(_, p)| p.kind == PortKindConfig::Underlay)
        .map(|(n, _)| n)
        .collect();
    if underlays.len() > 1 {
        is.add(
            format!("ports.{}.kind", underlays[1]),
            format!("port {} is the underlay already: one underlay port per switch", underlays[0]),
        );
    }
    let mut vnis: BTreeMap<u32, &str> = BTreeMap::new();
    for (name, t) in &cfg.tenants {
        let Some(v) = t.vni else { continue };
        let at = format!("tenants.{name}.vni");
        is.range(&at, v, 1..=0x00ff_ffff, "");
        if let Some(other) = vnis.insert(v, name) {
            is.add(&at, format!("VNI {v} is tenant {other}'s already"));
        }
        if underlays.is_empty() {
            is.add(&at, "a tenant with a VNI needs a port of kind \"underlay\"");
        }
    }
    if let Some(c) = &cfg.cluster {
        if c.etcd.is_empty() {
            is.add("cluster.etcd", "give at least one etcd endpoint (http://host:port)");
        }
        for (i, e) in c.etcd.iter().enumerate() {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                is.add(
                    format!("cluster.etcd[{i}]"),
                    format!("{e:?} is not an http:// or https:// URL"),
                );
            }
        }
        is.range("cluster.lease_ttl_secs", c.lease_ttl_secs, 2..=3600, " s");
        if let Some(h) = &c.host
            && !valid_name(h)
        {
            is.add("cluster.host", "must be 1-64 characters of [A-Za-z0-9_-]");
        }
        if !c.prefix.starts_with('/') || c.prefix.ends_with('/') {
            is.add(
                "cluster.prefix",
                format!("{:?} must start with '/' and not end with one", c.prefix),
            );
        }
        if underlays.is_empty() {
            is.add("cluster", "a cluster needs a port of kind \"underlay\"");
        }
    } else if !vnis.is_empty() {
        is.add("cluster", "tenants with a VNI need [cluster] (where the map of the hosts lives)");
    }
}

/// Queue pairs a vhost-user port may have.
pub const MAX_VHOST_QUEUES: u32 = 16;

/// A vhost-user port: a socket path instead of an interface, 1 to 16 queue pairs.
fn check_vhost<'a>(
    at: &str,
    p: &PortConfig,
    v: &'a VhostUserConfig,
    sockets: &mut HashMap<&'a str, &'a str>,
    name: &'a str,
    is: &mut Issues,
) {
    if !p.interface.is_empty() || p.pf.is_some() || p.vf.is_some() || p.vfs.is_some() {
        is.add(at, "a vhost-user port has a socket, not an interface, pf, vf or vfs");
    }
    if !v.socket.starts_with('/') || v.socket.len() > 107 {
        is.add(
            format!("{at}.vhost_user.socket"),
            format!("{:?} is not an absolute path of at most 107 bytes", v.socket),
        );
    }
    if let Some(other) = sockets.insert(&v.socket, name) {
        is.add(
            format!("{at}.vhost_user.socket"),
            format!("socket {} is already used by port {other}", v.socket),
        );
    }
    // Queue pairs (`VIRTIO_NET_F_MQ`): each one polled by a worker as a socket is. 16 is
    // what a guest of 16 vCPUs uses, and more than this switch's workers would poll apart.
    if p.queues > MAX_VHOST_QUEUES {
        is.add(
            format!("{at}.queues"),
            format!("a vhost-user port has at most {MAX_VHOST_QUEUES} queue pairs"),
        );
    }
}

fn check_tenants(cfg: &Config, is: &mut Issues) {
    if cfg.tenants.is_empty() {
        is.add("tenants", "no tenant is configured");
    }
    // (port, vlan) -> "tenants.X.attach[i]"
    let mut owners: BTreeMap<(&str, Option<u16>), String> = BTreeMap::new();
    // IPFIX observation domain -> tenant
    let mut domains: BTreeMap<u32, &str> = BTreeMap::new();
    for (name, t) in &cfg.tenants {
        let at = format!("tenants.{name}");
        if t.observation_domain == Some(0) {
            is.add(format!("{at}.observation_domain"), "must be 1 or more (0 is reserved)");
        }
        let domain = t.observation_domain(name);
        if let Some(other) = domains.insert(domain, name) {
            is.add(
                format!("{at}.observation_domain"),
                format!(
                    "{domain} is tenant {other}'s too: each tenant needs its own (set                      observation_domain on one of them)"
                ),
            );
        }
        if !valid_name(name) {
            is.add(&at, "name must be 1-64 characters of [A-Za-z0-9_-]");
        }
        if t.attach.is_empty() && t.vni.is_none() {
            is.add(format!("{at}.attach"), "a tenant needs at least one attachment (or a VNI)");
        }
        if t.fdb_quota == 0 {
            is.add(format!("{at}.fdb_quota"), "must be at least 1");
        }
        if t.mac_aging_secs == 0 {
            is.add(format!("{at}.mac_aging_secs"), "must be at least 1");
        }
        for (i, a) in t.attach.iter().enumerate() {
            let ap = format!("{at}.attach[{i}]");
            let Some(port) = cfg.ports.get(&a.port) else {
                is.add(format!("{ap}.port"), format!("unknown port {:?}", a.port));
                continue;
            };
            match a.vlan {
                Some(v) if !(1..=VLAN_MAX).contains(&v) => {
                    is.add(format!("{ap}.vlan"), format!("VLAN {v} is out of range 1..=4094"));
                    continue;
                }
                None if port.kind == PortKindConfig::Uplink => {
                    is.add(
                        format!("{ap}.vlan"),
                        format!("port {} is an uplink: tenants there need a VLAN", a.port),
                    );
                    continue;
                }
                _ if port.kind == PortKindConfig::Underlay => {
                    is.add(
                        format!("{ap}.port"),
                        format!(
                            "port {} is the underlay: a tenant reaches it by its vni, not an \
                             attachment",
                            a.port
                        ),
                    );
                    continue;
                }
                _ => {}
            }
            if let Some(prev) = owners.insert((a.port.as_str(), a.vlan), ap.clone()) {
                let what = a.vlan.map_or("untagged".to_string(), |v| format!("VLAN {v}"));
                is.add(ap, format!("port {} {what} is already attached at {prev}", a.port));
            }
        }
        if let Some(f) = &t.flow_log {
            if let Some(file) = &f.file
                && !file.starts_with('/')
            {
                is.add(format!("{at}.flow_log.file"), format!("{file:?} is not an absolute path"));
            }
            if f.file.is_none() && !f.ipfix {
                is.add(format!("{at}.flow_log"), "needs a file, ipfix = true, or both");
            }
            if f.ipfix && cfg.switch.flow_log_ipfix.is_none() {
                is.add(
                    format!("{at}.flow_log.ipfix"),
                    "needs switch.flow_log_ipfix, the collector's address",
                );
            }
            if f.max_bytes < 4096 {
                is.add(format!("{at}.flow_log.max_bytes"), "must be at least 4096");
            }
        }
        let ids: Vec<&String> = cfg.ports.keys().collect();
        let port_id = |p: &str| {
            ids.iter().position(|n| n.as_str() == p).map(|i| dataplane::snapshot::PortId(i as u16))
        };
        is.0.extend(super::policy::build(name, t, &port_id).issues);
        let mut macs = HashSet::new();
        for (i, m) in t.static_macs.iter().enumerate() {
            let mp = format!("{at}.static_macs[{i}]");
            match m.mac.parse::<MacAddr>() {
                Err(_) => is.add(format!("{mp}.mac"), format!("{:?} is not a MAC address", m.mac)),
                Ok(mac) if mac.is_multicast() || mac == MacAddr::ZERO => {
                    is.add(format!("{mp}.mac"), format!("{mac} is a group or zero address"))
                }
                Ok(mac) => {
                    if !macs.insert(mac) {
                        is.add(format!("{mp}.mac"), format!("duplicate MAC {mac} in this tenant"));
                    }
                }
            }
            let matches = t
                .attach
                .iter()
                .filter(|a| a.port == m.port && (m.vlan.is_none() || a.vlan == m.vlan));
            match matches.count() {
                0 => is.add(
                    format!("{mp}.port"),
                    format!("tenant has no attachment on port {:?}{}", m.port, vlan_suffix(m.vlan)),
                ),
                1 => {}
                _ => is.add(
                    format!("{mp}.vlan"),
                    format!("tenant has several attachments on port {}: give the VLAN", m.port),
                ),
            }
        }
    }
}

fn vlan_suffix(v: Option<u16>) -> String {
    v.map_or(String::new(), |v| format!(" with VLAN {v}"))
}
