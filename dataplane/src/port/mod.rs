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

    /// The queue of its interface this port drives (0 for ports without queues).
    fn queue(&self) -> u32 {
        0
    }

    /// The port is being replaced (its device went away and came back): returns every frame
    /// it can to `pool` and says how many it cannot (the kernel kept them with the vanished
    /// device), so the frame accounting can write them off. Called once, between breaths.
    fn retire(&mut self, pool: &mut FramePool) -> u32;
}

/// The free list of chunk addresses. Its capacity is fixed at creation to the number of chunks,
/// so returning a frame never allocates; a free beyond that capacity can only be a double free
/// and is refused and counted.
///
/// With several workers each pool owns one contiguous range of chunks and fills its worker's
/// receive rings from it. A frame of another range freed here (it came over a handoff ring and
/// was sent or dropped by this worker) is set aside in `foreign`, and the worker sends it back
/// to its owner between breaths ([`FramePool::take_foreign`]), so no pool drifts empty.
#[derive(Debug)]
pub struct FramePool {
    free: Vec<u64>,
    foreign: Vec<u64>,
    chunk_mask: u64,
    chunk_shift: u32,
    /// Owned chunk indexes: `lo..hi`.
    lo: u32,
    hi: u32,
    /// Frees refused because the pool was already full (a double free: a bug, not traffic).
    pub double_frees: u64,
}

impl FramePool {
    /// A pool holding every chunk of `area`.
    pub fn new(area: &FrameArea) -> Self {
        Self::range(area, 0..area.chunks())
    }

    /// A pool owning chunks `range` of `area` (clamped to the area).
    pub fn range(area: &FrameArea, range: std::ops::Range<u32>) -> Self {
        let hi = range.end.min(area.chunks());
        let lo = range.start.min(hi);
        let size = u64::from(area.chunk_size());
        // Reverse, so that pops hand out low addresses first (easier to read in traces).
        let free: Vec<u64> = (u64::from(lo)..u64::from(hi)).rev().map(|i| i * size).collect();
        FramePool {
            free,
            foreign: Vec::with_capacity((area.chunks() - (hi - lo)) as usize),
            chunk_mask: !(size - 1),
            chunk_shift: size.trailing_zeros(),
            lo,
            hi,
            double_frees: 0,
        }
    }

    /// Takes a free chunk (its base address).
    #[inline]
    pub fn alloc(&mut self) -> Option<u64> {
        self.free.pop()
    }

    /// Returns a frame's chunk.
    #[inline]
    pub fn free(&mut self, addr: u64) {
        let base = addr & self.chunk_mask;
        let idx = base >> self.chunk_shift;
        let list = if (u64::from(self.lo)..u64::from(self.hi)).contains(&idx) {
            &mut self.free
        } else {
            &mut self.foreign
        };
        if list.len() == list.capacity() {
            self.double_frees += 1;
            debug_assert!(false, "frame pool overflow: double free of {addr:#x}");
            return;
        }
        list.push(base);
    }

    /// Free chunks of this pool's own range.
    #[inline]
    pub fn len(&self) -> usize {
        self.free.len()
    }

    /// True when no chunk is free.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }

    /// Chunks this pool owns.
    pub fn capacity(&self) -> usize {
        self.free.capacity()
    }

    /// The chunk indexes this pool owns.
    pub fn owned(&self) -> std::ops::Range<u32> {
        self.lo..self.hi
    }

    /// Chunks of other pools set aside here, waiting to go back to their owners.
    pub fn foreign_len(&self) -> usize {
        self.foreign.len()
    }

    /// Hands set-aside chunks of other pools to `give`, which returns false to stop (its ring
    /// is full); the chunks not given stay for the next call.
    pub fn take_foreign(&mut self, mut give: impl FnMut(u64) -> bool) {
        while let Some(&a) = self.foreign.last() {
            if !give(a) {
                break;
            }
            self.foreign.pop();
        }
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

    #[test]
    fn a_range_pool_sets_other_chunks_aside_for_their_owner() {
        let area = FrameArea::new(8, 2048, PageSize::Normal).unwrap();
        let mut pool = FramePool::range(&area, 2..5);
        assert_eq!((pool.len(), pool.capacity(), pool.owned()), (3, 3, 2..5));
        assert_eq!(pool.alloc(), Some(2 * 2048));
        pool.free(2 * 2048 + 300);
        pool.free(6 * 2048 + FRAME_HEADROOM);
        pool.free(0);
        assert_eq!((pool.len(), pool.foreign_len()), (3, 2));
        let mut back = Vec::new();
        // The taker's ring has room for one.
        pool.take_foreign(|a| {
            if !back.is_empty() {
                return false;
            }
            back.push(a);
            true
        });
        assert_eq!((back.as_slice(), pool.foreign_len()), (&[0][..], 1));
        pool.take_foreign(|a| {
            back.push(a);
            true
        });
        assert_eq!((back.as_slice(), pool.foreign_len()), (&[0, 6 * 2048][..], 0));
    }
}
