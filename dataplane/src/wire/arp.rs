//! ARP over Ethernet. Only the fixed 8-byte header is required; the address fields are checked
//! against the hardware and protocol lengths the packet itself declares.

use super::{Error, Result, be16};

/// Fixed part: htype, ptype, hlen, plen, oper.
pub const FIXED_LEN: usize = 8;

/// A view of an ARP packet.
#[derive(Debug, Clone)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wraps a buffer without checking.
    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        ArpPacket { buffer }
    }

    /// Checks the fixed header and that the four address fields fit.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        let b = p.buffer.as_ref();
        if b.len() < FIXED_LEN {
            return Err(Error);
        }
        let need = FIXED_LEN + 2 * (usize::from(p.hlen()) + usize::from(p.plen()));
        if b.len() < need {
            return Err(Error);
        }
        Ok(p)
    }

    /// Hardware type (1 = Ethernet).
    #[inline]
    pub fn htype(&self) -> u16 {
        be16(self.buffer.as_ref(), 0)
    }
    /// Protocol type (0x0800 = IPv4).
    #[inline]
    pub fn ptype(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }
    /// Hardware address length.
    #[inline]
    pub fn hlen(&self) -> u8 {
        self.buffer.as_ref()[4]
    }
    /// Protocol address length.
    #[inline]
    pub fn plen(&self) -> u8 {
        self.buffer.as_ref()[5]
    }
    /// Operation (1 request, 2 reply).
    #[inline]
    pub fn oper(&self) -> u16 {
        be16(self.buffer.as_ref(), 6)
    }

    /// True for the Ethernet/IPv4 form, whose address fields the getters below read.
    #[inline]
    pub fn is_eth_ipv4(&self) -> bool {
        self.htype() == 1 && self.ptype() == 0x0800 && self.hlen() == 6 && self.plen() == 4
    }

    /// Sender hardware address (Ethernet/IPv4 form only).
    #[inline]
    pub fn sha(&self) -> [u8; 6] {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buffer.as_ref()[8..14]);
        m
    }
    /// Sender protocol address (Ethernet/IPv4 form only).
    #[inline]
    pub fn spa(&self) -> [u8; 4] {
        let mut a = [0; 4];
        a.copy_from_slice(&self.buffer.as_ref()[14..18]);
        a
    }
    /// Target protocol address (Ethernet/IPv4 form only).
    #[inline]
    pub fn tpa(&self) -> [u8; 4] {
        let mut a = [0; 4];
        a.copy_from_slice(&self.buffer.as_ref()[24..28]);
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Who-has 10.0.0.2 tell 10.0.0.1, from a capture on a veth.
    static REQ: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 10, 0,
        0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2,
    ];

    #[test]
    fn deconstruct() {
        let p = ArpPacket::new_checked(&REQ[..]).unwrap();
        assert!(p.is_eth_ipv4());
        assert_eq!(p.oper(), 1);
        assert_eq!(p.sha(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(p.spa(), [10, 0, 0, 1]);
        assert_eq!(p.tpa(), [10, 0, 0, 2]);
    }

    #[test]
    fn truncated_and_inconsistent() {
        for n in 0..28 {
            assert!(ArpPacket::new_checked(&REQ[..n]).is_err(), "len {n}");
        }
        let mut long_hw = REQ;
        long_hw[4] = 200; // hlen says 200 bytes: cannot fit
        assert!(ArpPacket::new_checked(&long_hw[..]).is_err());
    }
}
