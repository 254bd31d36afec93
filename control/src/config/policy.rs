//! A tenant's policy config (ACL rules, security group, anti-spoofing lists) turned into the
//! dataplane's types. One function serves validation and compilation, so what validation
//! accepts is exactly what compiles: it returns the built policy and every problem found, each
//! naming the rule and field (`tenants.red.acl[2].dst_port`).

use std::collections::HashMap;

use dataplane::policy::acl::AclSet;
use dataplane::policy::conntrack::{SecurityGroup, SgRule, Timeouts};
use dataplane::policy::{Action, Direction, Guard, Match, Prefix, Rule, TenantPolicy};
use dataplane::snapshot::PortId;
use dataplane::time::Nanos;
use dataplane::wire::MacAddr;

use super::issue::Issue;
use super::model::{
    AclActionConfig, AclDefault, AclRuleConfig, DirectionConfig, NumOrName, TenantConfig,
};

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const SCTP: u8 = 132;

/// What [`build`] produced.
#[derive(Debug, Default)]
pub struct Built {
    /// ACLs and group.
    pub policy: TenantPolicy,
    /// Per attachment, in `attach` order.
    pub guards: Vec<Guard>,
    /// Problems; the result is only meaningful when this is empty.
    pub issues: Vec<Issue>,
}

struct Ctx<'a> {
    at: &'a str,
    issues: Vec<Issue>,
}

impl Ctx<'_> {
    fn bad(&mut self, field: impl std::fmt::Display, reason: impl Into<String>) {
        self.issues.push(Issue { path: format!("{}.{field}", self.at), reason: reason.into() });
    }
}

fn direction(d: DirectionConfig) -> Direction {
    match d {
        DirectionConfig::FromTenant => Direction::FromTenant,
        DirectionConfig::ToTenant => Direction::ToTenant,
    }
}

/// `"tcp"`, `"udp"`, `"icmp"`, `"icmpv6"`, `"sctp"` or 0..=255.
pub fn proto(v: &NumOrName) -> Result<u8, String> {
    match v {
        NumOrName::Num(n) => {
            u8::try_from(*n).map_err(|_| format!("protocol {n} is out of range 0..=255"))
        }
        NumOrName::Name(s) => match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(TCP),
            "udp" => Ok(UDP),
            "icmp" => Ok(ICMP),
            "icmpv6" | "ipv6-icmp" => Ok(ICMPV6),
            "sctp" => Ok(SCTP),
            _ => Err(format!("unknown protocol {s:?} (tcp, udp, icmp, icmpv6, sctp or a number)")),
        },
    }
}

/// `"ipv4"`, `"ipv6"`, `"arp"` or a number.
pub fn ethertype(v: &NumOrName) -> Result<u16, String> {
    match v {
        NumOrName::Num(n) => {
            u16::try_from(*n).map_err(|_| format!("ether type {n} is out of range"))
        }
        NumOrName::Name(s) => match s.to_ascii_lowercase().as_str() {
            "ipv4" => Ok(0x0800),
            "ipv6" => Ok(0x86dd),
            "arp" => Ok(0x0806),
            "lldp" => Ok(0x88cc),
            "mpls" => Ok(0x8847),
            "rarp" => Ok(0x8035),
            "lacp" | "slow" => Ok(0x8809),
            "ptp" => Ok(0x88f7),
            "fcoe" => Ok(0x8906),
            "pppoe" => Ok(0x8864),
            "pppoe-discovery" => Ok(0x8863),
            "eapol" => Ok(0x888e),
            _ => Err(format!(
                "unknown ether type {s:?} (ipv4, ipv6, arp, lldp, mpls, rarp, lacp, ptp, fcoe, \
                 pppoe, pppoe-discovery, eapol or a number)"
            )),
        },
    }
}

