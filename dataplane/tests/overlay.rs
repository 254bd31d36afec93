//! VXLAN on an underlay port over in-memory ports: what leaves for other hosts (outer headers
//! read back with etherparse), what is taken from them, and what is dropped.
// Integration tests live outside `mod tests` by nature; the lint is for unit tests in src/.
#![allow(clippy::tests_outside_test_module)]

use std::sync::Arc;

use dataplane::flow::overlay::{OverlayBuilder, Vtep};
use dataplane::port::mem::MemPort;
use dataplane::port::{FrameArea, PageSize};
use dataplane::snapshot::{
    Attachment, PortId, PortKind, SnapshotBuilder, TenantSpec, Underlay, VXLAN_OVERHEAD,
};
use dataplane::time::Nanos;
use dataplane::trace::DropReason;
use dataplane::wire::MacAddr;
use dataplane::worker::{Worker, WorkerCmd};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

const A1: PortId = PortId(0);
const A2: PortId = PortId(1);
const B1: PortId = PortId(2);
const UL: PortId = PortId(3);

const HERE: [u8; 4] = [192, 168, 0, 1];
const HERE_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];
const X: Vtep = Vtep { ip: [192, 168, 0, 2], mac: MacAddr([0x02, 0xee, 0, 0, 0, 2]) };
const Y: Vtep = Vtep { ip: [192, 168, 0, 3], mac: MacAddr([0x02, 0xee, 0, 0, 0, 3]) };
const RED: u32 = 100;
const BLUE: u32 = 200;

fn mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, i]
}

/// red (VNI 100): a1, a2 and the underlay; blue (VNI 200): b1 and the underlay. The underlay's
/// MTU is 1500. Hosts X and Y carry red (X has red's mac 9), Y carries blue (mac 9 too).
fn lab() -> Worker<MemPort> {
    let mut b = SnapshotBuilder::new(1).fdb_capacity(4096);
    let a1 = b.port("a1", "a1", PortKind::Tenant);
    let a2 = b.port("a2", "a2", PortKind::Tenant);
    let b1 = b.port("b1", "b1", PortKind::Tenant);
    let ul = b.port("ul", "ul", PortKind::Underlay);
    let u = Underlay { ip: HERE, mac: MacAddr(HERE_MAC), udp_port: 4789, gateway: None };
    b.port_underlay(ul, u);
    b.port_mtu(ul, Some(1500));
    let att = |port| Attachment { port, vlan: None };
    let mut red = TenantSpec::new("red", vec![att(a1), att(a2), att(ul)]);
    red.vni = Some(RED);
    let mut blue = TenantSpec::new("blue", vec![att(b1), att(ul)]);
    blue.vni = Some(BLUE);
    b.tenant(red);
    b.tenant(blue);
    let snap = b.build().unwrap();
    let area = FrameArea::new(1024, 2048, PageSize::Normal).unwrap();
    let ports = (0..4).map(|_| MemPort::new(256)).collect();
    let mut w = Worker::new(area, ports, Arc::new(snap));
    let mut m = OverlayBuilder::new(1);
    assert!(m.mac(RED, MacAddr(mac(9)), X, &[v4(10, 0, 0, 9), V6_NINE]));
    assert!(m.member(RED, Y));
    assert!(m.mac(BLUE, MacAddr(mac(9)), Y, &[]));
    w.apply(Nanos::ZERO, WorkerCmd::Overlay(Arc::new(m.build())));
    w
}

