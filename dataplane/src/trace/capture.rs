//! Live capture of one tenant's frames: a filter, and a tap that copies matching frames into
//! buffers that circulate between the worker and a writer thread.
//!
//! The buffers are allocated once, when the capture starts, and go round two bounded channels:
//! the worker takes a free one, copies up to `snaplen` bytes of the frame into it and sends it
//! to the writer; the writer writes it to the file and sends it back. When no buffer is free
//! (the writer is behind) the copy is skipped and counted; the frame itself is never held
//! back or dropped. The writer must poll its channel (`try_recv` and short sleeps), never
//! block in `recv`: a worker sending to a blocked receiver would wake it with a futex call,
//! a syscall per captured frame. Only frames the tenant's own pipeline stages saw are offered, so a capture
//! of one tenant never holds another tenant's frames.

use crossbeam_channel::{Receiver, Sender};

use crate::batch::Meta;
use crate::policy::Prefix;
use crate::snapshot::TenantId;

/// Longest copy of a frame.
pub const MAX_SNAPLEN: usize = 2048;

/// Which frames of the tenant to keep; `None` fields match anything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CaptureFilter {
    /// Source or destination address inside this prefix (`host` is a /32 or /128).
    pub net: Option<Prefix>,
    /// IP protocol.
    pub proto: Option<u8>,
    /// Source or destination L4 port.
    pub port: Option<u16>,
    /// Only frames that arrived on a tenant port (`Some(true)`: from the tenant) or on the
    /// uplink (`Some(false)`: to the tenant).
    pub from_tenant: Option<bool>,
}

impl CaptureFilter {
    /// True when `m`, which arrived on a tenant port or not, passes.
    #[inline]
    pub fn matches(&self, m: &Meta, from_tenant: bool) -> bool {
        let k = &m.key;
        self.from_tenant.is_none_or(|f| f == from_tenant)
            && self.proto.is_none_or(|p| p == k.proto)
            && self.port.is_none_or(|p| m.l4_offset != 0 && (k.src_port == p || k.dst_port == p))
            && self.net.is_none_or(|n| n.contains(&k.src_ip) || n.contains(&k.dst_ip))
    }
}

/// One captured frame on its way to the writer.
#[derive(Debug)]
pub struct Captured {
    /// When it was seen, on the worker's monotonic clock (the writer maps it to wall time).
    pub at_ns: u64,
    /// The frame's length on the wire.
    pub orig_len: u32,
    /// Bytes copied (the first `len` of `data`).
    pub len: u32,
    /// The buffer.
    pub data: Box<[u8; MAX_SNAPLEN]>,
}

/// The worker's end of a capture.
#[derive(Debug)]
pub struct Tap {
    /// The tenant captured.
    pub tenant: TenantId,
    /// Which of its frames.
    pub filter: CaptureFilter,
    /// Bytes kept of each frame.
    pub snaplen: usize,
    /// Free buffers.
    pub free: Receiver<Captured>,
    /// Filled buffers, to the writer.
    pub filled: Sender<Captured>,
    /// Copies skipped because no buffer was free.
    pub skipped: u64,
    /// Frames copied.
    pub copied: u64,
}

impl Tap {
    /// Offers a frame of the tap's tenant; copies it if it passes the filter and a buffer is
    /// free. No allocation: the buffers circulate.
    #[inline]
    pub fn offer(&mut self, now_ns: u64, m: &Meta, from_tenant: bool, frame: &[u8]) {
        if m.tenant != self.tenant || !self.filter.matches(m, from_tenant) {
            return;
        }
        let Ok(mut b) = self.free.try_recv() else {
            self.skipped += 1;
            return;
        };
        let n = frame.len().min(self.snaplen).min(MAX_SNAPLEN);
        b.data[..n].copy_from_slice(&frame[..n]);
        b.len = n as u32;
        b.orig_len = frame.len() as u32;
        b.at_ns = now_ns;
        match self.filled.try_send(b) {
            Ok(()) => self.copied += 1,
            // The writer is gone (capture ending): the buffer is dropped with the channel.
            Err(_) => self.skipped += 1,
        }
    }
}

/// Buffers and channels for a capture of `buffers` frames in flight: the tap's two ends and
/// the writer's two ends (filled in, free out).
pub fn channels(
    buffers: usize,
) -> (Receiver<Captured>, Sender<Captured>, Receiver<Captured>, Sender<Captured>) {
    let (free_tx, free_rx) = crossbeam_channel::bounded(buffers);
    let (filled_tx, filled_rx) = crossbeam_channel::bounded(buffers);
    for _ in 0..buffers {
        let _ = free_tx.send(Captured {
            at_ns: 0,
            orig_len: 0,
            len: 0,
            data: Box::new([0; MAX_SNAPLEN]),
        });
    }
    (free_rx, filled_tx, filled_rx, free_tx)
}
