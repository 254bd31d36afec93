//! Frames: the area they live in ([`FrameArea`], the memory boundary in `mem::area`), the
//! references the pipeline passes around ([`FrameRef`]) and the free list ([`FramePool`]).
//! Below the pipeline and below the ports, so the pure pipeline and every port driver share
//! them without the pipeline importing a driver.
#![forbid(unsafe_code)]

pub use crate::mem::area::{FRAME_HEADROOM, FrameArea, FrameRef, PageSize};

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

    /// A frame of `bytes`, copied into a free chunk after its headroom. None when no chunk
    /// is free or the bytes do not fit one (the chunk, if taken, goes back). Not for the
    /// packet path: what a test injects, the frame a decision trace runs.
    pub fn copy_in(&mut self, area: &mut FrameArea, bytes: &[u8]) -> Option<FrameRef> {
        let room = u64::from(area.chunk_size()) - FRAME_HEADROOM;
        if bytes.len() as u64 > room {
            return None;
        }
        let f = FrameRef::new(self.alloc()? + FRAME_HEADROOM, bytes.len() as u32);
        match area.frame_mut(&f) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                Some(f)
            }
            None => {
                self.free(f);
                None
            }
        }
    }

    /// Returns a frame's chunk.
    #[inline]
    pub fn free(&mut self, f: FrameRef) {
        self.free_addr(f.addr());
    }

    /// Returns the chunk of a bare address: one the kernel gave back (a completion, a retired
    /// ring) or that came home over a handoff ring, or a chunk taken by [`FramePool::alloc`]
    /// that was never made a frame.
    #[inline]
    pub fn free_addr(&mut self, addr: u64) {
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
            pool.free_addr(a + FRAME_HEADROOM); // any address inside the chunk
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
        pool.free_addr(2 * 2048 + 300);
        pool.free_addr(6 * 2048 + FRAME_HEADROOM);
        pool.free_addr(0);
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