/// fd00::9, red's mac 9 on host X; and fd00::1, the asker on a1.
const V6_NINE: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
const V6_ONE: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// A neighbour solicitation from `src` (address `from`) for `target`, to its solicited-node
/// multicast address, with the source link-layer address option (RFC 4861 §4.3).
fn neighbour_solicitation(src: [u8; 6], from: [u8; 16], target: [u8; 16]) -> Vec<u8> {
    let mut group = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0];
    group[13..].copy_from_slice(&target[13..]);
    let dst = [0x33, 0x33, 0xff, target[13], target[14], target[15]];
    let mut body = target.to_vec();
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&src);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src, dst)
        .ipv6(from, group, 255)
        .icmpv6(etherparse::Icmpv6Type::Unknown { type_u8: 135, code_u8: 0, bytes5to8: [0; 4] })
        .write(&mut out, &body)
        .unwrap();
    out
}

/// The ones' complement sum of ICMPv6 message `msg` with its pseudo-header: 0xffff when its
/// checksum is right.
fn icmpv6_sum(src: &[u8], dst: &[u8], msg: &[u8]) -> u16 {
    let mut s: u64 = 58 + msg.len() as u64;
    for part in [src, dst, msg] {
        for c in part.chunks(2) {
            s += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> [u8; 16] {
    std::net::Ipv4Addr::new(a, b, c, d).to_ipv6_mapped().octets()
}

/// An ARP request from `src` (10.0.0.1) for `target`.
fn arp_request(src: [u8; 6], target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[10, 0, 0, 1]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f.resize(60, 0);
    f
}

fn udp(src: [u8; 6], dst: [u8; 6], sport: u16, payload: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src, dst)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(sport, 2000)
        .write(&mut out, &vec![0xab; payload])
        .unwrap();
    out
}

/// `inner` inside VXLAN with `vni`, from host `from` to `to` on UDP port `port`.
fn vxlan(from: &Vtep, to: [u8; 4], port: u16, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0];
    payload.extend_from_slice(&(vni << 8).to_be_bytes());
    payload.extend_from_slice(inner);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(from.mac.0, HERE_MAC)
        .ipv4(from.ip, to, 64)
        .udp(50000, port)
        .write(&mut out, &payload)
        .unwrap();
    out
}

fn step(w: &mut Worker<MemPort>, now: Nanos) -> Vec<(PortId, Vec<u8>)> {
    w.poll(now);
    let mut out = Vec::new();
    for p in 0..4 {
        for f in w.take_sent(PortId(p)) {
            out.push((PortId(p), f));
        }
    }
    w.poll(now);
    assert!(w.census().balanced(), "{:?}", w.census());
    out
}

/// The outer headers of a VXLAN frame the switch sent: (outer destination MAC, outer
/// destination address, UDP source port, VNI, inner frame), each checked on the way.
fn open(frame: &[u8]) -> ([u8; 6], [u8; 4], u16, u32, Vec<u8>) {
    let p = SlicedPacket::from_ethernet(frame).expect("outer headers parse");
    let eth = p.link.as_ref().and_then(|l| l.to_header()).expect("ethernet");
    let Some(etherparse::LinkHeader::Ethernet2(eth)) = Some(eth) else { panic!("ethernet") };
    assert_eq!(eth.source, HERE_MAC, "outer source MAC: the underlay port's");
    let Some(NetSlice::Ipv4(ip)) = &p.net else { panic!("outer IPv4") };
    let h = ip.header().to_header();
    assert_eq!(h.source, HERE, "outer source: this host's tunnel address");
    assert!(h.dont_fragment, "DF set");
    assert_eq!(h.header_checksum, h.calc_header_checksum(), "outer header checksum");
    let Some(TransportSlice::Udp(u)) = &p.transport else { panic!("outer UDP") };
    assert_eq!(u.destination_port(), 4789);
    assert!(u.source_port() >= 49152, "source port in the dynamic range");
    assert_eq!(u.checksum(), 0, "outer UDP checksum 0 (RFC 7348)");
    let v = u.payload();
    assert_eq!(v[0], 0x08, "VNI flag");
    let vni = u32::from_be_bytes([0, v[4], v[5], v[6]]);
    (eth.destination, h.destination, u.source_port(), vni, v[8..].to_vec())
}

fn drops(w: &Worker<MemPort>, r: DropReason) -> u64 {
    w.pipeline().counters.drops(r)
}

#[test]
fn a_known_remote_mac_goes_to_its_host_only() {
    let mut w = lab();
    let f = udp(mac(1), mac(9), 1000, 100);
    assert!(w.inject(A1, &f));
    let out = step(&mut w, Nanos::from_secs(1));
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, UL);
    let (dmac, dip, _, vni, inner) = open(&out[0].1);
    assert_eq!((dmac, dip, vni), (X.mac.0, X.ip, RED));
    assert_eq!(inner, f, "the tenant's frame whole");
    assert_eq!(out[0].1.len(), f.len() + VXLAN_OVERHEAD as usize);
    let c = &w.pipeline().counters;
    assert_eq!(c.overlay.encap.packets, 1);
    assert_eq!(c.overlay.replicas, 0);
}

