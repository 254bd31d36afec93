//! The four AF_XDP rings, mapped from the socket: single-producer single-consumer queues whose
//! producer and consumer indices are shared with the kernel.
//!
//! # Memory ordering
//! As in the kernel's `xsk_queue.h`: a producer writes entries, then publishes the producer
//! index with Release; the consumer reads the producer index with Acquire before reading
//! entries, and publishes its consumer index with Release after it is done with them. Our side
//! caches the other side's index and re-reads it only when the cache says the ring is full or
//! empty, so most batches touch the shared cache line once.

use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// One mapped ring with entries of type `T` (`u64` for fill and completion, `xdp_desc` for
/// RX and TX).
#[derive(Debug)]
pub struct Ring<T: Copy> {
    map: NonNull<u8>,
    map_len: usize,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<u32>,
    entries: NonNull<T>,
    mask: u32,
    size: u32,
    /// Our own index (producer for fill/TX, consumer for RX/completion).
    local: u32,
    /// Last seen index of the other side.
    cached: u32,
}

// SAFETY: the mapping is owned by this value; the kernel is the only other party and
// synchronises through the atomics. Moving the ring to another thread moves that ownership.
unsafe impl<T: Copy> Send for Ring<T> {}

impl<T: Copy> Ring<T> {
    /// Maps ring `pgoff` of socket `fd` with `size` entries, at the offsets the kernel gave.
    pub fn map(fd: RawFd, pgoff: u64, size: u32, off: &libc::xdp_ring_offset) -> io::Result<Self> {
        let map_len = off.desc as usize + size as usize * std::mem::size_of::<T>();
        // SAFETY: a shared mapping of the socket's ring; the kernel validates fd, offset, size.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                pgoff as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = p.cast::<u8>();
        let at = |o: u64| {
            // SAFETY: the kernel's offsets lie inside the mapping of `map_len` bytes.
            unsafe { base.add(o as usize) }
        };
        let nn = |p: *mut u8| NonNull::new(p).ok_or_else(|| io::Error::other("null ring"));
        Ok(Ring {
            map: nn(base)?,
            map_len,
            producer: nn(at(off.producer))?.cast(),
            consumer: nn(at(off.consumer))?.cast(),
            flags: nn(at(off.flags))?.cast(),
            entries: nn(at(off.desc))?.cast(),
            mask: size - 1,
            size,
            // A fresh socket's rings start at index 0 on both sides.
            local: 0,
            cached: 0,
        })
    }

    fn producer_index(&self) -> u32 {
        // SAFETY: points into the live mapping; the kernel accesses it atomically too.
        unsafe { self.producer.as_ref() }.load(Ordering::Acquire)
    }

    /// Entries the ring holds.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// A ring mapped from a socket another process used: our side starts where that
    /// process left it (`producer`: we produce into this ring, fill or TX), the other side's
    /// index as last published. The other process no longer touches the ring.
    pub fn resume(&mut self, producer: bool) {
        if producer {
            self.local = self.producer_index();
            self.cached = self.consumer_index();
        } else {
            self.local = self.consumer_index();
            self.cached = self.producer_index();
        }
    }

    fn consumer_index(&self) -> u32 {
        // SAFETY: as above.
        unsafe { self.consumer.as_ref() }.load(Ordering::Acquire)
    }

    /// The ring's flags word (`XDP_RING_NEED_WAKEUP`).
    pub fn needs_wakeup(&self) -> bool {
        // SAFETY: points into the live mapping; a racy read of a flag is what the ABI expects
        // (libxdp reads it with a plain load too), so read it volatile.
        let f = unsafe { std::ptr::read_volatile(self.flags.as_ptr()) };
        f & libc::XDP_RING_NEED_WAKEUP != 0
    }

    fn slot(&self, idx: u32) -> *mut T {
        // SAFETY: `idx & mask` < size, and the entry array holds `size` entries.
        unsafe { self.entries.as_ptr().add((idx & self.mask) as usize) }
    }

    // ----- producer side (fill, TX) -----

    /// Free slots we may produce into.
    pub fn free(&mut self) -> u32 {
        let used = self.local.wrapping_sub(self.cached);
        if used < self.size {
            let free = self.size - used;
            if free > 0 {
                return free;
            }
        }
        self.cached = self.consumer_index();
        self.size - self.local.wrapping_sub(self.cached)
    }

    /// Entries produced and not yet consumed by the kernel.
    pub fn outstanding(&mut self) -> u32 {
        self.cached = self.consumer_index();
        self.local.wrapping_sub(self.cached)
    }

    /// Writes up to `free()` items and publishes them. Returns how many.
    pub fn produce(&mut self, items: impl Iterator<Item = T>) -> u32 {
        let room = self.free();
        let mut n = 0;
        for it in items.take(room as usize) {
            // SAFETY: the slot is between the consumer and our producer index: the kernel does
            // not read it until we publish.
            unsafe { self.slot(self.local.wrapping_add(n)).write(it) };
            n += 1;
        }
        if n > 0 {
            self.local = self.local.wrapping_add(n);
            // SAFETY: live mapping; Release orders the entry writes before the index.
            unsafe { self.producer.as_ref() }.store(self.local, Ordering::Release);
        }
        n
    }

    /// The entries we produced that the kernel has not consumed (by its published index).
    /// Only for a socket the kernel no longer serves (its device is gone): otherwise the
    /// kernel may be reading them right now.
    pub fn unconsumed(&mut self) -> Vec<T> {
        let from = self.consumer_index();
        let n = self.local.wrapping_sub(from).min(self.size);
        (0..n)
            .map(|i| {
                // SAFETY: an index between the consumer and our producer: a slot we wrote.
                unsafe { self.slot(from.wrapping_add(i)).read() }
            })
            .collect()
    }

    // ----- consumer side (RX, completion) -----

    /// Entries ready to consume.
    pub fn available(&mut self) -> u32 {
        let avail = self.cached.wrapping_sub(self.local);
        if avail > 0 {
            return avail;
        }
        self.cached = self.producer_index();
        self.cached.wrapping_sub(self.local)
    }

    /// Reads up to `max` entries into `f` and releases them to the kernel. Returns how many.
    pub fn consume(&mut self, max: u32, mut f: impl FnMut(T)) -> u32 {
        let n = self.available().min(max);
        for i in 0..n {
            // SAFETY: between our consumer index and the producer index the kernel published
            // (Acquire in `available`): initialised and not written until we release it.
            f(unsafe { self.slot(self.local.wrapping_add(i)).read() });
        }
        if n > 0 {
            self.local = self.local.wrapping_add(n);
            // SAFETY: live mapping; Release orders our reads before handing the slots back.
            unsafe { self.consumer.as_ref() }.store(self.local, Ordering::Release);
        }
        n
    }
}

impl<T: Copy> Drop for Ring<T> {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping created in `map`; no pointer into it outlives `self`.
        unsafe {
            libc::munmap(self.map.as_ptr().cast(), self.map_len);
        }
    }
}
