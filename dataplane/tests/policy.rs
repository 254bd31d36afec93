//! Policy units over real parsed frames: every ACL match field, priorities, the default action,
//! count rules, the classifier against a one-by-one reference, and the connection-state machine
//! with its timeouts and quotas.
// Integration tests live outside `mod tests` by nature; the lint is for unit tests in src/.
#![allow(clippy::tests_outside_test_module)]

use dataplane::batch::Meta;
use dataplane::pipeline::parse::parse_one;
use dataplane::policy::acl::{AclSet, key_of, matches_entries};
use dataplane::policy::conntrack::{
    ConnTable, Judgement, SecurityGroup, SgRule, State, Timeouts, Verdict,
};
use dataplane::policy::{Action, Direction, Match, Prefix, Rule};
use dataplane::snapshot::{PortId, TenantId};
use dataplane::time::Nanos;
use dataplane::wire::MacAddr;
use etherparse::PacketBuilder;
use proptest::prelude::*;

const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

/// A TCP frame 10.0.0.1:sport -> 10.0.0.2:dport with `flags` (FIN 1, SYN 2, RST 4, ACK 16).
fn tcp(sport: u16, dport: u16, flags: u8, vlan: Option<u16>) -> Vec<u8> {
    tcp_between([10, 0, 0, 1], [10, 0, 0, 2], sport, dport, flags, vlan)
}

fn tcp_between(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    flags: u8,
    vlan: Option<u16>,
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(A, B);
    let mut b = match vlan {
        Some(v) => {
            eth.single_vlan(v.try_into().unwrap()).ipv4(src, dst, 64).tcp(sport, dport, 1, 1000)
        }
        None => eth.ipv4(src, dst, 64).tcp(sport, dport, 1, 1000),
    };
    if flags & 1 != 0 {
        b = b.fin();
    }
    if flags & 2 != 0 {
        b = b.syn();
    }
    if flags & 4 != 0 {
        b = b.rst();
    }
    if flags & 16 != 0 {
        b = b.ack(1);
    }
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

fn udp_between(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(A, B)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut out, &[0; 4])
        .unwrap();
    out
}

fn udp6(sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    let s: std::net::Ipv6Addr = "fd00::1".parse().unwrap();
    let d: std::net::Ipv6Addr = "fd00:1::2".parse().unwrap();
    PacketBuilder::ethernet2(A, B)
        .ipv6(s.octets(), d.octets(), 64)
        .udp(sport, dport)
        .write(&mut out, &[0; 4])
        .unwrap();
    out
}

fn icmp4(src: [u8; 4], dst: [u8; 4], request: bool, id: u16) -> Vec<u8> {
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(A, B).ipv4(src, dst, 64);
    let b = if request { b.icmpv4_echo_request(id, 1) } else { b.icmpv4_echo_reply(id, 1) };
    b.write(&mut out, &[0; 8]).unwrap();
    out
}

fn meta(frame: &[u8]) -> Meta {
    let mut m = Meta::EMPTY;
    parse_one(frame, &mut m).unwrap();
    m
}

fn rule(priority: u32, action: Action, m: Match) -> Rule {
    Rule { name: format!("r{priority}"), priority, action, m }
}

/// The verdict of a set with one deny rule and default allow, for `frame` on port 1.
fn denied_by(m: Match, frame: &[u8]) -> bool {
    let set = AclSet::new(vec![rule(10, Action::Deny, m)], Action::Allow);
    set.decide(&key_of(&meta(frame), PortId(1)), |_| {}).action == Action::Deny
}

#[test]
fn every_match_field_matches_and_misses() {
    let f = tcp(1234, 22, 2, Some(100));
    let fields: Vec<(&str, Match, Match)> = vec![
        (
            "in_port",
            Match { in_port: Some(PortId(1)), ..Match::default() },
            Match { in_port: Some(PortId(2)), ..Match::default() },
        ),
        (
            "src_mac",
            Match { src_mac: Some(MacAddr(A)), ..Match::default() },
            Match { src_mac: Some(MacAddr(B)), ..Match::default() },
        ),
        (
            "dst_mac",
            Match { dst_mac: Some(MacAddr(B)), ..Match::default() },
            Match { dst_mac: Some(MacAddr(A)), ..Match::default() },
        ),
        (
            "ethertype",
            Match { ethertype: Some(0x0800), ..Match::default() },
            Match { ethertype: Some(0x86dd), ..Match::default() },
        ),
        (
            "vlan",
            Match { vlan: Some(Some(100)), ..Match::default() },
            Match { vlan: Some(None), ..Match::default() },
        ),
        (
            "src",
            Match { src: Some("10.0.0.0/24".parse().unwrap()), ..Match::default() },
            Match { src: Some("10.0.1.0/24".parse().unwrap()), ..Match::default() },
        ),
        (
            "dst",
            Match { dst: Some("10.0.0.2".parse().unwrap()), ..Match::default() },
            Match { dst: Some("10.0.0.3".parse().unwrap()), ..Match::default() },
        ),
        (
            "proto",
            Match { proto: Some(6), ..Match::default() },
            Match { proto: Some(17), ..Match::default() },
        ),
        (
            "src_ports",
            Match { src_ports: Some((1000, 2000)), ..Match::default() },
            Match { src_ports: Some((2000, 3000)), ..Match::default() },
        ),
        (
            "dst_ports",
            Match { dst_ports: Some((22, 22)), ..Match::default() },
            Match { dst_ports: Some((23, 1024)), ..Match::default() },
        ),
        (
            "tcp_flags",
            Match { tcp_flags: Some((0x02, 0x12)), ..Match::default() },
            Match { tcp_flags: Some((0x12, 0x12)), ..Match::default() },
        ),
    ];
    for (name, hit, miss) in fields {
        assert!(denied_by(hit, &f), "{name} should match");
        assert!(!denied_by(miss, &f), "{name} should not match");
    }
    // ICMP type and code.
    let echo = icmp4([10, 0, 0, 1], [10, 0, 0, 2], true, 7);
    assert!(denied_by(
        Match { proto: Some(1), icmp_type: Some(8), icmp_code: Some(0), ..Match::default() },
        &echo
    ));
    assert!(!denied_by(Match { proto: Some(1), icmp_type: Some(0), ..Match::default() }, &echo));
    assert!(!denied_by(Match { proto: Some(1), icmp_code: Some(3), ..Match::default() }, &echo));
    // IPv6 prefixes and ports.
    let u = udp6(5000, 53);
    assert!(denied_by(
        Match {
            src: Some("fd00::/16".parse().unwrap()),
            dst_ports: Some((53, 53)),
            ..Match::default()
        },
        &u
    ));
    assert!(!denied_by(Match { src: Some("10.0.0.0/8".parse().unwrap()), ..Match::default() }, &u));
    assert!(!denied_by(Match { dst: Some("fd00::/32".parse().unwrap()), ..Match::default() }, &u));
}

