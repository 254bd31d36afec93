//! Frames: the area they live in ([`FrameArea`], the memory boundary in `mem::area`), the
//! references the pipeline passes around ([`FrameRef`]) and the free list ([`FramePool`]).
//! Below the pipeline and below the ports, so the pure pipeline and every port driver share
//! them without the pipeline importing a driver.
#![forbid(unsafe_code)]

pub use crate::mem::area::{FRAME_HEADROOM, FrameArea, FrameRef, Gso, MAX_SEGS, PageSize};

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

    /// A frame of `bytes`, copied into a free chunk after its headroom, or into a chain of
    /// chunks when it is larger than one (as the kernel's multi-buffer RX fills them: every
    /// segment but the last full). None when too few chunks are free or the bytes need more
    /// than [`MAX_SEGS`] segments (the chunks taken go back). Not for the packet path: what a
    /// test injects, the frame a decision trace runs.
    pub fn copy_in(&mut self, area: &mut FrameArea, bytes: &[u8]) -> Option<FrameRef> {
        let room = (u64::from(area.chunk_size()) - FRAME_HEADROOM) as usize;
        let mut parts = bytes.chunks(room.max(1));
        let head_bytes = parts.next().unwrap_or(&[]);
        if bytes.len().div_ceil(room.max(1)) > 1 + MAX_SEGS as usize {
            return None;
        }
        let head = FrameRef::new(self.alloc()? + FRAME_HEADROOM, head_bytes.len() as u32);
        let Some(dst) = area.frame_mut(&head) else {
            self.free(area, head);
            return None;
        };
        dst.copy_from_slice(head_bytes);
        let mut last = head.addr();
        let mut f = head;
        for part in parts {
            let Some(base) = self.alloc() else {
                self.free(area, f);
                return None;
            };
            // A chunk's room at most, in a chunk of the area: it fits.
            let (at, len) = (base + FRAME_HEADROOM, part.len() as u32);
            if let Some(dst) = area.seg_mut(at, len) {
                dst.copy_from_slice(part);
            }
            area.link(last, at, len);
            (f, last) = (f.grown(len), at);
        }
        Some(f)
    }

    /// A copy of frame `f` in fresh chunks of this pool, every segment of a chain (a flood
    /// copy). None when too few chunks are free (those taken go back) or `f` is out of bounds.
    #[inline]
    pub fn copy_frame(&mut self, area: &mut FrameArea, f: &FrameRef) -> Option<FrameRef> {
        let base = self.alloc()?;
        let Some(copy) = area.copy_frame(f, base + FRAME_HEADROOM) else {
            self.free_addr(base);
            return None;
        };
        if f.segs() == 0 {
            return Some(copy);
        }
        let copy = self.copy_segs(area, f, copy)?;
        // A large TCP segment carried whole stays one in its copies.
        Some(match area.gso(f) {
            Some(g) => area.set_gso(copy, g),
            None => copy,
        })
    }

    /// The segments of `f` after its first, copied after `copy` (its first segment's copy).
    #[cold]
    fn copy_segs(
        &mut self,
        area: &mut FrameArea,
        f: &FrameRef,
        copy: FrameRef,
    ) -> Option<FrameRef> {
        let mut last = copy.addr();
        let mut copy = copy;
        let mut src = f.addr();
        let mut ok = true;
        for _ in 0..f.segs() {
            let Some((next, len)) = area.next_seg(src) else {
                ok = false;
                break;
            };
            let Some(base) = self.alloc() else {
                ok = false;
                break;
            };
            let at = base + FRAME_HEADROOM;
            if area.copy_frame(&FrameRef::new(next, len), at).is_none() || !area.link(last, at, len)
            {
                self.free_addr(base);
                ok = false;
                break;
            }
            (copy, last, src) = (copy.grown(len), at, next);
        }
        if ok {
            Some(copy)
        } else {
            self.free(area, copy);
            None
        }
    }

    /// Returns a frame's chunks: its own, and every segment's of a chain.
    #[inline]
    pub fn free(&mut self, area: &FrameArea, f: FrameRef) {
        if f.segs() != 0 {
            area.each_seg(&f, |a, _| self.free_addr(a));
        }
        self.free_addr(f.addr());
    }

    /// Returns every frame of `frames` (a port's sent frames at a reclaim); says how many chunks.
    #[inline]
    pub fn free_all(&mut self, area: &FrameArea, frames: impl Iterator<Item = FrameRef>) -> usize {
        let mut n = 0;
        for f in frames {
            n += f.chunks() as usize;
            self.free(area, f);
        }
        n
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