#[test]
fn a_flood_is_replicated_to_every_host_of_the_tenant() {
    let mut w = lab();
    let f = udp(mac(1), [0xff; 6], 1000, 100);
    w.inject(A1, &f);
    let mut out = step(&mut w, Nanos::from_secs(1));
    out.sort_by_key(|(p, _)| *p);
    assert_eq!(out.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![A2, UL, UL]);
    let mut hosts: Vec<[u8; 4]> = out[1..].iter().map(|(_, o)| open(o).1).collect();
    hosts.sort();
    assert_eq!(hosts, vec![X.ip, Y.ip], "one copy per host of red");
    assert!(out[1..].iter().all(|(_, o)| open(o).3 == RED && open(o).4 == f));
    assert_eq!(w.pipeline().counters.overlay.replicas, 1);
    // Blue's flood goes to blue's one host (Y) with blue's VNI, never to X.
    w.inject(B1, &udp(mac(1), [0xff; 6], 1000, 100));
    let out = step(&mut w, Nanos::from_secs(1));
    assert_eq!(out.len(), 1);
    assert_eq!((open(&out[0].1).1, open(&out[0].1).3), (Y.ip, BLUE));
}

#[test]
fn flows_spread_over_source_ports_and_one_flow_keeps_its_own() {
    let mut w = lab();
    let mut ports = std::collections::BTreeSet::new();
    for s in 0..64u16 {
        for _ in 0..2 {
            w.inject(A1, &udp(mac(1), mac(9), 1000 + s, 50));
            let out = step(&mut w, Nanos::from_secs(1));
            ports.insert((s, open(&out[0].1).2));
        }
    }
    let per_flow: std::collections::BTreeSet<u16> = ports.iter().map(|p| p.0).collect();
    assert_eq!(ports.len(), 64, "one source port per flow");
    assert_eq!(per_flow.len(), 64);
    let distinct: std::collections::BTreeSet<u16> = ports.iter().map(|p| p.1).collect();
    assert!(distinct.len() > 48, "64 flows over {} source ports", distinct.len());
}

#[test]
fn frames_from_other_hosts_reach_their_tenant_only() {
    let mut w = lab();
    let t = Nanos::from_secs(1);
    // A host on a1 (red) and one on b1 (blue), learned from their broadcasts.
    w.inject(A1, &udp(mac(1), [0xff; 6], 1, 10));
    w.inject(B1, &udp(mac(1), [0xff; 6], 1, 10));
    step(&mut w, t);
    let f = udp(mac(9), mac(1), 7, 80);
    w.inject(UL, &vxlan(&X, HERE, 4789, RED, &f));
    assert_eq!(step(&mut w, t), vec![(A1, f.clone())], "red's VNI: red's a1");
    w.inject(UL, &vxlan(&Y, HERE, 4789, BLUE, &f));
    assert_eq!(step(&mut w, t), vec![(B1, f.clone())], "blue's VNI, same inner MACs: blue's b1");
    let c = &w.pipeline().counters;
    assert_eq!(c.overlay.decap.packets, 2);
    assert_eq!(c.overlay.decap.bytes, 2 * f.len() as u64);
    assert_eq!(c.port_rx[UL.index()].bytes, 2 * (f.len() + VXLAN_OVERHEAD as usize) as u64);
    // A broadcast from another host floods red locally, never back to the underlay.
    w.inject(UL, &vxlan(&X, HERE, 4789, RED, &udp(mac(9), [0xff; 6], 7, 80)));
    let mut out = step(&mut w, t);
    out.sort_by_key(|(p, _)| *p);
    assert_eq!(out.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![A1, A2]);
}

