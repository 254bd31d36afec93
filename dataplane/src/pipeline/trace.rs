//! The decision trace: every stage's verdict for one frame, without changing anything.
//!
//! It runs the same stage functions as [`super::Pipeline::process`] on a frame the operator
//! describes, against a worker's current snapshot and tables, but only reads them: nothing is
//! learned, cached, counted or opened. Where the real pipeline would change state (learning
//! the source, opening a connection) the trace says what would happen.

use super::{Disposition, Pipeline, classify, ingress, parse, policy, tenant};
use crate::batch::Meta;
use crate::policy::Action;
use crate::policy::acl::key_of;
use crate::policy::conntrack::Judgement;
use crate::policy::spoof::Refusal;
use crate::shaping::Unit;
use crate::snapshot::{PortKind, Snapshot};
use crate::time::Nanos;
use crate::vocab::{Direction, ParseError, PortId};

/// One stage and what it decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The stage.
    pub stage: &'static str,
    /// Its verdict, for people.
    pub outcome: String,
    /// True when the frame is dropped here (the last step then).
    pub dropped: bool,
    /// The drop reason (`DropReason` label) when dropped here.
    pub reason: Option<&'static str>,
    /// The rule (ACL or security-group rule) that decided here, if one did.
    pub rule: Option<String>,
}

fn step(stage: &'static str, outcome: impl Into<String>) -> Step {
    Step { stage, outcome: outcome.into(), dropped: false, reason: None, rule: None }
}

fn drop_at(stage: &'static str, reason: &'static str, why: impl Into<String>) -> Step {
    Step {
        stage,
        outcome: format!("drop ({reason}): {}", why.into()),
        dropped: true,
        reason: Some(reason),
        rule: None,
    }
}

impl Step {
    fn by(mut self, rule: Option<String>) -> Step {
        self.rule = rule;
        self
    }
}

/// What a trace ends in, as `ofproto/trace`'s "Datapath actions" line says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `drop`, `forward` or `flood`.
    pub action: &'static str,
    /// The drop reason, for a drop.
    pub reason: Option<&'static str>,
    /// The rule that decided: the one that dropped it, or the last that allowed it.
    pub rule: Option<String>,
    /// Where it goes (`PORT vlan N`, or the flood's targets).
    pub to: Option<String>,
}

/// An outer VLAN as people read it: `vlan 100`, or `untagged`.
pub fn vlan_name(v: Option<u16>) -> String {
    v.map_or_else(|| "untagged".to_string(), |v| format!("vlan {v}"))
}

/// An IP protocol by name where it has a common one (`tcp`), else its number.
pub fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        n => format!("protocol {n}"),
    }
}

/// An ether type by name where it has a common one (`IPv4`), else in hex.
pub fn ethertype_name(e: u16) -> String {
    match e {
        0x0800 => "IPv4".into(),
        0x86dd => "IPv6".into(),
        0x0806 => "ARP".into(),
        0x88cc => "LLDP".into(),
        n => format!("ether type {n:#06x}"),
    }
}

/// The verdict a trace's steps end in.
pub fn verdict(steps: &[Step]) -> Verdict {
    let rule = steps.iter().rev().find_map(|s| s.rule.clone());
    if let Some(last) = steps.last().filter(|s| s.dropped) {
        return Verdict { action: "drop", reason: last.reason, rule: last.rule.clone(), to: None };
    }
    let to = steps.iter().find(|s| s.stage == "output").map(|s| s.outcome.clone());
    let flood = to.as_deref().is_some_and(|t| t.starts_with("flood"));
    Verdict { action: if flood { "flood" } else { "forward" }, reason: None, rule, to }
}

/// A MAC for address `ip` of tenant `t`, to trace a frame towards it, and where it was
/// found: the anti-spoofing config of an attachment that owns exactly that address and one
/// MAC, or a flow the tenant's host sent from it (the flow cache of tenants with policy or
/// flow logs). None: not known here.
pub fn resolve_mac(
    p: &Pipeline,
    snap: &Snapshot,
    t: crate::vocab::TenantId,
    ip: [u8; 16],
) -> Option<(crate::wire::MacAddr, String)> {
    let spec = snap.tenants.get(t.index())?;
    let port_name =
        |id: PortId| snap.ports.get(id.index()).map_or("?".to_string(), |s| s.name.clone());
    for (g, a) in spec.guards.iter().zip(&spec.attachments) {
        let exact = g.ips.iter().any(|pfx| pfx.len == 128 && pfx.contains(&ip));
        if exact && let [mac] = g.macs.as_slice() {
            return Some((
                *mac,
                format!("anti-spoofing config of attachment {}", port_name(a.port)),
            ));
        }
    }
    p.flows
        .source_mac(t, &ip)
        .map(|mac| (mac, "learned: a flow the host sent (flow cache)".to_string()))
}

