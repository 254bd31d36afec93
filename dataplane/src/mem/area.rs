//! The frame area: one shared mapping of a memory file (memfd) cut into equal power-of-two chunks, shared by
//! every port of the switch so that a frame received on one port is sent on another without a
//! copy. AF_XDP registers this memory as its UMEM; the in-memory port uses the very same area,
//! so tests exercise the real frame layout.
//!
//! # Ownership
//! At any time each chunk is owned by exactly one place: the free list, a fill ring, the kernel
//! (RX or TX in flight), a batch, or a pending TX list. Only the owner may touch its bytes. The
//! safe accessors here hand out slices bounded to one chunk; the discipline that no two owners
//! exist for a chunk is kept by the worker and checked by the frame accounting.
//!
//! It does _not_ track ownership itself (that would be a per-packet cost); it only bounds every
//! access to the area and to the chunk of the address.
//!
//! # Several workers
//! [`FrameArea::share`] hands another worker a handle on the same memory. The mapping lives
//! until the last handle drops. Handles on different threads may each write frames: the
//! ownership discipline above is what keeps them apart (a frame is held by one worker at a
//! time, as a [`FrameRef`] that cannot be copied, and crosses to another only through a
//! handoff ring, which orders the accesses). Nothing in a handle can check that discipline, so
//! `share` is `unsafe`: its caller promises it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

/// A frame in the shared frame area: the offset of its first byte and its length.
///
/// It is the right to the frame's chunk, so it is neither `Copy` nor `Clone`: a frame given to
/// a port, a TX list, a scheduler queue, another worker or back to the pool is moved there and
/// cannot also be kept. A stage that changes where the frame starts (a VLAN pop or push)
/// consumes the reference and returns the new one. The frame census stays the runtime check
/// of what the types cannot see: the kernel's rings and the handoff rings carry bare
/// addresses, turned back into references by [`FrameRef::new`].
///
/// # Chains
/// A packet larger than one chunk (a jumbo frame received with AF_XDP multi-buffer) is a
/// chain: the reference names its first segment (`addr`, [`FrameRef::head_len`] bytes: the
/// headers, all that [`FrameArea::frame`] shows) and says how many segments and bytes follow
/// ([`FrameRef::segs`], [`FrameRef::extra`]); [`FrameRef::len`] is the whole packet's. Each
/// segment's chunk holds the link to the next one in its first 8 bytes (the headroom, which no
/// data reaches: [`FrameArea::link`]), so a chain crosses between workers as its head alone and
/// the reference stays two words. The reference owns every chunk of its chain.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameRef {
    addr: u64,
    len: u32,
    /// Segments after the first (high 8 bits), [`GSO_BIT`], and their bytes (low 23 bits); 0
    /// for one chunk.
    more: u32,
}

/// The bit of [`FrameRef`]'s `more` word that marks a TCP segment larger than its MSS, carried
/// whole: its [`Gso`] is in the headroom of its first chunk ([`FrameArea::set_gso`]).
const GSO_BIT: u32 = 1 << 23;
/// The bytes of the segments after the first, in `more`.
const EXTRA: u32 = GSO_BIT - 1;

/// How a TCP segment larger than its MSS (a virtio guest's TSO) is to be cut, as it crosses
/// the switch whole toward a port that takes it so (a guest that negotiated `GUEST_TSO`) and is
/// cut at the last moment for any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    /// TCP over IPv6 (else over IPv4).
    pub v6: bool,
    /// The sender set ECN's CWR on the segment (virtio's `GSO_ECN`).
    pub ecn: bool,
    /// Payload bytes per segment.
    pub mss: u16,
}

/// Most segments after the first a chain may have: the kernel's `MAX_SKB_FRAGS` (17), so a
/// chain is at most 18 frames, as AF_XDP in copy mode delivers them.
pub const MAX_SEGS: u32 = 17;