#[test]
fn what_is_not_vxlan_for_this_host_is_dropped_and_counted() {
    let mut w = lab();
    let t = Nanos::from_secs(1);
    let f = udp(mac(9), [0xff; 6], 7, 80);
    w.inject(UL, &vxlan(&X, HERE, 4789, 300, &f));
    w.inject(UL, &vxlan(&X, [192, 168, 0, 99], 4789, RED, &f));
    w.inject(UL, &vxlan(&X, HERE, 4790, RED, &f));
    w.inject(UL, &f);
    let mut bad_flag = vxlan(&X, HERE, 4789, RED, &f);
    bad_flag[42] = 0;
    w.inject(UL, &bad_flag);
    let mut cut = vxlan(&X, HERE, 4789, RED, &f);
    cut.truncate(14 + 20 + 16 + 10);
    w.inject(UL, &cut);
    let mut tagged = f.clone();
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x0a]);
    w.inject(UL, &vxlan(&X, HERE, 4789, RED, &tagged));
    assert!(step(&mut w, t).is_empty());
    assert_eq!(drops(&w, DropReason::UnknownVni), 1);
    assert_eq!(drops(&w, DropReason::NotOverlay), 4);
    assert_eq!(drops(&w, DropReason::Malformed), 1, "cut short");
    assert_eq!(drops(&w, DropReason::UnknownTenant), 1, "a tagged inner frame");
    assert_eq!(w.pipeline().counters.overlay.decap.packets, 0);
}

#[test]
fn nothing_is_sent_where_no_host_is_known_or_the_underlay_mtu_is_short() {
    let mut w = lab();
    let t = Nanos::from_secs(1);
    w.apply(t, WorkerCmd::Overlay(Arc::new(OverlayBuilder::new(2).build())));
    w.inject(B1, &udp(mac(1), mac(9), 1, 10));
    assert!(step(&mut w, t).is_empty());
    assert_eq!(drops(&w, DropReason::NoVtep), 1);
    let mut w = lab();
    // 1500 - 50 bytes of encapsulation leave room for a 1464-byte tenant frame (IP 1450).
    let fits = udp(mac(1), mac(9), 1, 1450 - 28);
    assert_eq!(fits.len(), 1464);
    w.inject(A1, &fits);
    assert_eq!(step(&mut w, t).len(), 1);
    w.inject(A1, &udp(mac(1), mac(9), 1, 1451 - 28));
    assert!(step(&mut w, t).is_empty());
    assert_eq!(drops(&w, DropReason::TooBig), 1);
}

#[test]
fn a_remote_mac_the_map_does_not_know_goes_to_every_host_of_the_tenant() {
    let mut w = lab();
    let t = Nanos::from_secs(1);
    // mac 8 talks from host X but is not in the map: learned behind the underlay.
    w.inject(UL, &vxlan(&X, HERE, 4789, RED, &udp(mac(8), [0xff; 6], 7, 80)));
    step(&mut w, t);
    w.inject(A1, &udp(mac(1), mac(8), 1, 10));
    let out = step(&mut w, t);
    let mut hosts: Vec<[u8; 4]> = out.iter().map(|(p, o)| (*p, open(o).1).1).collect();
    hosts.sort();
    assert_eq!(hosts, vec![X.ip, Y.ip], "unicast, but to every host of red");
    assert!(out.iter().all(|(p, _)| *p == UL), "and not flooded locally: learned remote");
}

