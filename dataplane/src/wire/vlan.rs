//! 802.1Q / 802.1ad tag: the 4 bytes after a TPID (the TPID itself is the ether type before it).

use super::{Error, EtherType, Result, be16};

/// Length of the tag control information plus the inner ether type.
pub const TAG_LEN: usize = 4;

/// A view of a VLAN tag: TCI then the encapsulated ether type.
#[derive(Debug, Clone)]
pub struct VlanTag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VlanTag<T> {
    /// Wraps a buffer without checking its length.
    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        VlanTag { buffer }
    }

    /// Wraps a buffer that must hold at least the 4 tag bytes.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < TAG_LEN {
            return Err(Error);
        }
        Ok(Self::new_unchecked(buffer))
    }

    /// VLAN id (12 bits).
    #[inline]
    pub fn vid(&self) -> u16 {
        be16(self.buffer.as_ref(), 0) & 0x0fff
    }

    /// Priority code point (3 bits).
    #[inline]
    pub fn pcp(&self) -> u8 {
        self.buffer.as_ref()[0] >> 5
    }

    /// Ether type of what follows the tag.
    #[inline]
    pub fn ethertype(&self) -> EtherType {
        EtherType::from(be16(self.buffer.as_ref(), 2))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VlanTag<T> {
    /// Writes the TCI (pcp, DEI 0, vid) and the inner ether type.
    #[inline]
    pub fn set(&mut self, pcp: u8, vid: u16, inner: EtherType) {
        let tci = (u16::from(pcp & 7) << 13) | (vid & 0x0fff);
        let b = self.buffer.as_mut();
        b[0..2].copy_from_slice(&tci.to_be_bytes());
        b[2..4].copy_from_slice(&u16::from(inner).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deconstruct_construct() {
        // pcp 5, vid 100, then IPv4.
        let raw = [0xa0, 0x64, 0x08, 0x00];
        let t = VlanTag::new_checked(&raw[..]).unwrap();
        assert_eq!((t.pcp(), t.vid(), t.ethertype()), (5, 100, EtherType::Ipv4));
        let mut out = [0u8; 4];
        VlanTag::new_unchecked(&mut out[..]).set(5, 100, EtherType::Ipv4);
        assert_eq!(out, raw);
        assert!(VlanTag::new_checked(&raw[..3]).is_err());
    }
}
