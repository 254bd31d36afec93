//! IPv6 fixed header and a bounded walk over its extension headers.
//!
//! The walk follows hop-by-hop (first only), routing, fragment and destination-options headers,
//! at most [`MAX_EXT_HEADERS`] of them, each checked to fit inside the payload length. A chain
//! longer than that is an error: a hostile sender cannot make the parser loop. An authentication
//! header (51) ends the walk like ESP: it is the protocol policy sees (found by the parse
//! fuzz target, where etherparse walks through it; a rule for TCP ports does not open it).

use super::{Error, Result, be16};

/// Fixed header length.
pub const HEADER_LEN: usize = 40;
/// Upper bound on extension headers walked before the packet is rejected.
pub const MAX_EXT_HEADERS: usize = 8;

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DEST_OPTS: u8 = 60;

/// A view of an IPv6 packet.
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

/// What the extension-header walk found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    /// Protocol number of the first non-extension header (59 = no next header).
    pub protocol: u8,
    /// Offset of that header from the start of the IPv6 header.
    pub offset: usize,
    /// A fragment header was present.
    pub fragment: bool,
    /// The fragment offset was non-zero (the upper-layer header is not in this packet).
    pub later_fragment: bool,
    /// Offset of the fragment header from the start of the IPv6 header (0: none).
    pub frag_header: usize,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps a buffer without checking.
    #[inline]
    pub fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Checks version 6 and that the payload length fits in the buffer.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        Self::new_checked_head(buffer, 0)
    }

    /// [`Ipv6Packet::new_checked`] for the first segment of a chain, `beyond` bytes of the
    /// packet following in other segments.
    #[inline]
    pub fn new_checked_head(buffer: T, beyond: usize) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        let b = p.buffer.as_ref();
        if b.len() < HEADER_LEN || b[0] >> 4 != 6 {
            return Err(Error);
        }
        if HEADER_LEN + usize::from(p.payload_len()) > b.len() + beyond {
            return Err(Error);
        }
        Ok(p)
    }

    /// Payload length field.
    #[inline]
    pub fn payload_len(&self) -> u16 {
        be16(self.buffer.as_ref(), 4)
    }
    /// Next header of the fixed header.
    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[6]
    }
    /// Hop limit.
    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[7]
    }
    /// Source address.
    #[inline]
    pub fn src(&self) -> [u8; 16] {
        let mut a = [0; 16];
        a.copy_from_slice(&self.buffer.as_ref()[8..24]);
        a
    }
    /// Destination address.
    #[inline]
    pub fn dst(&self) -> [u8; 16] {
        let mut a = [0; 16];
        a.copy_from_slice(&self.buffer.as_ref()[24..40]);
        a
    }
    /// The packet up to the end of its payload length (padding excluded).
    #[inline]
    pub fn packet(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[..(HEADER_LEN + usize::from(self.payload_len())).min(b.len())]
    }

    /// Walks the extension headers to the upper-layer protocol.
    pub fn upper_layer(&self) -> Result<UpperLayer> {
        let pkt = self.packet();
        let mut next = self.next_header();
        let mut off = HEADER_LEN;
        let mut up = UpperLayer {
            protocol: next,
            offset: off,
            fragment: false,
            later_fragment: false,
            frag_header: 0,
        };
        for i in 0..=MAX_EXT_HEADERS {
            let len = match next {
                HOP_BY_HOP if i == 0 => ext_len(pkt, off)?,
                HOP_BY_HOP => return Err(Error), // only valid right after the fixed header
                ROUTING | DEST_OPTS => ext_len(pkt, off)?,
                FRAGMENT => {
                    if off + 8 > pkt.len() {
                        return Err(Error);
                    }
                    if up.fragment {
                        // Two fragment headers: no sender makes that (RFC 8200 4.5).
                        return Err(Error);
                    }
                    up.fragment = true;
                    up.frag_header = off;
                    if be16(pkt, off + 2) & 0xfff8 != 0 {
                        up.later_fragment = true;
                    }
                    8
                }
                _ => {
                    up.protocol = next;
                    up.offset = off;
                    return Ok(up);
                }
            };
            if i == MAX_EXT_HEADERS {
                break;
            }
            next = pkt[off];
            off += len;
            if up.later_fragment {
                // The rest is a fragment of the upper layer: there is no header to read.
                up.protocol = next;
                up.offset = off;
                return Ok(up);
            }
        }
        Err(Error)
    }
}