/// A port `80` or a range `"1000-2000"` (inclusive).
pub fn ports(v: &NumOrName) -> Result<(u16, u16), String> {
    let one =
        |s: &str| s.trim().parse::<u16>().map_err(|_| format!("{s:?} is not a port 0..=65535"));
    match v {
        NumOrName::Num(n) => {
            u16::try_from(*n).map(|p| (p, p)).map_err(|_| format!("port {n} is out of range"))
        }
        NumOrName::Name(s) => {
            let (lo, hi) = match s.split_once('-') {
                Some((a, b)) => (one(a)?, one(b)?),
                None => {
                    let p = one(s)?;
                    (p, p)
                }
            };
            if lo > hi {
                return Err(format!("port range {s:?} is reversed"));
            }
            Ok((lo, hi))
        }
    }
}

/// `"syn,!ack"`: (value, mask).
pub fn tcp_flags(s: &str) -> Result<(u8, u8), String> {
    let (mut v, mut m) = (0u8, 0u8);
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (neg, name) = match part.strip_prefix('!') {
            Some(n) => (true, n),
            None => (false, part),
        };
        let bit = match name.to_ascii_lowercase().as_str() {
            "fin" => 0x01,
            "syn" => 0x02,
            "rst" => 0x04,
            "psh" => 0x08,
            "ack" => 0x10,
            "urg" => 0x20,
            "ece" => 0x40,
            "cwr" => 0x80,
            _ => {
                return Err(format!("unknown TCP flag {name:?} (fin syn rst psh ack urg ece cwr)"));
            }
        };
        m |= bit;
        if !neg {
            v |= bit;
        }
    }
    if m == 0 {
        return Err("no flag given".into());
    }
    Ok((v, m))
}

fn mac(s: &str) -> Result<MacAddr, String> {
    s.parse::<MacAddr>().map_err(|_| format!("{s:?} is not a MAC address"))
}

