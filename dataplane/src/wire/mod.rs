//! Zero-copy views over the bytes of a frame, one per protocol layer.
//!
//! Every view wraps a buffer `T: AsRef<[u8]>` and reads fields in place. `new_checked` validates
//! that every fixed field and every length field the view relies on fits inside the buffer, so
//! the accessors of a checked view never index out of bounds. `new_unchecked` is for bytes the
//! switch wrote itself (emission); untrusted input always goes through `new_checked`.
//!
//! Unknown protocol numbers are kept (`EtherType::Unknown(u16)`), never rejected here: what to
//! do with them is pipeline policy. This module does no allocation, no I/O and no unsafe, and
//! uses only `core`.
#![forbid(unsafe_code)]

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;
pub mod vlan;

pub use arp::ArpPacket;
pub use ethernet::{EtherType, EthernetFrame, MacAddr};
pub use icmp::IcmpPacket;
pub use ipv4::Ipv4Packet;
pub use ipv6::Ipv6Packet;
pub use tcp::TcpSegment;
pub use udp::UdpDatagram;
pub use vlan::VlanTag;

/// A view could not be built: the buffer is too short or a length field is inconsistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error;

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("truncated or inconsistent packet")
    }
}

/// Result of building a checked view.
pub type Result<T> = core::result::Result<T, Error>;

/// Reads a big-endian u16 at `at`. Callers guarantee `at + 2 <= b.len()` (checked views).
#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
