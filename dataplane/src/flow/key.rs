//! The flow key: seven words made of a parsed frame's fields and its ingress port, the one
//! definition the flow cache and the ACLs share, read back through named accessors; the ACL
//! key derived from it; and its hash.
#![forbid(unsafe_code)]

use crate::batch::Meta;
use crate::vocab::{PortId, TenantId};
use crate::wire::MacAddr;

/// A flow: seven words (their layout at [`key_of`]), read through the accessors below, never
/// by shifting words where they are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
#[repr(transparent)]
pub struct Key([u64; 7]);

impl Key {
    /// No flow (an empty cache entry).
    pub const ZERO: Key = Key([0; 7]);

    /// The words, for hashing and comparing.
    #[inline(always)]
    pub const fn words(&self) -> &[u64; 7] {
        &self.0
    }

    /// A key from its words (tests build keys this way).
    pub const fn from_words(w: [u64; 7]) -> Key {
        Key(w)
    }

    /// The port the flow came in on.
    #[inline]
    pub const fn in_port(&self) -> PortId {
        PortId(self.0[0] as u16)
    }

    /// Its outer VLAN (`None`: untagged).
    #[inline]
    pub const fn vlan(&self) -> Option<u16> {
        match (self.0[0] >> 16) as u16 {
            0 => None,
            v => Some(v - 1),
        }
    }

    /// The ether type after the VLAN tags.
    #[inline]
    pub const fn ethertype(&self) -> u16 {
        (self.0[0] >> 32) as u16
    }

    /// The IP protocol (0 when not IP).
    #[inline]
    pub const fn proto(&self) -> u8 {
        (self.0[0] >> 48) as u8
    }

    /// The source MAC.
    #[inline]
    pub fn src_mac(&self) -> MacAddr {
        MacAddr::from_u64(self.0[1])
    }

    /// The destination MAC.
    #[inline]
    pub fn dst_mac(&self) -> MacAddr {
        MacAddr::from_u64(self.0[2])
    }

    /// The source and destination MACs as words (48 bits each).
    #[inline]
    pub const fn mac_words(&self) -> (u64, u64) {
        const MAC: u64 = (1 << 48) - 1;
        (self.0[1] & MAC, self.0[2] & MAC)
    }

    /// The source port (ICMP: type).
    #[inline]
    pub const fn src_port(&self) -> u16 {
        (self.0[1] >> 48) as u16
    }

    /// The destination port (ICMP: code).
    #[inline]
    pub const fn dst_port(&self) -> u16 {
        (self.0[2] >> 48) as u16
    }

    /// The source address (IPv4 v4-mapped; ARP: the sender's).
    #[inline]
    pub fn src_addr(&self) -> [u8; 16] {
        (u128::from(self.0[3]) << 64 | u128::from(self.0[4])).to_be_bytes()
    }

    /// The destination address.
    #[inline]
    pub fn dst_addr(&self) -> [u8; 16] {
        (u128::from(self.0[5]) << 64 | u128::from(self.0[6])).to_be_bytes()
    }
}

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
    Key([
        u64::from(in_port.0) | vlan << 16 | u64::from(k.ethertype) << 32 | u64::from(k.proto) << 48,
        m.src.to_u64() | u64::from(k.src_port) << 48,
        m.dst.to_u64() | u64::from(k.dst_port) << 48,
        (s >> 64) as u64,
        s as u64,
        (d >> 64) as u64,
        d as u64,
    ])
}

/// The hash of a flow: the seven words and the tenant folded into four, each multiplied by
/// its own odd constant (the four multiplies run in parallel), then one mixing step. Words
/// that are often zero (the upper halves of IPv4 addresses) are folded into busy ones rather
/// than given a multiply of their own. A collision costs only a key compare.
#[inline]
pub fn hash(t: TenantId, k: &Key) -> u64 {
    let k = &k.0;
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