/// Builds tenant `name`'s policy; `port_id` resolves port names.
pub fn build(name: &str, t: &TenantConfig, port_id: &dyn Fn(&str) -> Option<PortId>) -> Built {
    let at = format!("tenants.{name}");
    let mut cx = Ctx { at: &at, issues: Vec::new() };
    let guards = t
        .attach
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut g = Guard::default();
            for (j, m) in a.macs.iter().enumerate() {
                match mac(m) {
                    Ok(x) if x.is_multicast() || x == MacAddr::ZERO => cx.bad(
                        format!("attach[{i}].macs[{j}]"),
                        format!("{x} is a group or zero address"),
                    ),
                    Ok(x) => g.macs.push(x),
                    Err(e) => cx.bad(format!("attach[{i}].macs[{j}]"), e),
                }
            }
            for (j, p) in a.ips.iter().enumerate() {
                match p.parse::<Prefix>() {
                    Ok(x) => g.ips.push(x),
                    Err(e) => cx.bad(format!("attach[{i}].ips[{j}]"), e),
                }
            }
            for (j, e) in a.allow_ethertypes.iter().enumerate() {
                match ethertype(e) {
                    Ok(x) if x < 0x0600 => cx.bad(
                        format!("attach[{i}].allow_ethertypes[{j}]"),
                        format!("{x:#06x} is an 802.3 length, not an ether type"),
                    ),
                    Ok(x) => g.ethertypes.push(x),
                    Err(e) => cx.bad(format!("attach[{i}].allow_ethertypes[{j}]"), e),
                }
            }
            if !a.allow_ethertypes.is_empty() && a.macs.is_empty() && a.ips.is_empty() {
                cx.bad(
                    format!("attach[{i}].allow_ethertypes"),
                    "applies only with anti-spoofing (macs or ips): without it every ether type passes",
                );
            }
            g
        })
        .collect();

    let mut sets: [Vec<Rule>; 2] = [Vec::new(), Vec::new()];
    let mut seen: HashMap<(usize, u32), usize> = HashMap::new();
    for (i, r) in t.acl.iter().enumerate() {
        let dir = direction(r.direction);
        let Some(rule) = acl_rule(&mut cx, i, r, port_id) else { continue };
        // Two deciding rules of one direction with one priority: which goes first would depend
        // on file order, which nobody reads as meaningful. Refused. (Count rules decide
        // nothing, so they may share a priority.)
        if r.action != AclActionConfig::Count
            && let Some(j) = seen.insert((dir.index(), r.priority), i)
        {
            cx.bad(
                format!("acl[{i}].priority"),
                format!(
                    "{} is also the priority of acl[{j}] in direction {}: the order would be \
                     ambiguous",
                    r.priority,
                    dir.as_str()
                ),
            );
        }
        sets[dir.index()].push(rule);
    }
    let default = match t.acl_default {
        AclDefault::Allow => Action::Allow,
        AclDefault::Deny => Action::Deny,
    };
    let [from, to] = sets;
    let group = t.security_group.as_ref().map(|g| {
        let rules = g
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let f = |x: &str| format!("security_group.rules[{i}].{x}");
                let mut rule = SgRule {
                    name: r.name.clone().unwrap_or_else(|| format!("security_group.rules[{i}]")),
                    dir: Some(direction(r.direction)),
                    ..SgRule::default()
                };
                if let Some(e) = &r.ethertype {
                    match ethertype(e) {
                        Ok(0x0800 | 0x86dd) => rule.ethertype = ethertype(e).ok(),
                        Ok(_) => {
                            cx.bad(f("ethertype"), "a security group rule is for ipv4 or ipv6")
                        }
                        Err(x) => cx.bad(f("ethertype"), x),
                    }
                }
                if let Some(p) = &r.proto {
                    match proto(p) {
                        Ok(p) => rule.proto = Some(p),
                        Err(x) => cx.bad(f("proto"), x),
                    }
                }
                if let Some(p) = &r.ports {
                    match (ports(p), rule.proto) {
                        (Ok(range), Some(TCP | UDP | SCTP | ICMP | ICMPV6)) => {
                            rule.ports = Some(range)
                        }
                        (Ok(_), _) => {
                            cx.bad(f("ports"), "ports need proto tcp, udp, sctp, icmp or icmpv6")
                        }
                        (Err(x), _) => cx.bad(f("ports"), x),
                    }
                }
                if let Some(p) = &r.remote {
                    match p.parse::<Prefix>() {
                        Ok(x) => rule.remote = Some(x),
                        Err(x) => cx.bad(f("remote"), x),
                    }
                }
                rule
            })
            .collect();
        if g.max_connections == 0 {
            cx.bad("security_group.max_connections", "must be at least 1");
        }
        if let Some(n) = g.max_half_open
            && !(1..=g.max_connections).contains(&n)
        {
            cx.bad(
                "security_group.max_half_open",
                format!("{n} is out of range 1..={} (max_connections)", g.max_connections),
            );
        }
        if let Some(n) = g.max_half_open_per_source
            && n == 0
        {
            cx.bad("security_group.max_half_open_per_source", "must be at least 1");
        }
        let to = &g.timeouts;
        for (field, v) in [
            ("tcp", to.tcp),
            ("tcp_handshake", to.tcp_handshake),
            ("tcp_closing", to.tcp_closing),
            ("udp", to.udp),
            ("icmp", to.icmp),
            ("other", to.other),
        ] {
            if v == 0 {
                cx.bad(format!("security_group.timeouts.{field}"), "must be at least 1 second");
            }
        }
        let s = |x: u32| Nanos::from_secs(u64::from(x));
        SecurityGroup {
            rules,
            quota: g.max_connections,
            max_half_open: g.max_half_open.unwrap_or(0),
            max_half_open_per_source: g.max_half_open_per_source.unwrap_or(0),
            timeouts: Timeouts {
                tcp_handshake: s(to.tcp_handshake),
                tcp_established: s(to.tcp),
                tcp_closing: s(to.tcp_closing),
                udp: s(to.udp),
                icmp: s(to.icmp),
                other: s(to.other),
            },
        }
    });
    Built {
        policy: TenantPolicy { acl: [AclSet::new(from, default), AclSet::new(to, default)], group },
        guards,
        issues: cx.issues,
    }
}

