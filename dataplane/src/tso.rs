//! TCP segmentation in software: a TCP segment larger than its MSS (what a virtio guest hands
//! over with `HOST_TSO4/6`) cut into segments of at most the MSS, each with its own IP length,
//! IPv4 ID and header checksum, sequence number, flags and TCP checksum, written into frames of
//! the pool. Two callers: a vhost-user port that takes a large segment from a guest whose
//! packets cannot cross whole, reading it from guest memory, and the output stage, which cuts a
//! large segment that crossed the switch whole ([`FrameRef::is_gso`]) before it leaves on a
//! port that takes no such segment, reading it from its chain of frames.
//!
//! Written here rather than taken from a crate: no crate segments into a caller's frames from
//! a caller's scatter list, and this is the packet path.
#![forbid(unsafe_code)]

use crate::frame::{FRAME_HEADROOM, FrameArea, FramePool, FrameRef, Gso};
use crate::wire::checksum;

/// Segments one large packet may be cut into (a 64 KiB segment at an MSS of 536 is 123). An
/// MSS smaller than that allows is refused.
pub const MAX_TSO_SEGS: usize = 128;

/// Bytes of headers (Ethernet, a VLAN tag, IP with options, TCP with options) a segmented
/// packet may have.
pub const MAX_HDRS: usize = 18 + 60 + 60;

/// Frames a large segment carried whole may span: 64 KiB and its headers in 2 KiB frames.
pub const MAX_WHOLE: usize = 64;

/// A packet being written into frames of the pool, at most `N` of them: every frame of the
/// chain but the last full, as the kernel's multi-buffer RX makes them.
pub struct Chain<const N: usize> {
    segs: [(u64, u32); N],
    n: usize,
    room: u32,
}

/// Why a packet could not be written or cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Short {
    /// No frame was free.
    NoFrame,
    /// More bytes than the chain's frames hold.
    TooBig,
    /// The bytes to copy were not all there (outside guest memory, a broken chain).
    Copy,
    /// Not a packet this cuts: headers other than Ethernet, IP and TCP, an MSS of 0, or more
    /// than [`MAX_TSO_SEGS`] segments.
    Bad,
}

impl<const N: usize> Chain<N> {
    /// An empty chain of frames of `area`.
    pub fn new(area: &FrameArea) -> Chain<N> {
        Chain {
            segs: [(0, 0); N],
            n: 0,
            room: (u64::from(area.chunk_size()) - FRAME_HEADROOM) as u32,
        }
    }

    /// Appends `len` bytes, written piece by piece by `fill(piece, offset of the piece in
    /// these len bytes)`, which returns false when it could not.
    pub fn append(
        &mut self,
        area: &mut FrameArea,
        pool: &mut FramePool,
        len: usize,
        mut fill: impl FnMut(&mut [u8], usize) -> bool,
    ) -> Result<(), Short> {
        self.append_with(area, pool, len, |area, at, k, off| {
            area.seg_mut(at, k).is_some_and(|dst| fill(dst, off))
        })
    }

    /// [`Chain::append`] where `fill(area, address, length, offset)` writes each piece into the
    /// area itself (a copy from other frames of the area).
    pub fn append_with(
        &mut self,
        area: &mut FrameArea,
        pool: &mut FramePool,
        len: usize,
        mut fill: impl FnMut(&mut FrameArea, u64, u32, usize) -> bool,
    ) -> Result<(), Short> {
        let mut done = 0usize;
        while done < len {
            if self.n == 0 || self.segs[self.n - 1].1 == self.room {
                if self.n == N {
                    return Err(Short::TooBig);
                }
                let base = pool.alloc().ok_or(Short::NoFrame)?;
                self.segs[self.n] = (base + FRAME_HEADROOM, 0);
                self.n += 1;
            }
            let (at, filled) = self.segs[self.n - 1];
            let k = (self.room - filled).min((len - done) as u32);
            if !fill(area, at + u64::from(filled), k, done) {
                return Err(Short::Copy);
            }
            self.segs[self.n - 1].1 += k;
            done += k as usize;
        }
        Ok(())
    }

