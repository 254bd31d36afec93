//! The hostile-frame catalogue: frames a tenant can craft to hurt a switch, each with what the
//! switch must do with it. The hostile-tenant suite (`switch/tests/hostile.rs`, which includes
//! this file by path) sends them from a tenant through a raw socket and checks the counters per
//! reason; the fuzz seeds (`fuzz/seeds/parse`) are written from it. Expectations are written
//! by hand from the rules in docs/ARCHITECTURE.md and docs/CONFIG.md, not read off the switch.
//!
//! The sender `me` sits on an untagged attachment with anti-spoofing (its MAC and address);
//! `peer` is another host of its tenant.

use etherparse::PacketBuilder;

/// A host: its MAC and IPv4 address.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    pub mac: [u8; 6],
    pub ip: [u8; 4],
}

/// What the switch must do with a crafted frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Dropped under `reason` (a `DropReason` label); for `malformed`, also under the parse
    /// check `check` (a `ParseError` label).
    Drop { reason: &'static str, check: Option<&'static str> },
    /// Forwarded to the peer: a legal frame a switch must not mistake for an attack.
    Forward,
}

/// One crafted frame.
#[derive(Debug, Clone)]
pub struct Crafted {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub expect: Expect,
}

const fn malformed(check: &'static str) -> Expect {
    Expect::Drop { reason: "malformed", check: Some(check) }
}

const fn drop(reason: &'static str) -> Expect {
    Expect::Drop { reason, check: None }
}

fn udp4(me: &Host, peer: &Host, payload: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(me.mac, peer.mac)
        .ipv4(me.ip, peer.ip, 64)
        .udp(40000, 9)
        .write(&mut out, &vec![0x5a; payload])
        .expect("a UDP frame builds");
    out
}

fn tcp4(me: &Host, peer: &Host) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(me.mac, peer.mac)
        .ipv4(me.ip, peer.ip, 64)
        .tcp(40000, 80, 1, 1024)
        .syn()
        .write(&mut out, &[])
        .expect("a TCP frame builds");
    out
}

/// The link-local IPv6 address the catalogue gives a host.
pub fn v6_of(ip: [u8; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..2].copy_from_slice(&[0xfe, 0x80]);
    a[12..].copy_from_slice(&ip);
    a
}

fn udp6(me: &Host, peer: &Host) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(me.mac, peer.mac)
        .ipv6(v6_of(me.ip), v6_of(peer.ip), 64)
        .udp(40000, 9)
        .write(&mut out, &[0x5a; 8])
        .expect("a UDP/IPv6 frame builds");
    out
}

/// Writes the IPv4 header checksum of an untagged frame again after its header was edited (so
/// the frame tests what it means to, not the checksum check).
fn fix_ipv4_checksum(f: &mut [u8]) {
    let ihl = usize::from(f[14] & 0x0f) * 4;
    f[24..26].copy_from_slice(&[0, 0]);
    let mut sum: u32 = 0;
    for w in f[14..14 + ihl].chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// An Ethernet header with `ethertype` followed by `body`.
fn eth(me: &Host, dst: [u8; 6], ethertype: u16, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + body.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&me.mac);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(body);
    f
}

fn arp(me: &Host, sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4], oper: u16) -> Vec<u8> {
    let mut body = vec![0, 1, 8, 0, 6, 4];
    body.extend_from_slice(&oper.to_be_bytes());
    body.extend_from_slice(&sha);
    body.extend_from_slice(&spa);
    body.extend_from_slice(&[0; 6]);
    body.extend_from_slice(&tpa);
    eth(me, [0xff; 6], 0x0806, &body)
}

/// An IPv6 neighbour advertisement for `target` (checksum left zero: the switch checks the
/// claim, not the checksum).
fn neighbour_advert(me: &Host, peer: &Host, target: [u8; 16]) -> Vec<u8> {
    let mut icmp = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
    icmp.extend_from_slice(&target);
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&me.mac);
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    ip.extend_from_slice(&[58, 255]);
    ip.extend_from_slice(&v6_of(me.ip));
    ip.extend_from_slice(&v6_of(peer.ip));
    ip.extend_from_slice(&icmp);
    eth(me, peer.mac, 0x86dd, &ip)
}

/// `n` tags (all 802.1Q) in front of a UDP frame's IPv4 header.
fn tagged(me: &Host, peer: &Host, vlans: &[u16]) -> Vec<u8> {
    let base = udp4(me, peer, 8);
    let mut f = base[..12].to_vec();
    for v in vlans {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&base[12..]);
    f
}