#[test]
fn lowest_priority_number_decides_then_the_default() {
    let ssh = Match { proto: Some(6), dst_ports: Some((22, 22)), ..Match::default() };
    let tcp_any = Match { proto: Some(6), ..Match::default() };
    let rules = vec![rule(20, Action::Deny, tcp_any.clone()), rule(10, Action::Allow, ssh.clone())];
    let set = AclSet::new(rules, Action::Deny);
    let v = |f: &[u8]| set.decide(&key_of(&meta(f), PortId(0)), |_| {});
    assert_eq!(v(&tcp(1, 22, 2, None)).action, Action::Allow, "priority 10 before 20");
    assert_eq!(v(&tcp(1, 22, 2, None)).rule, Some(1));
    assert_eq!(v(&tcp(1, 80, 2, None)).action, Action::Deny);
    assert_eq!(v(&tcp(1, 80, 2, None)).rule, Some(0));
    // No rule matches UDP: the default.
    let d = v(&udp6(1, 2));
    assert_eq!((d.action, d.rule), (Action::Deny, None));
    let open = AclSet::new(vec![], Action::Allow);
    assert!(open.is_open());
    assert_eq!(open.decide(&key_of(&meta(&udp6(1, 2)), PortId(0)), |_| {}).action, Action::Allow);
}

#[test]
fn count_rules_count_every_match_and_decide_nothing() {
    let rules = vec![
        rule(1, Action::Count, Match { proto: Some(6), ..Match::default() }),
        rule(1, Action::Count, Match { proto: Some(6), ..Match::default() }),
        rule(5, Action::Count, Match { dst_ports: Some((80, 80)), ..Match::default() }),
        rule(9, Action::Deny, Match { dst_ports: Some((80, 80)), ..Match::default() }),
    ];
    let set = AclSet::new(rules, Action::Allow);
    let mut counted = Vec::new();
    let v = set.decide(&key_of(&meta(&tcp(1, 80, 2, None)), PortId(0)), |r| counted.push(r));
    counted.sort();
    assert_eq!(counted, [0, 1, 2], "both identical count rules and the port rule");
    assert_eq!(v.action, Action::Deny);
    counted.clear();
    let v = set.decide(&key_of(&meta(&tcp(1, 81, 2, None)), PortId(0)), |r| counted.push(r));
    assert_eq!((counted.as_slice(), v.action), (&[0, 1][..], Action::Allow));
}

