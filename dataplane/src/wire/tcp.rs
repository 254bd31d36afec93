//! TCP header (ports, flags, data offset checked against the segment length).

use super::{Error, Result, be16};

/// Minimum header length (data offset 5).
pub const MIN_HEADER_LEN: usize = 20;

/// TCP flag bits as they sit in byte 13.
pub mod flags {
    /// FIN
    pub const FIN: u8 = 0x01;
    /// SYN
    pub const SYN: u8 = 0x02;
    /// RST
    pub const RST: u8 = 0x04;
    /// PSH
    pub const PSH: u8 = 0x08;
    /// ACK
    pub const ACK: u8 = 0x10;
    /// URG
    pub const URG: u8 = 0x20;
}

/// A view of a TCP segment.
#[derive(Debug, Clone)]
pub struct TcpSegment<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpSegment<T> {
    /// Wraps a buffer without checking.
    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        TcpSegment { buffer }
    }

    /// Checks that the fixed header and the declared data offset fit.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let s = Self::new_unchecked(buffer);
        let b = s.buffer.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(Error);
        }
        let hl = s.header_len();
        if hl < MIN_HEADER_LEN || hl > b.len() {
            return Err(Error);
        }
        Ok(s)
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
    /// Header length in bytes (data offset * 4).
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[12] >> 4) * 4
    }
    /// Flag byte (see [`flags`]).
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[13]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // SYN 40000 -> 80, from a capture (options stripped, data offset 5).
    static SYN: [u8; 20] =
        [0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0];

    #[test]
    fn deconstruct() {
        let s = TcpSegment::new_checked(&SYN[..]).unwrap();
        assert_eq!((s.src_port(), s.dst_port()), (40000, 80));
        assert_eq!(s.flags(), flags::SYN);
        assert_eq!(s.header_len(), 20);
    }

    #[test]
    fn bad_offsets() {
        for n in 0..20 {
            assert!(TcpSegment::new_checked(&SYN[..n]).is_err());
        }
        let mut bad = SYN;
        bad[12] = 0x40; // offset 4 < 5
        assert!(TcpSegment::new_checked(&bad[..]).is_err());
        bad[12] = 0x60; // offset 6 = 24 bytes > 20
        assert!(TcpSegment::new_checked(&bad[..]).is_err());
    }
}
