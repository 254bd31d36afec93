//! Memory hints for the packet path: software prefetch, and huge pages for large tables.
//!
//! Large per-worker tables (the flow cache with 100 000 flows is tens of MiB) do not fit the
//! L2 cache, so a lookup waits for DRAM or L3. The batch stages first compute every frame's
//! hash and ask for the lines they will read, then read them: the waits of a whole batch
//! overlap instead of adding up. A plain load used as a "touch" does not do that well: it
//! occupies a slot in the reorder buffer until the data arrives, so only a few dozen are in
//! flight, and the compiler may drop it. `PREFETCHT0` retires at once.
//!
//! A table probed at random also misses the TLB: with 4 KiB pages, 12 MiB of flow cache are
//! 3 000 pages, more than the L2 TLB holds, so each probe adds a page walk. [`HugeSlice`]
//! asks the kernel for transparent huge pages (2 MiB) before the table is first touched.
//!
//! [`area`] is the frame area (the one mapping every frame lives in).
//!
//! This is the one module outside `port::afxdp` with `unsafe`: the prefetch intrinsic is marked
//! `#[target_feature(enable = "sse")]`, which makes every call `unsafe` unless the caller
//! enables the feature too, and `madvise` is a system call on raw memory.
//! JUSTIFICATION: touching loads instead of prefetches, and 4 KiB pages instead of huge ones,
//! each cost tens of nanoseconds per packet on the flow-cache path (PERF(flow-cache) in
//! docs/PERFORMANCE.md).
#![allow(unsafe_code)] // the memory boundary (docs/ARCHITECTURE.md); every block has its SAFETY comment

pub mod area;

/// Asks the CPU to bring every cache line of `*r` into L1. A hint only: nothing is read, and
/// on targets without a prefetch instruction it does nothing.
#[inline(always)]
pub fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        let p = core::ptr::from_ref(r).cast::<i8>();
        // A constant trip count: unrolled to one instruction per line.
        for off in (0..core::mem::size_of::<T>().max(1)).step_by(64) {
            // SAFETY: PREFETCHT0 is a hint: it never faults, reads or writes nothing
            // architecturally visible, and its address comes from a live reference (the offset
            // stays inside `*r`, and `wrapping_add` needs no in-bounds proof anyway). SSE is part
            // of the x86_64 baseline, so the instruction exists on every CPU this runs on.
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                    p.wrapping_add(off),
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

/// Transparent huge pages are 2 MiB on x86_64.
const HUGE_PAGE: usize = 2 << 20;

/// A fixed-size table in memory the kernel is asked to back with transparent huge pages: the
/// slice starts at a 2 MiB boundary (the allocation is padded to find one) and the advice is
/// given before the first touch, so the first faults get huge pages where the kernel has them
/// (otherwise it is ordinary memory). The padding costs at most 2 MiB per table. Not for the
/// packet path: [`HugeSlice::new`] allocates.
#[derive(Debug, Clone)]
pub struct HugeSlice<T> {
    buf: Vec<T>,
    start: usize,
    len: usize,
}

impl<T> Default for HugeSlice<T> {
    /// An empty table (no allocation).
    fn default() -> Self {
        HugeSlice { buf: Vec::new(), start: 0, len: 0 }
    }
}

impl<T: Copy> HugeSlice<T> {
    /// `n` copies of `value`.
    pub fn new(n: usize, value: T) -> Self {
        let size = core::mem::size_of::<T>().max(1);
        let pad = HUGE_PAGE.div_ceil(size);
        let total = n.saturating_add(pad);
        let mut buf: Vec<T> = Vec::with_capacity(total);
        let base = buf.as_ptr() as usize;
        let first = base.next_multiple_of(HUGE_PAGE);
        // The first element at or after the boundary (T's size need not divide 2 MiB).
        let start = (first - base).div_ceil(size).min(pad);
        let end = (base + total * size) / HUGE_PAGE * HUGE_PAGE;
        if end > first {
            // SAFETY: [first, end) lies inside the allocation `buf` owns (rounded inwards, page
            // aligned as madvise requires); MADV_HUGEPAGE only changes how the kernel backs the
            // range, never its contents or validity, and nothing refers to it yet. A failure
            // (no THP in this kernel) leaves ordinary pages, which is fine.
            unsafe {
                libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
            }
        }
        buf.resize(total, value);
        HugeSlice { buf, start, len: n }
    }
}

impl<T> HugeSlice<T> {
    /// The whole allocation, padding included: the table is `[start()..start() + len()]` of
    /// it. For hot paths that index it with an offset of their own instead of re-slicing on
    /// every access (the padding holds copies of the initial value).
    #[inline]
    pub fn padded(&self) -> &[T] {
        &self.buf
    }

    /// [`HugeSlice::padded`], mutable.
    #[inline]
    pub fn padded_mut(&mut self) -> &mut [T] {
        &mut self.buf
    }

    /// Where the table starts in [`HugeSlice::padded`].
    #[inline]
    pub fn start(&self) -> usize {
        self.start
    }
}

impl<T> core::ops::Deref for HugeSlice<T> {
    type Target = [T];

    #[inline]
    fn deref(&self) -> &[T] {
        self.buf.get(self.start..self.start + self.len).unwrap_or(&[])
    }
}

impl<T> core::ops::DerefMut for HugeSlice<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [T] {
        let (s, n) = (self.start, self.len);
        self.buf.get_mut(s..s + n).unwrap_or(&mut [])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_slice_is_an_ordinary_slice_on_a_huge_page_boundary() {
        let mut s = HugeSlice::new(3 << 20, 5u8);
        assert_eq!(s.len(), 3 << 20);
        assert!(s.iter().all(|&x| x == 5));
        assert_eq!(s.as_ptr() as usize % HUGE_PAGE, 0);
        s[7] = 1;
        assert_eq!(s[7], 1);
        let t = HugeSlice::new(1000, [1u64; 3]);
        assert!((t.as_ptr() as usize - (t.as_ptr() as usize / HUGE_PAGE * HUGE_PAGE)) < 24);
        assert!(HugeSlice::new(0, 1u64).is_empty());
        assert!(HugeSlice::<u32>::default().is_empty());
    }
}