    /// Gives the frames taken back to the pool.
    pub fn release(&self, pool: &mut FramePool) {
        for &(a, _) in &self.segs[..self.n] {
            pool.free_addr(a);
        }
    }

    /// The packet, its segments linked; None when it has no byte and no frame was free.
    pub fn finish(self, area: &mut FrameArea, pool: &mut FramePool) -> Option<FrameRef> {
        if self.n == 0 {
            // A header and nothing after it: an empty frame, which the parser drops.
            return pool.alloc().map(|b| FrameRef::new(b + FRAME_HEADROOM, 0));
        }
        let mut f = FrameRef::new(self.segs[0].0, self.segs[0].1);
        for w in 1..self.n {
            area.link(self.segs[w - 1].0, self.segs[w].0, self.segs[w].1);
            f = f.grown(self.segs[w].1);
        }
        Some(f)
    }
}

/// The one's-complement sum of the bytes of `f` from offset `start` to its end (pieces that
/// start at an odd offset of the summed range sum byte-swapped, RFC 1071).
pub fn sum_from(area: &FrameArea, f: &FrameRef, start: usize) -> u64 {
    sum_range(area, f, start, usize::MAX)
}

/// [`sum_from`] up to offset `end` (or the packet's end, if sooner).
pub fn sum_range(area: &FrameArea, f: &FrameRef, start: usize, end: usize) -> u64 {
    let (mut sum, mut off) = (0u64, 0usize);
    for seg in area.segments(f) {
        if off >= end {
            break;
        }
        let seg_end = off + seg.len();
        if seg_end > start {
            let from = start.saturating_sub(off);
            let to = seg.len().min(end - off);
            let part = u64::from(checksum::fold(checksum::add(0, &seg[from..to])));
            let at = off + from - start;
            sum += if at % 2 == 1 { u64::from((part as u16).swap_bytes()) } else { part };
        }
        off = seg_end;
    }
    sum
}

/// Where the headers of a TCP packet lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hdrs {
    /// The IP header's offset.
    pub l3: usize,
    /// The IP header's length.
    pub ip_len: usize,
    /// The TCP header's offset.
    pub l4: usize,
    /// The TCP header's length.
    pub tcp_len: usize,
    /// IPv6 (else IPv4).
    pub v6: bool,
}

impl Hdrs {
    /// Bytes of all the headers.
    pub fn len(&self) -> usize {
        self.l4 + self.tcp_len
    }

    /// Never true (there is always an Ethernet header); for clippy's `len` convention.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Parses the headers `h` of a TCP packet over IPv4 or (`v6`) IPv6: Ethernet (one VLAN tag at
/// most), IP without IPv6 extension headers, TCP. None for anything else, or headers longer
/// than `h`.
pub fn tcp_hdrs(h: &[u8], v6: bool) -> Option<Hdrs> {
    let mut l3 = 14;
    let mut et = u16::from_be_bytes([*h.get(12)?, *h.get(13)?]);
    if et == 0x8100 {
        l3 = 18;
        et = u16::from_be_bytes([*h.get(16)?, *h.get(17)?]);
    }
    let (ip_len, proto) = match (et, v6) {
        (0x0800, false) => (usize::from(h.get(l3)? & 0x0f) * 4, *h.get(l3 + 9)?),
        (0x86dd, true) => (40, *h.get(l3 + 6)?),
        _ => return None,
    };
    if proto != 6 || ip_len < 20 {
        return None;
    }
    let l4 = l3 + ip_len;
    let tcp_len = usize::from(h.get(l4 + 12)? >> 4) * 4;
    let hd = Hdrs { l3, ip_len, l4, tcp_len, v6 };
    (tcp_len >= 20 && hd.len() <= h.len()).then_some(hd)
}

/// A large TCP segment to cut: its headers `h` (at least `hd.len()` bytes), where they lie,
/// the MSS and the payload's length.
pub struct Cut<'a> {
    /// The packet's headers.
    pub h: &'a [u8],
    /// Where they lie.
    pub hd: Hdrs,
    /// Payload bytes per segment.
    pub mss: usize,
    /// Payload bytes in all.
    pub payload: usize,
}

