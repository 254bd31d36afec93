//! The offloads a guest's transmit path may ask of a vhost-user port (virtio 1.2, 5.1.6.2):
//! a checksum left partial (`VIRTIO_NET_HDR_F_NEEDS_CSUM`, with `VIRTIO_NET_F_CSUM`) and a TCP
//! segment larger than the MTU (`VIRTIO_NET_HDR_GSO_TCPV4/6`, with `VIRTIO_NET_F_HOST_TSO4/6`).
//!
//! Both are done here, as the packet is taken from the guest, so that every stage after it
//! (policy, conntrack, shaping, captures, flow logs) sees packets as they travel on a wire: a
//! large segment is cut into MTU-sized TCP segments, each with its own IP length, IPv4 ID and
//! header checksum, sequence number and TCP checksum; a partial checksum is completed. The
//! copy out of guest memory is still the only one: each segment's headers are written from a
//! local copy of the guest's, its payload copied straight from guest memory into its frame,
//! and the checksums summed over the frame while it is in cache.
//!
//! Written here rather than taken from a crate: no crate segments into a caller's frames
//! from a scatter list of guest memory, and this is the packet path.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::frame::{FRAME_HEADROOM, FrameArea, FramePool, FrameRef, MAX_SEGS};
use crate::wire::checksum;

use super::{Fault, from_guest};

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum from `csum_start` to the end is the device's.
const NEEDS_CSUM: u8 = 1;
/// `gso_type` values (5.1.6): none, TCP over IPv4, UDP (fragmentation offload: never
/// offered), TCP over IPv6, and the ECN bit that may be added to the TCP ones.
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;

/// Descriptors one guest packet may span here (Linux sends at most 19: the header, the linear
/// part and 17 fragments). A longer chain is dropped, counted.
pub const MAX_DESCS: usize = 64;

/// Segments one large guest packet may be cut into (a 64 KiB segment at an MSS of 536 is
/// 123). An MSS smaller than that allows is dropped, counted.
pub const MAX_TSO_SEGS: usize = 128;

/// Bytes of headers (Ethernet, a VLAN tag, IP with options, TCP with options) a segmented
/// packet may have.
const MAX_HDRS: usize = 18 + 60 + 60;

/// The virtio-net header before every packet (little endian: VERSION_1, or a legacy guest on
/// a little-endian host, which is the only kind the switch runs on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetHdr {
    /// `NEEDS_CSUM` (and `DATA_VALID`, meaningless on transmit).
    pub flags: u8,
    /// What segmentation the packet asks for.
    pub gso_type: u8,
    /// The MSS of a segmentation.
    pub gso_size: u16,
    /// Where the checksum to complete starts.
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum goes.
    pub csum_offset: u16,
}

impl NetHdr {
    /// The header in its first 10 bytes.
    pub fn parse(b: &[u8; 10]) -> NetHdr {
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        NetHdr {
            flags: b[0],
            gso_type: b[1],
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        }
    }

    /// The packet asks for nothing but to be carried.
    pub fn plain(&self) -> bool {
        self.flags & NEEDS_CSUM == 0 && self.gso_type == GSO_NONE
    }
}

/// The readable buffers of a guest transmit chain (guest address, length), and their total.
pub struct Descs {
    d: [(u64, u32); MAX_DESCS],
    n: usize,
    total: usize,
}

impl Default for Descs {
    fn default() -> Descs {
        Descs { d: [(0, 0); MAX_DESCS], n: 0, total: 0 }
    }
}

impl Descs {
    /// Empties the list.
    pub fn clear(&mut self) {
        (self.n, self.total) = (0, 0);
    }

    /// Adds a buffer; false when there are [`MAX_DESCS`] already.
    pub fn push(&mut self, addr: u64, len: u32) -> bool {
        if self.n == MAX_DESCS {
            return false;
        }
        self.d[self.n] = (addr, len);
        self.n += 1;
        self.total += len as usize;
        true
    }

