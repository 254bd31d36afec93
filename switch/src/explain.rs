//! Decision records in words: the steps of `ctl trace` and `trace-live`, made from what the
//! pipeline's stages recorded ([`dataplane::trace::record`]) and the snapshot's names, outside
//! the dataplane. Nothing here decides anything: every verdict is the one a stage recorded.

use dataplane::policy::conntrack::Judgement;
use dataplane::policy::spoof::Refusal;
use dataplane::snapshot::{PortId, PortKind, Snapshot};
use dataplane::trace::ParseError;
use dataplane::trace::record::{FlowPath, FrameTrace, MAX_STEPS, Outcome};
use dataplane::vocab::{Direction, Disposition, DropReason};

/// One stage and what it decided, for people.
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

fn drop_at(stage: &'static str, reason: DropReason, why: impl Into<String>) -> Step {
    let reason = reason.as_label();
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

/// What became of a frame in a few words: `tx on PORT vlan N`, `flood`, `drop (reason)`.
pub fn outcome(snap: &Snapshot, d: Disposition) -> String {
    match d {
        Disposition::Tx { port, vlan } => {
            format!("tx on {} {}", port_name(snap, port), vlan_name(vlan))
        }
        Disposition::Flood => "flood".into(),
        Disposition::Drop(r) => format!("drop ({})", r.as_label()),
    }
}

fn port_name(snap: &Snapshot, id: PortId) -> String {
    snap.ports.get(id.index()).map_or("?".to_string(), |s| s.name.clone())
}

/// The steps of a recorded frame. `dry`: the record is a dry run's (`ctl trace`), which says
/// what the stages would do; else what they did.
pub fn steps(snap: &Snapshot, t: &FrameTrace, dry: bool) -> Vec<Step> {
    let m = &t.meta;
    let port = t.port;
    let tenant = snap.tenants.get(m.tenant.index());
    let mut out = vec![step("ingress port", port_name(snap, port))];
    let records: Vec<Outcome> = t.steps().collect();
    for (k, o) in records.iter().enumerate() {
        let s = match *o {
            Outcome::Parse(Ok(())) => step(
                "parse",
                format!(
                    "{}, {}, {}, ports {} -> {}",
                    vlan_name(m.outer_vlan),
                    ethertype_name(m.key.ethertype),
                    proto_name(m.key.proto),
                    m.key.src_port,
                    m.key.dst_port
                ),
            ),
            Outcome::Parse(Err(e)) => {
                drop_at("parse", DropReason::Malformed, format!("{} check failed", e.as_label()))
            }
            Outcome::Tenant(Ok(())) => step("tenant", tenant.map_or("?", |t| &t.name)),
            Outcome::Tenant(Err(r)) => drop_at("tenant", r, "no tenant on this port and VLAN"),
            Outcome::SourceMac(Ok(())) => continue,
            Outcome::SourceMac(Err(r)) => drop_at("source MAC", r, "group or zero source"),
            Outcome::Guard(Ok(true)) => step("spoof check", "sources owned by the attachment"),
            Outcome::Guard(Ok(false)) => step("spoof check", "none configured for this attachment"),
            Outcome::Guard(Err(r)) => {
                let (at, why) = match r {
                    Refusal::Spoof => ("spoof check", "a source the attachment does not own"),
                    Refusal::Ethertype => (
                        "spoof check",
                        "an ether type the attachment may not send (IPv4, IPv6, ARP and \
                         allow_ethertypes)",
                    ),
                    Refusal::Malformed(ParseError::Tcp) => {
                        ("spoof check", "TCP flags no stack sends")
                    }
                    Refusal::Malformed(_) => ("header check", "wrong IPv4 header checksum"),
                };
                drop_at(at, r.reason(), why)
            }
            Outcome::Police(None) => step("policer", "none for this frame"),
            Outcome::Police(Some(p)) => {
                let what = if p.packets { "frames" } else { "bytes" };
                let state =
                    format!("{} {what}/s here, {} {what} of tokens now", p.per_sec, p.tokens);
                if p.passed {
                    step("policer", format!("pass: {state}"))
                } else {
                    drop_at("policer", DropReason::RateLimit, state)
                }
            }
            Outcome::Fragment(Ok(())) => step("fragments", "judged with its datagram"),
            Outcome::Fragment(Err(r)) => drop_at("fragments", r, "refused by the fragment table"),
            Outcome::FlowCache(FlowPath::NotCached) => continue,
            Outcome::FlowCache(p) => step(
                "flow cache",
                match p {
                    FlowPath::Hit => {
                        "hit: the decision below is cached (MAC table and ACLs skipped)"
                    }
                    FlowPath::Stale => {
                        "stale entry (rules or MAC table changed, or due): decided again below"
                    }
                    _ if dry => "miss: decided below (and cached, when the frame passes for real)",
                    _ => "miss: decided below, then cached",
                },
            ),
            Outcome::Fdb(Disposition::Tx { port: e, vlan }) => step(
                "FDB",
                format!("{} is behind {} {}", m.dst, port_name(snap, e), vlan_name(vlan)),
            ),
            Outcome::Fdb(Disposition::Flood) => {
                step("FDB", format!("{} unknown or a group address: flood", m.dst))
            }
            Outcome::Fdb(Disposition::Drop(r)) => {
                drop_at("FDB", r, format!("{} is behind the ingress port", m.dst))
            }
            Outcome::Counted { .. } => continue,
            Outcome::Acl { dir, open, rule, deny } => {
                let stage = match dir {
                    Direction::FromTenant => "ACL from-tenant",
                    Direction::ToTenant => "ACL to-tenant",
                };
                if open {
                    step(stage, "no rules: allow")
                } else {
                    let set = tenant.map(|t| &t.policy.acl[dir.index()]);
                    let name = |r: u32| {
                        set.and_then(|s| s.rules.get(r as usize))
                            .map_or_else(|| format!("#{r}"), |r| r.name.clone())
                    };
                    // The `count` rules of this direction, recorded just before its verdict.
                    let counted: Vec<String> = records[..k]
                        .iter()
                        .rev()
                        .take_while(|o| matches!(o, Outcome::Counted { .. }))
                        .filter_map(|o| match *o {
                            Outcome::Counted { dir: d, rule } if d == dir => Some(name(rule)),
                            _ => None,
                        })
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect();
                    let counts = if counted.is_empty() {
                        String::new()
                    } else {
                        format!(" (counted by {})", counted.join(", "))
                    };
                    let by =
                        rule.map_or("the default".to_string(), |r| format!("rule {}", name(r)));
                    let rule = rule.map(name);
                    if deny {
                        drop_at(stage, DropReason::Policy, format!("denied by {by}{counts}"))
                            .by(rule)
                    } else {
                        step(stage, format!("allowed by {by}{counts}")).by(rule)
                    }
                }
            }
            Outcome::Group(None) => step("security group", "none: every connection passes"),
            Outcome::GroupFromFirstFragment => {
                step("security group", "judged with its datagram's first fragment")
            }
            Outcome::Group(Some(j)) => {
                let group = tenant.and_then(|t| t.policy.group.as_ref());
                // The directions the ACL steps judged: the ones the connection crosses.
                let dirs: Vec<Direction> = records
                    .iter()
                    .filter_map(|o| match o {
                        Outcome::Acl { dir, .. } => Some(*dir),
                        _ => None,
                    })
                    .collect();
                let opening: Vec<(Direction, String)> = dirs
                    .iter()
                    .filter_map(|&d| {
                        let g = group?;
                        g.rule_for(d, m).map(|i| (d, g.rules[i].name.clone()))
                    })
                    .collect();
                match j {
                    Judgement::Untracked => step("security group", "not tracked"),
                    Judgement::Known(state) => step(
                        "security group",
                        format!("part of a tracked connection ({})", state.as_str()),
                    ),
                    Judgement::Open | Judgement::Reopen => {
                        let rules: Vec<String> =
                            opening.iter().map(|(d, r)| format!("{} by {r}", d.as_str())).collect();
                        let names: Vec<&str> = opening.iter().map(|(_, r)| r.as_str()).collect();
                        let opens = if dry { "would open" } else { "opened" };
                        step(
                            "security group",
                            format!("{opens} a connection: {}", rules.join(", ")),
                        )
                        .by((!names.is_empty()).then(|| names.join(", ")))
                    }
                    Judgement::Full => drop_at(
                        "security group",
                        DropReason::ConntrackFull,
                        "the connection quota is full",
                    ),
                    Judgement::Denied(why) => drop_at("security group", DropReason::Policy, why),
                }
            }
        };
        out.push(s);
    }
    if t.truncated > 0 {
        out.push(step(
            "record",
            format!("{} more outcomes not recorded (at most {MAX_STEPS} a frame)", t.truncated),
        ));
    }
    let dropped = out.iter().any(|s| s.dropped);
    match t.disposition {
        Disposition::Drop(r) if !dropped => {
            // Dropped after the stages above (a fragment's datagram, or a later stage).
            out.push(drop_at("output", r, "dropped after the decision"));
        }
        Disposition::Drop(_) => {}
        Disposition::Tx { port: e, vlan } => {
            out.push(step("output", format!("{} {}", port_name(snap, e), vlan_name(vlan))));
            if let (Some(t), Some(ps)) = (tenant, snap.ports.get(e.index())) {
                out.push(step("egress scheduler", scheduler(t, ps)));
            }
        }
        Disposition::Flood => {
            let targets: Vec<String> = tenant
                .map(|t| {
                    t.attachments
                        .iter()
                        .filter(|a| a.port != port)
                        .map(|a| format!("{} {}", port_name(snap, a.port), vlan_name(a.vlan)))
                        .collect()
                })
                .unwrap_or_default();
            out.push(step("output", format!("flood to {}", targets.join(", "))));
        }
    }
    out
}

/// What waits for a frame of tenant `t` on egress port `ps`: its rates, or nothing.
fn scheduler(t: &dataplane::snapshot::TenantSpec, ps: &dataplane::snapshot::PortSpec) -> String {
    let shaper = match ps.kind {
        PortKind::Uplink | PortKind::Underlay => t.shaping.to_uplink,
        PortKind::Tenant => t.shaping.to_tenant,
    };
    let show = |r: dataplane::shaping::Rate| match r.unit {
        dataplane::shaping::Unit::Bytes => format!("{} bit/s", r.per_sec * 8),
        dataplane::shaping::Unit::Packets => format!("{} frames/s", r.per_sec),
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
    if parts.is_empty() {
        return "none: straight to the TX ring".to_string();
    }
    parts.push(format!("weight {}, queue of {} frames", t.shaping.weight, t.shaping.queue));
    format!("tenant's queue on {}: {}", ps.name, parts.join(", "))
}

/// The verdict a trace's steps end in.
pub fn verdict(steps: &[Step]) -> Verdict {
    let rule = steps.iter().rev().find_map(|s| s.rule.clone());
    if let Some(last) = steps.iter().rev().find(|s| s.dropped) {
        return Verdict { action: "drop", reason: last.reason, rule: last.rule.clone(), to: None };
    }
    let to = steps.iter().find(|s| s.stage == "output").map(|s| s.outcome.clone());
    let flood = to.as_deref().is_some_and(|t| t.starts_with("flood"));
    Verdict { action: if flood { "flood" } else { "forward" }, reason: None, rule, to }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane::policy::acl::AclSet;
    use dataplane::policy::{Action, Match, Rule, TenantPolicy};
    use dataplane::snapshot::{Attachment, SnapshotBuilder, TenantSpec};

    fn rule(name: &str, priority: u32, action: Action) -> Rule {
        Rule { name: name.into(), priority, action, m: Match::default() }
    }

    /// red on a1 and a2; to-tenant: a count rule, then a deny.
    fn snap() -> (Snapshot, PortId, PortId) {
        let mut b = SnapshotBuilder::new(1);
        let a1 = b.port("a1", "a1", PortKind::Tenant);
        let a2 = b.port("a2", "a2", PortKind::Tenant);
        let mut red = TenantSpec::new(
            "red",
            vec![Attachment { port: a1, vlan: None }, Attachment { port: a2, vlan: None }],
        );
        let to = AclSet::new(
            vec![rule("seen", 1, Action::Count), rule("no-23", 2, Action::Deny)],
            Action::Allow,
        );
        red.policy = TenantPolicy { acl: [AclSet::new(vec![], Action::Allow), to], group: None };
        b.tenant(red);
        (b.build().unwrap(), a1, a2)
    }

    #[test]
    fn a_recorded_denial_reads_with_its_rule_its_count_rules_and_the_verdict() {
        let (snap, a1, a2) = snap();
        let mut t = FrameTrace::EMPTY;
        t.begin(a1);
        let to = Direction::ToTenant;
        for o in [
            Outcome::Parse(Ok(())),
            Outcome::Tenant(Ok(())),
            Outcome::Guard(Ok(false)),
            Outcome::Police(None),
            Outcome::FlowCache(FlowPath::Miss),
            Outcome::Fdb(Disposition::Tx { port: a2, vlan: None }),
            Outcome::Acl { dir: Direction::FromTenant, open: true, rule: None, deny: false },
            Outcome::Counted { dir: to, rule: 0 },
            Outcome::Acl { dir: to, open: false, rule: Some(1), deny: true },
        ] {
            t.push(o);
        }
        t.disposition = Disposition::Drop(DropReason::Policy);
        let steps = steps(&snap, &t, true);
        let lines: Vec<String> =
            steps.iter().map(|s| format!("{}: {}", s.stage, s.outcome)).collect();
        assert_eq!(lines[0], "ingress port: a1");
        assert!(lines.contains(&"ACL from-tenant: no rules: allow".to_string()), "{lines:?}");
        assert_eq!(
            lines.last().unwrap(),
            "ACL to-tenant: drop (policy): denied by rule no-23 (counted by seen)"
        );
        let v = verdict(&steps);
        assert_eq!(
            (v.action, v.reason, v.rule.as_deref()),
            ("drop", Some("policy"), Some("no-23"))
        );
    }

    #[test]
    fn outcomes_beyond_the_record_are_said_and_a_later_drop_is_explained() {
        let (snap, a1, _) = snap();
        let mut t = FrameTrace::EMPTY;
        t.begin(a1);
        for _ in 0..MAX_STEPS + 3 {
            t.push(Outcome::Counted { dir: Direction::ToTenant, rule: 0 });
        }
        // Dropped by a stage that recorded no drop step (the fragment table's settling).
        t.disposition = Disposition::Drop(DropReason::Fragment);
        let steps = steps(&snap, &t, false);
        assert!(steps.iter().any(|s| s.stage == "record" && s.outcome.starts_with("3 more")));
        let v = verdict(&steps);
        assert_eq!((v.action, v.reason), ("drop", Some("fragment")));
    }
}