/// Traces `frame` arriving on `port` at `now` through `p`'s tables under `snap`.
pub fn trace(p: &Pipeline, snap: &Snapshot, now: Nanos, port: PortId, frame: &[u8]) -> Vec<Step> {
    let mut out = Vec::new();
    let port_name =
        |id: PortId| snap.ports.get(id.index()).map_or("?".to_string(), |s| s.name.clone());
    out.push(step("ingress port", port_name(port)));
    let mut m = Meta::EMPTY;
    if let Err(e) = parse::parse_one(frame, &mut m) {
        out.push(drop_at("parse", "malformed", format!("{} check failed", e.as_label())));
        return out;
    }
    out.push(step(
        "parse",
        format!(
            "{}, {}, {}, ports {} -> {}",
            vlan_name(m.outer_vlan),
            ethertype_name(m.key.ethertype),
            proto_name(m.key.proto),
            m.key.src_port,
            m.key.dst_port
        ),
    ));
    if let Err(r) = tenant::resolve_one(snap, port, &mut m) {
        out.push(drop_at("tenant", r.as_label(), "no tenant on this port and VLAN"));
        return out;
    }
    let Some(t) = snap.tenants.get(m.tenant.index()) else {
        out.push(drop_at("tenant", "unknown_tenant", "tenant id out of range"));
        return out;
    };
    out.push(step("tenant", t.name.clone()));
    if let Err(r) = ingress::check_one(&m) {
        out.push(drop_at("source MAC", r.as_label(), "group or zero source"));
        return out;
    }
    let guarded = t.guards.get(usize::from(m.attachment.0)).is_some_and(|g| !g.is_empty());
    let checks = snap.checks(m.tenant);
    if let Err(r) = policy::check_one(snap, checks, &m, frame) {
        let (at, why) = match r {
            Refusal::Spoof => ("spoof check", "a source the attachment does not own"),
            Refusal::Ethertype => (
                "spoof check",
                "an ether type the attachment may not send (IPv4, IPv6, ARP and allow_ethertypes)",
            ),
            Refusal::Malformed(ParseError::Tcp) => ("spoof check", "TCP flags no stack sends"),
            Refusal::Malformed(_) => ("header check", "wrong IPv4 header checksum"),
        };
        out.push(drop_at(at, r.reason().as_label(), why));
        return out;
    }
    if guarded {
        out.push(step("spoof check", "sources owned by the attachment"));
    } else {
        out.push(step("spoof check", "none configured for this attachment"));
    }
    let from_tenant = snap.ports.get(port.index()).is_some_and(|p| p.kind == PortKind::Tenant);
    match (t.shaping.police, p.police.bucket(m.tenant)) {
        (Some(r), Some((b, _))) if from_tenant => {
            let cost = r.cost(frame.len() as u32).min(b.size());
            let what = if r.unit == Unit::Bytes { "bytes" } else { "frames" };
            let (per_sec, tokens) = (b.rate(), b.tokens());
            let verdict = format!("{per_sec} {what}/s here, {tokens} {what} of tokens now");
            if b.has(cost) {
                out.push(step("policer", format!("pass: {verdict}")));
            } else {
                out.push(drop_at("policer", "rate_limit", verdict));
                return out;
            }
        }
        _ => out.push(step("policer", "none for this frame")),
    }
    if snap.uses_flows(m.tenant) {
        let key = crate::flow::cache::key_of(&m, port);
        let cached = match p.flows.peek(m.tenant, &key, p.fdb().generation(m.tenant), now) {
            None => "miss: decided below, then cached",
            Some(true) => "hit: the decision below is cached (MAC table and ACLs skipped)",
            Some(false) => "stale entry (rules or MAC table changed, or due): decided again below",
        };
        out.push(step("flow cache", cached));
    }
    let d = classify::forward_one(p.fdb(), now, port, &m);
    let fdb = match d {
        Disposition::Tx { port: e, vlan } => {
            format!("{} is behind {} {}", m.dst, port_name(e), vlan_name(vlan))
        }
        Disposition::Flood => format!("{} unknown or a group address: flood", m.dst),
        Disposition::Drop(r) => {
            out.push(drop_at("FDB", r.as_label(), format!("{} is behind the ingress port", m.dst)));
            return out;
        }
    };
    out.push(step("FDB", fdb));
    let (dirs, n) = policy::directions(snap, port, d);
    let dirs = &dirs[..n];
    let names: Vec<&str> = dirs.iter().map(|d| d.as_str()).collect();
    out.push(step(
        "directions",
        if names.is_empty() { "none".to_string() } else { names.join(", ") },
    ));
    let mut key = None;
    for &dir in dirs {
        let set = &t.policy.acl[dir.index()];
        let stage = if dir == Direction::FromTenant { "ACL from-tenant" } else { "ACL to-tenant" };
        if set.is_open() {
            out.push(step(stage, "no rules: allow"));
            continue;
        }
        let k = policy::masked(key.get_or_insert_with(|| key_of(&m, port)), set.used_fields());
        let mut counted = Vec::new();
        set.count(&k, |r| counted.push(set.rules[r as usize].name.clone()));
        let v = set.classify(&k);
        let by = v
            .rule
            .map_or("the default".to_string(), |r| format!("rule {}", set.rules[r as usize].name));
        let counts = if counted.is_empty() {
            String::new()
        } else {
            format!(" (counted by {})", counted.join(", "))
        };
        let rule = v.rule.map(|r| set.rules[r as usize].name.clone());
        if v.action == Action::Deny {
            out.push(drop_at(stage, "policy", format!("denied by {by}{counts}")).by(rule));
            return out;
        }
        out.push(step(stage, format!("allowed by {by}{counts}")).by(rule));
    }
    if let Some(g) = &t.policy.group {
        let opens = || {
            let rules: Vec<String> = dirs
                .iter()
                .filter_map(|&d| {
                    g.rule_for(d, &m).map(|i| format!("{} by {}", d.as_str(), g.rules[i].name))
                })
                .collect();
            rules.join(", ")
        };
        // The rules that open it, one per direction it crosses.
        let names: Vec<&str> = dirs
            .iter()
            .filter_map(|&d| g.rule_for(d, &m))
            .map(|i| g.rules[i].name.as_str())
            .collect();
        let first_rule = (!names.is_empty()).then(|| names.join(", "));
        // The same judgement the packet path makes, without its side effects.
        let (verdict, rule) = match p.policy.conns.judge(now, g, dirs, &m, frame) {
            Judgement::Untracked => ("not tracked".to_string(), None),
            Judgement::Known(state) => {
                (format!("part of a tracked connection ({})", state.as_str()), None)
            }
            Judgement::Open | Judgement::Reopen => {
                (format!("would open a connection: {}", opens()), first_rule)
            }
            Judgement::Full => {
                out.push(drop_at(
                    "security group",
                    "conntrack_full",
                    "the connection quota is full",
                ));
                return out;
            }
            Judgement::Denied(why) => {
                out.push(drop_at("security group", "policy", why));
                return out;
            }
        };
        out.push(step("security group", verdict).by(rule));
    } else {
        out.push(step("security group", "none: every connection passes"));
    }
    let output = match d {
        Disposition::Tx { port: e, vlan } => format!("{} {}", port_name(e), vlan_name(vlan)),
        _ => {
            let targets: Vec<String> = t
                .attachments
                .iter()
                .filter(|a| a.port != port)
                .map(|a| format!("{} {}", port_name(a.port), vlan_name(a.vlan)))
                .collect();
            format!("flood to {}", targets.join(", "))
        }
    };
    out.push(step("output", output));
    if let Disposition::Tx { port: e, .. } = d
        && let Some(ps) = snap.ports.get(e.index())
    {
        let shaper = match ps.kind {
            PortKind::Uplink => t.shaping.to_uplink,
            PortKind::Tenant => t.shaping.to_tenant,
        };
        let show = |r: crate::shaping::Rate| match r.unit {
            Unit::Bytes => format!("{} bit/s", r.per_sec * 8),
            Unit::Packets => format!("{} frames/s", r.per_sec),
        };
        let mut parts = Vec::new();
        if let Some(r) = ps.rate {
            parts.push(format!("port rate {}", show(r)));
        }
        if let Some(r) = shaper {
            parts.push(format!("tenant shaper {}", show(r)));
        }
        if let Some(r) = t.shaping.min_rate {
            parts.push(format!("guaranteed {}", show(r)));
        }
        let outcome = if parts.is_empty() {
            "none: straight to the TX ring".to_string()
        } else {
            parts.push(format!("weight {}, queue of {} frames", t.shaping.weight, t.shaping.queue));
            format!("tenant's queue on {}: {}", ps.name, parts.join(", "))
        };
        out.push(step("egress scheduler", outcome));
    }
    out
}