/// Every crafted frame, with what the switch must do with it.
pub fn catalogue(me: &Host, peer: &Host) -> Vec<Crafted> {
    let mut c = Vec::new();
    let mut add = |name: &'static str, bytes: Vec<u8>, expect: Expect| {
        c.push(Crafted { name, bytes, expect });
    };
    let good = udp4(me, peer, 18);
    let l3 = 14;

    // Runts and truncation at every header.
    add("runt-header-only-ipv4", good[..14].to_vec(), malformed("ipv4"));
    add("ipv4-cut-in-header", good[..l3 + 12].to_vec(), malformed("ipv4"));
    add("udp-cut-in-header", good[..l3 + 20 + 4].to_vec(), malformed("ipv4"));
    let mut f = good[..l3 + 20 + 4].to_vec();
    f[l3 + 2..l3 + 4].copy_from_slice(&24u16.to_be_bytes());
    add("udp-header-cut-consistent-ip", f, malformed("udp"));
    let t = tcp4(me, peer);
    let mut f = t[..l3 + 20 + 10].to_vec();
    f[l3 + 2..l3 + 4].copy_from_slice(&30u16.to_be_bytes());
    add("tcp-cut-in-header", f, malformed("tcp"));
    add("arp-cut", arp(me, me.mac, me.ip, peer.ip, 1)[..l3 + 20].to_vec(), malformed("arp"));
    add("vlan-tag-cut", eth(me, peer.mac, 0x8100, &[0x00]), malformed("vlan"));
    let mut f = udp6(me, peer);
    f.truncate(l3 + 30);
    add("ipv6-cut-in-header", f, malformed("ipv6"));

    // Bad IHL and lengths.
    let mut f = good.clone();
    f[l3] = 0x44;
    add("ipv4-ihl-4", f, malformed("ipv4"));
    let mut f = good.clone();
    f[l3] = 0x4f;
    add("ipv4-ihl-beyond-total", f, malformed("ipv4"));
    let mut f = good.clone();
    f[l3 + 2..l3 + 4].copy_from_slice(&1500u16.to_be_bytes());
    add("ipv4-total-beyond-frame", f, malformed("ipv4"));
    let mut f = good.clone();
    f[l3] = 0x65;
    add("ipv4-version-6", f, malformed("ipv4"));
    let mut f = good.clone();
    f[l3 + 20 + 4..l3 + 20 + 6].copy_from_slice(&4u16.to_be_bytes());
    add("udp-length-below-header", f, malformed("udp"));
    let mut f = good.clone();
    f[l3 + 20 + 4..l3 + 20 + 6].copy_from_slice(&1000u16.to_be_bytes());
    add("udp-length-beyond-ip", f, malformed("udp"));
    let mut f = t.clone();
    f[l3 + 20 + 12] = 0x20;
    add("tcp-data-offset-2", f, malformed("tcp"));
    let mut f = t.clone();
    f[l3 + 20 + 12] = 0xf0;
    add("tcp-data-offset-beyond", f, malformed("tcp"));
    let mut f = udp6(me, peer);
    f[l3 + 4..l3 + 6].copy_from_slice(&1400u16.to_be_bytes());
    add("ipv6-payload-beyond-frame", f, malformed("ipv6"));
    add("ieee8023-length-beyond", eth(me, peer.mac, 1000, &[0; 40]), malformed("length"));
    add("ethertype-1501", eth(me, peer.mac, 1501, &[0; 40]), malformed("length"));
    let mut f = udp4(me, peer, 0);
    let icmp_at = l3 + 20;
    f[l3 + 9] = 1;
    f.truncate(icmp_at + 2);
    f[l3 + 2..l3 + 4].copy_from_slice(&22u16.to_be_bytes());
    add("icmp-cut", f, malformed("icmp"));

    // IPv6 extension-header chains: one that never ends (destination options pointing at
    // destination options until the frame runs out), one longer than the parser follows, and
    // a hop-by-hop header that is not first.
    let chain = |n: usize, next_last: u8, first: u8| {
        let mut ext = Vec::new();
        for i in 0..n {
            let next = if i + 1 == n { next_last } else { 60 };
            ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
        }
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        ip.extend_from_slice(&[first, 64]);
        ip.extend_from_slice(&v6_of(me.ip));
        ip.extend_from_slice(&v6_of(peer.ip));
        ip.extend_from_slice(&ext);
        eth(me, peer.mac, 0x86dd, &ip)
    };
    add("ipv6-ext-chain-never-ends", chain(4, 60, 60), malformed("ipv6"));
    add("ipv6-ext-chain-too-long", chain(40, 59, 60), malformed("ipv6"));
    add("ipv6-hop-by-hop-not-first", chain(2, 0, 60), malformed("ipv6"));

    // Fragments: a first fragment too small to hold the TCP header (the tiny-fragment attack)
    // is malformed; a later fragment, overlapping or not, carries no header and is switched
    // for a tenant without ACLs (with ACLs, the fragment stage judges it: the policy tests).
    let mut f = t[..l3 + 20 + 8].to_vec();
    f[l3 + 2..l3 + 4].copy_from_slice(&28u16.to_be_bytes());
    f[l3 + 6] = 0x20; // MF
    add("tiny-first-fragment", f, malformed("tcp"));
    let mut f = good.clone();
    f[l3 + 6..l3 + 8].copy_from_slice(&1u16.to_be_bytes()); // offset 8 bytes, overlaps the first
    fix_ipv4_checksum(&mut f);
    add("overlapping-later-fragment", f, Expect::Forward);
    let mut f = good.clone();
    f[l3 + 6..l3 + 8].copy_from_slice(&(0x2000u16 | 0x1fff).to_be_bytes());
    fix_ipv4_checksum(&mut f);
    add("fragment-at-max-offset", f, Expect::Forward);
    // A first fragment of a UDP datagram longer than the fragment (every fragmented datagram's
    // first fragment looks so): switched.
    let mut f = udp4(me, peer, 1472);
    f[l3 + 6] = 0x20; // MF
    f[l3 + 20 + 4..l3 + 20 + 6].copy_from_slice(&3008u16.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    add("udp-first-fragment", f, Expect::Forward);

    // Headers a port-secured attachment may not send: a wrong IPv4 header checksum, TCP flag
    // combinations no stack sends, an ether type other than IPv4, IPv6 and ARP.
    let mut f = good.clone();
    f[l3 + 10] ^= 0x5a;
    add("ipv4-bad-header-checksum", f, malformed("ipv4"));
    for (name, flags) in [
        ("tcp-all-flags", 0xffu8),
        ("tcp-no-flags", 0x00),
        ("tcp-syn-fin", 0x03),
        ("tcp-syn-rst", 0x06),
    ] {
        let mut f = t.clone();
        f[l3 + 20 + 13] = flags;
        add(name, f, malformed("tcp"));
    }
    add("unknown-ethertype-bare", eth(me, peer.mac, 0x88b5, &[]), drop("ethertype"));
    add("unknown-ethertype", eth(me, peer.mac, 0x9000, &[0; 46]), drop("ethertype"));

    // Spoofed sources.
    let mut f = good.clone();
    f[6..12].copy_from_slice(&[2, 0xee, 0, 0, 0, 1]);
    add("spoofed-source-mac", f, drop("spoof"));
    add(
        "spoofed-source-ip",
        udp4(&Host { mac: me.mac, ip: [10, 99, 0, 1] }, peer, 8),
        drop("spoof"),
    );
    let mut f = good.clone();
    f[6] = 0x01;
    add("multicast-source-mac", f, drop("invalid_src_mac"));
    let mut f = good.clone();
    f[6..12].copy_from_slice(&[0; 6]);
    add("zero-source-mac", f, drop("invalid_src_mac"));

    // Forged ARP and neighbour advertisements.
    add("arp-claims-peer-address", arp(me, me.mac, peer.ip, peer.ip, 2), drop("spoof"));
    add("arp-forged-sender-mac", arp(me, peer.mac, me.ip, peer.ip, 1), drop("spoof"));
    add("neighbour-advert-for-peer", neighbour_advert(me, peer, v6_of(peer.ip)), drop("spoof"));

    // Tags on an untagged attachment: another tenant's VLAN, double tags, priority tags.
    add("tagged-vlan-200", tagged(me, peer, &[200]), drop("unknown_tenant"));
    add("double-tagged", tagged(me, peer, &[100, 200]), drop("unknown_tenant"));
    add("triple-tagged", tagged(me, peer, &[100, 200, 300]), malformed("vlan"));

    // Legal frames a switch must not refuse.
    add("legal-udp", good.clone(), Expect::Forward);
    add("legal-max-size", udp4(me, peer, 1472), Expect::Forward);
    add("legal-arp-probe", arp(me, me.mac, [0, 0, 0, 0], peer.ip, 1), Expect::Forward);
    c
}
