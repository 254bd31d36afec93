//! IPv4 header. `new_checked` validates version, IHL and total length against the buffer, so
//! that `payload()` is exactly the L4 bytes (Ethernet padding excluded).

use super::{Error, Result, be16};

/// Minimum header length (IHL 5).
pub const MIN_HEADER_LEN: usize = 20;

/// A view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps a buffer without checking.
    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Checks version 4, 5 <= IHL, header <= total length <= buffer.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        Self::new_checked_head(buffer, 0)
    }

    /// [`Ipv4Packet::new_checked`] for the first segment of a chain, `beyond` bytes of the
    /// packet following in other segments: the header must be here, the total length may
    /// reach into them.
    #[inline]
    pub fn new_checked_head(buffer: T, beyond: usize) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        let b = p.buffer.as_ref();
        if b.len() < MIN_HEADER_LEN || b[0] >> 4 != 4 {
            return Err(Error);
        }
        let hl = p.header_len();
        let total = usize::from(p.total_len());
        if hl < MIN_HEADER_LEN || hl > total || hl > b.len() || total > b.len() + beyond {
            return Err(Error);
        }
        Ok(p)
    }

    /// Header length in bytes (IHL * 4).
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[0] & 0x0f) * 4
    }
    /// Total length field.
    #[inline]
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }
    /// DSCP and ECN byte.
    #[inline]
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[1]
    }
    /// Identification (the datagram a fragment belongs to).
    #[inline]
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), 4)
    }
    /// Header checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), 10)
    }
    /// True when the header checksum is right (the one's-complement sum of the header is
    /// all ones).
    #[inline]
    pub fn checksum_ok(&self) -> bool {
        let b = self.buffer.as_ref();
        super::checksum::fold(super::checksum::add(0, &b[..self.header_len()])) == 0xffff
    }
    /// More-fragments flag.
    #[inline]
    pub fn more_frags(&self) -> bool {
        self.buffer.as_ref()[6] & 0x20 != 0
    }
    /// Fragment offset in 8-byte units.
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        be16(self.buffer.as_ref(), 6) & 0x1fff
    }
    /// Time to live.
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[8]
    }
    /// Protocol number of the payload.
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[9]
    }
    /// Source address.
    #[inline]
    pub fn src(&self) -> [u8; 4] {
        let b = self.buffer.as_ref();
        [b[12], b[13], b[14], b[15]]
    }
    /// Destination address.
    #[inline]
    pub fn dst(&self) -> [u8; 4] {
        let b = self.buffer.as_ref();
        [b[16], b[17], b[18], b[19]]
    }
    /// The L4 bytes: from the end of the header to the total length (or to the end of the
    /// buffer, for the first segment of a chain).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[self.header_len()..usize::from(self.total_len()).min(b.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ICMP echo 10.0.0.1 -> 10.0.0.2, captured (20-byte header + 8-byte ICMP).
    static PKT: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 10, 0, 0, 1, 10, 0,
        0, 2, 0x08, 0x00, 0xf7, 0xff, 0x00, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn deconstruct() {
        let p = Ipv4Packet::new_checked(&PKT[..]).unwrap();
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.protocol(), 1);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.src(), [10, 0, 0, 1]);
        assert_eq!(p.dst(), [10, 0, 0, 2]);
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.payload().len(), 8);
        assert_eq!(p.ident(), 0x1234);
    }

    #[test]
    fn header_checksum() {
        let mut p = PKT;
        // The capture's checksum field was left zero: compute it as a sender would.
        let sum = crate::wire::checksum::fold(crate::wire::checksum::add(0, &p[..20]));
        p[10..12].copy_from_slice(&(!sum).to_be_bytes());
        assert!(Ipv4Packet::new_checked(&p[..]).unwrap().checksum_ok());
        p[8] = 63; // a TTL changed without the checksum
        assert!(!Ipv4Packet::new_checked(&p[..]).unwrap().checksum_ok());
    }

    #[test]
    fn rejects_inconsistent_lengths() {
        for n in 0..28 {
            assert!(Ipv4Packet::new_checked(&PKT[..n]).is_err(), "len {n}");
        }
        let mut bad = PKT;
        bad[0] = 0x44; // IHL 4
        assert!(Ipv4Packet::new_checked(&bad[..]).is_err());
        let mut bad = PKT;
        bad[0] = 0x4f; // IHL 15 = 60 bytes > total length 28
        assert!(Ipv4Packet::new_checked(&bad[..]).is_err());
        let mut bad = PKT;
        bad[3] = 0x30; // total length 48 > buffer
        assert!(Ipv4Packet::new_checked(&bad[..]).is_err());
        let mut bad = PKT;
        bad[0] = 0x65; // version 6
        assert!(Ipv4Packet::new_checked(&bad[..]).is_err());
    }

    #[test]
    fn padding_is_not_payload() {
        let mut padded = [0u8; 46];
        padded[..28].copy_from_slice(&PKT);
        let p = Ipv4Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(p.payload().len(), 8);
    }
}
