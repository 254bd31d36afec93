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
    let mut ct = Ct::new(50);
    for p in 0..500u16 {
        let f = tcp_between([10, 0, 0, 1], [10, 0, 0, 2], 1000 + p, 80, SYN, None);
        let v = ct.check_as(TenantId(1), 1, OUT, &f);
        assert_eq!(v, if p < 50 { Verdict::Opened } else { Verdict::Full }, "{p}");
    }
    assert_eq!(ct.table.entries_of(TenantId(1)), 50);
    assert_eq!(ct.table.stats.full, 450);
    // The other tenant still opens connections, and tenant 1's entries were never evicted.
    assert_eq!(ct.check(1, OUT, &out_tcp(SYN)), Verdict::Opened);
    let first = tcp_between([10, 0, 0, 2], [10, 0, 0, 1], 80, 1000, SYN | ACK, None);
    assert_eq!(ct.check_as(TenantId(1), 2, IN, &first), Verdict::Established);
}

// --- The pipeline with policy, over in-memory ports ---

mod pipeline {
    use std::sync::Arc;

    use dataplane::policy::acl::AclSet;
    use dataplane::policy::conntrack::{SecurityGroup, SgRule};
    use dataplane::policy::{Action, Direction, Guard, Match, Rule, TenantPolicy};
    use dataplane::port::mem::MemPort;
    use dataplane::port::{FrameArea, PageSize};
    use dataplane::snapshot::{
        Attachment, PortId, PortKind, Snapshot, SnapshotBuilder, TenantSpec,
    };
    use dataplane::time::Nanos;
    use dataplane::trace::DropReason;
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
            Guard { macs: vec![MacAddr(A)], ips: vec!["10.0.0.1".parse().unwrap()] },
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
        use dataplane::trace::sample::{FlowPath, Sampler};
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
        let got: Vec<_> = v.iter().map(|x| (x.port, x.disposition, x.flow)).collect();
        assert_eq!(
            got,
            [
                (A1, tx, FlowPath::Miss),
                (A1, tx, FlowPath::Hit),
                (A1, Disposition::Drop(DropReason::Policy), FlowPath::Miss)
            ]
        );
        assert_eq!(v[0].bytes, ok);
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
        w.install(Arc::new(snapshot(2, ssh)));
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
}