/// What a fragment header says: the datagram's identification, where this fragment's data
/// starts in the datagram (bytes), and whether more fragments follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentHeader {
    /// Identification.
    pub ident: u32,
    /// Offset of this fragment's data in the datagram's fragmentable part, in bytes.
    pub offset: u32,
    /// The M flag: more fragments follow.
    pub more: bool,
}

impl FragmentHeader {
    /// Reads the fragment header at `off` of `pkt` (the walk of [`Ipv6Packet::upper_layer`]
    /// checked that it fits).
    pub fn read(pkt: &[u8], off: usize) -> Option<FragmentHeader> {
        let h = pkt.get(off..off + 8)?;
        let word = be16(h, 2);
        Some(FragmentHeader {
            ident: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            offset: u32::from(word & 0xfff8),
            more: word & 1 != 0,
        })
    }
}

/// Length of a generic extension header at `off`: (hdr_ext_len + 1) * 8, checked to fit.
#[inline]
fn ext_len(pkt: &[u8], off: usize) -> Result<usize> {
    if off + 2 > pkt.len() {
        return Err(Error);
    }
    let len = (usize::from(pkt[off + 1]) + 1) * 8;
    if off + len > pkt.len() {
        return Err(Error);
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(next: u8, payload_len: u16) -> Vec<u8> {
        let mut v = vec![0u8; 40];
        v[0] = 0x60;
        v[4..6].copy_from_slice(&payload_len.to_be_bytes());
        v[6] = next;
        v[7] = 64;
        v[8] = 0xfe;
        v[9] = 0x80;
        v[23] = 1;
        v[24] = 0xfe;
        v[25] = 0x80;
        v[39] = 2;
        v
    }

    #[test]
    fn plain_udp() {
        let mut p = header(17, 8);
        p.extend_from_slice(&[0, 1, 0, 2, 0, 8, 0, 0]);
        let v = Ipv6Packet::new_checked(&p[..]).unwrap();
        assert_eq!(v.hop_limit(), 64);
        assert_eq!(v.src()[15], 1);
        let up = v.upper_layer().unwrap();
        assert_eq!((up.protocol, up.offset, up.fragment), (17, 40, false));
    }

    #[test]
    fn hop_by_hop_then_fragment() {
        let mut p = header(0, 16 + 8);
        p.extend_from_slice(&[44, 0, 0, 0, 0, 0, 0, 0]); // HBH, 8 bytes, next = fragment
        p.extend_from_slice(&[6, 0, 0, 0x09, 0, 0, 0, 1]); // fragment offset 1, next = TCP
        p.extend_from_slice(&[0; 8]);
        let up = Ipv6Packet::new_checked(&p[..]).unwrap().upper_layer().unwrap();
        assert!(up.fragment && up.later_fragment);
        assert_eq!((up.protocol, up.frag_header), (6, 48));
        let fh = FragmentHeader::read(&p[..], up.frag_header).unwrap();
        assert_eq!(fh, FragmentHeader { ident: 1, offset: 8, more: true });
    }

    #[test]
    fn two_fragment_headers_are_rejected() {
        let mut p = header(44, 24);
        p.extend_from_slice(&[44, 0, 0, 1, 0, 0, 0, 1]);
        p.extend_from_slice(&[17, 0, 0, 1, 0, 0, 0, 1]);
        p.extend_from_slice(&[0; 8]);
        assert!(Ipv6Packet::new_checked(&p[..]).unwrap().upper_layer().is_err());
    }

    #[test]
    fn endless_chain_is_rejected() {
        let n = MAX_EXT_HEADERS + 4;
        let mut p = header(60, (n * 8) as u16);
        for _ in 0..n {
            p.extend_from_slice(&[60, 0, 0, 0, 0, 0, 0, 0]);
        }
        assert!(Ipv6Packet::new_checked(&p[..]).unwrap().upper_layer().is_err());
    }

    #[test]
    fn ext_header_overruns_payload() {
        let mut p = header(43, 8);
        p.extend_from_slice(&[17, 4, 0, 0, 0, 0, 0, 0]); // claims 40 bytes, has 8
        assert!(Ipv6Packet::new_checked(&p[..]).unwrap().upper_layer().is_err());
        let short = header(17, 100); // payload length beyond the buffer
        assert!(Ipv6Packet::new_checked(&short[..]).is_err());
    }

    #[test]
    fn late_hop_by_hop_is_rejected() {
        let mut p = header(60, 16);
        p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]); // dest opts, next = HBH
        p.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 0]);
        assert!(Ipv6Packet::new_checked(&p[..]).unwrap().upper_layer().is_err());
    }
}
