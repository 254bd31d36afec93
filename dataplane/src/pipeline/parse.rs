//! Stage 1: one pass over the headers that fills [`Meta`] (MACs, VLAN tags, flow key, flags).
//!
//! Every view is built with `new_checked`, so a frame cut at any byte or carrying lengths that
//! disagree with each other ends here with a [`ParseError`] instead of an out-of-bounds read.
//! Ether types the switch does not look into are fine: L2 switching needs only the MACs.

use crate::batch::{Batch, FlowKey, Meta, PacketFlags};
use crate::frame::FrameArea;
use crate::vocab::ParseError;
use crate::wire::{
    ArpPacket, EtherType, EthernetFrame, IcmpPacket, Ipv4Packet, Ipv6Packet, TcpSegment,
    UdpDatagram, VlanTag, checksum, ethernet, vlan,
};

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;

/// Parses every frame of the batch into its metadata slot.
pub fn parse(area: &FrameArea, batch: &mut Batch) {
    let (frames, meta) = batch.split_mut();
    for (f, m) in frames.iter().zip(meta.iter_mut()) {
        *m = Meta::EMPTY;
        let r = match area.frame(f) {
            Some(bytes) => parse_head(bytes, f.extra() as usize, m),
            None => Err(ParseError::Ethernet),
        };
        m.parse_error = r.err();
    }
}

/// Parses one frame. On error `m` holds what was parsed before the failing header.
#[inline]
pub fn parse_one(b: &[u8], m: &mut Meta) -> Result<(), ParseError> {
    parse_head(b, 0, m)
}

/// Parses the first segment `b` of a packet whose other segments hold `beyond` more bytes
/// (0: the packet is `b`). The headers must all be in `b` (the kernel puts them in a chain's
/// first frame); lengths may reach beyond it.
/// PERF(chains): always inlined in [`parse`]'s loop (a call cost 5 instructions a frame).
#[inline(always)]
pub fn parse_head(b: &[u8], beyond: usize, m: &mut Meta) -> Result<(), ParseError> {
    let eth = EthernetFrame::new_checked(b).map_err(|_| ParseError::Ethernet)?;
    m.dst = eth.dst();
    m.src = eth.src();
    let mut et = eth.ethertype();
    let mut off = ethernet::HEADER_LEN;
    let mut tags = 0;
    while matches!(et, EtherType::Vlan | EtherType::QinQ) {
        if tags == 2 {
            return Err(ParseError::Vlan);
        }
        let tag = VlanTag::new_checked(&b[off..]).map_err(|_| ParseError::Vlan)?;
        if tags == 0 {
            m.outer_vlan = Some(tag.vid());
        } else {
            m.inner_vlan = Some(tag.vid());
        }
        et = tag.ethertype();
        off += vlan::TAG_LEN;
        tags += 1;
    }
    m.l3_offset = off as u16;
    m.key.ethertype = u16::from(et);
    let l3 = &b[off..];
    match et {
        EtherType::Ipv4 => parse_ipv4(l3, beyond, off, m),
        EtherType::Ipv6 => parse_ipv6(l3, beyond, off, m),
        EtherType::Arp => parse_arp(l3, &mut m.key),
        EtherType::Unknown(len) if len <= 1500 => {
            // 802.3: the field is the payload length; padding may follow it.
            if usize::from(len) > l3.len() + beyond { Err(ParseError::Length) } else { Ok(()) }
        }
        EtherType::Unknown(len) if len < 0x0600 => Err(ParseError::Length),
        _ => Ok(()),
    }
}

#[inline]
fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3]]
}

fn parse_arp(l3: &[u8], key: &mut FlowKey) -> Result<(), ParseError> {
    let arp = ArpPacket::new_checked(l3).map_err(|_| ParseError::Arp)?;
    if arp.is_eth_ipv4() {
        key.src_ip = v4_mapped(arp.spa());
        key.dst_ip = v4_mapped(arp.tpa());
        key.src_port = arp.oper();
    }
    Ok(())
}

fn parse_ipv4(l3: &[u8], beyond: usize, off: usize, m: &mut Meta) -> Result<(), ParseError> {
    let ip = Ipv4Packet::new_checked_head(l3, beyond).map_err(|_| ParseError::Ipv4)?;
    m.key.proto = ip.protocol();
    m.key.src_ip = v4_mapped(ip.src());
    m.key.dst_ip = v4_mapped(ip.dst());
    let mut flags = 0;
    if ip.header_len() > 20 {
        flags |= PacketFlags::IP_OPTIONS;
    }
    if ip.more_frags() || ip.frag_offset() != 0 {
        flags |= PacketFlags::FRAGMENT;
    }
    if ip.frag_offset() != 0 {
        flags |= PacketFlags::LATER_FRAGMENT;
        m.flags = PacketFlags(flags);
        return Ok(());
    }
    m.flags = PacketFlags(flags);
    m.l4_offset = (off + ip.header_len()) as u16;
    let l4_len = usize::from(ip.total_len()) - ip.header_len();
    parse_l4(ip.protocol(), ip.payload(), l4_len, m)
}

