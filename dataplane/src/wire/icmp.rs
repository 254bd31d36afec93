//! ICMP and ICMPv6 share the first four bytes: type, code, checksum.

use super::{Error, Result};

/// Type, code and checksum.
pub const HEADER_LEN: usize = 4;

/// A view of an ICMP or ICMPv6 message.
#[derive(Debug, Clone)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    /// Wraps a buffer without checking.
    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        IcmpPacket { buffer }
    }

    /// Checks that type, code and checksum fit.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error);
        }
        Ok(Self::new_unchecked(buffer))
    }

    /// Message type.
    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[0]
    }
    /// Message code.
    #[inline]
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request() {
        let raw = [8u8, 0, 0xf7, 0xff, 0, 0, 0, 0];
        let p = IcmpPacket::new_checked(&raw[..]).unwrap();
        assert_eq!((p.msg_type(), p.code()), (8, 0));
        assert!(IcmpPacket::new_checked(&raw[..3]).is_err());
    }
}
