//! VXLAN (RFC 7348) on an underlay port: frames of a tenant that spans hosts leave inside
//! outer Ethernet, IPv4, UDP and VXLAN headers written into the frame's headroom, and arrive
//! the same way, the outer headers stepped over. The payload never moves either way.
//!
//! - Decapsulation ([`decap_one`]) runs before the parser on a batch from an underlay port:
//!   only IPv4 UDP to this host's tunnel address and VXLAN port with the VNI flag set is
//!   taken, its VNI names the tenant, and every later stage sees the inner frame alone (policy,
//!   learning, capture, traces, flow logs). Anything else is a counted drop.
//! - Encapsulation ([`encap`], from the output stage's `to_underlay`) runs in the output stage when a tenant's frame goes to its
//!   underlay attachment: to the host the cluster map has for the destination MAC, or, for a
//!   flood or a destination the map does not know, to every host of the tenant (head-end
//!   replication, one copy each). Outer source port from the inner flow's hash (the underlay's
//!   ECMP and the receiver's RSS spread flows), DF set, UDP checksum 0 (RFC 7348 §5). Nothing
//!   is fragmented: the underlay port's MTU bounds the tenant frame ([`Snapshot::max_frame`]).
#![forbid(unsafe_code)]

use crate::batch::Meta;
use crate::flow::overlay::Vtep;
use crate::frame::{FrameArea, FrameRef};
use crate::snapshot::{Snapshot, Underlay, VXLAN_OVERHEAD};
use crate::vocab::{AttachmentId, DropReason, TenantId};
use crate::wire::MacAddr;
use crate::wire::checksum;

const ETH_IPV4: [u8; 2] = [0x08, 0x00];
const PROTO_UDP: u8 = 17;
/// The VXLAN header's "VNI present" flag (RFC 7348 §5).
const FLAG_VNI: u8 = 0x08;
/// Outer IPv4 header length: the switch writes none with options.
const IP_LEN: usize = 20;
/// UDP and VXLAN headers.
const UDP_VXLAN: usize = 16;
/// The shortest inner frame: an Ethernet header.
const INNER_MIN: usize = 14;
const ETH_ARP: u16 = 0x0806;
const ARP_REQUEST: u16 = 1;
const ETH_IPV6: u16 = 0x86dd;
const PROTO_ICMPV6: u8 = 58;
const ND_NEIGHBOR_SOLICIT: u16 = 135;
const ND_NEIGHBOR_ADVERT: u8 = 136;
/// A neighbour advertisement with the target link-layer address option: the ICMPv6 header
/// (4), flags (4), target (16), option (8) (RFC 4861 §4.4).
const NA_LEN: usize = 32;

/// Where the inner frame of VXLAN frame `f` received on underlay `u` starts, and its first
/// segment's length, with the tenant its VNI names and the tenant's attachment on the
/// underlay; or why it is dropped.
#[inline]
pub fn decap_one(
    area: &FrameArea,
    snap: &Snapshot,
    u: &Underlay,
    f: &FrameRef,
) -> Result<(u64, u32, TenantId, AttachmentId), DropReason> {
    let b = area.frame(f).ok_or(DropReason::Malformed)?;
    if b.len() < 14 + IP_LEN + UDP_VXLAN || b[12..14] != ETH_IPV4 {
        return Err(DropReason::NotOverlay);
    }
    let ip = &b[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < IP_LEN || ip[9] != PROTO_UDP {
        return Err(DropReason::NotOverlay);
    }
    if ip[16..20] != u.ip {
        return Err(DropReason::NotOverlay);
    }
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return Err(DropReason::NotOverlay); // an outer fragment: never reassembled
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let inner_at = 14 + ihl + UDP_VXLAN;
    if b.len() < inner_at + INNER_MIN
        || total < ihl + UDP_VXLAN + INNER_MIN
        || 14 + total > f.len() as usize
        || checksum::fold(checksum::add(0, &ip[..ihl])) != 0xffff
    {
        return Err(DropReason::Malformed);
    }
    let udp = &ip[ihl..];
    if u16::from_be_bytes([udp[2], udp[3]]) != u.udp_port || udp[8] & FLAG_VNI == 0 {
        return Err(DropReason::NotOverlay);
    }
    if usize::from(u16::from_be_bytes([udp[4], udp[5]])) != total - ihl {
        return Err(DropReason::Malformed);
    }
    let vni = u32::from_be_bytes([0, udp[12], udp[13], udp[14]]);
    let (t, a) = snap.tenant_by_vni(vni).ok_or(DropReason::UnknownVni)?;
    let at = f.addr() + inner_at as u64;
    let inner = if f.segs() == 0 {
        // Ethernet padding after the outer datagram is not the tenant's.
        (total - ihl - UDP_VXLAN) as u32
    } else {
        f.head_len() - inner_at as u32
    };
    Ok((at, inner, t, a))
}

/// Asks for the cache lines of frame `f`'s outer and inner headers (its first 128 bytes).
#[inline]
pub fn prefetch_headers(area: &FrameArea, f: &FrameRef) {
    if let Some(b) = area.frame(f) {
        if let Some(x) = b.first() {
            crate::mem::prefetch(x);
        }
        if let Some(x) = b.get(64) {
            crate::mem::prefetch(x);
        }
    }
}

/// The outer UDP source port for a tenant frame: a hash of its flow (addresses, protocol and
/// ports; the MACs of a frame that is not IP) in the dynamic range 49152-65535, as RFC 7348
/// §5 suggests, so that one flow takes one path and flows spread over many.
#[inline]
pub fn entropy(m: &Meta) -> u16 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let k = &m.key;
    let word =
        |b: &[u8; 16]| u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    let mut h = (u64::from(k.proto) | u64::from(k.src_port) << 16 | u64::from(k.dst_port) << 32)
        .wrapping_mul(K);
    h = (h ^ word(&k.src_ip)).wrapping_mul(K);
    h = (h ^ word(&k.dst_ip)).wrapping_mul(K);
    if k.proto == 0 {
        h = (h ^ m.src.to_u64() ^ m.dst.to_u64().rotate_left(24)).wrapping_mul(K);
    }
    0xc000 | (h >> 50) as u16
}