fn parse_ipv6(l3: &[u8], beyond: usize, off: usize, m: &mut Meta) -> Result<(), ParseError> {
    let ip = Ipv6Packet::new_checked_head(l3, beyond).map_err(|_| ParseError::Ipv6)?;
    m.key.src_ip = ip.src();
    m.key.dst_ip = ip.dst();
    let up = ip.upper_layer().map_err(|_| ParseError::Ipv6)?;
    m.key.proto = up.protocol;
    let mut flags = 0;
    if up.offset != crate::wire::ipv6::HEADER_LEN {
        flags |= PacketFlags::IPV6_EXT;
    }
    if up.fragment {
        flags |= PacketFlags::FRAGMENT;
    }
    if up.later_fragment {
        m.flags = PacketFlags(flags | PacketFlags::LATER_FRAGMENT);
        return Ok(());
    }
    m.flags = PacketFlags(flags);
    m.l4_offset = (off + up.offset) as u16;
    let l4_len = (crate::wire::ipv6::HEADER_LEN + usize::from(ip.payload_len())) - up.offset;
    let l4 = ip.packet().get(up.offset..).ok_or(ParseError::Ipv6)?;
    parse_l4(up.protocol, l4, l4_len, m)
}

// PERF(policy): kept inline in the parse loop (out of line it cost 19 instructions a frame).
#[inline(always)]
fn parse_l4(proto: u8, l4: &[u8], l4_len: usize, m: &mut Meta) -> Result<(), ParseError> {
    match proto {
        PROTO_TCP => {
            let s = TcpSegment::new_checked(l4).map_err(|_| ParseError::Tcp)?;
            m.key.src_port = s.src_port();
            m.key.dst_port = s.dst_port();
            m.tcp_flags = s.flags();
            partial(m, l4, l4_len, 16);
        }
        PROTO_UDP => {
            // A first fragment holds only the start of its datagram: the length field covers
            // the whole datagram, which is longer than what is here.
            let d = if m.flags.has(PacketFlags::FRAGMENT) {
                UdpDatagram::new_checked_first_fragment(l4)
            } else {
                UdpDatagram::new_checked_head(l4, l4_len - l4.len())
            };
            let d = d.map_err(|_| ParseError::Udp)?;
            m.key.src_port = d.src_port();
            m.key.dst_port = d.dst_port();
            partial(m, l4, l4_len, 6);
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let p = IcmpPacket::new_checked(l4).map_err(|_| ParseError::Icmp)?;
            m.key.src_port = u16::from(p.msg_type());
            m.key.dst_port = u16::from(p.code());
        }
        _ => {}
    }
    Ok(())
}