impl Cut<'_> {
    /// The segments it makes.
    pub fn segments(&self) -> usize {
        self.payload.div_ceil(self.mss.max(1)).max(1)
    }

    /// Segment `i`: where its payload starts, and its own fields.
    pub fn seg(&self, i: usize) -> Seg {
        let (h, hd) = (self.h, &self.hd);
        let seq0 = u32::from_be_bytes([h[hd.l4 + 4], h[hd.l4 + 5], h[hd.l4 + 6], h[hd.l4 + 7]]);
        let id0 = u16::from_be_bytes([h[hd.l3 + 4], h[hd.l3 + 5]]);
        let at = i * self.mss;
        let n = self.mss.min(self.payload.saturating_sub(at));
        let mut flags = h[hd.l4 + 13];
        if at + n < self.payload {
            flags &= !0x09; // FIN, PSH: the last segment's
        }
        if i > 0 {
            flags &= !0x80; // CWR: the first's
        }
        Seg { at, n, seq: seq0.wrapping_add(at as u32), id: id0.wrapping_add(i as u16), flags }
    }
}

/// One segment of a [`Cut`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    /// Where its payload starts in the large segment's payload.
    pub at: usize,
    /// Its payload bytes.
    pub n: usize,
    /// Its sequence number.
    pub seq: u32,
    /// Its IPv4 ID.
    pub id: u16,
    /// Its TCP flags.
    pub flags: u8,
}