#[test]
fn an_arp_request_for_an_address_the_map_knows_is_answered_here() {
    let mut w = lab();
    let t = Nanos::from_secs(1);
    w.inject(A1, &arp_request(mac(1), [10, 0, 0, 9]));
    let out = step(&mut w, t);
    assert_eq!(out.len(), 1, "answered, not flooded: {out:?}");
    let (p, r) = &out[0];
    assert_eq!(*p, A1, "back to the asker");
    assert_eq!(&r[0..6], &mac(1), "to the asker");
    assert_eq!(&r[6..12], &mac(9), "from the address's owner");
    assert_eq!(&r[20..22], &[0, 2], "a reply");
    assert_eq!(&r[22..28], &mac(9), "sender: the owner's MAC");
    assert_eq!(&r[28..32], &[10, 0, 0, 9], "sender: the address asked for");
    assert_eq!(&r[32..38], &mac(1), "target: the asker");
    assert_eq!(&r[38..42], &[10, 0, 0, 1]);
    assert_eq!(w.pipeline().counters.overlay.arp_suppressed, 1);
    // An address the map does not know (and a tenant whose map has none) floods as before.
    w.inject(A1, &arp_request(mac(1), [10, 0, 0, 8]));
    w.inject(B1, &arp_request(mac(1), [10, 0, 0, 9]));
    let mut out = step(&mut w, t);
    out.sort_by_key(|(p, _)| *p);
    assert_eq!(out.iter().map(|(p, _)| *p).collect::<Vec<_>>(), vec![A2, UL, UL, UL]);
    assert_eq!(w.pipeline().counters.overlay.arp_suppressed, 1);
}

#[test]
fn an_arp_request_for_the_tunnel_address_is_answered_on_the_underlay() {
    let mut w = lab();
    let t = Nanos::from_secs(1);
    let router = [0x02, 0xaa, 0, 0, 0, 1];
    let mut ask = arp_request(router, HERE);
    ask[28..32].copy_from_slice(&[192, 168, 0, 254]);
    w.inject(UL, &ask);
    let out = step(&mut w, t);
    assert_eq!(out.len(), 1, "{out:?}");
    let (p, r) = &out[0];
    assert_eq!(*p, UL, "back out on the underlay");
    assert_eq!((&r[0..6], &r[6..12]), (&router[..], &HERE_MAC[..]));
    assert_eq!(&r[20..22], &[0, 2], "a reply");
    assert_eq!((&r[22..28], &r[28..32]), (&HERE_MAC[..], &HERE[..]), "sender: this host");
    assert_eq!((&r[32..38], &r[38..42]), (&router[..], &[192, 168, 0, 254][..]));
    assert_eq!(w.pipeline().counters.overlay.tunnel_arp, 1);
    assert_eq!(drops(&w, DropReason::NotOverlay), 0);
    // Another address on the underlay, and the tunnel address asked from a tenant port, are
    // not this host's to answer there.
    w.inject(UL, &arp_request(router, [192, 168, 0, 7]));
    let out = step(&mut w, t);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(drops(&w, DropReason::NotOverlay), 1);
    w.inject(A1, &arp_request(mac(1), HERE));
    let out = step(&mut w, t);
    assert!(out.iter().all(|(p, _)| *p != A1), "{out:?}");
    assert_eq!(w.pipeline().counters.overlay.tunnel_arp, 1);
}

