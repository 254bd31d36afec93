//! Ports: everything that moves frames between the switch and the outside.
//!
//! A [`Port`] is thin glue in the manner of Snabb's `XDP:pull`/`XDP:push`: it refills its
//! receive side from the [`FramePool`], moves up to a batch of frame references in or out, and
//! returns completed frames to the pool. It never copies frame bytes and never parses them.
//! Drivers: [`mem::MemPort`] (tests, benches, fuzzing) and, behind the same trait, AF_XDP.
//!
//! Frames live in the shared [`FrameArea`]; the pool holds the chunk addresses nobody uses.

pub mod afxdp;
pub mod mem;

use std::io;

pub use afxdp::umem::{FRAME_HEADROOM, FrameArea, PageSize};

use crate::batch::{Batch, FrameRef};

/// A port driver failed. Names the interface and queue so an operator can act on it.
#[derive(Debug, thiserror::Error)]
#[error("{ifname} queue {queue}: {what}")]
pub struct PortError {
    /// Kernel interface name.
    pub ifname: String,
    /// Queue id.
    pub queue: u32,
    /// What was being done.
    pub what: &'static str,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

/// Where a port's frames are, for the frame accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCensus {
    /// Given to the kernel to receive into (fill ring).
    pub fill: u32,
    /// Received, not yet taken by the worker.
    pub rx: u32,
    /// Handed to the kernel to send, not yet completed.
    pub tx: u32,
    /// Sent, waiting in the completion ring.
    pub completion: u32,
}

impl PortCensus {
    /// All frames the port holds.
    pub fn total(&self) -> u32 {
        self.fill + self.rx + self.tx + self.completion
    }
}

/// What the worker's last breath found, as a hint for batching wakeups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breath {
    /// Nothing was received: no burst is building up, wake the kernel now.
    Idle,
    /// Frames were received: more may follow, a wakeup may wait for a fuller burst.
    Received,
}

/// Burst I/O of frame references.
pub trait Port {
    /// Tops up the receive side from `pool`, then appends up to `batch.room()` received frames.
    /// Returns how many were appended.
    fn rx(&mut self, pool: &mut FramePool, batch: &mut Batch) -> usize;

    /// Queues frames for transmission, in order. Returns how many were taken (a prefix of
    /// `frames`); the rest still belong to the caller.
    fn tx(&mut self, frames: &[FrameRef]) -> usize;

    /// Returns frames whose transmission completed to `pool`. Returns how many.
    fn reclaim(&mut self, pool: &mut FramePool) -> usize;

    /// Tells the kernel about queued TX work when it needs telling; `breath` says whether more
    /// traffic is likely to follow at once. Returns false if a wakeup failed (the caller
    /// counts it).
    fn kick(&mut self, breath: Breath) -> bool;

    /// Where this port's frames are.
    fn census(&self) -> PortCensus;
}

/// The free list of chunk addresses. Its capacity is fixed at creation to the number of chunks,
/// so returning a frame never allocates; a free beyond that capacity can only be a double free
/// and is refused and counted.
#[derive(Debug)]
pub struct FramePool {
    free: Vec<u64>,
    chunk_mask: u64,
    /// Frees refused because the pool was already full (a double free: a bug, not traffic).
    pub double_frees: u64,
}

impl FramePool {
    /// A pool holding every chunk of `area`.
    pub fn new(area: &FrameArea) -> Self {
        let n = area.chunks();
        let size = u64::from(area.chunk_size());
        // Reverse, so that pops hand out low addresses first (easier to read in traces).
        let free: Vec<u64> = (0..u64::from(n)).rev().map(|i| i * size).collect();
        FramePool { free, chunk_mask: !(size - 1), double_frees: 0 }
    }

    /// Takes a free chunk (its base address).
    #[inline]
    pub fn alloc(&mut self) -> Option<u64> {
        self.free.pop()
    }

    /// Returns a frame's chunk.
    #[inline]
    pub fn free(&mut self, addr: u64) {
        if self.free.len() == self.free.capacity() {
            self.double_frees += 1;
            debug_assert!(false, "frame pool overflow: double free of {addr:#x}");
            return;
        }
        self.free.push(addr & self.chunk_mask);
    }

    /// Free chunks.
    #[inline]
    pub fn len(&self) -> usize {
        self.free.len()
    }

    /// True when no chunk is free.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }

    /// Total chunks the pool can hold.
    pub fn capacity(&self) -> usize {
        self.free.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_hands_out_each_chunk_once() {
        let area = FrameArea::new(8, 2048, PageSize::Normal).unwrap();
        let mut pool = FramePool::new(&area);
        assert_eq!(pool.len(), 8);
        let mut got: Vec<u64> = std::iter::from_fn(|| pool.alloc()).collect();
        got.sort();
        assert_eq!(got, (0..8).map(|i| i * 2048).collect::<Vec<_>>());
        assert!(pool.is_empty());
        for a in &got {
            pool.free(a + FRAME_HEADROOM); // any address inside the chunk
        }
        assert_eq!(pool.len(), 8);
        assert_eq!(pool.alloc(), Some(7 * 2048));
    }
}
