//! The packet parser on arbitrary bytes: no panic, offsets inside the frame, and the same
//! addresses and ports as an independent parser (etherparse) where both accept an IPv4 or IPv6
//! frame with TCP or UDP.
#![no_main]

use dataplane::batch::Meta;
use dataplane::pipeline::parse::parse_one;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|b: &[u8]| {
    let mut m = Meta::EMPTY;
    let r = parse_one(b, &mut m);
    assert!(usize::from(m.l3_offset) <= b.len(), "l3 offset {} past {}", m.l3_offset, b.len());
    assert!(usize::from(m.l4_offset) <= b.len(), "l4 offset {} past {}", m.l4_offset, b.len());
    // Compared only where both parsers look into IP: etherparse also takes 0x9100 as a tag,
    // which the switch leaves as an opaque ether type (a tenant's payload, not a header), and
    // walks through an authentication header, which the switch takes as the upper layer (as it
    // does ESP: policy sees protocol 51, and a rule for TCP ports does not open it).
    let ip = matches!(m.key.ethertype, 0x0800 | 0x86dd);
    if r.is_err() || m.inner_vlan.is_some() || !ip || m.key.proto == 51 {
        return;
    }
    let Ok(p) = SlicedPacket::from_ethernet(b) else { return };
    let (src, dst) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            if h.is_fragmenting_payload() {
                return;
            }
            let mapped = |a: [u8; 4]| {
                let mut v = [0u8; 16];
                v[10] = 0xff;
                v[11] = 0xff;
                v[12..].copy_from_slice(&a);
                v
            };
            (mapped(h.source()), mapped(h.destination()))
        }
        Some(NetSlice::Ipv6(ip)) => {
            if ip.is_payload_fragmented() {
                return;
            }
            (ip.header().source(), ip.header().destination())
        }
        _ => return,
    };
    assert_eq!((m.key.src_ip, m.key.dst_ip), (src, dst), "addresses differ from etherparse");
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            assert_eq!((m.key.src_port, m.key.dst_port), (t.source_port(), t.destination_port()));
        }
        Some(TransportSlice::Udp(u)) => {
            assert_eq!((m.key.src_port, m.key.dst_port), (u.source_port(), u.destination_port()));
        }
        _ => {}
    }
});