impl FrameRef {
    /// The frame at `addr` (inside one chunk) of `len` bytes. Only for the owner of the chunk:
    /// a port driver turning a descriptor the kernel gave back into a frame, a worker taking a
    /// frame off a handoff ring, a pool's owner filling a fresh chunk. Making a second
    /// reference to a chunk that already has one is a bug the census reports.
    #[inline]
    pub const fn new(addr: u64, len: u32) -> FrameRef {
        FrameRef { addr, len, more: 0 }
    }

    /// A chain: the first segment at `addr` of `head` bytes, then `segs` segments of `extra`
    /// bytes in all, linked from its chunk ([`FrameArea::link`]). Same rules as [`FrameRef::new`].
    #[inline]
    pub const fn chain(addr: u64, head: u32, segs: u32, extra: u32) -> FrameRef {
        FrameRef { addr, len: head, more: (segs << 24) | (extra & EXTRA) }
    }

    /// The same packet with its first segment moved to `addr` and `head` bytes long (a VLAN
    /// push or pop); the segments after it are unchanged.
    #[inline]
    pub const fn with_head(self, addr: u64, head: u32) -> FrameRef {
        FrameRef { addr, len: head, more: self.more }
    }

    /// [`FrameRef::with_head`] in place (a decapsulation steps over the outer headers).
    #[inline]
    pub fn set_head(&mut self, addr: u64, head: u32) {
        (self.addr, self.len) = (addr, head);
    }

    /// The same chain with one more segment of `len` bytes at its end (linked by the caller).
    #[inline]
    pub const fn grown(self, len: u32) -> FrameRef {
        FrameRef::chain(self.addr, self.len, self.segs() + 1, self.extra() + len)
    }

    /// Byte offset of the first byte in the area (inside the first segment's chunk).
    #[inline]
    pub const fn addr(&self) -> u64 {
        self.addr
    }

    /// Length of the whole packet in bytes (every segment).
    #[inline]
    pub const fn len(&self) -> u32 {
        self.len + (self.more & EXTRA)
    }

    /// Bytes in the first segment: the headers, what [`FrameArea::frame`] shows.
    #[inline]
    pub const fn head_len(&self) -> u32 {
        self.len
    }

    /// Segments after the first (0 for a frame of one chunk).
    #[inline]
    pub const fn segs(&self) -> u32 {
        self.more >> 24
    }

    /// Bytes in the segments after the first.
    #[inline]
    pub const fn extra(&self) -> u32 {
        self.more & EXTRA
    }

    /// A TCP segment larger than its MSS, carried whole ([`FrameArea::gso`] says how to cut it).
    #[inline]
    pub const fn is_gso(&self) -> bool {
        self.more & GSO_BIT != 0
    }

    /// The same packet, no longer marked whole ([`FrameRef::is_gso`]).
    #[inline]
    pub const fn without_gso(self) -> FrameRef {
        FrameRef { addr: self.addr, len: self.len, more: self.more & !GSO_BIT }
    }

    /// Chunks this reference owns (1 + [`FrameRef::segs`]), for the frame census.
    #[inline]
    pub const fn chunks(&self) -> u32 {
        1 + self.segs()
    }

    /// The segment words for a handoff ring: segments and their bytes (0 for one chunk).
    #[inline]
    pub const fn more_word(&self) -> u32 {
        self.more
    }

    /// The inverse of [`FrameRef::more_word`] with the head's address and length.
    #[inline]
    pub const fn from_words(addr: u64, head: u32, more: u32) -> FrameRef {
        FrameRef { addr, len: head, more }
    }

    /// True for a frame of no bytes (which no port produces).
    #[inline]
    pub const fn is_empty(&self) -> bool {
        self.len == 0 && self.more == 0
    }
}

/// Where the data of a received frame starts inside its chunk (`XDP_PACKET_HEADROOM`). The
/// headroom lets the switch push VLAN tags without moving the payload.
pub const FRAME_HEADROOM: u64 = 256;

