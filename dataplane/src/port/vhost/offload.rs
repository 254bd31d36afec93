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

use crate::frame::{FRAME_HEADROOM, FrameArea, FramePool, FrameRef, Gso, MAX_SEGS};
use crate::tso::{self, Chain, Cut, MAX_HDRS, MAX_TSO_SEGS, MAX_WHOLE, Short};
use crate::wire::checksum;

use super::{Fault, from_guest};

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum from `csum_start` to the end is the device's.
pub(super) const NEEDS_CSUM: u8 = 1;
/// `gso_type` values (5.1.6): none, TCP over IPv4, UDP (fragmentation offload: never
/// offered), TCP over IPv6, and the ECN bit that may be added to the TCP ones.
const GSO_NONE: u8 = 0;
pub(super) const GSO_TCPV4: u8 = 1;
pub(super) const GSO_TCPV6: u8 = 4;
pub(super) const GSO_ECN: u8 = 0x80;

/// Descriptors one guest packet may span here (Linux sends at most 19: the header, the linear
/// part and 17 fragments). A longer chain is dropped, counted.
pub const MAX_DESCS: usize = 64;

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

/// Completes the checksum a guest left partial in packet `f`: the sum from `start` to the
/// end, complemented, at `start + offset` (which must lie in the first frame, where the
/// headers are). False when it does not.
pub fn complete_csum(area: &mut FrameArea, f: &FrameRef, start: u16, offset: u16) -> bool {
    let (start, field) = (usize::from(start), usize::from(start) + usize::from(offset));
    let head = area.frame(f).map_or(0, <[u8]>::len);
    if field + 2 > head || start >= f.len() as usize {
        return false;
    }
    let mut c = !checksum::fold(tso::sum_from(area, f, start));
    if c == 0 {
        c = 0xffff; // as Linux's skb_checksum_help writes a computed zero
    }
    area.frame_mut(f).is_some_and(|b| {
        b[field..field + 2].copy_from_slice(&c.to_be_bytes());
        true
    })
}

/// What taking a packet that asked for an offload gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Took {
    /// This many packets (one, or the segments of a large one) were pushed to `out`.
    Packets(usize),
    /// A large TCP segment was pushed to `out` whole, marked with how to cut it
    /// ([`FrameArea::gso`]); it stands for this many segments.
    Whole(usize),
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

/// Frames of a packet that crosses whole as it came (a chain as AF_XDP delivers them).
const FRAMES: usize = 1 + MAX_SEGS as usize;

/// Takes packet `pkt` (whose virtio-net header is `hdr`) into frames: as it is, with its
/// partial checksum completed if it has one; or, a large TCP segment the guest asks to be cut
/// (when `tso` was negotiated), whole and marked with how to cut it when `whole` (it is cut on
/// its way out, if its port does not take it whole) and it fits [`MAX_WHOLE`] frames, else cut
/// into MTU-sized segments here. The frames go to `out` (which has room for
/// [`MAX_TSO_SEGS`]).
pub fn take(
    pkt: Packet<'_>,
    hdr: &NetHdr,
    (tso, whole): (bool, bool),
    area: &mut FrameArea,
    pool: &mut FramePool,
    out: &mut impl FnMut(FrameRef),
) -> Result<Took, Fault> {
    let Packet { mem, descs, base } = pkt;
    let len = descs.total().saturating_sub(base);
    let gso = hdr.gso_type & !GSO_ECN;
    if gso == GSO_NONE {
        let mut c = Chain::<FRAMES>::new(area);
        let r = c.append(area, pool, len, |dst, at| descs.read(mem, base + at, dst));
        if let Err(e) = r {
            c.release(pool);
            return match e {
                Short::NoFrame => Ok(Took::NoFrame),
                Short::TooBig | Short::Bad => Ok(Took::TooBig),
                Short::Copy => Err(Fault::OutOfMemory),
            };
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
    let v6 = match gso {
        GSO_TCPV4 => false,
        GSO_TCPV6 => true,
        _ => return Ok(Took::Bad),
    };
    if !tso {
        return Ok(Took::Bad);
    }
    let mut h = [0u8; MAX_HDRS];
    let hl = len.min(MAX_HDRS);
    if !descs.read(mem, base, &mut h[..hl]) {
        return Err(Fault::OutOfMemory);
    }
    let Some(hd) = tso::tcp_hdrs(&h[..hl], v6) else { return Ok(Took::Bad) };
    let c = Cut { h: &h[..hl], hd, mss: usize::from(hdr.gso_size), payload: len - hd.len() };
    if c.mss == 0 || c.segments() > MAX_TSO_SEGS {
        return Ok(Took::Bad);
    }
    if whole && c.segments() > 1 {
        let mut ch = Chain::<MAX_WHOLE>::new(area);
        match ch.append(area, pool, len, |dst, at| descs.read(mem, base + at, dst)) {
            Ok(()) => {
                let Some(f) = ch.finish(area, pool) else { return Ok(Took::NoFrame) };
                let ecn = hdr.gso_type & GSO_ECN != 0;
                out(area.set_gso(f, Gso { v6, ecn, mss: hdr.gso_size }));
                return Ok(Took::Whole(c.segments()));
            }
            Err(Short::Copy) => {
                ch.release(pool);
                return Err(Fault::OutOfMemory);
            }
            Err(Short::NoFrame) => {
                ch.release(pool);
                return Ok(Took::NoFrame);
            }
            // More than a chain carries whole: cut here.
            Err(Short::TooBig | Short::Bad) => ch.release(pool),
        }
    }
    let at = base + hd.len();
    let read = |area: &mut FrameArea, dst: u64, k: u32, o: usize| {
        area.seg_mut(dst, k).is_some_and(|d| descs.read(mem, at + o, d))
    };
    match tso::cut::<FRAMES>(&c, area, pool, read, out) {
        Ok(n) => Ok(Took::Packets(n)),
        Err(Short::NoFrame) => Ok(Took::NoFrame),
        Err(Short::Copy) => Err(Fault::OutOfMemory),
        Err(Short::TooBig | Short::Bad) => Ok(Took::Bad),
    }
}