/// Writes the outer headers for host `to` in front of tenant frame `f` (in its headroom):
/// the encapsulated frame, or `f` back when it has no headroom for them or is too long for
/// an IPv4 datagram.
#[inline]
pub fn encap(
    area: &mut FrameArea,
    f: FrameRef,
    u: &Underlay,
    to: &Vtep,
    vni: u32,
    sport: u16,
) -> Result<FrameRef, FrameRef> {
    const N: usize = VXLAN_OVERHEAD as usize;
    let (addr, head) = (f.addr(), f.head_len());
    let Ok(ip_total) = u16::try_from(f.len() as usize + IP_LEN + UDP_VXLAN) else { return Err(f) };
    let Some((chunk, off)) = area.chunk_mut(addr) else { return Err(f) };
    if off < N || off + head as usize > chunk.len() {
        return Err(f);
    }
    let Ok(h) = <&mut [u8; N]>::try_from(&mut chunk[off - N..off]) else { return Err(f) };
    // PERF(overlay): the header is assembled in seven words from the values in registers, its
    // checksum summed from the same values: written byte by byte and read back to sum, it
    // stalled on store forwarding (half of the encapsulation's time in a profile).
    let (dmac, smac) = (u.gateway.unwrap_or(to.mac).to_u64(), u.mac.to_u64());
    let (src, dst) = (u32::from_be_bytes(u.ip), u32::from_be_bytes(to.ip));
    let (total, udp_len) = (u64::from(ip_total), u64::from(ip_total) - IP_LEN as u64);
    // Version 4 and IHL 5, TOS 0; identification 0 (an atomic datagram, DF set: RFC 6864);
    // TTL 64, UDP.
    const VER_TOS: u64 = 0x4500;
    const FLAGS: u64 = 0x4000;
    const TTL_PROTO: u64 = 64 << 8 | PROTO_UDP as u64;
    let sum = VER_TOS
        + total
        + FLAGS
        + TTL_PROTO
        + u64::from(src >> 16)
        + u64::from(src & 0xffff)
        + u64::from(dst >> 16)
        + u64::from(dst & 0xffff);
    let csum = u64::from(!checksum::fold(sum));
    let (src, dst, vni) = (u64::from(src), u64::from(dst), u64::from(vni));
    let words = [
        dmac << 16 | smac >> 32,
        (smac & 0xffff_ffff) << 32 | 0x0800 << 16 | VER_TOS,
        total << 48 | FLAGS << 16 | TTL_PROTO,
        csum << 48 | src << 16 | dst >> 16,
        (dst & 0xffff) << 48 | u64::from(sport) << 32 | u64::from(u.udp_port) << 16 | udp_len,
        // UDP checksum 0 (RFC 7348 §5); the VXLAN header: the VNI flag, the VNI.
        u64::from(FLAG_VNI) << 40 | (vni >> 8) & 0xffff,
    ];
    for (k, w) in words.iter().enumerate() {
        h[k * 8..k * 8 + 8].copy_from_slice(&w.to_be_bytes());
    }
    h[48] = vni as u8;
    h[49] = 0;
    Ok(f.with_head(addr - N as u64, head + N as u32))
}

/// The address ARP request `m` asks for (v4-mapped, as the parser stores it); None for any
/// other frame.
#[inline]
pub fn arp_target(m: &Meta) -> Option<&[u8; 16]> {
    (m.key.ethertype == ETH_ARP && m.key.src_port == ARP_REQUEST).then_some(&m.key.dst_ip)
}