/// Which pages back the area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSize {
    /// Ordinary 4 KiB pages.
    Normal,
    /// 2 MiB huge pages, falling back to normal pages (reported by [`FrameArea::page_size`]).
    Huge2M,
    /// 1 GiB huge pages, falling back to normal pages.
    Huge1G,
}

impl PageSize {
    /// Bytes per page.
    pub const fn bytes(self) -> usize {
        match self {
            PageSize::Normal => 4096,
            PageSize::Huge2M => 2 << 20,
            PageSize::Huge1G => 1 << 30,
        }
    }

    /// For people.
    pub const fn as_str(self) -> &'static str {
        match self {
            PageSize::Normal => "4 KiB",
            PageSize::Huge2M => "2 MiB",
            PageSize::Huge1G => "1 GiB",
        }
    }
}

/// The mapping itself; unmapped when the last handle drops.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    /// The memory file mapped (a memfd): another process maps the same memory from it.
    fd: OwnedFd,
}

// SAFETY: the mapping is plain memory that no one else frees; the pointer is only dereferenced
// through `FrameArea`, whose accessors are bounded and whose concurrent use is governed by the
// chunk-ownership discipline (module docs).
unsafe impl Send for Mapping {}
// SAFETY: as above; `Mapping` itself exposes nothing but its address.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned, and this is the last handle (the
        // mapping is held in an `Arc`), so no slice of it is alive. A failed munmap leaks the
        // mapping, which is harmless at teardown.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// A memory file of `len` bytes (`memfd_create` with `flags` besides close-on-exec).
