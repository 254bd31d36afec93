//! A batch of up to [`BATCH_SIZE`] frames received on one port, with per-packet metadata.
//!
//! A batch holds frame *references* (offset and length in the shared frame area), never frame
//! bytes: moving a frame from RX to TX is moving 12 bytes. A batch owns its frames until the
//! output stage takes them ([`Batch::take_frames`]). The metadata is filled by the parse stage
//! and read by the later ones; it is `Copy` and lives in a fixed array, so a batch is allocated
//! once per worker and reused.
#![forbid(unsafe_code)]

use crate::vocab::{AttachmentId, ParseError, PortId, TenantId};
use crate::wire::MacAddr;

/// Most frames in one batch.
pub const BATCH_SIZE: usize = 64;

pub use crate::frame::FrameRef;

/// The parsed L3/L4 fields that identify a flow. IPv4 addresses are stored v4-mapped
/// (`::ffff:a.b.c.d`) so one key type serves both families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// Ether type after the VLAN tags.
    pub ethertype: u16,
    /// IP protocol (0 when not IP).
    pub proto: u8,
    /// Source address (ARP: sender protocol address).
    pub src_ip: [u8; 16],
    /// Destination address (ARP: target protocol address).
    pub dst_ip: [u8; 16],
    /// Source port (ICMP: type).
    pub src_port: u16,
    /// Destination port (ICMP: code).
    pub dst_port: u16,
}

/// Per-packet flags set by the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacketFlags(pub u8);

impl PacketFlags {
    /// An IP fragment (IPv4 MF or offset, IPv6 fragment header).
    pub const FRAGMENT: u8 = 1;
    /// A non-first fragment: L4 fields are absent.
    pub const LATER_FRAGMENT: u8 = 2;
    /// IPv4 options present.
    pub const IP_OPTIONS: u8 = 4;
    /// IPv6 extension headers present.
    pub const IPV6_EXT: u8 = 8;
    /// A later fragment whose ports and TCP flags were taken from its datagram's first
    /// fragment (the fragment stage of tenants with policy): judged as that fragment was.
    pub const PORTS_FROM_FIRST: u8 = 16;
    /// A TCP or UDP segment whose checksum field holds exactly its pseudo-header sum: its
    /// sender left the checksum to its device (checksum offload); completed on the way out.
    pub const PARTIAL_CSUM: u8 = 32;

    /// Tests a flag.
    #[inline]
    pub fn has(self, f: u8) -> bool {
        self.0 & f != 0
    }
}

/// What the stages learn about one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Destination MAC.
    pub dst: MacAddr,
    /// Source MAC.
    pub src: MacAddr,
    /// Outer VLAN id, if tagged.
    pub outer_vlan: Option<u16>,
    /// Inner VLAN id, if double-tagged.
    pub inner_vlan: Option<u16>,
    /// Offset of the L3 header from the frame start (14, 18 or 22).
    pub l3_offset: u16,
    /// Offset of the L4 header (0 when none was found).
    pub l4_offset: u16,
    /// TCP flags (0 when not TCP).
    pub tcp_flags: u8,
    /// Parser flags.
    pub flags: PacketFlags,
    /// Flow key.
    pub key: FlowKey,
    /// Set when parsing failed.
    pub parse_error: Option<ParseError>,
    /// The resolved tenant.
    pub tenant: TenantId,
    /// The attachment the frame came in on.
    pub attachment: AttachmentId,
}

impl Meta {
    /// Nothing parsed yet. A `const`, so resetting a slot is a copy of a constant with wide
    /// stores; building `Default::default()` on the stack field by field and copying it costs a
    /// store-forwarding stall per packet (PERF(pipeline): about a third of the pipeline time).
    pub const EMPTY: Meta = Meta {
        dst: MacAddr::ZERO,
        src: MacAddr::ZERO,
        outer_vlan: None,
        inner_vlan: None,
        l3_offset: 0,
        l4_offset: 0,
        tcp_flags: 0,
        flags: PacketFlags(0),
        key: FlowKey {
            ethertype: 0,
            proto: 0,
            src_ip: [0; 16],
            dst_ip: [0; 16],
            src_port: 0,
            dst_port: 0,
        },
        parse_error: None,
        tenant: TenantId(0),
        attachment: AttachmentId(0),
    };
}

