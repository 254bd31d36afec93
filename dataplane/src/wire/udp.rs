//! UDP header (length field checked against the datagram).

use super::{Error, Result, be16};

/// Header length.
pub const HEADER_LEN: usize = 8;

/// A view of a UDP datagram.
#[derive(Debug, Clone)]
pub struct UdpDatagram<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpDatagram<T> {
    /// Wraps a buffer without checking.
    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        UdpDatagram { buffer }
    }

    /// Checks 8 <= length field <= buffer.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        Self::new_checked_head(buffer, 0)
    }

    /// [`UdpDatagram::new_checked`] for the first segment of a chain, `beyond` bytes of the
    /// datagram following in other segments.
    #[inline]
    pub fn new_checked_head(buffer: T, beyond: usize) -> Result<Self> {
        let d = Self::new_unchecked(buffer);
        let b = d.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error);
        }
        let len = usize::from(d.len());
        if !(HEADER_LEN..=b.len() + beyond).contains(&len) {
            return Err(Error);
        }
        Ok(d)
    }

    /// The first fragment of a fragmented datagram: checks only that the 8-byte header is
    /// there and that its length field covers at least the header and the bytes present (the
    /// rest of the datagram is in later fragments).
    #[inline]
    pub fn new_checked_first_fragment(buffer: T) -> Result<Self> {
        let d = Self::new_unchecked(buffer);
        let b = d.buffer.as_ref();
        if b.len() < HEADER_LEN || usize::from(d.len()) < b.len() {
            return Err(Error);
        }
        Ok(d)
    }

    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 0)
    }
    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }
    /// Length field (header plus payload).
    #[inline]
    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), 4)
    }
    /// True when the datagram carries no payload.
    #[inline]
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) == HEADER_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static DNS: [u8; 12] = [0xd4, 0x31, 0x00, 0x35, 0x00, 0x0c, 0x00, 0x00, 1, 2, 3, 4];

    #[test]
    fn deconstruct() {
        let d = UdpDatagram::new_checked(&DNS[..]).unwrap();
        assert_eq!((d.src_port(), d.dst_port(), d.len()), (54321, 53, 12));
        assert!(!d.is_empty());
    }

    #[test]
    fn bad_length() {
        for n in 0..12 {
            assert!(UdpDatagram::new_checked(&DNS[..n]).is_err());
        }
        let mut bad = DNS;
        bad[5] = 7; // below the header length
        assert!(UdpDatagram::new_checked(&bad[..]).is_err());
    }

    #[test]
    fn first_fragment_carries_less_than_its_length() {
        // A 3 000-byte datagram's first fragment holds 1 480 bytes of it.
        let mut first = [0u8; 1480];
        first[..6].copy_from_slice(&[0xd4, 0x31, 0x00, 0x35, 0x0b, 0xb8]);
        assert!(UdpDatagram::new_checked(&first[..]).is_err());
        let d = UdpDatagram::new_checked_first_fragment(&first[..]).unwrap();
        assert_eq!((d.dst_port(), d.len()), (53, 3000));
        assert!(UdpDatagram::new_checked_first_fragment(&first[..7]).is_err());
        first[4..6].copy_from_slice(&100u16.to_be_bytes()); // claims less than it carries
        assert!(UdpDatagram::new_checked_first_fragment(&first[..]).is_err());
    }
}