fn memfd(len: usize, flags: libc::c_uint) -> io::Result<OwnedFd> {
    let name = c"xswitch-frames";
    // SAFETY: a valid NUL-terminated name; the call creates a new descriptor.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | flags) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sizing a file we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Maps all `len` bytes of the memory file `fd`, shared (so another process that maps the
/// same file sees the same frames).
fn map_fd(fd: OwnedFd, len: usize) -> io::Result<Mapping> {
    // SAFETY: a new shared mapping of a file we hold, with a null hint: no existing memory is
    // affected. The kernel checks the length against the file.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
    Ok(Mapping { ptr, len, fd })
}

/// A handle on the shared frame memory.
#[derive(Debug)]
pub struct FrameArea {
    map: Arc<Mapping>,
    ptr: NonNull<u8>,
    len: usize,
    chunk_size: u32,
    pages: PageSize,
}

// SAFETY: a handle is a bounded view of a mapping that lives as long as any handle; moving it
// to another thread moves the right to touch the frames its worker owns. Concurrent access by
// several handles is governed by the chunk-ownership discipline above, and `&mut` access
// requires `&mut self`.
unsafe impl Send for FrameArea {}

impl FrameArea {
    /// Maps `chunks * chunk_size` bytes. `chunk_size` must be a power of two in 2048..=4096
    /// (the AF_XDP aligned-mode rule).
    pub fn new(chunks: u32, chunk_size: u32, pages: PageSize) -> io::Result<FrameArea> {
        if !chunk_size.is_power_of_two() || !(2048..=4096).contains(&chunk_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("frame size {chunk_size} must be 2048 or 4096"),
            ));
        }
        if chunks == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "zero frames"));
        }
        let len = chunks as usize * chunk_size as usize;
        let mut got = PageSize::Normal;
        let mut made = None;
        if pages != PageSize::Normal && len.is_multiple_of(pages.bytes()) {
            let size =
                if pages == PageSize::Huge1G { libc::MFD_HUGE_1GB } else { libc::MFD_HUGE_2MB };
            if let Ok(m) = memfd(len, libc::MFD_HUGETLB | size).and_then(|fd| map_fd(fd, len)) {
                made = Some(m);
                got = pages;
            }
        }
        let mapping = match made {
            Some(m) => m,
            None => {
                let m = map_fd(memfd(len, 0)?, len)?;
                // Ask for transparent huge pages before the first touch, then populate: frames
                // sit one or two per 4 KiB page, so a large area on 4 KiB pages spreads its TLB
                // footprint thin. A precaution: the pipeline bench showed no measurable gain
                // (docs/PERFORMANCE.md). Both calls are advice; if they fail the area keeps
                // ordinary pages, which work the same.
                // SAFETY: ptr/len are the mapping just created; advice does not change its
                // contents or validity, and writing zeros to it is within bounds.
                unsafe {
                    let ptr = m.ptr.as_ptr().cast::<libc::c_void>();
                    libc::madvise(ptr, len, libc::MADV_HUGEPAGE);
                    if libc::madvise(ptr, len, libc::MADV_POPULATE_WRITE) != 0 {
                        std::ptr::write_bytes(ptr.cast::<u8>(), 0, len);
                    }
                }
                m
            }
        };
        let ptr = mapping.ptr;
        Ok(FrameArea { map: Arc::new(mapping), ptr, len, chunk_size, pages: got })
    }

    /// The area of another process, from the memory file it handed over ([`FrameArea::file`])
    /// with its geometry: the same memory, so the UMEM the kernel registered for that
    /// process's sockets is this area too (a takeover).
    pub fn adopt(
        fd: OwnedFd,
        chunks: u32,
        chunk_size: u32,
        pages: PageSize,
    ) -> io::Result<FrameArea> {
        if !chunk_size.is_power_of_two() || !(2048..=4096).contains(&chunk_size) || chunks == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad frame area geometry"));
        }
        let len = chunks as usize * chunk_size as usize;
        // SAFETY: `st` is a plain struct the kernel fills; `fd` is a live descriptor.
        let size = unsafe {
            let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
            if libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            st.assume_init().st_size
        };
        if size as usize != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the frame area handed over has {size} bytes, not {chunks} x {chunk_size}"),
            ));
        }
        let mapping = map_fd(fd, len)?;
        let ptr = mapping.ptr;
        Ok(FrameArea { map: Arc::new(mapping), ptr, len, chunk_size, pages })
    }

    /// The memory file behind the area, for handing it to another process (a takeover).
    pub fn file(&self) -> BorrowedFd<'_> {
        self.map.fd.as_fd()
    }

    /// Another handle on the same memory, for another worker.
    ///
    /// # Safety
    /// Both handles can build `&mut [u8]` over any chunk from safe code, so the caller promises
    /// that no chunk is touched through two handles at once: each handle's thread touches only
    /// the frames it owns (whose [`FrameRef`] it holds, or chunks of its pool), and a frame
    /// crosses between threads only through a channel that orders the accesses (the handoff
    /// rings, whose release/acquire pairs do). The workers keep this (crate::worker docs).
    pub unsafe fn share(&self) -> FrameArea {
        FrameArea {
            map: self.map.clone(),
            ptr: self.ptr,
            len: self.len,
            chunk_size: self.chunk_size,
            pages: self.pages,
        }
    }

    /// The chunk index of an address.
    #[inline]
    pub fn chunk_index(&self, addr: u64) -> u32 {
        (addr / u64::from(self.chunk_size)) as u32
    }

    /// Bytes in the area.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true (an area has at least one chunk); for clippy's `len` convention.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Chunk (frame buffer) size.
    #[inline]
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Number of chunks.
    #[inline]
    pub fn chunks(&self) -> u32 {
        (self.len / self.chunk_size as usize) as u32
    }

    /// True when the huge-page mapping succeeded.
    pub fn huge_pages(&self) -> bool {
        self.pages != PageSize::Normal
    }

    /// The pages that back the area (explicit huge pages, or ordinary ones).
    pub fn page_size(&self) -> PageSize {
        self.pages
    }

    /// Asks the kernel to keep chunks `chunks` of the area on NUMA node `node` (moving what is
    /// there already): a worker's frames next to its ports and its CPU. Advice: with the node
    /// full the kernel uses another.
    pub fn prefer_node(&self, chunks: std::ops::Range<u32>, node: u32) -> io::Result<()> {
        const MPOL_PREFERRED: libc::c_long = 1;
        const MPOL_MF_MOVE: libc::c_long = 1 << 1;
        if node >= 64 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "node beyond 63"));
        }
        let page = 4096usize;
        let start = (chunks.start as usize * self.chunk_size as usize) / page * page;
        let end = (chunks.end as usize * self.chunk_size as usize).min(self.len);
        if end <= start {
            return Ok(());
        }
        let mask: libc::c_ulong = 1 << node;
        // SAFETY: the range lies inside this mapping (start rounded down to a page, which is
        // still inside it because the mapping is page aligned; end clamped to its length), the
        // node mask is a live local of 64 bits and maxnode says so. mbind changes where pages
        // live, never their contents or validity.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mbind,
                self.ptr.as_ptr().add(start),
                end - start,
                MPOL_PREFERRED,
                &mask as *const libc::c_ulong,
                64 as libc::c_ulong,
                MPOL_MF_MOVE,
            )
        };
        if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }

    /// Start of the mapping (for UMEM registration).
    pub fn base_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The chunk base of any address inside it.
    #[inline]
    pub fn chunk_base(&self, addr: u64) -> u64 {
        addr & !(u64::from(self.chunk_size) - 1)
    }

    /// Checks that `[addr, addr + len)` lies inside one chunk of the area.
    #[inline]
    fn check(&self, addr: u64, len: usize) -> Option<usize> {
        let start = usize::try_from(addr).ok()?;
        let end = start.checked_add(len)?;
        let chunk_end = (self.chunk_base(addr) + u64::from(self.chunk_size)) as usize;
        if end <= chunk_end && chunk_end <= self.len { Some(start) } else { None }
    }

    /// The bytes of a frame, or None if it does not lie inside one chunk.
    #[inline]
    pub fn frame(&self, f: &FrameRef) -> Option<&[u8]> {
        let start = self.check(f.addr, f.len as usize)?;
        // SAFETY: `check` proved start..start+len is inside the mapping, which lives as long as
        // `self`. The caller owns this chunk (module docs), so no one writes it meanwhile.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(start), f.len as usize) })
    }

    /// The bytes of a frame, mutable.
    #[inline]
    pub fn frame_mut(&mut self, f: &FrameRef) -> Option<&mut [u8]> {
        let start = self.check(f.addr, f.len as usize)?;
        // SAFETY: bounds as in `frame`; `&mut self` rules out any other slice of this area
        // from this handle while the returned one lives.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(start), f.len as usize)
        })
    }

    /// The whole chunk holding `addr`, and the offset of `addr` in it (for header pushes that
    /// grow the frame into its headroom).
    #[inline]
    pub fn chunk_mut(&mut self, addr: u64) -> Option<(&mut [u8], usize)> {
        let base = self.chunk_base(addr);
        let start = self.check(base, self.chunk_size as usize)?;
        let off = (addr - base) as usize;
        // SAFETY: `check` bounded the chunk inside the mapping; exclusive as in `frame_mut`.
        let chunk = unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(start), self.chunk_size as usize)
        };
        Some((chunk, off))
    }
}