/// True when `m` is an ARP request for the tunnel address of underlay `u`: the switch owns
/// that address, so it answers for it (a router or a kernel VXLAN peer on the underlay asks).
#[inline]
pub fn is_tunnel_arp(m: &Meta, u: &Underlay) -> bool {
    arp_target(m).is_some_and(|ip| {
        ip[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] && ip[12..] == u.ip
    })
}

/// Turns ARP request `f` (parsed into `m`) into the reply the owner of its target address,
/// `mac`, would send, in place (same length): the answer the cluster map gives for another
/// host's address, so no ARP broadcast crosses the underlay for it (as the Linux bridge's
/// `neigh_suppress` and VPP's `arp-term` do). False when the frame is too short for it.
#[inline]
pub fn arp_reply(area: &mut FrameArea, f: &FrameRef, m: &Meta, mac: MacAddr) -> bool {
    let l3 = usize::from(m.l3_offset);
    let Some(b) = area.frame_mut(f) else { return false };
    let Some(arp) = b.get_mut(l3..l3 + 28) else { return false };
    let mut sha = [0u8; 6];
    let mut spa = [0u8; 4];
    let mut tpa = [0u8; 4];
    sha.copy_from_slice(&arp[8..14]);
    spa.copy_from_slice(&arp[14..18]);
    tpa.copy_from_slice(&arp[24..28]);
    arp[6..8].copy_from_slice(&2u16.to_be_bytes());
    arp[8..14].copy_from_slice(&mac.0);
    arp[14..18].copy_from_slice(&tpa);
    arp[18..24].copy_from_slice(&sha);
    arp[24..28].copy_from_slice(&spa);
    b[0..6].copy_from_slice(&m.src.0);
    b[6..12].copy_from_slice(&mac.0);
    true
}

/// The target address of neighbour solicitation `f` (parsed into `m`): a single-segment IPv6
/// frame without extension headers, ICMPv6 type 135, from an assigned address (a solicitation
/// from `::` is duplicate address detection, which the owner must see and answer itself);
/// None for any other frame.
#[inline]
pub fn nd_target(area: &FrameArea, f: &FrameRef, m: &Meta) -> Option<[u8; 16]> {
    if m.key.ethertype != ETH_IPV6
        || m.key.proto != PROTO_ICMPV6
        || m.key.src_port != ND_NEIGHBOR_SOLICIT
        || m.key.src_ip == [0; 16]
        || f.segs() != 0
        || usize::from(m.l4_offset) != usize::from(m.l3_offset) + 40
    {
        return None;
    }
    let l4 = usize::from(m.l4_offset);
    let b = area.frame(f)?;
    b.get(l4 + 8..l4 + 24)?.try_into().ok()
}

/// Turns neighbour solicitation `f` (parsed into `m`, its target `target`) into the solicited
/// advertisement the owner of `target`, `mac`, would send back (RFC 4861 §7.2.4), in place:
/// the IPv6 counterpart of [`arp_reply`]. The frame is cut to the advertisement's length; the
/// caller checked it with [`nd_target`]. False when the frame is too short for it.
#[inline]
pub fn nd_reply(
    area: &mut FrameArea,
    f: &mut FrameRef,
    m: &Meta,
    target: &[u8; 16],
    mac: MacAddr,
) -> bool {
    let (l3, l4) = (usize::from(m.l3_offset), usize::from(m.l4_offset));
    let Some(b) = area.frame_mut(f) else { return false };
    let Some(ip) = b.get_mut(l3..l4 + NA_LEN) else { return false };
    // The asker becomes the destination, the target the source; hop limit 255 (§7.1.2).
    let mut asker = [0u8; 16];
    asker.copy_from_slice(&ip[8..24]);
    ip[..4].copy_from_slice(&[0x60, 0, 0, 0]);
    ip[4..6].copy_from_slice(&(NA_LEN as u16).to_be_bytes());
    ip[6] = PROTO_ICMPV6;
    ip[7] = 255;
    ip[8..24].copy_from_slice(target);
    ip[24..40].copy_from_slice(&asker);
    let na = &mut ip[40..40 + NA_LEN];
    na[..4].copy_from_slice(&[ND_NEIGHBOR_ADVERT, 0, 0, 0]);
    // Solicited and Override; not a router.
    na[4..8].copy_from_slice(&[0x60, 0, 0, 0]);
    na[8..24].copy_from_slice(target);
    na[24..26].copy_from_slice(&[2, 1]); // target link-layer address, 8 bytes
    na[26..32].copy_from_slice(&mac.0);
    let pseudo = checksum::pseudo_header(true, target, &asker, PROTO_ICMPV6, NA_LEN as u32);
    let sum = !checksum::fold(checksum::add(pseudo, na));
    na[2..4].copy_from_slice(&sum.to_be_bytes());
    b[0..6].copy_from_slice(&m.src.0);
    b[6..12].copy_from_slice(&mac.0);
    f.set_head(f.addr(), (l4 + NA_LEN) as u32);
    true
}