/// Flags a TCP or UDP segment (`l4`, `len` bytes in all, its checksum at `field`) whose
/// checksum field holds exactly its pseudo-header sum, as a sender with checksum offload leaves it
/// ([`crate::wire::checksum`]). The headers are in cache here; the segment is summed only on
/// the way out, for the frames flagged. A fragment never is: a sender completes the checksum
/// before it fragments. A UDP checksum of zero means none.
#[inline]
fn partial(m: &mut Meta, l4: &[u8], len: usize, field: usize) {
    let stored = match l4.get(field..field + 2) {
        Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
        _ => return,
    };
    if stored == 0 || m.flags.has(PacketFlags::FRAGMENT) {
        return;
    }
    let v6 = m.key.ethertype == u16::from(EtherType::Ipv6);
    let pseudo = checksum::pseudo_header(v6, &m.key.src_ip, &m.key.dst_ip, m.key.proto, len as u32);
    if checksum::fold(pseudo) == stored {
        m.flags.0 |= PacketFlags::PARTIAL_CSUM;
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use etherparse::PacketBuilder;

    use super::*;
    use crate::wire::MacAddr;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn parse_bytes(b: &[u8]) -> (Meta, Result<(), ParseError>) {
        let mut m = Meta::default();
        let r = parse_one(b, &mut m);
        (m, r)
    }

    fn udp4() -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1234, 53)
            .write(&mut out, &[1, 2, 3, 4])
            .unwrap();
        out
    }

    #[test]
    fn udp_over_ipv4() {
        let (m, r) = parse_bytes(&udp4());
        r.unwrap();
        assert_eq!((m.src, m.dst), (MacAddr(A), MacAddr(B)));
        assert_eq!(m.key.ethertype, 0x0800);
        assert_eq!(m.key.proto, 17);
        assert_eq!(m.key.src_ip[12..], [10, 0, 0, 1]);
        assert_eq!(m.key.dst_ip[12..], [10, 0, 0, 2]);
        assert_eq!((m.key.src_port, m.key.dst_port), (1234, 53));
        assert_eq!((m.l3_offset, m.l4_offset), (14, 34));
        assert_eq!(m.outer_vlan, None);
    }

    #[test]
    fn tcp_over_double_tagged_ipv4() {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .double_vlan(100.try_into().unwrap(), 7.try_into().unwrap())
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 80, 1, 1024)
            .syn()
            .write(&mut out, &[])
            .unwrap();
        let (m, r) = parse_bytes(&out);
        r.unwrap();
        assert_eq!((m.outer_vlan, m.inner_vlan), (Some(100), Some(7)));
        assert_eq!(m.l3_offset, 22);
        assert_eq!((m.key.proto, m.key.dst_port), (6, 80));
        assert_eq!(m.tcp_flags & crate::wire::tcp::flags::SYN, crate::wire::tcp::flags::SYN);
    }

    #[test]
    fn icmpv6_and_udp6() {
        let src: [u8; 16] = "fe80::1".parse::<Ipv6Addr>().unwrap().octets();
        let dst: [u8; 16] = "fe80::2".parse::<Ipv6Addr>().unwrap().octets();
        let mut out = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv6(src, dst, 64)
            .icmpv6_echo_request(1, 2)
            .write(&mut out, &[0; 8])
            .unwrap();
        let (m, r) = parse_bytes(&out);
        r.unwrap();
        assert_eq!((m.key.proto, m.key.src_port), (58, 128));
        assert_eq!(m.key.src_ip, src);
        let mut out = Vec::new();
        PacketBuilder::ethernet2(A, B).ipv6(src, dst, 64).udp(5, 6).write(&mut out, &[]).unwrap();
        let (m, r) = parse_bytes(&out);
        r.unwrap();
        assert_eq!((m.key.proto, m.key.src_port, m.key.dst_port), (17, 5, 6));
    }

    #[test]
    fn arp_request() {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(A, [0xff; 6])
            .arp(
                etherparse::ArpPacket::new(
                    etherparse::ArpHardwareId::ETHERNET,
                    etherparse::EtherType::IPV4,
                    etherparse::ArpOperation::REQUEST,
                    &A,
                    &[10, 0, 0, 1],
                    &[0; 6],
                    &[10, 0, 0, 2],
                )
                .unwrap(),
            )
            .write(&mut out)
            .unwrap();
        let (m, r) = parse_bytes(&out);
        r.unwrap();
        assert_eq!(m.key.ethertype, 0x0806);
        assert_eq!(m.key.dst_ip[12..], [10, 0, 0, 2]);
        assert_eq!(m.key.src_port, 1);
        assert!(m.dst.is_multicast());
    }

    #[test]
    fn ipv4_fragments_are_flagged() {
        let mut b = udp4();
        b[14 + 6] = 0x20; // MF, offset 0: first fragment, L4 present
        let (m, r) = parse_bytes(&b);
        r.unwrap();
        assert!(m.flags.has(PacketFlags::FRAGMENT) && !m.flags.has(PacketFlags::LATER_FRAGMENT));
        assert_eq!(m.key.dst_port, 53);
        b[14 + 7] = 0x01; // offset 8: later fragment, no L4 fields
        let (m, r) = parse_bytes(&b);
        r.unwrap();
        assert!(m.flags.has(PacketFlags::LATER_FRAGMENT));
        assert_eq!(m.key.dst_port, 0);
    }

    // Regression (issue 16): the first fragment of a 3 000-byte datagram was malformed udp,
    // its length field checked against the 1 480 bytes the fragment carries.
    #[test]
    fn first_fragment_of_a_large_udp_datagram_parses() {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1234, 53)
            .write(&mut out, &[7; 2992])
            .unwrap();
        let mut first = out[..14 + 1500].to_vec();
        first[14 + 2..14 + 4].copy_from_slice(&1500u16.to_be_bytes());
        first[14 + 6] = 0x20; // MF, offset 0
        let (m, r) = parse_bytes(&first);
        r.unwrap();
        assert_eq!((m.key.src_port, m.key.dst_port), (1234, 53));
        assert!(m.flags.has(PacketFlags::FRAGMENT) && !m.flags.has(PacketFlags::LATER_FRAGMENT));
        // Not a fragment: the same bytes are a datagram cut short.
        first[14 + 6] = 0;
        assert_eq!(parse_bytes(&first).1, Err(ParseError::Udp));
    }

    #[test]
    fn every_truncation_of_a_valid_frame_is_an_error() {
        // Cutting a frame anywhere inside its headers or declared lengths must fail cleanly.
        let full = udp4();
        for n in 0..full.len() {
            let (_, r) = parse_bytes(&full[..n]);
            assert!(r.is_err(), "truncated at {n} parsed");
        }
    }

    #[test]
    fn hand_cut_malformed_frames() {
        let cases: Vec<(Vec<u8>, ParseError)> = vec![
            (vec![0; 13], ParseError::Ethernet),
            // Three VLAN tags.
            (
                [&A[..], &B[..], &[0x81, 0, 0, 1, 0x81, 0, 0, 2, 0x81, 0, 0, 3, 0x08, 0][..]]
                    .concat(),
                ParseError::Vlan,
            ),
            // Tag cut short.
            ([&A[..], &B[..], &[0x81, 0, 0][..]].concat(), ParseError::Vlan),
            // 802.3 length 100 with 10 bytes of payload.
            ([&A[..], &B[..], &[0, 100][..], &[0; 10][..]].concat(), ParseError::Length),
            // Ether type in the invalid 1501..1535 gap.
            ([&A[..], &B[..], &[0x05, 0xf0][..], &[0; 46][..]].concat(), ParseError::Length),
            // ARP with hlen 255.
            (
                [&A[..], &B[..], &[0x08, 0x06, 0, 1, 8, 0, 255, 4, 0, 1][..], &[0; 30][..]]
                    .concat(),
                ParseError::Arp,
            ),
        ];
        for (frame, want) in cases {
            assert_eq!(parse_bytes(&frame).1, Err(want), "{frame:02x?}");
        }
        let mut bad_ihl = udp4();
        bad_ihl[14] = 0x43;
        assert_eq!(parse_bytes(&bad_ihl).1, Err(ParseError::Ipv4));
        let mut bad_total = udp4();
        bad_total[16] = 0xff;
        assert_eq!(parse_bytes(&bad_total).1, Err(ParseError::Ipv4));
        let mut bad_udp_len = udp4();
        bad_udp_len[14 + 20 + 5] = 3;
        assert_eq!(parse_bytes(&bad_udp_len).1, Err(ParseError::Udp));
        let mut bad_tcp = udp4();
        bad_tcp[14 + 9] = 6; // claims TCP, only 12 bytes of L4
        assert_eq!(parse_bytes(&bad_tcp).1, Err(ParseError::Tcp));
    }

    #[test]
    fn unknown_ethertype_is_kept() {
        let f = [&A[..], &B[..], &[0x88, 0xcc][..], &[0; 46][..]].concat(); // LLDP
        let (m, r) = parse_bytes(&f);
        r.unwrap();
        assert_eq!(m.key.ethertype, 0x88cc);
    }

    // Regression (fuzz/parse, 2026-11-26): etherparse walks through an IPv6 authentication
    // header to the TCP inside; the switch stops there, as it does at ESP, so policy sees
    // protocol 51 and no ports (a TCP rule does not open it).
    #[test]
    fn ipv6_authentication_header_is_the_upper_layer() {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(A, B)
            .ipv6([1; 16], [2; 16], 64)
            .tcp(1, 22, 0, 1024)
            .write(&mut out, &[])
            .unwrap();
        // Put an AH (next header TCP, 12 bytes of ICV: length field 4) between IPv6 and TCP.
        let ah = [6u8, 4, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        out.splice(54..54, ah);
        out[20] = 51;
        let plen = u16::from_be_bytes([out[18], out[19]]) + ah.len() as u16;
        out[18..20].copy_from_slice(&plen.to_be_bytes());
        let (m, r) = parse_bytes(&out);
        r.unwrap();
        assert_eq!((m.key.proto, m.key.src_port, m.key.dst_port), (51, 0, 0));
    }

    // Regression (fuzz/parse): 0x9100, the old pre-standard QinQ type, is not a tag here (as
    // on Linux without a VLAN device for it): the frame is switched as that ether type.
    #[test]
    fn ethertype_9100_is_not_a_tag() {
        let f = [&A[..], &B[..], &[0x81, 0, 0, 100, 0x91, 0, 0, 200, 0x08, 0][..], &[0x45; 30][..]]
            .concat();
        let (m, r) = parse_bytes(&f);
        r.unwrap();
        assert_eq!((m.outer_vlan, m.inner_vlan, m.key.ethertype), (Some(100), None, 0x9100));
    }

    mod prop {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                let _ = parse_bytes(&bytes);
            }

            #[test]
            fn mutated_valid_frames_never_panic(idx in 0usize..46, val in any::<u8>(), cut in 0usize..64) {
                let mut f = udp4();
                let i = idx % f.len();
                f[i] = val;
                let n = cut.min(f.len());
                let _ = parse_bytes(&f[..n]);
                let _ = parse_bytes(&f);
            }
        }
    }
}