impl FrameArea {
    /// Marks `f` a TCP segment to be cut as `g` says: `g` goes in bytes 8 to 12 of its first
    /// chunk's headroom (after the chain's link word; no data or pushed tag reaches them).
    pub fn set_gso(&mut self, f: FrameRef, g: Gso) -> FrameRef {
        let Some((chunk, _)) = self.chunk_mut(f.addr) else { return f };
        let kind = if g.v6 { 4 } else { 1 } | if g.ecn { 0x80 } else { 0 };
        chunk[8..12].copy_from_slice(&[kind, 0, g.mss as u8, (g.mss >> 8) as u8]);
        FrameRef { addr: f.addr, len: f.len, more: f.more | GSO_BIT }
    }

    /// How to cut `f`, when it is marked whole ([`FrameArea::set_gso`]).
    #[inline]
    pub fn gso(&self, f: &FrameRef) -> Option<Gso> {
        if !f.is_gso() {
            return None;
        }
        let &[kind, _, lo, hi] = self.seg(self.chunk_base(f.addr) + 8, 4)? else { return None };
        Some(Gso { v6: kind & 0x7f == 4, ecn: kind & 0x80 != 0, mss: u16::from_le_bytes([lo, hi]) })
    }

    /// Copies the bytes of `src` to `dst_addr`, which must lie in another chunk. Returns the new
    /// frame, or None if either range is out of bounds or the chunks are the same.
    #[inline]
    pub fn copy_frame(&mut self, src: &FrameRef, dst_addr: u64) -> Option<FrameRef> {
        let len = src.len as usize;
        let s = self.check(src.addr, len)?;
        let d = self.check(dst_addr, len)?;
        if self.chunk_base(src.addr) == self.chunk_base(dst_addr) {
            return None;
        }
        // SAFETY: both ranges are inside the mapping (`check`) and inside two different chunks,
        // so they do not overlap; the caller owns both chunks and `&mut self` excludes other
        // slices from this handle.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(s), self.ptr.as_ptr().add(d), len);
        }
        Some(FrameRef::new(dst_addr, src.len))
    }

    /// Links the segment at `from` (any address in its chunk) to the next one at `next`, of
    /// `len` bytes: the word goes in the first 8 bytes of `from`'s chunk, which frame data never
    /// reaches (it starts at [`FRAME_HEADROOM`], less a VLAN push). False when either address
    /// is outside the area.
    #[inline]
    pub fn link(&mut self, from: u64, next: u64, len: u32) -> bool {
        if next >= 1 << 40 || self.check(next, len as usize).is_none() {
            return false;
        }
        let Some((chunk, _)) = self.chunk_mut(from) else { return false };
        chunk[..8].copy_from_slice(&(next | (u64::from(len) << 40)).to_le_bytes());
        true
    }

    /// The segment after the one at `addr` (address and length), as [`FrameArea::link`] wrote
    /// it; None when the word does not name a range inside one chunk of the area.
    #[inline]
    pub fn next_seg(&self, addr: u64) -> Option<(u64, u32)> {
        let base = self.chunk_base(addr);
        let start = self.check(base, 8)?;
        let mut w = [0u8; 8];
        // SAFETY: `check` bounded the 8 bytes inside the mapping; the caller owns the chunk.
        w.copy_from_slice(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(start), 8) });
        let w = u64::from_le_bytes(w);
        let (next, len) = (w & ((1 << 40) - 1), (w >> 40) as u32);
        self.check(next, len as usize)?;
        if self.chunk_base(next) == base {
            return None;
        }
        Some((next, len))
    }

    /// Calls `each(addr, len)` for the segments of `f` after the first, in order (none for a
    /// frame of one chunk). Stops early at a link that names nothing valid (the chain was
    /// corrupted: a bug) and returns how many it visited.
    #[inline]
    pub fn each_seg(&self, f: &FrameRef, mut each: impl FnMut(u64, u32)) -> u32 {
        let mut at = f.addr;
        for i in 0..f.segs() {
            let Some((next, len)) = self.next_seg(at) else { return i };
            each(next, len);
            at = next;
        }
        f.segs()
    }

    /// The bytes of every segment of `f` in order, the head first (lazily: a reader that stops
    /// early follows no further link). Stops at a link that names nothing valid.
    #[inline]
    pub fn segments<'a>(&'a self, f: &FrameRef) -> impl Iterator<Item = &'a [u8]> + 'a {
        let head = self.frame(f).map(|b| (f.addr, b));
        let segs = f.segs();
        let mut left = segs;
        std::iter::successors(head, move |&(at, _)| {
            left = left.checked_sub(1)?;
            let (next, len) = self.next_seg(at)?;
            Some((next, self.seg(next, len)?))
        })
        .take(1 + segs as usize)
        .map(|(_, b)| b)
    }

    /// The bytes of the segment at `addr` of `len` bytes (one of a chain), or None when out of
    /// bounds.
    #[inline]
    pub fn seg(&self, addr: u64, len: u32) -> Option<&[u8]> {
        self.frame(&FrameRef::new(addr, len))
    }

    /// The bytes of the segment at `addr` of `len` bytes, mutable.
    #[inline]
    pub fn seg_mut(&mut self, addr: u64, len: u32) -> Option<&mut [u8]> {
        self.frame_mut(&FrameRef::new(addr, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_per_chunk() {
        let mut a = FrameArea::new(4, 2048, PageSize::Normal).unwrap();
        assert_eq!((a.chunks(), a.len()), (4, 8192));
        assert!(a.frame(&FrameRef::new(256, 1792)).is_some());
        // Crosses into the next chunk.
        assert!(a.frame(&FrameRef::new(256, 1793)).is_none());
        // Past the end of the area.
        assert!(a.frame(&FrameRef::new(8192, 1)).is_none());
        assert!(a.frame(&FrameRef::new(u64::MAX, 1)).is_none());
        let f = FrameRef::new(2048 + 256, 4);
        a.frame_mut(&f).unwrap().copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(a.frame(&f).unwrap(), &[1, 2, 3, 4]);
        let (chunk, off) = a.chunk_mut(2048 + 300).unwrap();
        assert_eq!((chunk.len(), off), (2048, 300));
        assert_eq!(chunk[256..260], [1, 2, 3, 4]);
        assert_eq!(a.chunk_base(2048 + 300), 2048);
        let c = a.copy_frame(&f, 4096 + 256).unwrap();
        assert_eq!(a.frame(&c).unwrap(), &[1, 2, 3, 4]);
        assert!(a.copy_frame(&f, 2048 + 1024).is_none(), "same chunk");
        assert!(a.copy_frame(&f, 8190).is_none(), "out of bounds");
    }

    #[test]
    fn shared_handles_see_one_memory_that_outlives_the_first() {
        let mut a = FrameArea::new(4, 2048, PageSize::Normal).unwrap();
        // SAFETY: one thread, and `a` is dropped before `b` reads.
        let b = unsafe { a.share() };
        let f = FrameRef::new(3 * 2048 + 256, 3);
        a.frame_mut(&f).unwrap().copy_from_slice(&[7, 8, 9]);
        drop(a);
        assert_eq!(b.frame(&f).unwrap(), &[7, 8, 9]);
        assert_eq!(b.chunk_index(f.addr()), 3);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(FrameArea::new(4, 1000, PageSize::Normal).is_err());
        assert!(FrameArea::new(4, 8192, PageSize::Normal).is_err());
        assert!(FrameArea::new(0, 2048, PageSize::Normal).is_err());
    }

    #[test]
    fn huge_pages_fall_back() {
        // Whether or not huge pages are reserved here, the area must come up.
        let a = FrameArea::new(1024, 2048, PageSize::Huge2M).unwrap();
        assert_eq!(a.len(), 2 << 20);
        assert_eq!(a.huge_pages(), a.page_size() == PageSize::Huge2M);
        // 2 MiB is no multiple of 1 GiB: ordinary pages.
        let b = FrameArea::new(1024, 2048, PageSize::Huge1G).unwrap();
        assert_eq!(b.page_size(), PageSize::Normal);
    }

    #[test]
    fn chunks_can_be_kept_on_node_zero() {
        // Every machine has a node 0; the call must be accepted and change nothing visible.
        let mut a = FrameArea::new(64, 2048, PageSize::Normal).unwrap();
        let f = FrameRef::new(10 * 2048 + FRAME_HEADROOM, 4);
        a.frame_mut(&f).unwrap().copy_from_slice(&[1, 2, 3, 4]);
        a.prefer_node(8..16, 0).unwrap();
        assert_eq!(a.frame(&f).unwrap(), &[1, 2, 3, 4]);
        assert!(a.prefer_node(0..4, 64).is_err());
    }
}