/// One ACL rule, or None (with issues recorded) if a field is bad.
fn acl_rule(
    cx: &mut Ctx<'_>,
    i: usize,
    r: &AclRuleConfig,
    port_id: &dyn Fn(&str) -> Option<PortId>,
) -> Option<Rule> {
    let before = cx.issues.len();
    let f = |x: &str| format!("acl[{i}].{x}");
    let mut m = Match::default();
    if let Some(p) = &r.in_port {
        match port_id(p) {
            Some(id) => m.in_port = Some(id),
            None => cx.bad(f("in_port"), format!("unknown port {p:?}")),
        }
    }
    for (field, v, slot) in
        [("src_mac", &r.src_mac, &mut m.src_mac), ("dst_mac", &r.dst_mac, &mut m.dst_mac)]
    {
        if let Some(s) = v {
            match mac(s) {
                Ok(x) => *slot = Some(x),
                Err(e) => cx.bad(f(field), e),
            }
        }
    }
    if let Some(e) = &r.ethertype {
        match ethertype(e) {
            Ok(x) => m.ethertype = Some(x),
            Err(x) => cx.bad(f("ethertype"), x),
        }
    }
    if let Some(v) = r.vlan {
        if (1..=4094).contains(&v) {
            m.vlan = Some(Some(v));
        } else {
            cx.bad(f("vlan"), format!("VLAN {v} is out of range 1..=4094"));
        }
    }
    for (field, v, slot) in [("src", &r.src, &mut m.src), ("dst", &r.dst, &mut m.dst)] {
        if let Some(s) = v {
            match s.parse::<Prefix>() {
                Ok(x) => *slot = Some(x),
                Err(e) => cx.bad(f(field), e),
            }
        }
    }
    if let Some(p) = &r.proto {
        match proto(p) {
            Ok(x) => m.proto = Some(x),
            Err(e) => cx.bad(f("proto"), e),
        }
    }
    let l4 = matches!(m.proto, Some(TCP | UDP | SCTP));
    for (field, v, slot) in
        [("src_port", &r.src_port, &mut m.src_ports), ("dst_port", &r.dst_port, &mut m.dst_ports)]
    {
        if let Some(p) = v {
            match ports(p) {
                Ok(x) if l4 => *slot = Some(x),
                Ok(_) => cx.bad(f(field), "a port needs proto tcp, udp or sctp"),
                Err(e) => cx.bad(f(field), e),
            }
        }
    }
    if let Some(s) = &r.tcp_flags {
        match tcp_flags(s) {
            Ok(x) if m.proto == Some(TCP) => m.tcp_flags = Some(x),
            Ok(_) => cx.bad(f("tcp_flags"), "TCP flags need proto tcp"),
            Err(e) => cx.bad(f("tcp_flags"), e),
        }
    }
    let icmp = matches!(m.proto, Some(ICMP | ICMPV6));
    for (field, v, slot) in
        [("icmp_type", r.icmp_type, &mut m.icmp_type), ("icmp_code", r.icmp_code, &mut m.icmp_code)]
    {
        if let Some(x) = v {
            if icmp {
                *slot = Some(x);
            } else {
                cx.bad(f(field), "ICMP fields need proto icmp or icmpv6");
            }
        }
    }
    if cx.issues.len() > before {
        return None;
    }
    let action = match r.action {
        AclActionConfig::Allow => Action::Allow,
        AclActionConfig::Deny => Action::Deny,
        AclActionConfig::Count => Action::Count,
    };
    Some(Rule {
        name: r.name.clone().unwrap_or_else(|| format!("acl[{i}]")),
        priority: r.priority,
        action,
        m,
    })
}