#[test]
fn a_neighbour_solicitation_for_an_address_the_map_knows_is_answered_here() {
    let mut w = lab();
    let t = Nanos::from_secs(1);
    w.inject(A1, &neighbour_solicitation(mac(1), V6_ONE, V6_NINE));
    let out = step(&mut w, t);
    assert_eq!(out.len(), 1, "answered, not flooded: {out:?}");
    let (p, r) = &out[0];
    assert_eq!(*p, A1, "back to the asker");
    assert_eq!(r.len(), 14 + 40 + 32, "an advertisement with one option");
    assert_eq!(&r[0..6], &mac(1), "to the asker");
    assert_eq!(&r[6..12], &mac(9), "from the address's owner");
    assert_eq!(&r[12..14], &[0x86, 0xdd]);
    let ip = &r[14..];
    assert_eq!((ip[6], ip[7]), (58, 255), "ICMPv6, hop limit 255");
    assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 32, "payload length");
    assert_eq!(&ip[8..24], &V6_NINE, "source: the address asked for");
    assert_eq!(&ip[24..40], &V6_ONE, "destination: the asker");
    let na = &ip[40..];
    assert_eq!((na[0], na[1]), (136, 0), "a neighbour advertisement");
    assert_eq!(na[4], 0x60, "solicited and override, not a router");
    assert_eq!(&na[8..24], &V6_NINE, "target");
    assert_eq!(&na[24..32], &[2, 1, 2, 0, 0, 0, 0, 9], "target link-layer address: mac 9");
    assert_eq!(icmpv6_sum(&ip[8..24], &ip[24..40], na), 0xffff, "ICMPv6 checksum");
    assert_eq!(w.pipeline().counters.overlay.nd_suppressed, 1);
    assert_eq!(w.pipeline().counters.overlay.arp_suppressed, 0);
    // Duplicate address detection (from ::) is the owner's to answer, an unknown target and
    // a tenant whose map has no address flood as before.
    w.inject(A1, &neighbour_solicitation(mac(1), [0; 16], V6_NINE));
    w.inject(A1, &neighbour_solicitation(mac(1), V6_ONE, V6_ONE));
    w.inject(B1, &neighbour_solicitation(mac(1), V6_ONE, V6_NINE));
    let mut out = step(&mut w, t);
    out.sort_by_key(|(p, _)| *p);
    let ports: Vec<PortId> = out.iter().map(|(p, _)| *p).collect();
    assert_eq!(ports, vec![A2, A2, UL, UL, UL, UL, UL]);
    assert_eq!(w.pipeline().counters.overlay.nd_suppressed, 1);
}

#[test]
fn a_vm_that_moved_here_is_switched_here_before_the_map_says_so() {
    let mut w = lab();
    let t = Nanos::from_secs(1);
    // mac 9 is on host X says the map; it talks from a1 now.
    w.inject(A1, &udp(mac(9), [0xff; 6], 1, 10));
    step(&mut w, t);
    assert_eq!(w.pipeline().counters.fdb.moved, 1, "the map's entry moved by learning");
    let f = udp(mac(2), mac(9), 1, 10);
    w.inject(A2, &f);
    assert_eq!(step(&mut w, t), vec![(A1, f.clone())], "switched here, not sent to X");
    // A new map that still says X leaves what was learned here (first-hand, alive) alone.
    let mut m = OverlayBuilder::new(3);
    assert!(m.mac(RED, MacAddr(mac(9)), X, &[]));
    assert!(m.member(RED, Y));
    w.apply(t, WorkerCmd::Overlay(Arc::new(m.build())));
    w.inject(A2, &f);
    assert_eq!(step(&mut w, t), vec![(A1, f.clone())]);
    // Once it ages out here (red's MACs age in 300 s), the map's answer holds again.
    let later = Nanos::from_secs(400);
    w.pipeline_mut().age(later);
    let mut m = OverlayBuilder::new(4);
    assert!(m.mac(RED, MacAddr(mac(9)), X, &[]));
    w.apply(later, WorkerCmd::Overlay(Arc::new(m.build())));
    w.inject(A2, &f);
    let out = step(&mut w, later);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].0, open(&out[0].1).1), (UL, X.ip));
}
