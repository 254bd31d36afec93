//! The Internet checksum (RFC 1071): one's-complement sums, the TCP/UDP pseudo-header, and the
//! partial checksums a sender's stack leaves for the NIC to finish.
//!
//! Sums are accumulated in a `u64` four bytes at a time (a 32-bit word is congruent to the sum
//! of its two 16-bit halves modulo 0xffff, so the folded result is the same as a 16-bit sum)
//! and folded to 16 bits at the end. A piece added with [`add`] must start at an even offset of
//! the checksummed data, which every header boundary is.
//!
//! Partial checksums: a Linux sender with TX checksum offload on (the default of a veth or a
//! tap) hands the device a TCP or UDP segment whose checksum field holds only the folded
//! pseudo-header sum, for the hardware to complete. AF_XDP in copy mode hands such a frame to
//! the switch as it is, and a receiver that is not the sender's device would discard it. The
//! field's value gives it away; [`complete_partial`] recognises it and completes it.

/// Adds `data` to the running sum `acc` (`data` starts at an even offset).
#[inline]
pub fn add(acc: u64, data: &[u8]) -> u64 {
    let mut s = acc;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        s += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    // The last one to three bytes, as the start of a zero-padded word (no copy: a
    // variable-length copy here was a `memcpy` call per packet).
    s + match *words.remainder() {
        [a] => u64::from(a) << 24,
        [a, b] => u64::from(a) << 24 | u64::from(b) << 16,
        [a, b, c] => u64::from(a) << 24 | u64::from(b) << 16 | u64::from(c) << 8,
        _ => 0,
    }
}

/// True when the 20-byte IPv4 header without options `h` sums right (the common case of
/// [`crate::wire::Ipv4Packet::checksum_ok`], five loads and a fold).
#[inline]
pub fn ipv4_header_ok(h: &[u8; 20]) -> bool {
    // PERF(policy): constant indices into an array (no bounds checks) and a fixed number of
    // folds: five 32-bit words sum below 2^35, so three folds bring it to 16 bits.
    let s = u64::from(u32::from_be_bytes([h[0], h[1], h[2], h[3]]))
        + u64::from(u32::from_be_bytes([h[4], h[5], h[6], h[7]]))
        + u64::from(u32::from_be_bytes([h[8], h[9], h[10], h[11]]))
        + u64::from(u32::from_be_bytes([h[12], h[13], h[14], h[15]]))
        + u64::from(u32::from_be_bytes([h[16], h[17], h[18], h[19]]));
    let s = (s & 0xffff_ffff) + (s >> 32);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    (s & 0xffff) + (s >> 16) == 0xffff
}

/// Folds a running sum to 16 bits (end-around carry). The sum of correct data including its
/// checksum folds to 0xffff.
#[inline]
pub fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The pseudo-header sum of TCP or UDP over IPv4 or IPv6 (addresses as the parser stores
/// them: IPv4 v4-mapped), for an upper-layer length of `len` bytes.
#[inline]
pub fn pseudo_header(v6: bool, src: &[u8; 16], dst: &[u8; 16], proto: u8, len: u32) -> u64 {
    let at = if v6 { 0 } else { 12 };
    add(add(u64::from(proto) + u64::from(len), &src[at..]), &dst[at..])
}

/// What [`complete_partial`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partial {
    /// The field was not a partial checksum: nothing written.
    No,
    /// The field held the pseudo-header sum: the checksum was computed and written.
    Completed,
}

/// Completes the checksum of the TCP or UDP segment `l4` (its header and payload, `field` the
/// offset of the checksum in it) when the field holds exactly the folded pseudo-header sum
/// `pseudo`, as a sender that left the checksum to its device writes it.
///
/// A complete checksum that happens to equal that value (one in 65 536) is recomputed from
/// scratch, which writes the same correct value again: a false positive costs time, never
/// correctness.
#[inline]
pub fn complete_partial(l4: &mut [u8], field: usize, pseudo: u64, udp: bool) -> Partial {
    let Some(f) = l4.get(field..field + 2) else { return Partial::No };
    let stored = u16::from_be_bytes([f[0], f[1]]);
    let expect = fold(pseudo);
    // Zero in a UDP checksum field means "none".
    if stored != expect || (udp && stored == 0) {
        return Partial::No;
    }
    l4[field] = 0;
    l4[field + 1] = 0;
    let mut sum = !fold(add(pseudo, l4));
    if udp && sum == 0 {
        sum = 0xffff; // RFC 768: a computed zero is sent as all ones
    }
    l4[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    Partial::Completed
}

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;

    use super::*;

    fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
        let mut m = [0u8; 16];
        m[10] = 0xff;
        m[11] = 0xff;
        m[12..].copy_from_slice(&a);
        m
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        assert_eq!(fold(add(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7])), 0xddf2);
        // Odd length: the last byte is padded with a zero.
        assert_eq!(fold(add(0, &[0x00, 0x01, 0xf2])), 0xf201);
    }

    /// A TCP segment as a sender with checksum offload hands it to its device: the correct
    /// checksum replaced by the folded pseudo-header sum.
    fn partial_tcp(payload: &[u8]) -> (Vec<u8>, u16) {
        let mut out = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 80, 7, 1024)
            .write(&mut out, payload)
            .unwrap();
        let l4 = &mut out[20..];
        let right = u16::from_be_bytes([l4[16], l4[17]]);
        let len = l4.len() as u32;
        let p = pseudo_header(false, &v4_mapped([10, 0, 0, 1]), &v4_mapped([10, 0, 0, 2]), 6, len);
        l4[16..18].copy_from_slice(&fold(p).to_be_bytes());
        (out, right)
    }

    #[test]
    fn a_partial_tcp_checksum_is_completed() {
        for n in [0, 1, 7, 100, 1460] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let (mut pkt, right) = partial_tcp(&payload);
            let len = (pkt.len() - 20) as u32;
            let p =
                pseudo_header(false, &v4_mapped([10, 0, 0, 1]), &v4_mapped([10, 0, 0, 2]), 6, len);
            assert_eq!(complete_partial(&mut pkt[20..], 16, p, false), Partial::Completed);
            assert_eq!(u16::from_be_bytes([pkt[36], pkt[37]]), right, "payload {n}");
            // Complete now: left alone.
            assert_eq!(complete_partial(&mut pkt[20..], 16, p, false), Partial::No);
        }
    }

    #[test]
    fn a_partial_udp6_checksum_is_completed() {
        let (src, dst) = ([0xfe; 16], [0xfd; 16]);
        let mut out = Vec::new();
        PacketBuilder::ipv6(src, dst, 64).udp(5000, 53).write(&mut out, b"hello world").unwrap();
        let l4 = &mut out[40..];
        let right = u16::from_be_bytes([l4[6], l4[7]]);
        let p = pseudo_header(true, &src, &dst, 17, l4.len() as u32);
        l4[6..8].copy_from_slice(&fold(p).to_be_bytes());
        assert_eq!(complete_partial(l4, 6, p, true), Partial::Completed);
        assert_eq!(u16::from_be_bytes([l4[6], l4[7]]), right);
    }

    #[test]
    fn no_checksum_udp_is_left_alone() {
        let mut l4 = [0x13, 0x88, 0, 53, 0, 8, 0, 0];
        assert_eq!(complete_partial(&mut l4, 6, 0x1_0000, true), Partial::No);
        assert_eq!(l4[6..], [0, 0]);
    }
}
