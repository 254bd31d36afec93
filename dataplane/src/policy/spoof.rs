//! Anti-spoofing: what a tenant attachment may claim to be.
//!
//! A [`Guard`] on an attachment lists the source MACs and IP prefixes the hosts behind it own.
//! An empty list does not restrict (an attachment with no guard checks nothing). Checked:
//! - the Ethernet source MAC, and the ARP sender hardware address;
//! - the IPv4 and IPv6 source address, and the ARP sender protocol address;
//! - the target address of an IPv6 neighbour advertisement (a host may only advertise an
//!   address it owns).
//!
//! Let through without an owned address, as address configuration needs them: a DHCP client's
//! `0.0.0.0:68 → :67` request, an ARP probe (sender address 0.0.0.0), and duplicate address
//! detection from `::` (neighbour solicitation, MLD report).
//!
//! An attachment also owns the IPv6 link-local address its owned MACs give (`fe80::/64` with
//! the MAC's EUI-64 interface identifier, as OpenStack's port security allows): a host with
//! IPv6 on solicits routers and reports its listening from it, whatever addresses its config
//! lists, and dropping those as `spoof` would count every honest host as a spoofer.
//!
//! A guarded attachment may also send only IPv4, IPv6 and ARP, plus the ether types its
//! config lists (as OpenStack's port security allows), and no TCP segment whose flags no
//! stack sends (SYN with FIN or RST, FIN without ACK, no flags, every flag: the combinations
//! Linux's connection tracker calls invalid), which are scans and firewall probes, dropped as
//! `malformed tcp` with or without a security group.

use super::{Prefix, mac_in};
use crate::batch::{Meta, PacketFlags};
use crate::vocab::{DropReason, ParseError};
use crate::wire::MacAddr;
use crate::wire::tcp::flags::{ACK, FIN, RST, SYN, URG};

const ETH_IPV4: u16 = 0x0800;
const ETH_ARP: u16 = 0x0806;
const ETH_IPV6: u16 = 0x86dd;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;
const ND_NEIGHBOR_SOLICIT: u16 = 135;
const ND_NEIGHBOR_ADVERT: u16 = 136;
const MLDV2_REPORT: u16 = 143;
const V4_ZERO: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];
const V6_ZERO: [u8; 16] = [0; 16];
const PROTO_TCP: u8 = 6;

/// Why a guard refused a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A source (MAC, IP, ARP or neighbour advertisement) the attachment does not own.
    Spoof,
    /// An ether type the attachment may not send.
    Ethertype,
    /// A header no honest sender writes (counted under the parse check too).
    Malformed(ParseError),
}

impl Refusal {
    /// The drop reason it is counted under.
    #[inline]
    pub fn reason(self) -> DropReason {
        match self {
            Refusal::Spoof => DropReason::Spoof,
            Refusal::Ethertype => DropReason::Ethertype,
            Refusal::Malformed(_) => DropReason::Malformed,
        }
    }
}

/// True for the TCP flag combinations a stack sends (Linux's `tcp_valid_flags`, which leaves
/// PSH, ECE and CWR aside): SYN, SYN+ACK, RST, RST+ACK, FIN+ACK and ACK, some with URG.
#[inline]
pub fn tcp_flags_valid(flags: u8) -> bool {
    const SYN_URG: u8 = SYN | URG;
    const SYN_ACK: u8 = SYN | ACK;
    const RST_ACK: u8 = RST | ACK;
    const FIN_ACK: u8 = FIN | ACK;
    const FIN_ACK_URG: u8 = FIN | ACK | URG;
    const ACK_URG: u8 = ACK | URG;
    matches!(
        flags & (FIN | SYN | RST | ACK | URG),
        SYN | SYN_URG | SYN_ACK | RST | RST_ACK | FIN_ACK | FIN_ACK_URG | ACK | ACK_URG
    )
}