/// Writes segment `s`'s own IP length (and IPv4 ID and header checksum), TCP sequence number
/// and flags, and its TCP checksum into its headers `b` (`hd.len()` bytes at least), given the
/// one's-complement sum of its payload (which starts at an even offset: headers are whole
/// words).
pub fn fix_headers(b: &mut [u8], hd: &Hdrs, s: &Seg, payload_sum: u64) {
    let tcp_bytes = hd.tcp_len + s.n;
    let (l3, l4) = (hd.l3, hd.l4);
    let pseudo = if hd.v6 {
        b[l3 + 4..l3 + 6].copy_from_slice(&(tcp_bytes as u16).to_be_bytes());
        checksum::add(6 + tcp_bytes as u64, &b[l3 + 8..l3 + 40])
    } else {
        b[l3 + 2..l3 + 4].copy_from_slice(&((hd.ip_len + tcp_bytes) as u16).to_be_bytes());
        b[l3 + 4..l3 + 6].copy_from_slice(&s.id.to_be_bytes());
        b[l3 + 10..l3 + 12].fill(0);
        let c = !checksum::fold(checksum::add(0, &b[l3..l3 + hd.ip_len]));
        b[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        checksum::add(6 + tcp_bytes as u64, &b[l3 + 12..l3 + 20])
    };
    b[l4 + 4..l4 + 8].copy_from_slice(&s.seq.to_be_bytes());
    b[l4 + 13] = s.flags;
    b[l4 + 16..l4 + 18].fill(0);
    let c = !checksum::fold(checksum::add(pseudo + payload_sum, &b[l4..l4 + hd.tcp_len]));
    b[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
}

/// Cuts `c` into segments in frames of `pool`, each handed to `out`: the headers from `c.h`,
/// fixed for the segment, and its payload written by `read(area, address, length, offset in
/// the payload)`. Returns the segments made. Takes no frame when too few are free
/// (`NoFrame`); segments already handed out stay out when a copy fails midway (`Copy`).
pub fn cut<const N: usize>(
    c: &Cut<'_>,
    area: &mut FrameArea,
    pool: &mut FramePool,
    mut read: impl FnMut(&mut FrameArea, u64, u32, usize) -> bool,
    out: &mut impl FnMut(FrameRef),
) -> Result<usize, Short> {
    let Cut { h, hd, mss, payload } = *c;
    let nseg = c.segments();
    if mss == 0 || nseg > MAX_TSO_SEGS || h.len() < hd.len() {
        return Err(Short::Bad);
    }
    let room = (u64::from(area.chunk_size()) - FRAME_HEADROOM) as usize;
    if pool.len() < nseg * (hd.len() + mss.min(payload)).div_ceil(room).max(1) {
        return Err(Short::NoFrame);
    }
    for i in 0..nseg {
        let s = c.seg(i);
        let (at, n) = (s.at, s.n);
        let mut ch = Chain::<N>::new(area);
        let mut r = ch.append(area, pool, hd.len(), |dst, o| {
            dst.copy_from_slice(&h[o..o + dst.len()]);
            true
        });
        if r.is_ok() {
            r = ch.append_with(area, pool, n, |area, dst, k, o| read(area, dst, k, at + o));
        }
        // Frames were counted above, so only a copy fails (or a segment longer than a chain
        // holds, for an MSS of tens of kilobytes).
        if let Err(e) = r {
            ch.release(pool);
            return Err(e);
        }
        let Some(f) = ch.finish(area, pool) else { return Err(Short::NoFrame) };
        let sum = sum_from(area, &f, hd.len());
        if let Some(b) = area.frame_mut(&f) {
            fix_headers(b, &hd, &s, sum);
        }
        out(f);
    }
    Ok(nseg)
}

/// Cuts `f`, a large TCP segment carried whole, as `g` says, into segments in fresh frames of
/// `pool` handed to `out` (`f` stays the caller's, to free). Returns the segments made.
pub fn cut_frame(
    area: &mut FrameArea,
    pool: &mut FramePool,
    f: &FrameRef,
    g: Gso,
    out: &mut impl FnMut(FrameRef),
) -> Result<usize, Short> {
    let mut h = [0u8; MAX_HDRS];
    let head = area.frame(f).ok_or(Short::Copy)?;
    let hl = head.len().min(MAX_HDRS);
    h[..hl].copy_from_slice(&head[..hl]);
    let hd = tcp_hdrs(&h[..hl], g.v6).ok_or(Short::Bad)?;
    // Where the source's bytes lie: its segments in order.
    let mut src = [(0u64, 0u32); MAX_WHOLE];
    let mut n = 0;
    src[0] = (f.addr(), f.head_len());
    n += 1;
    area.each_seg(f, |a, len| {
        if n < MAX_WHOLE {
            src[n] = (a, len);
            n += 1;
        }
    });
    let src = &src[..n];
    let payload = (f.len() as usize).checked_sub(hd.len()).ok_or(Short::Bad)?;
    let c = Cut { h: &h[..hl], hd, mss: usize::from(g.mss), payload };
    let base = hd.len();
    cut::<MAX_WHOLE>(&c, area, pool, |area, dst, k, o| copy_out(area, src, base + o, dst, k), out)
}

/// Copies `len` bytes from offset `off` of the packet whose segments are `src` to `dst` (in
/// one chunk). False when the packet is shorter.
fn copy_out(area: &mut FrameArea, src: &[(u64, u32)], mut off: usize, dst: u64, len: u32) -> bool {
    let (mut dst, mut left) = (dst, len as usize);
    for &(a, l) in src {
        let l = l as usize;
        if off >= l {
            off -= l;
            continue;
        }
        let k = (l - off).min(left);
        if area.copy_frame(&FrameRef::new(a + off as u64, k as u32), dst).is_none() {
            return false;
        }
        (dst, left, off) = (dst + k as u64, left - k, 0);
        if left == 0 {
            return true;
        }
    }
    left == 0
}

/// The packets frame `f` stands for on a wire: one, or for a large TCP segment carried whole
/// (whose TCP header is at offset `l4`), the segments it is cut into (what a policer counting
/// packets charges).
#[inline(always)]
pub fn wire_packets(area: &FrameArea, f: &FrameRef, l4: usize) -> u32 {
    if f.is_gso() { segments_of(area, f, l4) } else { 1 }
}

#[cold]
fn segments_of(area: &FrameArea, f: &FrameRef, l4: usize) -> u32 {
    let Some(g) = area.gso(f) else { return 1 };
    let tcp_len =
        area.frame(f).and_then(|b| b.get(l4 + 12)).map_or(20, |b| usize::from(b >> 4) * 4);
    let payload = (f.len() as usize).saturating_sub(l4 + tcp_len);
    payload.div_ceil(usize::from(g.mss).max(1)).max(1) as u32
}