impl Default for Meta {
    fn default() -> Self {
        Meta::EMPTY
    }
}

/// Up to [`BATCH_SIZE`] frames from one ingress port.
#[derive(Debug)]
pub struct Batch {
    /// Ingress port of every frame in the batch.
    pub port: PortId,
    /// Never beyond its capacity of [`BATCH_SIZE`]: pushing does not allocate.
    frames: Vec<FrameRef>,
    meta: [Meta; BATCH_SIZE],
    /// The most bytes beyond its first segment any frame of the batch has (0 without chains).
    extra: u32,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            port: PortId(0),
            frames: Vec::with_capacity(BATCH_SIZE),
            meta: [Meta::EMPTY; BATCH_SIZE],
            extra: 0,
        }
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the ingress port of an empty batch. A batch still holding frames keeps them (they
    /// are owned: only [`Batch::take_frames`] gives them away).
    #[inline]
    pub fn reset(&mut self, port: PortId) {
        debug_assert!(self.frames.is_empty(), "a batch reset with its frames still in it");
        self.port = port;
    }

    /// The most bytes any frame of the batch has beyond its first segment (0 when no frame is
    /// a chain).
    #[inline]
    pub fn extra(&self) -> u32 {
        self.extra
    }

    /// Frames in the batch.
    #[inline]
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True when empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// True when no more frames fit.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.frames.len() == BATCH_SIZE
    }

    /// Free slots.
    #[inline]
    pub fn room(&self) -> usize {
        BATCH_SIZE - self.frames.len()
    }

    /// Appends a frame, or gives it back when the batch is full. Its metadata slot keeps stale
    /// contents until the parse stage resets it.
    #[inline]
    pub fn push(&mut self, f: FrameRef) -> Result<(), FrameRef> {
        if self.frames.len() == BATCH_SIZE {
            return Err(f);
        }
        self.extra = self.extra.max(f.extra());
        self.frames.push(f);
        Ok(())
    }

    /// The frames.
    #[inline]
    pub fn frames(&self) -> &[FrameRef] {
        &self.frames
    }

    /// The metadata.
    #[inline]
    pub fn meta(&self) -> &[Meta] {
        &self.meta[..self.frames.len()]
    }

    /// The frames, to be replaced in place by what they hold (a decapsulated frame by its
    /// inner frame: the same chunks, a later start).
    #[inline]
    pub fn frames_mut(&mut self) -> &mut [FrameRef] {
        &mut self.frames
    }

    /// Frames and metadata together, metadata mutable.
    #[inline]
    pub fn split_mut(&mut self) -> (&[FrameRef], &mut [Meta]) {
        let n = self.frames.len();
        (&self.frames, &mut self.meta[..n])
    }

    /// Takes every frame out, with its metadata, leaving the batch empty: the output stage
    /// gives each to a port, a queue or the pool.
    #[inline]
    pub fn take_frames(&mut self) -> impl Iterator<Item = (FrameRef, &Meta)> {
        self.extra = 0;
        let meta = &self.meta[..self.frames.len()];
        self.frames.drain(..).zip(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_until_full() {
        let mut b = Batch::new();
        b.reset(PortId(3));
        for i in 0..BATCH_SIZE {
            assert!(b.push(FrameRef::new(i as u64 * 2048, 60)).is_ok());
        }
        assert!(b.is_full());
        let extra = FrameRef::new(BATCH_SIZE as u64 * 2048, 60);
        assert_eq!(b.push(extra), Err(FrameRef::new(BATCH_SIZE as u64 * 2048, 60)));
        assert_eq!(b.len(), BATCH_SIZE);
        assert_eq!(b.frames()[5].addr(), 5 * 2048);
        let taken: Vec<u64> = b.take_frames().map(|(f, _)| f.addr()).collect();
        assert_eq!(taken, (0..BATCH_SIZE as u64).map(|i| i * 2048).collect::<Vec<_>>());
        assert!(b.is_empty());
        b.reset(PortId(1));
        assert_eq!(b.room(), BATCH_SIZE);
    }
}