fn arb_match() -> impl Strategy<Value = Match> {
    (
        proptest::option::of(0u16..3),
        proptest::option::of(prop_oneof![Just(6u8), Just(17u8)]),
        proptest::option::of((0u16..300, 0u16..300).prop_map(|(a, b)| (a.min(b), a.max(b)))),
        proptest::option::of((0u16..300, 0u16..300).prop_map(|(a, b)| (a.min(b), a.max(b)))),
        proptest::option::of((0u8..4, 0u8..=32).prop_map(|(x, l)| Prefix::v4([10, x, 0, 0], l))),
        proptest::option::of((0u8..4, 8u8..=32).prop_map(|(x, l)| Prefix::v4([10, 0, x, 0], l))),
    )
        .prop_map(|(port, proto, sp, dp, src, dst)| Match {
            in_port: port.map(PortId),
            proto,
            src_ports: sp,
            dst_ports: dp,
            src,
            dst,
            ..Match::default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// The classifier decides exactly as evaluating the rules one by one in priority order.
    #[test]
    fn classifier_equals_linear_evaluation(
        rules in proptest::collection::vec((0u32..50, any::<bool>(), arb_match()), 0..40),
        packets in proptest::collection::vec((0u16..3, 0u8..4, 0u8..4, 0u16..300, 0u16..300, any::<bool>()), 1..40),
    ) {
        let rules: Vec<Rule> = rules
            .into_iter()
            .map(|(p, allow, m)| rule(p, if allow { Action::Allow } else { Action::Deny }, m))
            .collect();
        let set = AclSet::new(rules.clone(), Action::Deny);
        for (port, s, d, sp, dp, is_tcp) in packets {
            let f = if is_tcp {
                tcp_between([10, s, 0, 1], [10, 0, d, 2], sp, dp, 2, None)
            } else {
                let mut out = Vec::new();
                PacketBuilder::ethernet2(A, B).ipv4([10, s, 0, 1], [10, 0, d, 2], 64).udp(sp, dp).write(&mut out, &[]).unwrap();
                out
            };
            let key = key_of(&meta(&f), PortId(port));
            let mut order: Vec<usize> = (0..rules.len()).collect();
            order.sort_by_key(|&i| (rules[i].priority, i));
            let linear = order.into_iter().find(|&i| matches_entries(&rules[i].m.entries(), &key));
            let got = set.decide(&key, |_| {});
            prop_assert_eq!(got.rule.map(|r| r as usize), linear);
            let want = linear.map_or(Action::Deny, |i| rules[i].action);
            prop_assert_eq!(got.action, want);
        }
    }
}

// --- Connection tracking ---

fn group(quota: u32) -> SecurityGroup {
    SecurityGroup {
        rules: vec![
            // The tenant may open anything outwards; inwards only SSH from 10.0.0.0/8.
            SgRule { name: "out".into(), dir: Some(Direction::FromTenant), ..SgRule::default() },
            SgRule {
                name: "ssh".into(),
                dir: Some(Direction::ToTenant),
                proto: Some(6),
                ports: Some((22, 22)),
                remote: Some("10.0.0.0/8".parse().unwrap()),
                ..SgRule::default()
            },
        ],
        quota,
        max_half_open: 0,
        max_half_open_per_source: 0,
        timeouts: Timeouts { tcp_established: Nanos::from_secs(100), ..Timeouts::default() },
    }
}

struct Ct {
    table: ConnTable,
    g: SecurityGroup,
}

impl Ct {
    fn new(quota: u32) -> Ct {
        let g = group(quota);
        let mut table = ConnTable::new(1000);
        table.install(&[Some(&g), Some(&g)]);
        Ct { table, g }
    }

    fn check(&mut self, secs: u64, dir: Direction, frame: &[u8]) -> Verdict {
        self.check_as(TenantId(0), secs, dir, frame)
    }

    fn check_as(&mut self, t: TenantId, secs: u64, dir: Direction, frame: &[u8]) -> Verdict {
        let mut m = meta(frame);
        m.tenant = t;
        self.table.check(Nanos::from_secs(secs), &self.g, &[dir], &m, frame)
    }
}

const OUT: Direction = Direction::FromTenant;
const IN: Direction = Direction::ToTenant;
const FIN: u8 = 1;
const SYN: u8 = 2;
const RST: u8 = 4;
const ACK: u8 = 16;

/// Host 10.0.0.1 in the tenant talks to 10.0.0.2 outside: `out` frames go 1 -> 2.
fn out_tcp(flags: u8) -> Vec<u8> {
    tcp_between([10, 0, 0, 1], [10, 0, 0, 2], 40000, 80, flags, None)
}

fn back_tcp(flags: u8) -> Vec<u8> {
    tcp_between([10, 0, 0, 2], [10, 0, 0, 1], 80, 40000, flags, None)
}

#[test]
fn return_traffic_of_an_outbound_connection_passes_and_unsolicited_does_not() {
    let mut ct = Ct::new(10);
    assert_eq!(ct.check(1, IN, &back_tcp(SYN)), Verdict::Denied, "no inbound rule for port 40000");
    // The judgement the trace shows is the one the packet path carries out, and changes nothing.
    let judge =
        |ct: &Ct, dir, f: &[u8]| ct.table.judge(Nanos::from_secs(1), &ct.g, &[dir], &meta(f), f);
    assert_eq!(judge(&ct, OUT, &out_tcp(SYN)), Judgement::Open);
    assert_eq!(
        judge(&ct, OUT, &out_tcp(ACK)),
        Judgement::Denied("TCP without SYN and no open connection")
    );
    assert_eq!(ct.table.len(), 0);
    assert_eq!(ct.check(1, OUT, &out_tcp(SYN)), Verdict::Opened);
    assert_eq!(judge(&ct, IN, &back_tcp(SYN | ACK)), Judgement::Known(State::SynSent));
    assert_eq!(ct.check(1, IN, &back_tcp(SYN | ACK)), Verdict::Established);
    assert_eq!(ct.check(1, OUT, &out_tcp(ACK)), Verdict::Established);
    let m = meta(&out_tcp(ACK));
    assert_eq!(
        ct.table.lookup(Nanos::from_secs(1), &m, &out_tcp(ACK)).unwrap().state,
        State::Established
    );
    // TCP that does not start with a SYN opens nothing.
    assert_eq!(
        ct.check(1, OUT, &tcp_between([10, 0, 0, 1], [10, 0, 0, 9], 1, 2, ACK, None)),
        Verdict::Denied
    );
    // Inbound SSH from 10/8 opens a connection; from elsewhere it does not.
    assert_eq!(
        ct.check(1, IN, &tcp_between([10, 9, 9, 9], [10, 0, 0, 1], 5555, 22, SYN, None)),
        Verdict::Opened
    );
    assert_eq!(
        ct.check(1, IN, &tcp_between([192, 168, 0, 1], [10, 0, 0, 1], 5555, 22, SYN, None)),
        Verdict::Denied
    );
    // ICMP echo: the reply follows the request by identifier.
    assert_eq!(ct.check(1, IN, &icmp4([10, 0, 0, 2], [10, 0, 0, 1], false, 77)), Verdict::Denied);
    assert_eq!(ct.check(1, OUT, &icmp4([10, 0, 0, 1], [10, 0, 0, 2], true, 77)), Verdict::Opened);
    assert_eq!(
        ct.check(1, IN, &icmp4([10, 0, 0, 2], [10, 0, 0, 1], false, 77)),
        Verdict::Established
    );
    assert_eq!(ct.check(1, IN, &icmp4([10, 0, 0, 2], [10, 0, 0, 1], false, 78)), Verdict::Denied);
}

#[test]
fn rst_closes_fin_closes_and_timeouts_expire() {
    let mut ct = Ct::new(10);
    ct.check(1, OUT, &out_tcp(SYN));
    ct.check(1, IN, &back_tcp(SYN | ACK));
    ct.check(1, OUT, &out_tcp(ACK));
    // RST: the connection is closed; later segments are refused, a new SYN reopens it.
    assert_eq!(ct.check(2, IN, &back_tcp(RST)), Verdict::Established);
    assert_eq!(ct.check(2, IN, &back_tcp(ACK)), Verdict::Denied);
    assert_eq!(ct.check(2, OUT, &out_tcp(ACK)), Verdict::Denied);
    assert_eq!(ct.check(3, OUT, &out_tcp(SYN)), Verdict::Opened);
    ct.check(3, IN, &back_tcp(SYN | ACK));
    ct.check(3, OUT, &out_tcp(ACK));
    // FIN: closing, with the short closing timeout (30 s by default).
    assert_eq!(ct.check(4, OUT, &out_tcp(FIN | ACK)), Verdict::Established);
    let m = meta(&out_tcp(ACK));
    assert_eq!(
        ct.table.lookup(Nanos::from_secs(4), &m, &out_tcp(ACK)).unwrap().state,
        State::Closing
    );
    assert_eq!(ct.check(5, IN, &back_tcp(FIN | ACK)), Verdict::Established);
    assert_eq!(ct.check(40, IN, &back_tcp(ACK)), Verdict::Denied, "closing timed out");
    // Established idles out after its timeout (100 s here); the sweep removes it.
    ct.check(50, OUT, &out_tcp(SYN));
    ct.check(50, IN, &back_tcp(SYN | ACK));
    ct.check(50, OUT, &out_tcp(ACK));
    assert_eq!(ct.check(149, IN, &back_tcp(ACK)), Verdict::Established);
    assert_eq!(ct.table.expire(Nanos::from_secs(200)), 0, "idle 51 s of 100");
    assert_eq!(ct.check(250, IN, &back_tcp(ACK)), Verdict::Denied, "idle 101 s");
    assert_eq!(ct.table.expire(Nanos::from_secs(260)), 1);
    assert_eq!(ct.table.entries_of(TenantId(0)), 0);
}

#[test]
fn a_tenant_flooding_connections_fills_its_quota_only() {
    // Other protocols than TCP have no handshake to evict: the quota is the bound.
    let mut ct = Ct::new(50);
    for p in 0..500u16 {
        let f = udp_between([10, 0, 0, 1], [10, 0, 0, 2], 1000 + p, 53);
        let v = ct.check_as(TenantId(1), 1, OUT, &f);
        assert_eq!(v, if p < 50 { Verdict::Opened } else { Verdict::Full }, "{p}");
    }
    assert_eq!(ct.table.entries_of(TenantId(1)), 50);
    assert_eq!(ct.table.stats.full, 450);
    // The other tenant still opens connections, and tenant 1's entries were never evicted.
    assert_eq!(ct.check(1, OUT, &out_tcp(SYN)), Verdict::Opened);
    let first = udp_between([10, 0, 0, 2], [10, 0, 0, 1], 53, 1000);
    assert_eq!(ct.check_as(TenantId(1), 2, IN, &first), Verdict::Established);
}

/// Opens and completes a TCP connection of tenant 1 from `from`:`port` to 10.0.0.2:80.
fn establish(ct: &mut Ct, secs: u64, from: [u8; 4], port: u16) -> [Verdict; 3] {
    let t = TenantId(1);
    [
        ct.check_as(t, secs, OUT, &tcp_between(from, [10, 0, 0, 2], port, 80, SYN, None)),
        ct.check_as(t, secs, IN, &tcp_between([10, 0, 0, 2], from, 80, port, SYN | ACK, None)),
        ct.check_as(t, secs, OUT, &tcp_between(from, [10, 0, 0, 2], port, 80, ACK, None)),
    ]
}

// Regression (issue 16): 5 000 SYNs from one member filled its tenant's connection quota with
// half-open entries, and every later connection of the tenant was refused (conntrack_full).
#[test]
fn a_syn_flood_evicts_half_open_entries_never_established_ones() {
    let mut ct = Ct::new(50); // half-open bounds: 25 per tenant, 16 per source
    assert_eq!(ct.g.half_open_limits(), (25, 16));
    let t = TenantId(1);
    let ok = [Verdict::Opened, Verdict::Established, Verdict::Established];
    for p in 0..10 {
        assert_eq!(establish(&mut ct, 1, [10, 0, 0, 3], 3000 + p), ok);
    }
    let flood = |p: u16| tcp_between([10, 0, 0, 1], [10, 0, 0, 2], 10_000 + p, 80, SYN, None);
    for p in 0..5000u16 {
        assert_eq!(ct.check_as(t, 2, OUT, &flood(p)), Verdict::Opened, "SYN {p}");
    }
    assert_eq!(ct.table.half_open_of(t), 16, "the flooder holds its own bound");
    assert_eq!(ct.table.entries_of(t), 26);
    assert_eq!(ct.table.stats.evicted, 5000 - 16);
    assert_eq!(ct.table.stats.full, 0);
    // The newest half-open entries are the ones kept.
    let answer =
        |p: u16| tcp_between([10, 0, 0, 2], [10, 0, 0, 1], 80, 10_000 + p, SYN | ACK, None);
    assert_eq!(ct.check_as(t, 2, IN, &answer(4999)), Verdict::Established);
    assert_eq!(ct.check_as(t, 2, IN, &answer(0)), Verdict::Denied);
    // Another member connects during the flood.
    assert_eq!(establish(&mut ct, 3, [10, 0, 0, 4], 4000), ok);
    // Every established connection is still there.
    for p in 0..10 {
        let f = tcp_between([10, 0, 0, 3], [10, 0, 0, 2], 3000 + p, 80, ACK, None);
        assert_eq!(ct.check_as(t, 4, OUT, &f), Verdict::Established);
    }
    // 27 entries, 16 of them half-open: 39 more connections evict those 16 and fill the
    // quota with established ones. Then a SYN is refused, nothing evicted.
    for p in 0..39 {
        assert_eq!(establish(&mut ct, 5, [10, 0, 0, 5], 5000 + p), ok, "{p}");
    }
    assert_eq!(ct.table.entries_of(t), 50);
    assert_eq!(ct.table.half_open_of(t), 0);
    assert_eq!(ct.check_as(t, 6, OUT, &flood(9999)), Verdict::Full);
    // Expiry keeps the bookkeeping right: a half-open entry times out and frees its place.
    let mut ct = Ct::new(50);
    for p in 0..16u16 {
        ct.check_as(t, 1, OUT, &flood(p));
    }
    assert_eq!(ct.table.expire(Nanos::from_secs(100)), 16);
    assert_eq!(ct.table.half_open_of(t), 0);
    for p in 100..116u16 {
        ct.check_as(t, 101, OUT, &flood(p));
    }
    let before = ct.table.stats.evicted;
    assert_eq!(ct.check_as(t, 101, OUT, &flood(200)), Verdict::Opened);
    assert_eq!(ct.table.stats.evicted, before + 1);
}

// --- The pipeline with policy, over in-memory ports ---

mod pipeline {
    use std::sync::Arc;

    use dataplane::policy::acl::AclSet;
    use dataplane::policy::conntrack::{Judgement, SecurityGroup, SgRule};
    use dataplane::policy::{Action, Direction, Guard, Match, Rule, TenantPolicy};
    use dataplane::port::mem::MemPort;
    use dataplane::port::{FrameArea, PageSize};
    use dataplane::snapshot::{
        Attachment, PortId, PortKind, Snapshot, SnapshotBuilder, TenantSpec,
    };
    use dataplane::time::Nanos;
    use dataplane::trace::record::{FlowPath, FrameTrace, Outcome};
    use dataplane::trace::{DropReason, ParseError};
    use dataplane::wire::MacAddr;
    use dataplane::worker::Worker;

    use super::{A, ACK, B, SYN, tcp_between};

    const UP: PortId = PortId(0);
    const A1: PortId = PortId(1);
    const A2: PortId = PortId(2);

    /// red: uplink/100, a1 (host A, 10.0.0.1, guarded), a2 (host B, 10.0.0.2).
    fn snapshot(generation: u64, policy: TenantPolicy) -> Snapshot {
        let mut b = SnapshotBuilder::new(generation);
        let up = b.port("uplink", "up0", PortKind::Uplink);
        let a1 = b.port("a1", "a1", PortKind::Tenant);
        let a2 = b.port("a2", "a2", PortKind::Tenant);
        let mut red = TenantSpec::new(
            "red",
            vec![
                Attachment { port: up, vlan: Some(100) },
                Attachment { port: a1, vlan: None },
                Attachment { port: a2, vlan: None },
            ],
        );
        red.guards = vec![
            Guard::default(),
            Guard {
                macs: vec![MacAddr(A)],
                ips: vec!["10.0.0.1".parse().unwrap()],
                ethertypes: vec![],
            },
            Guard::default(),
        ];
        red.policy = policy;
        b.tenant(red);
        b.build().unwrap()
    }

    fn deny_telnet_to_tenant() -> TenantPolicy {
        let telnet = Rule {
            name: "no-telnet".into(),
            priority: 10,
            action: Action::Deny,
            m: Match { proto: Some(6), dst_ports: Some((23, 23)), ..Match::default() },
        };
        TenantPolicy {
            acl: [AclSet::new(vec![], Action::Allow), AclSet::new(vec![telnet], Action::Allow)],
            group: None,
        }
    }

    fn worker(policy: TenantPolicy) -> Worker<MemPort> {
        let area = FrameArea::new(1024, 2048, PageSize::Normal).unwrap();
        let ports = (0..3).map(|_| MemPort::new(256)).collect();
        Worker::new(area, ports, Arc::new(snapshot(1, policy)))
    }

    fn drops(w: &Worker<MemPort>, r: DropReason) -> u64 {
        w.pipeline().counters.drops(r)
    }

    /// Sends `frame` in on `port` and returns what came out on `out`.
    fn send(w: &mut Worker<MemPort>, port: PortId, frame: &[u8], out: PortId) -> usize {
        assert!(w.inject(port, frame));
        w.poll(Nanos::from_secs(1));
        let n = w.take_sent(out).len();
        for p in [UP, A1, A2] {
            w.take_sent(p);
        }
        n
    }

    fn from_a(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        tcp_between([10, 0, 0, 1], [10, 0, 0, 2], sport, dport, flags, None)
    }

    fn from_b(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut f = tcp_between([10, 0, 0, 2], [10, 0, 0, 1], sport, dport, flags, None);
        f[0..6].copy_from_slice(&A);
        f[6..12].copy_from_slice(&B);
        f
    }

    /// Sends `frame` in on `port` and returns how many frames left on each of up, a1, a2.
    fn send_all(w: &mut Worker<MemPort>, port: PortId, frame: &[u8]) -> [usize; 3] {
        assert!(w.inject(port, frame));
        w.poll(Nanos::from_secs(1));
        [UP, A1, A2].map(|p| w.take_sent(p).len())
    }

    #[test]
    fn a_cached_flow_follows_the_mac_table_learning_and_moves() {
        let mut w = worker(deny_telnet_to_tenant());
        let a_to_b = from_a(1000, 80, ACK);
        // B is unknown: the flow is flooded (to the uplink and a2), and cached so.
        assert_eq!(send_all(&mut w, A1, &a_to_b), [1, 0, 1]);
        assert_eq!(send_all(&mut w, A1, &a_to_b), [1, 0, 1], "the cached flood");
        let hits = w.pipeline().flows.stats.hits;
        assert!(hits >= 1);
        // B speaks on a2: learned there, so the cached flood must end.
        send_all(&mut w, A2, &from_b(80, 1000, ACK));
        assert_eq!(send_all(&mut w, A1, &a_to_b), [0, 0, 1], "to a2 only");
        assert_eq!(send_all(&mut w, A1, &a_to_b), [0, 0, 1], "again, from the cache");
        assert!(w.pipeline().flows.stats.hits > hits);
        // B moves behind the uplink (VLAN 100): the cached port must follow.
        let mut b_up = tcp_between([10, 0, 0, 2], [10, 0, 0, 1], 80, 1000, ACK, Some(100));
        b_up[0..6].copy_from_slice(&A);
        b_up[6..12].copy_from_slice(&B);
        send_all(&mut w, UP, &b_up);
        assert_eq!(send_all(&mut w, A1, &a_to_b), [1, 0, 0], "to the uplink now");
        assert_eq!(drops(&w, DropReason::Policy), 0);
        // One entry per flow: A->B (still one after two re-decisions), B->A from a2 and from
        // the uplink (another ingress port, another flow).
        assert_eq!(w.pipeline().flows.len(), 3);
        assert!(w.pipeline().flows.stats.stale >= 2, "{:?}", w.pipeline().flows.stats);
    }

    #[test]
    fn a_live_trace_samples_real_frames_with_their_outcome_and_cache_path() {
        use dataplane::pipeline::Disposition;
        use dataplane::trace::sample::Sampler;
        let mut w = worker(deny_telnet_to_tenant());
        send(&mut w, A2, &from_b(80, 1000, SYN), A1);
        w.pipeline_mut().sampler = Some(Sampler::new(dataplane::snapshot::TenantId(0), 3, 1));
        let ok = from_a(1000, 80, ACK);
        assert_eq!(send(&mut w, A1, &ok, A2), 1);
        assert_eq!(send(&mut w, A1, &ok, A2), 1);
        assert_eq!(send(&mut w, A1, &from_a(1000, 23, SYN), A2), 0);
        let s = w.pipeline_mut().sampler.take().unwrap();
        assert!(s.is_full());
        let v = s.into_samples();
        let tx = Disposition::Tx { port: A2, vlan: None };
        let got: Vec<_> =
            v.iter().map(|x| (x.trace.port, x.trace.disposition, x.trace.flow_path())).collect();
        assert_eq!(
            got,
            [
                (A1, tx, FlowPath::Miss),
                (A1, tx, FlowPath::Hit),
                (A1, Disposition::Drop(DropReason::Policy), FlowPath::Miss)
            ]
        );
        assert_eq!(v[0].bytes, ok);
        // The telnet SYN's record: its ACL step, written by the stage that denied it.
        let acl: Vec<Outcome> =
            v[2].trace.steps().filter(|o| matches!(o, Outcome::Acl { .. })).collect();
        let to = Direction::ToTenant;
        assert_eq!(
            acl.last(),
            Some(&Outcome::Acl { dir: to, open: false, rule: Some(0), deny: true })
        );
    }

    /// What each stage recorded for a frame, as a list to compare.
    fn recorded(t: &FrameTrace) -> Vec<Outcome> {
        t.steps().collect()
    }

    #[test]
    fn a_dry_run_records_the_real_stages_and_changes_nothing() {
        use dataplane::pipeline::Disposition;
        use dataplane::trace::sample::Sampler;
        // Any host may open connections (a1 to a2 crosses both directions); telnet to the
        // tenant is denied by the ACL.
        let group = SecurityGroup {
            rules: vec![SgRule { name: "any".into(), ..SgRule::default() }],
            quota: 100,
            ..SecurityGroup::default()
        };
        let mut w = worker(TenantPolicy { group: Some(group), ..deny_telnet_to_tenant() });
        send(&mut w, A2, &from_b(80, 1000, SYN), A1);
        let now = Nanos::from_secs(1);
        let before = |w: &Worker<MemPort>| {
            let p = w.pipeline();
            (
                p.counters.total_drops(),
                p.counters.port_rx.iter().map(|c| c.packets).sum::<u64>(),
                p.fdb().len(),
                p.flows.len(),
                p.flows.stats.hits + p.flows.stats.misses,
                p.policy.conns.len(),
                w.census().free,
            )
        };
        let start = before(&w);
        // A SYN a1's host would send (a connection of its own: b's SYN above opened b:80 to
        // a:1000): decided from scratch, would open a connection.
        let syn = from_a(2000, 80, SYN);
        let dry = w.trace(now, A1, &syn).unwrap();
        assert_eq!(before(&w), start, "a dry run changed the worker");
        assert_eq!(dry.disposition, Disposition::Tx { port: A2, vlan: None });
        assert_eq!(dry.flow_path(), FlowPath::Miss);
        assert!(recorded(&dry).contains(&Outcome::Group(Some(Judgement::Open))), "{dry:?}");
        // The same frame for real, recorded by a live trace: the same stages, the same verdicts
        // (the real run opens the connection the dry run said it would).
        w.pipeline_mut().sampler = Some(Sampler::new(dataplane::snapshot::TenantId(0), 1, 1));
        assert_eq!(send(&mut w, A1, &syn, A2), 1);
        let live = w.pipeline_mut().sampler.take().unwrap().into_samples().remove(0).trace;
        assert_eq!(recorded(&live), recorded(&dry));
        assert_eq!(live.disposition, dry.disposition);
        assert_eq!(w.pipeline().policy.conns.len(), start.5 + 1, "the real run opened it");
        // Now cached and part of a connection: the dry run says so, and still changes nothing.
        let start = before(&w);
        let again = w.trace(now, A1, &syn).unwrap();
        assert_eq!(before(&w), start);
        assert_eq!(again.flow_path(), FlowPath::Hit);
        assert!(
            recorded(&again).iter().any(|o| matches!(o, Outcome::Group(Some(Judgement::Known(_))))),
            "{again:?}"
        );
        // Telnet from b's side to a: the to-tenant ACL denies it, and the record says which rule.
        let telnet = from_b(1000, 23, SYN);
        let denied = w.trace(now, A2, &telnet).unwrap();
        assert_eq!(denied.disposition, Disposition::Drop(DropReason::Policy));
        let to = Direction::ToTenant;
        assert_eq!(
            recorded(&denied).last(),
            Some(&Outcome::Acl { dir: to, open: false, rule: Some(0), deny: true })
        );
        assert_eq!(before(&w), start);
    }

    #[test]
    fn spoofed_sources_are_dropped_as_spoof_and_not_learned() {
        let mut w = worker(TenantPolicy::default());
        // Teach the switch where B lives.
        send(&mut w, A2, &from_b(80, 1000, SYN), A1);
        assert_eq!(send(&mut w, A1, &from_a(1000, 80, SYN), A2), 1);
        // Another source IP from a1.
        let ip = tcp_between([10, 0, 0, 9], [10, 0, 0, 2], 1, 80, SYN, None);
        assert_eq!(send(&mut w, A1, &ip, A2), 0);
        // Another source MAC from a1.
        let mut mac = from_a(1000, 80, SYN);
        mac[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x66]);
        assert_eq!(send(&mut w, A1, &mac, A2), 0);
        assert_eq!(drops(&w, DropReason::Spoof), 2);
        assert!(
            w.pipeline()
                .fdb()
                .lookup(
                    Nanos::from_secs(1),
                    dataplane::snapshot::TenantId(0),
                    MacAddr([2, 0, 0, 0, 0, 0x66])
                )
                .is_none(),
            "a spoofed MAC is never learned"
        );
        // a2 has no guard: anything goes.
        let mut any = tcp_between([1, 2, 3, 4], [10, 0, 0, 1], 1, 2, SYN, None);
        any[0..6].copy_from_slice(&A);
        any[6..12].copy_from_slice(&B);
        assert_eq!(send(&mut w, A2, &any, A1), 1);
    }

    #[test]
    fn acl_denies_to_the_tenant_and_the_cache_forgets_on_a_rules_change() {
        let mut w = worker(deny_telnet_to_tenant());
        send(&mut w, A2, &from_b(80, 1000, SYN), A1);
        assert_eq!(send(&mut w, A1, &from_a(1000, 23, SYN), A2), 0, "telnet to a tenant host");
        assert_eq!(send(&mut w, A1, &from_a(1000, 23, SYN), A2), 0, "again, from the cache");
        assert_eq!(send(&mut w, A1, &from_a(1000, 22, SYN), A2), 1);
        assert_eq!(drops(&w, DropReason::Policy), 2);
        assert_eq!(w.pipeline().counters.acl_hits[0], [2], "the rule decided twice");
        assert!(w.pipeline().flows.stats.hits >= 1);
        // New rules (telnet allowed, ssh denied): the cached verdicts must not survive.
        let mut ssh = deny_telnet_to_tenant();
        ssh.acl[1] = AclSet::new(
            vec![Rule {
                name: "no-ssh".into(),
                priority: 1,
                action: Action::Deny,
                m: Match { proto: Some(6), dst_ports: Some((22, 22)), ..Match::default() },
            }],
            Action::Allow,
        );
        w.install(Nanos::ZERO, Arc::new(snapshot(2, ssh)));
        send(&mut w, A2, &from_b(80, 1000, SYN), A1);
        assert_eq!(send(&mut w, A1, &from_a(1000, 23, SYN), A2), 1, "telnet now allowed");
        assert_eq!(send(&mut w, A1, &from_a(1000, 22, SYN), A2), 0, "ssh now denied");
    }

    #[test]
    fn a_security_group_passes_return_traffic_only() {
        // a1's host may open anything; nothing may open connections to the tenant.
        let group = SecurityGroup {
            rules: vec![SgRule { dir: Some(Direction::FromTenant), ..SgRule::default() }],
            quota: 100,
            ..SecurityGroup::default()
        };
        let mut w = worker(TenantPolicy { group: Some(group), ..TenantPolicy::default() });
        // Outbound from a1 to the uplink: from-tenant only; opens a connection.
        let out = from_a(40000, 443, SYN);
        send(
            &mut w,
            UP,
            &[&[0xff; 6][..], &[2, 0, 0, 0, 0, 0x55], &[0x81, 0, 0, 100, 0x08, 0x06], &[0; 28]]
                .concat(),
            A1,
        );
        assert_eq!(send(&mut w, A1, &out, UP), 1);
        // The reply comes back from the uplink (tagged 100): to-tenant, part of the connection.
        let mut reply = tcp_between([10, 0, 0, 2], [10, 0, 0, 1], 443, 40000, SYN | ACK, Some(100));
        reply[0..6].copy_from_slice(&A);
        reply[6..12].copy_from_slice(&B);
        assert_eq!(send(&mut w, UP, &reply, A1), 1);
        // An unsolicited SYN from the uplink: no rule opens it.
        let mut syn = tcp_between([10, 0, 0, 2], [10, 0, 0, 1], 5555, 22, SYN, Some(100));
        syn[0..6].copy_from_slice(&A);
        syn[6..12].copy_from_slice(&B);
        assert_eq!(send(&mut w, UP, &syn, A1), 0);
        assert_eq!(drops(&w, DropReason::Policy), 1);
        assert_eq!(w.pipeline().policy.conns.len(), 1);
    }

    // --- Fragments (issue 16) ---

    /// A UDP datagram from A (10.0.0.1) to B (10.0.0.2):`dport` with `payload` bytes, as one
    /// frame with the IPv4 header's checksum right.
    fn udp_datagram(dport: u16, payload: usize, ident: u16) -> Vec<u8> {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2(A, B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(4000, dport)
            .write(&mut out, &vec![0x5a; payload])
            .unwrap();
        out[18..20].copy_from_slice(&ident.to_be_bytes());
        ipv4_checksum(&mut out);
        out
    }

    /// Writes the IPv4 header checksum of a frame (untagged).
    fn ipv4_checksum(f: &mut [u8]) {
        f[24..26].copy_from_slice(&[0, 0]);
        let sum = dataplane::wire::checksum::fold(dataplane::wire::checksum::add(0, &f[14..34]));
        f[24..26].copy_from_slice(&(!sum).to_be_bytes());
    }

    /// One IPv4 fragment of `datagram`: its IP payload bytes [start, end) (start a multiple of
    /// 8), with MF set when `more`.
    fn fragment(datagram: &[u8], start: usize, end: usize, more: bool) -> Vec<u8> {
        let body = &datagram[34..];
        let mut f = datagram[..34].to_vec();
        f.extend_from_slice(&body[start..end.min(body.len())]);
        let total = (20 + end.min(body.len()) - start) as u16;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        let word = (start / 8) as u16 | if more { 0x2000 } else { 0 };
        f[20..22].copy_from_slice(&word.to_be_bytes());
        ipv4_checksum(&mut f);
        f
    }

    /// A datagram cut into fragments of `piece` bytes of IP payload.
    fn fragments(datagram: &[u8], piece: usize) -> Vec<Vec<u8>> {
        let n = datagram.len() - 34;
        (0..n).step_by(piece).map(|s| fragment(datagram, s, s + piece, s + piece < n)).collect()
    }

    fn deny_udp_to_tenant(port: u16) -> TenantPolicy {
        let r = Rule {
            name: "no-udp".into(),
            priority: 10,
            action: Action::Deny,
            m: Match { proto: Some(17), dst_ports: Some((port, port)), ..Match::default() },
        };
        TenantPolicy {
            acl: [AclSet::new(vec![], Action::Allow), AclSet::new(vec![r], Action::Allow)],
            group: None,
        }
    }

    /// Sends every frame in on A1 in one batch; returns the frames that reached a2.
    fn send_batch(w: &mut Worker<MemPort>, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
        for f in frames {
            assert!(w.inject(A1, f));
        }
        w.poll(Nanos::from_secs(1));
        let got = w.take_sent(A2);
        w.take_sent(UP);
        got
    }

    /// A worker whose tenant has ACLs only, where B is known on a2.
    fn fragment_lab(policy: TenantPolicy) -> Worker<MemPort> {
        let mut w = worker(policy);
        send(&mut w, A2, &from_b(80, 1000, ACK), A1);
        w
    }

    // Regression (issue 16): a fragmented datagram's first fragment was malformed (its UDP
    // length checked against the bytes of the fragment), so no fragmented datagram arrived.
    #[test]
    fn a_fragmented_datagram_arrives_whole_in_order_in_one_batch_or_several() {
        let mut w = fragment_lab(deny_udp_to_tenant(7777));
        let d = udp_datagram(5000, 2992, 1);
        let frags = fragments(&d, 1480);
        assert_eq!(frags.len(), 3);
        assert_eq!(send_batch(&mut w, &frags), frags, "one batch: all three, unchanged");
        let d = udp_datagram(5000, 2992, 2);
        for f in fragments(&d, 1480) {
            assert_eq!(send_batch(&mut w, std::slice::from_ref(&f)).len(), 1);
        }
        assert_eq!(w.pipeline().counters.total_drops(), 0);
        assert!(w.pipeline().frags.is_empty(), "whole datagrams free their entries");
        assert_eq!(w.pipeline().frags.stats.completed, 2);
    }

    // Regression (issue 16): without a security group, later fragments carry no ports and
    // passed the ACLs whatever their layer-4 rules said.
    #[test]
    fn later_fragments_of_a_denied_datagram_are_dropped_too() {
        let mut w = fragment_lab(deny_udp_to_tenant(7777));
        let d = udp_datagram(7777, 2992, 3);
        let frags = fragments(&d, 1480);
        assert!(send_batch(&mut w, &frags).is_empty(), "first fragment and the rest, one batch");
        assert_eq!(drops(&w, DropReason::Policy), 3);
        let d = udp_datagram(7777, 2992, 4);
        for f in fragments(&d, 1480) {
            assert!(send_batch(&mut w, std::slice::from_ref(&f)).is_empty());
        }
        assert_eq!(drops(&w, DropReason::Policy), 6);
        // A later fragment whose first fragment never came: dropped, never judged unchecked.
        let d = udp_datagram(5000, 2992, 5);
        assert!(send_batch(&mut w, &fragments(&d, 1480)[1..]).is_empty());
        assert_eq!(drops(&w, DropReason::Fragment), 2);
    }

    // RFC 1858 and 3128: the tiny-fragment and overlapping-fragment attacks against a rule
    // that denies telnet to the tenant.
    #[test]
    fn tiny_and_overlapping_fragment_attacks_are_dropped() {
        let mut w = fragment_lab(deny_telnet_to_tenant());
        let mut syn = from_a(1000, 80, SYN);
        let payload = vec![0u8; 64];
        syn.truncate(34);
        syn.extend_from_slice(&from_a(1000, 80, SYN)[34..54]);
        syn.extend_from_slice(&payload);
        let total = (syn.len() - 14) as u16;
        syn[16..18].copy_from_slice(&total.to_be_bytes());
        ipv4_checksum(&mut syn);
        // Tiny: the first fragment holds 8 bytes of TCP (ports, no flags), the second the rest.
        let tiny = [fragment(&syn, 0, 8, true), fragment(&syn, 8, 84, false)];
        assert!(send_batch(&mut w, &tiny).is_empty());
        assert_eq!(w.pipeline().counters.parse_errors[ParseError::Tcp.index()], 1);
        assert_eq!(drops(&w, DropReason::Fragment), 1);
        // Overlapping: a first fragment to port 80 (allowed) with the whole TCP header, then
        // a fragment at offset 8 that rewrites the header to port 23.
        let mut to_telnet = syn.clone();
        to_telnet[36..38].copy_from_slice(&23u16.to_be_bytes());
        let attack = [fragment(&syn, 0, 24, true), fragment(&to_telnet, 8, 84, false)];
        let got = send_batch(&mut w, &attack);
        assert_eq!(got, vec![attack[0].clone()], "the first fragment alone, never the overlap");
        assert_eq!(drops(&w, DropReason::Fragment), 2);
        // And the datagram stays refused.
        assert!(send_batch(&mut w, &[fragment(&syn, 24, 84, false)]).is_empty());
        assert_eq!(drops(&w, DropReason::Fragment), 3);
        // A first fragment to port 23: denied, and its later fragments with it.
        let mut telnet = to_telnet.clone();
        telnet[18..20].copy_from_slice(&9u16.to_be_bytes());
        ipv4_checksum(&mut telnet);
        let denied = [fragment(&telnet, 0, 24, true), fragment(&telnet, 24, 84, false)];
        assert!(send_batch(&mut w, &denied).is_empty());
        assert_eq!(drops(&w, DropReason::Policy), 2);
    }

    #[test]
    fn ipv6_fragments_are_judged_by_their_first_fragment() {
        let mut w = fragment_lab(deny_udp_to_tenant(7777));
        send(&mut w, A1, &from_a(1000, 80, ACK), A2); // A known on a1: unicast, not a flood
        // IPv6 hosts: the guard on a1 owns only 10.0.0.1, so they speak from a2 to a1 here.
        let v6 = |ident: u32, start: usize, more: bool, data: &[u8]| {
            let (src, dst) = ([0xfd; 16], [0xfe; 16]);
            let mut f = [&A[..], &B[..], &[0x86, 0xdd]].concat();
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&[44, 64]);
            ip.extend_from_slice(&src);
            ip.extend_from_slice(&dst);
            let word = (start as u16) | u16::from(more);
            ip.extend_from_slice(&[17, 0]);
            ip.extend_from_slice(&word.to_be_bytes());
            ip.extend_from_slice(&ident.to_be_bytes());
            f.extend_from_slice(&ip);
            f.extend_from_slice(data);
            f
        };
        let udp = |dport: u16| {
            let mut h = vec![0x0f, 0xa0];
            h.extend_from_slice(&dport.to_be_bytes());
            h.extend_from_slice(&[0x03, 0xf0, 0, 0]); // length 1008, checksum not checked here
            h.extend_from_slice(&[0u8; 496]);
            h
        };
        for (dport, ident, passes) in [(5000u16, 1u32, 2usize), (7777, 2, 0)] {
            let first = v6(ident, 0, true, &udp(dport));
            let later = v6(ident, 504, false, &[0u8; 504]);
            let mut out = Vec::new();
            for f in [first, later] {
                assert!(w.inject(A2, &f));
                w.poll(Nanos::from_secs(1));
                out.extend(w.take_sent(A1));
                w.take_sent(UP);
            }
            assert_eq!(out.len(), passes, "port {dport}");
        }
        assert_eq!(drops(&w, DropReason::Policy), 2);
    }

    #[test]
    fn fragments_of_a_connection_pass_a_security_group() {
        let group = SecurityGroup {
            rules: vec![SgRule { name: "any".into(), ..SgRule::default() }],
            quota: 100,
            ..SecurityGroup::default()
        };
        let policy = TenantPolicy {
            acl: [AclSet::new(vec![], Action::Allow), AclSet::new(vec![], Action::Allow)],
            group: Some(group),
        };
        let mut w = fragment_lab(policy);
        let d = udp_datagram(5000, 2992, 9);
        assert_eq!(send_batch(&mut w, &fragments(&d, 1480)).len(), 3);
        assert_eq!(w.pipeline().policy.conns.len(), 1);
    }

    // Regression (issue 16): IPv4 headers with a wrong checksum were forwarded.
    #[test]
    fn a_wrong_ipv4_header_checksum_is_malformed_for_a_tenant_with_policy() {
        let mut w = fragment_lab(deny_telnet_to_tenant());
        let mut f = from_a(1000, 80, ACK);
        assert_eq!(send(&mut w, A1, &f, A2), 1);
        f[22] ^= 1; // the TTL, without the checksum
        assert_eq!(send(&mut w, A1, &f, A2), 0);
        assert_eq!(w.pipeline().counters.parse_errors[ParseError::Ipv4.index()], 1);
        assert_eq!(drops(&w, DropReason::Malformed), 1);
        // Counted against the tenant of the attachment it came in on.
        assert_eq!(w.pipeline().counters.tenant_drops[0][DropReason::Malformed.index()], 1);
    }
}
