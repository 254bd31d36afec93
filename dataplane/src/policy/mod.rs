//! Per-tenant policy: anti-spoofing guards, stateless ACLs and stateful security groups (the
//! flow cache in front of classification is [`crate::flow::cache`]).
//!
//! ```text
//! ingress ─► guard (spoof) ─► ... FDB ... ─► ACL from-tenant ─► ACL to-tenant ─► security group
//! ```
//!
//! Directions: a frame that arrived on a tenant-kind port is *from the tenant*; a frame that
//! leaves on a tenant-kind port (or is flooded, which reaches the tenant's ports) is *to the
//! tenant*. A frame between two hosts of one tenant is both, and passes both checks, as a
//! cloud's egress rules of the sender and ingress rules of the receiver would apply. Frames
//! from the uplink are only to the tenant; frames to the uplink only from it. A flood (unknown
//! or group destination) from a tenant port is judged as from the tenant only; a flood from the
//! uplink as to the tenant.
//!
//! Everything here is compiled once per snapshot; the packet path only reads it (and, for the
//! connection table, updates per-worker state).
#![forbid(unsafe_code)]

pub mod acl;
pub mod classifier;
pub mod conntrack;
pub mod fragments;
pub mod spoof;

use crate::wire::MacAddr;

pub use crate::vocab::Direction;
pub use acl::{Action, Match, Rule};
pub use spoof::Guard;

/// An IPv4 or IPv6 prefix, IPv4 held v4-mapped (`::ffff:a.b.c.d`, length + 96) like the flow
/// key, so one comparison serves both families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    /// The address, masked to `len`.
    pub addr: [u8; 16],
    /// Prefix length over the 128-bit (mapped) address.
    pub len: u8,
}

impl Prefix {
    /// The mask of `len` leading bits.
    pub fn mask(len: u8) -> u128 {
        if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len.min(128))) }
    }

    /// `addr/len` with the host bits cleared.
    pub fn new(addr: [u8; 16], len: u8) -> Prefix {
        let len = len.min(128);
        let a = u128::from_be_bytes(addr) & Self::mask(len);
        Prefix { addr: a.to_be_bytes(), len }
    }

    /// True when `ip` lies inside.
    #[inline]
    pub fn contains(&self, ip: &[u8; 16]) -> bool {
        let m = Self::mask(self.len);
        u128::from_be_bytes(*ip) & m == u128::from_be_bytes(self.addr)
    }

    /// An IPv4 prefix (`len` 0..=32), v4-mapped.
    pub fn v4(a: [u8; 4], len: u8) -> Prefix {
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..].copy_from_slice(&a);
        Prefix::new(addr, 96 + len.min(32))
    }
}

impl core::str::FromStr for Prefix {
    type Err = String;

    /// `10.0.0.0/8`, `10.0.0.1` (a /32), `fd00::/64`, `fd00::1` (a /128).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| format!("bad length in {s:?}"))?)),
            None => (s, None),
        };
        if let Ok(v4) = a.parse::<std::net::Ipv4Addr>() {
            let len = len.unwrap_or(32);
            if len > 32 {
                return Err(format!("{s:?}: an IPv4 prefix length is at most 32"));
            }
            return Ok(Prefix::v4(v4.octets(), len));
        }
        if let Ok(v6) = a.parse::<std::net::Ipv6Addr>() {
            let len = len.unwrap_or(128);
            if len > 128 {
                return Err(format!("{s:?}: an IPv6 prefix length is at most 128"));
            }
            return Ok(Prefix::new(v6.octets(), len));
        }
        Err(format!("{s:?} is not an IPv4 or IPv6 address or prefix"))
    }
}

/// A tenant's compiled policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TenantPolicy {
    /// Stateless rules, one set per direction.
    pub acl: [acl::AclSet; 2],
    /// Stateful security group; `None` lets every connection through.
    pub group: Option<conntrack::SecurityGroup>,
}

impl TenantPolicy {
    /// Every ACL rule with its direction, from-tenant rules first: the order of the rule
    /// counters (`Counters::acl_hits`).
    pub fn rules(&self) -> impl Iterator<Item = (Direction, &Rule)> {
        let [from, to] = &self.acl;
        from.rules
            .iter()
            .map(|r| (Direction::FromTenant, r))
            .chain(to.rules.iter().map(|r| (Direction::ToTenant, r)))
    }

    /// True when nothing is configured (no rule, no group): the fast path skips every check.
    pub fn is_open(&self) -> bool {
        self.acl.iter().all(acl::AclSet::is_open) && self.group.is_none()
    }
}

/// A MAC list membership test used by guards and rules.
#[inline]
pub(crate) fn mac_in(list: &[MacAddr], m: MacAddr) -> bool {
    list.contains(&m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_contain() {
        let p: Prefix = "10.1.0.0/16".parse().unwrap();
        assert!(p.contains(&Prefix::v4([10, 1, 200, 3], 32).addr));
        assert!(!p.contains(&Prefix::v4([10, 2, 0, 1], 32).addr));
        let host: Prefix = "10.1.2.3".parse().unwrap();
        assert_eq!(host.len, 128);
        let any4: Prefix = "0.0.0.0/0".parse().unwrap();
        assert!(any4.contains(&Prefix::v4([192, 168, 0, 1], 32).addr));
        assert!(!any4.contains(&"fd00::1".parse::<Prefix>().unwrap().addr), "v4 /0 is not v6");
        let v6: Prefix = "fd00:1::/32".parse().unwrap();
        assert!(v6.contains(&"fd00:1:2::9".parse::<Prefix>().unwrap().addr));
        // Host bits are cleared.
        assert_eq!("10.1.2.3/8".parse::<Prefix>().unwrap(), "10.0.0.0/8".parse().unwrap());
        for bad in ["10.0.0.0/33", "fd00::/129", "10.0.0", "x", "10.0.0.0/a"] {
            assert!(bad.parse::<Prefix>().is_err(), "{bad}");
        }
    }
}