    /// Bytes in all the buffers.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Copies the chain's bytes from offset `off` into `dst`; false when they are not all
    /// guest memory (or not all in the chain).
    pub fn read(&self, mem: &GuestMemoryMmap, mut off: usize, mut dst: &mut [u8]) -> bool {
        for &(addr, len) in &self.d[..self.n] {
            if dst.is_empty() {
                break;
            }
            let len = len as usize;
            if off >= len {
                off -= len;
                continue;
            }
            let k = (len - off).min(dst.len());
            let (now, rest) = dst.split_at_mut(k);
            if !from_guest(mem, addr + off as u64, now) {
                return false;
            }
            (dst, off) = (rest, 0);
        }
        dst.is_empty()
    }
}

/// What [`take_simple`] gave.
pub enum Simple {
    /// The packet, in one frame.
    Frame(FrameRef),
    /// No frame was free (nothing taken).
    NoFrame,
    /// Not the simple case: take it with [`take`].
    No,
}

/// The common case, with one lookup of guest memory: a packet whose virtio-net header and
/// bytes are in one descriptor (as a virtio driver with `VERSION_1` puts them), asking for no
/// offload, and fitting one frame. Profiled: a second lookup (the header read apart from the
/// bytes) cost the worker a tenth of its time per 64-byte packet.
pub fn take_simple(
    mem: &GuestMemoryMmap,
    descs: &Descs,
    hdr_len: usize,
    area: &mut FrameArea,
    pool: &mut FramePool,
) -> Simple {
    let room = (u64::from(area.chunk_size()) - FRAME_HEADROOM) as usize;
    let (addr, len) = (descs.d[0].0, descs.d[0].1 as usize);
    if descs.n != 1 || len < hdr_len.max(10) || len - hdr_len > room {
        return Simple::No;
    }
    let Ok(s) = mem.get_slice(GuestAddress(addr), len) else { return Simple::No };
    let mut vh = [0u8; 10];
    if s.subslice(0, 10).map(|h| h.copy_to(&mut vh[..])).ok() != Some(10)
        || !NetHdr::parse(&vh).plain()
    {
        return Simple::No;
    }
    let Some(b) = pool.alloc() else { return Simple::NoFrame };
    let f = FrameRef::new(b + FRAME_HEADROOM, (len - hdr_len) as u32);
    let copied = match (area.frame_mut(&f), s.subslice(hdr_len, len - hdr_len)) {
        (Some(dst), Ok(src)) => src.copy_to(dst) == dst.len(),
        _ => false,
    };
    if copied {
        Simple::Frame(f)
    } else {
        pool.free_addr(b);
        Simple::No
    }
}

/// A packet being written into frames of the pool: every segment of the chain but the last
/// full, as the kernel's multi-buffer RX makes them.
pub struct Chain {
    segs: [(u64, u32); 1 + MAX_SEGS as usize],
    n: usize,
    room: u32,
}

/// Why a [`Chain`] could not take more bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Short {
    /// No frame was free.
    NoFrame,
    /// More bytes than [`MAX_SEGS`] + 1 frames hold.
    TooBig,
    /// The bytes to copy were not all guest memory.
    Copy,
}