/// True when `ip` is the link-local address `mac` gives with its EUI-64 interface identifier
/// (RFC 4291 appendix A: `fe80::` + the MAC with `ff:fe` in its middle and the
/// universal/local bit flipped).
#[inline]
fn eui64_link_local(ip: &[u8; 16], mac: MacAddr) -> bool {
    let m = mac.0;
    ip[..8] == [0xfe, 0x80, 0, 0, 0, 0, 0, 0]
        && ip[8..] == [m[0] ^ 2, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]]
}

/// What the hosts behind one attachment own.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Guard {
    /// Allowed source MACs (empty: any).
    pub macs: Vec<MacAddr>,
    /// Allowed source addresses (empty: any).
    pub ips: Vec<Prefix>,
    /// Ether types allowed besides IPv4, IPv6 and ARP.
    pub ethertypes: Vec<u16>,
}

impl Guard {
    /// True when the guard restricts nothing.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.macs.is_empty() && self.ips.is_empty()
    }

    #[inline]
    fn owns_ip(&self, ip: &[u8; 16]) -> bool {
        self.ips.is_empty() || self.ips.iter().any(|p| p.contains(ip))
    }

    #[inline]
    fn owns_mac(&self, mac: MacAddr) -> bool {
        self.macs.is_empty() || mac_in(&self.macs, mac)
    }

    /// Checks a frame of a guarded attachment: its source, its ether type and, for TCP, its
    /// flags.
    #[inline]
    pub fn check(&self, m: &Meta, frame: &[u8]) -> Result<(), Refusal> {
        if !self.owns_mac(m.src) {
            return Err(Refusal::Spoof);
        }
        let et = m.key.ethertype;
        if !matches!(et, ETH_IPV4 | ETH_IPV6 | ETH_ARP) && !self.ethertypes.contains(&et) {
            return Err(Refusal::Ethertype);
        }
        if m.key.proto == PROTO_TCP
            && m.l4_offset != 0
            && !m.flags.has(PacketFlags::LATER_FRAGMENT)
            && matches!(et, ETH_IPV4 | ETH_IPV6)
            && !tcp_flags_valid(m.tcp_flags)
        {
            return Err(Refusal::Malformed(ParseError::Tcp));
        }
        if self.allows(m, frame) { Ok(()) } else { Err(Refusal::Spoof) }
    }

    /// True when the parsed frame `m` (bytes `frame`) claims only what this attachment owns.
    #[inline]
    pub fn allows(&self, m: &Meta, frame: &[u8]) -> bool {
        if !self.owns_mac(m.src) {
            return false;
        }
        let k = &m.key;
        match k.ethertype {
            ETH_IPV4 => {
                let dhcp = k.src_ip == V4_ZERO
                    && k.proto == PROTO_UDP
                    && k.src_port == 68
                    && k.dst_port == 67;
                dhcp || self.owns_ip(&k.src_ip)
            }
            ETH_IPV6 => {
                let icmp = k.proto == PROTO_ICMPV6 && m.l4_offset != 0;
                if k.src_ip == V6_ZERO {
                    return icmp && matches!(k.src_port, ND_NEIGHBOR_SOLICIT | MLDV2_REPORT);
                }
                if !self.owns_ip(&k.src_ip) && !eui64_link_local(&k.src_ip, m.src) {
                    return false;
                }
                if icmp && k.src_port == ND_NEIGHBOR_ADVERT && !self.ips.is_empty() {
                    // Target address: 8 bytes into the ICMPv6 message.
                    let at = usize::from(m.l4_offset) + 8;
                    return match frame.get(at..at + 16).and_then(|t| <[u8; 16]>::try_from(t).ok()) {
                        Some(target) => self.owns_ip(&target) || eui64_link_local(&target, m.src),
                        None => false,
                    };
                }
                true
            }
            ETH_ARP => {
                // Ethernet/IPv4 ARP: sender hardware address at 8, protocol address at 14.
                let l3 = usize::from(m.l3_offset);
                let sha = frame.get(l3 + 8..l3 + 14).and_then(|b| <[u8; 6]>::try_from(b).ok());
                let Some(sha) = sha else { return self.macs.is_empty() && self.ips.is_empty() };
                if !self.owns_mac(MacAddr(sha)) {
                    return false;
                }
                // The parser fills the sender address only for Ethernet/IPv4 ARP; anything else
                // cannot be checked and passes only an attachment with no address list.
                let eth_ipv4 = k.src_ip[10..12] == [0xff, 0xff];
                if !eth_ipv4 {
                    return self.ips.is_empty();
                }
                k.src_ip == V4_ZERO || self.owns_ip(&k.src_ip)
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use etherparse::{Icmpv6Type, PacketBuilder};

    use super::*;
    use crate::pipeline::parse::parse_one;

    const MINE: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const OTHER: [u8; 6] = [2, 0, 0, 0, 0, 9];

    fn guard() -> Guard {
        Guard {
            macs: vec![MacAddr(MINE)],
            ips: vec!["10.0.0.1".parse().unwrap(), "fd00::1/128".parse().unwrap()],
            ethertypes: vec![0x88cc],
        }
    }

    fn check(g: &Guard, frame: &[u8]) -> bool {
        let mut m = Meta::EMPTY;
        parse_one(frame, &mut m).unwrap();
        g.allows(&m, frame)
    }

    fn udp4(src: [u8; 6], ip: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(src, [0xff; 6])
            .ipv4(ip, [10, 0, 0, 2], 64)
            .udp(sport, dport)
            .write(&mut out, &[0; 8])
            .unwrap();
        out
    }

    fn arp(sha: [u8; 6], spa: [u8; 4], src: [u8; 6]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
        f.extend_from_slice(&sha);
        f.extend_from_slice(&spa);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&[10, 0, 0, 2]);
        f
    }

    fn na(src_ip: [u8; 16], target: [u8; 16]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut payload = target.to_vec();
        payload.extend_from_slice(&[2, 1, MINE[0], MINE[1], MINE[2], MINE[3], MINE[4], MINE[5]]);
        PacketBuilder::ethernet2(MINE, [0x33, 0x33, 0, 0, 0, 1])
            .ipv6(
                src_ip,
                [0xff02, 0, 0, 0, 0, 0, 0, 1].map(u16::to_be_bytes).concat().try_into().unwrap(),
                255,
            )
            .icmpv6(Icmpv6Type::Unknown { type_u8: 136, code_u8: 0, bytes5to8: [0x20, 0, 0, 0] })
            .write(&mut out, &payload)
            .unwrap();
        out
    }

    fn v6(s: &str) -> [u8; 16] {
        s.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }

    fn checked(g: &Guard, frame: &[u8]) -> Result<(), Refusal> {
        let mut m = Meta::EMPTY;
        parse_one(frame, &mut m).unwrap();
        g.check(&m, frame)
    }

    // Regression (issue 16): a bare frame of an unknown ether type passed a guarded attachment.
    #[test]
    fn only_ip_arp_and_listed_ether_types_pass() {
        let g = guard();
        let bare = |et: u16| [&[0xffu8; 6][..], &MINE[..], &et.to_be_bytes()[..]].concat();
        assert_eq!(checked(&g, &bare(0x88b5)), Err(Refusal::Ethertype));
        assert_eq!(checked(&g, &bare(0x88cc)), Ok(()), "listed in allow_ethertypes");
        assert_eq!(checked(&g, &udp4(MINE, [10, 0, 0, 1], 1, 2)), Ok(()));
        // Spoofing is told first: the MAC is the claim.
        let mut spoofed = bare(0x88b5);
        spoofed[6..12].copy_from_slice(&OTHER);
        assert_eq!(checked(&g, &spoofed), Err(Refusal::Spoof));
    }

    // Regression (issue 16): TCP segments with flags no stack sends were forwarded.
    #[test]
    fn impossible_tcp_flags_are_malformed() {
        let tcp = |flags: u8| {
            let mut out = Vec::new();
            PacketBuilder::ethernet2(MINE, OTHER)
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .tcp(1000, 80, 1, 1024)
                .write(&mut out, &[])
                .unwrap();
            out[14 + 20 + 13] = flags;
            out
        };
        for bad in [0x00, 0x03, 0x06, 0x01, 0x3f, 0xff, 0x29 /* FIN PSH URG */] {
            assert_eq!(
                checked(&guard(), &tcp(bad)),
                Err(Refusal::Malformed(ParseError::Tcp)),
                "flags {bad:#04x}"
            );
        }
        for good in [0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0xc2 /* SYN ECE CWR */] {
            assert_eq!(checked(&guard(), &tcp(good)), Ok(()), "flags {good:#04x}");
        }
    }

    #[test]
    fn source_mac_and_ip_must_be_owned() {
        let g = guard();
        assert!(check(&g, &udp4(MINE, [10, 0, 0, 1], 1000, 53)));
        assert!(!check(&g, &udp4(OTHER, [10, 0, 0, 1], 1000, 53)), "spoofed MAC");
        assert!(!check(&g, &udp4(MINE, [10, 0, 0, 7], 1000, 53)), "spoofed IP");
        // DHCP discovery from 0.0.0.0 passes; other traffic from 0.0.0.0 does not.
        assert!(check(&g, &udp4(MINE, [0; 4], 68, 67)));
        assert!(!check(&g, &udp4(MINE, [0; 4], 1000, 67)));
        // An empty guard checks nothing.
        assert!(check(&Guard::default(), &udp4(OTHER, [1, 2, 3, 4], 1, 2)));
        // MACs only: any address.
        let macs = Guard { macs: vec![MacAddr(MINE)], ..Guard::default() };
        assert!(check(&macs, &udp4(MINE, [1, 2, 3, 4], 1, 2)));
    }

    #[test]
    fn arp_must_claim_owned_addresses_only() {
        let g = guard();
        assert!(check(&g, &arp(MINE, [10, 0, 0, 1], MINE)));
        assert!(!check(&g, &arp(MINE, [10, 0, 0, 2], MINE)), "claims another IP");
        assert!(!check(&g, &arp(OTHER, [10, 0, 0, 1], MINE)), "claims another MAC");
        assert!(check(&g, &arp(MINE, [0; 4], MINE)), "ARP probe");
    }

    #[test]
    fn neighbour_advertisements_must_target_owned_addresses() {
        let g = guard();
        let ll = v6("fd00::1");
        assert!(check(&g, &na(ll, v6("fd00::1"))));
        assert!(!check(&g, &na(ll, v6("fd00::2"))), "advertises another host's address");
        assert!(!check(&g, &na(v6("fd00::5"), v6("fd00::5"))), "from an address not owned");
        assert!(!check(&g, &na(V6_ZERO, v6("fd00::1"))), "an advertisement from ::");
    }

    // Regression (issue 16 review): with IPv6 on, a host behind a guarded attachment solicits
    // routers and answers neighbours from its MAC's link-local address; each was a `spoof` drop
    // unless the config listed that address.
    #[test]
    fn the_link_local_address_of_an_owned_mac_is_owned() {
        let g = guard(); // MINE = 02:00:00:00:00:01, IPv4 10.0.0.1 and fd00::1
        let mine_ll = v6("fe80::ff:fe00:1"); // 02 ^ 02 = 00, then 00:00 ff:fe 00:00:01
        assert!(check(&g, &na(mine_ll, mine_ll)), "from and for its own link-local address");
        assert!(check(&g, &na(mine_ll, v6("fd00::1"))));
        assert!(!check(&g, &na(v6("fe80::ff:fe00:9"), v6("fd00::1"))), "OTHER's link-local");
        assert!(!check(&g, &na(mine_ll, v6("fe80::ff:fe00:9"))), "advertises OTHER's");
        assert!(!check(&g, &na(v6("fe80::1"), v6("fd00::1"))), "not derived from the MAC");
    }
}
