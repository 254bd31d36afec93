//! The flow key: seven words made of a parsed frame's fields and its ingress port, the one
//! definition the flow cache and the ACLs share (the ACL key is derived from it), and its hash.
#![forbid(unsafe_code)]

use crate::batch::Meta;
use crate::vocab::{PortId, TenantId};

/// A flow: seven words (see [`key_of`]).
pub type Key = [u64; 7];

/// The flow key of a parsed frame that came in on `in_port`. Words: 0 in_port | (outer VLAN +
/// 1, 0 untagged) << 16 | ether type << 32 | protocol << 48; 1 source MAC | source port (ICMP
/// type) << 48; 2 destination MAC | destination port (ICMP code) << 48; 3-4 source address;
/// 5-6 destination address (IPv4 v4-mapped; ARP: sender and target protocol addresses).
#[inline]
pub fn key_of(m: &Meta, in_port: PortId) -> Key {
    let vlan = m.outer_vlan.map_or(0, |v| u64::from(v) + 1);
    let k = &m.key;
    let s = u128::from_be_bytes(k.src_ip);
    let d = u128::from_be_bytes(k.dst_ip);
    [
        u64::from(in_port.0) | vlan << 16 | u64::from(k.ethertype) << 32 | u64::from(k.proto) << 48,
        m.src.to_u64() | u64::from(k.src_port) << 48,
        m.dst.to_u64() | u64::from(k.dst_port) << 48,
        (s >> 64) as u64,
        s as u64,
        (d >> 64) as u64,
        d as u64,
    ]
}

/// The hash of a flow: the seven words and the tenant folded into four, each multiplied by
/// its own odd constant (the four multiplies run in parallel), then one mixing step. Words
/// that are often zero (the upper halves of IPv4 addresses) are folded into busy ones rather
/// than given a multiply of their own. A collision costs only a key compare.
#[inline]
pub fn hash(t: TenantId, k: &Key) -> u64 {
    const K: [u64; 5] = [
        0x9e37_79b9_7f4a_7c15,
        0xc2b2_ae3d_27d4_eb4f,
        0x1656_67b1_9e37_79f9,
        0x85eb_ca77_c2b2_ae63,
        0xff51_afd7_ed55_8ccd,
    ];
    let a = (k[0] ^ k[3].rotate_left(23)).wrapping_mul(K[0]);
    let b = (k[1] ^ k[4].rotate_left(41)).wrapping_mul(K[1]);
    let c = (k[2] ^ k[5].rotate_left(13)).wrapping_mul(K[2]);
    let d = (k[6] ^ u64::from(t.0) << 48).wrapping_mul(K[3]);
    let h = a ^ b.rotate_left(16) ^ c.rotate_left(32) ^ d.rotate_left(48);
    let h = (h ^ (h >> 31)).wrapping_mul(K[4]);
    h ^ (h >> 29)
}