impl Chain {
    /// An empty chain of frames of `area`.
    pub fn new(area: &FrameArea) -> Chain {
        Chain {
            segs: [(0, 0); 1 + MAX_SEGS as usize],
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
        let mut done = 0usize;
        while done < len {
            if self.n == 0 || self.segs[self.n - 1].1 == self.room {
                if self.n == self.segs.len() {
                    return Err(Short::TooBig);
                }
                let base = pool.alloc().ok_or(Short::NoFrame)?;
                self.segs[self.n] = (base + FRAME_HEADROOM, 0);
                self.n += 1;
            }
            let (at, filled) = self.segs[self.n - 1];
            let k = (self.room - filled).min((len - done) as u32);
            let ok = area.seg_mut(at + u64::from(filled), k).is_some_and(|dst| fill(dst, done));
            if !ok {
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
fn sum_from(area: &FrameArea, f: &FrameRef, start: usize) -> u64 {
    let (mut sum, mut off) = (0u64, 0usize);
    for seg in area.segments(f) {
        let end = off + seg.len();
        if end > start {
            let from = start.saturating_sub(off);
            let part = u64::from(checksum::fold(checksum::add(0, &seg[from..])));
            let at = off + from - start;
            sum += if at % 2 == 1 { u64::from((part as u16).swap_bytes()) } else { part };
        }
        off = end;
    }
    sum
}

/// Completes the checksum a guest left partial in packet `f`: the sum from `start` to the
/// end, complemented, at `start + offset` (which must lie in the first frame, where the
/// headers are). False when it does not.
pub fn complete_csum(area: &mut FrameArea, f: &FrameRef, start: u16, offset: u16) -> bool {
    let (start, field) = (usize::from(start), usize::from(start) + usize::from(offset));
    let head = area.frame(f).map_or(0, <[u8]>::len);
    if field + 2 > head || start >= f.len() as usize {
        return false;
    }
    let mut c = !checksum::fold(sum_from(area, f, start));
    if c == 0 {
        c = 0xffff; // as Linux's skb_checksum_help writes a computed zero
    }
    area.frame_mut(f).is_some_and(|b| {
        b[field..field + 2].copy_from_slice(&c.to_be_bytes());
        true
    })
}

/// Where the headers of a TCP packet lie: the L3 offset, the IP header's length, the L4
/// offset, the TCP header's length, IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hdrs {
    l3: usize,
    ip_len: usize,
    l4: usize,
    tcp_len: usize,
    v6: bool,
}

impl Hdrs {
    fn len(&self) -> usize {
        self.l4 + self.tcp_len
    }
}

/// Parses the headers `h` of a packet a guest asked to be segmented as `gso` (TCPV4 or
/// TCPV6): Ethernet (one VLAN tag at most), IPv4 or IPv6 without extension headers, TCP.
fn tcp_hdrs(h: &[u8], gso: u8) -> Option<Hdrs> {
    let mut l3 = 14;
    let mut et = u16::from_be_bytes([*h.get(12)?, *h.get(13)?]);
    if et == 0x8100 {
        l3 = 18;
        et = u16::from_be_bytes([*h.get(16)?, *h.get(17)?]);
    }
    let (ip_len, proto, v6) = match (et, gso) {
        (0x0800, GSO_TCPV4) => (usize::from(h.get(l3)? & 0x0f) * 4, *h.get(l3 + 9)?, false),
        (0x86dd, GSO_TCPV6) => (40, *h.get(l3 + 6)?, true),
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

/// What taking a packet that asked for an offload gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Took {
    /// This many packets (one, or the segments of a large one) were pushed to `out`.
    Packets(usize),
    /// Too few frames were free: nothing was taken.
    NoFrame,
    /// More bytes than a chain of frames holds: dropped.
    TooBig,
    /// The packet could not be carried as asked (an offload not offered, headers the switch
    /// does not segment, an MSS of 0 or too small, a checksum offset outside the headers): it
    /// is dropped.
    Bad,
}

/// A guest packet: its bytes from offset `base` (after the virtio-net header) of `descs`.
#[derive(Clone, Copy)]
pub struct Packet<'a> {
    /// The guest's memory.
    pub mem: &'a GuestMemoryMmap,
    /// The chain's buffers.
    pub descs: &'a Descs,
    /// Where the packet starts in them.
    pub base: usize,
}

/// Takes packet `pkt` (whose virtio-net header is `hdr`), segmented
/// into MTU-sized TCP segments as `hdr` asks when `tso` was negotiated, or with its partial
/// checksum completed; the frames go to `out` (which has room for [`MAX_TSO_SEGS`]).
pub fn take(
    pkt: Packet<'_>,
    hdr: &NetHdr,
    tso: bool,
    area: &mut FrameArea,
    pool: &mut FramePool,
    out: &mut impl FnMut(FrameRef),
) -> Result<Took, Fault> {
    let Packet { mem, descs, base } = pkt;
    let len = descs.total().saturating_sub(base);
    let gso = hdr.gso_type & !GSO_ECN;
    if gso == GSO_NONE {
        let mut c = Chain::new(area);
        let r = c.append(area, pool, len, |dst, at| descs.read(mem, base + at, dst));
        match r {
            Ok(()) => {}
            Err(Short::NoFrame) => {
                c.release(pool);
                return Ok(Took::NoFrame);
            }
            Err(Short::TooBig) => {
                c.release(pool);
                return Ok(Took::TooBig);
            }
            Err(Short::Copy) => {
                c.release(pool);
                return Err(Fault::OutOfMemory);
            }
        }
        let Some(f) = c.finish(area, pool) else { return Ok(Took::NoFrame) };
        if hdr.flags & NEEDS_CSUM != 0 && !complete_csum(area, &f, hdr.csum_start, hdr.csum_offset)
        {
            pool.free(area, f);
            return Ok(Took::Bad);
        }
        out(f);
        return Ok(Took::Packets(1));
    }
    if !tso {
        return Ok(Took::Bad);
    }
    let mut h = [0u8; MAX_HDRS];
    let hl = len.min(MAX_HDRS);
    if !descs.read(mem, base, &mut h[..hl]) {
        return Err(Fault::OutOfMemory);
    }
    let Some(hd) = tcp_hdrs(&h[..hl], gso) else { return Ok(Took::Bad) };
    let (mss, payload) = (usize::from(hdr.gso_size), len - hd.len());
    let nseg = payload.div_ceil(mss.max(1));
    if mss == 0 || nseg > MAX_TSO_SEGS {
        return Ok(Took::Bad);
    }
    let room = (u64::from(area.chunk_size()) - FRAME_HEADROOM) as usize;
    if pool.len() < nseg.max(1) * (hd.len() + mss).div_ceil(room) {
        return Ok(Took::NoFrame);
    }
    let seq0 = u32::from_be_bytes([h[hd.l4 + 4], h[hd.l4 + 5], h[hd.l4 + 6], h[hd.l4 + 7]]);
    let id0 = u16::from_be_bytes([h[hd.l3 + 4], h[hd.l3 + 5]]);
    let flags0 = h[hd.l4 + 13];
    for i in 0..nseg.max(1) {
        let at = i * mss;
        let n = mss.min(payload - at);
        let last = at + n == payload;
        let mut c = Chain::new(area);
        let mut r = c.append(area, pool, hd.len(), |dst, o| {
            dst.copy_from_slice(&h[o..o + dst.len()]);
            true
        });
        if r.is_ok() {
            r = c.append(area, pool, n, |dst, o| descs.read(mem, base + hd.len() + at + o, dst));
        }
        // Frames were counted above, so only a copy fails: from outside guest memory (or a
        // segment longer than a chain holds, for an MSS of tens of kilobytes).
        if let Err(e) = r {
            c.release(pool);
            return if e == Short::Copy { Err(Fault::OutOfMemory) } else { Ok(Took::Bad) };
        }
        let Some(f) = c.finish(area, pool) else { return Ok(Took::NoFrame) };
        fix_segment(area, &f, &hd, n, seq0.wrapping_add(at as u32), id0.wrapping_add(i as u16), {
            let mut fl = flags0;
            if !last {
                fl &= !0x09; // FIN, PSH: the last segment's
            }
            if i > 0 {
                fl &= !0x80; // CWR: the first's
            }
            fl
        });
        out(f);
    }
    Ok(Took::Packets(nseg.max(1)))
}

/// Writes segment `f`'s own IP length (and IPv4 ID and header checksum), TCP sequence number
/// and flags, and its TCP checksum, for `n` bytes of payload.
fn fix_segment(area: &mut FrameArea, f: &FrameRef, hd: &Hdrs, n: usize, seq: u32, id: u16, fl: u8) {
    let tcp_bytes = hd.tcp_len + n;
    let Some(b) = area.frame_mut(f) else { return };
    let (l3, l4) = (hd.l3, hd.l4);
    let pseudo = if hd.v6 {
        b[l3 + 4..l3 + 6].copy_from_slice(&(tcp_bytes as u16).to_be_bytes());
        checksum::add(6 + tcp_bytes as u64, &b[l3 + 8..l3 + 40])
    } else {
        b[l3 + 2..l3 + 4].copy_from_slice(&((hd.ip_len + tcp_bytes) as u16).to_be_bytes());
        b[l3 + 4..l3 + 6].copy_from_slice(&id.to_be_bytes());
        b[l3 + 10..l3 + 12].fill(0);
        let c = !checksum::fold(checksum::add(0, &b[l3..l3 + hd.ip_len]));
        b[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        checksum::add(6 + tcp_bytes as u64, &b[l3 + 12..l3 + 20])
    };
    b[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
    b[l4 + 13] = fl;
    b[l4 + 16..l4 + 18].fill(0);
    let c = !checksum::fold(pseudo + sum_from(area, f, l4));
    if let Some(b) = area.frame_mut(f) {
        b[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    }
}
