//! Guest memory that its frontend shrinks after sharing it. The switch maps the files a
//! frontend sends with `SET_MEM_TABLE`; `SET_MEM_TABLE` checks that each region lies within
//! its file, but nothing stops the frontend from truncating the file afterwards (a memfd
//! without `F_SEAL_SHRINK`, a regular file, a hugetlbfs file), and a load or store in the
//! mapping past the file's new end raises SIGBUS, which would kill the switch and every
//! tenant with it.
//!
//! So every mapped region is registered in a fixed table that a SIGBUS handler reads: a fault
//! inside a registered region replaces the whole region with anonymous memory (zeros, the
//! switch's own, no longer shared) and marks it; the access then completes on that memory and
//! the port, seeing the mark at its next burst, faults as for any broken guest (its rings are
//! dropped and the connection closed). A SIGBUS anywhere else goes to the handler that was
//! there before (Rust's own, for stack overflows) or kills the process as it would have.
//! DPDK's vhost library and Open vSwitch have no such guard; QEMU seals its memfd memory
//! against shrinking by default (`seal=on`), which prevents the case for QEMU guests.
//!
//! Written here because nothing in the ecosystem guards `vm-memory` mappings this way. The
//! handler only reads atomics and calls `mmap` (async-signal-safe; in the workers' seccomp
//! filter).

use std::ops::Deref;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Regions the table holds at once (every port's current and retiring memory tables).
const SLOTS: usize = 256;

/// Regions of one memory table that are guarded (`get_max_mem_slots` offers 8).
const PER_TABLE: usize = 32;

/// A registered region: [start, end) of host addresses; `hit` once a SIGBUS replaced it.
struct Slot {
    taken: AtomicBool,
    start: AtomicUsize,
    end: AtomicUsize,
    hit: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)] // the initialiser of the table's slots
const FREE: Slot = Slot {
    taken: AtomicBool::new(false),
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    hit: AtomicBool::new(false),
};

static TABLE: [Slot; SLOTS] = [FREE; SLOTS];

/// The SIGBUS disposition before ours (written once, before ours is installed).
static mut PREVIOUS: Option<libc::sigaction> = None;
static INSTALL: Once = Once::new();

/// A guest's memory table, its regions guarded while it lives.
pub struct Guarded {
    mem: GuestMemoryMmap,
    slots: [u16; PER_TABLE],
    n: usize,
}

impl Guarded {
    /// Guards the regions of `mem` (the handler is installed at the first call). Regions the
    /// table has no room for stay unguarded, and are logged.
    pub fn new(mem: GuestMemoryMmap) -> Guarded {
        INSTALL.call_once(install);
        let mut g = Guarded { mem, slots: [0; PER_TABLE], n: 0 };
        for r in g.mem.iter() {
            let start = r.as_ptr() as usize;
            let end = start + r.len() as usize;
            match (g.n < PER_TABLE).then(|| register(start, end)).flatten() {
                Some(i) => {
                    g.slots[g.n] = i;
                    g.n += 1;
                }
                None => tracing::warn!(
                    "vhost-user: a guest memory region left unguarded (table full): a frontend \
                     that shrinks its file would crash the switch"
                ),
            }
        }
        g
    }

    /// True once a SIGBUS replaced one of its regions (the frontend shrank its file).
    #[inline]
    pub fn bus_faulted(&self) -> bool {
        self.slots[..self.n].iter().any(|&i| TABLE[usize::from(i)].hit.load(Ordering::Relaxed))
    }
}

impl Deref for Guarded {
    type Target = GuestMemoryMmap;

    fn deref(&self) -> &GuestMemoryMmap {
        &self.mem
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // Out of the table before the regions are unmapped (the fields drop after this).
        for &i in &self.slots[..self.n] {
            let s = &TABLE[usize::from(i)];
            s.end.store(0, Ordering::Release);
            s.start.store(0, Ordering::Release);
            s.taken.store(false, Ordering::Release);
        }
    }
}

/// Takes a free slot for [start, end); its index, or None when the table is full.
fn register(start: usize, end: usize) -> Option<u16> {
    for (i, s) in TABLE.iter().enumerate() {
        if s.taken.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            s.hit.store(false, Ordering::Relaxed);
            s.start.store(start, Ordering::Release);
            s.end.store(end, Ordering::Release);
            return Some(i as u16);
        }
    }
    None
}

/// Installs the SIGBUS handler, keeping the disposition it replaces.
fn install() {
    // SAFETY: sigaction with zeroed structures filled in here; PREVIOUS is written once,
    // before the handler that reads it is installed (Once orders both).
    unsafe {
        let mut new: libc::sigaction = std::mem::zeroed();
        new.sa_sigaction = on_sigbus as *const () as usize;
        new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut new.sa_mask);
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) == 0 {
            PREVIOUS = Some(old);
        }
        if libc::sigaction(libc::SIGBUS, &new, std::ptr::null_mut()) != 0 {
            tracing::warn!("vhost-user: no SIGBUS handler: {}", std::io::Error::last_os_error());
        }
    }
}

/// The handler: a fault in a registered region replaces the region with anonymous memory and
/// marks it; any other goes to the previous disposition.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    for s in &TABLE {
        let (start, end) = (s.start.load(Ordering::Acquire), s.end.load(Ordering::Acquire));
        if start <= addr && addr < end {
            // SAFETY: [start, end) is a mapping of a guest's region the switch made and still
            // holds (registered until its Guarded drops); replacing it with private anonymous
            // memory of the same size keeps every pointer into it valid.
            let p = unsafe {
                libc::mmap(
                    start as *mut libc::c_void,
                    end - start,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                s.hit.store(true, Ordering::Release);
                return;
            }
        }
    }
    // SAFETY: PREVIOUS was written before this handler was installed and never after; the
    // previous handler is called as the kind it was installed as, or the default restored
    // (the faulting access then raises SIGBUS again, with its default action).
    unsafe {
        match *std::ptr::addr_of!(PREVIOUS) {
            Some(p) if p.sa_sigaction != libc::SIG_DFL && p.sa_sigaction != libc::SIG_IGN => {
                if p.sa_flags & libc::SA_SIGINFO != 0 {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        std::mem::transmute(p.sa_sigaction);
                    f(sig, info, ctx);
                } else {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(p.sa_sigaction);
                    f(sig);
                }
            }
            _ => {
                libc::signal(libc::SIGBUS, libc::SIG_DFL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use vm_memory::{Bytes, FileOffset, GuestAddress};

    use super::*;

    #[test]
    fn a_region_whose_file_shrinks_is_replaced_and_marked_not_a_crash() {
        let path = std::env::temp_dir().join(format!("xswitch-guard-{}", std::process::id()));
        let mut f = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
        let ranges =
            vec![(GuestAddress(0), 8192usize, Some(FileOffset::new(f.try_clone().unwrap(), 0)))];
        let mem = Guarded::new(GuestMemoryMmap::from_ranges_with_files(ranges).unwrap());
        let _ = std::fs::remove_file(&path);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(4096)).unwrap(), 7);
        assert!(!mem.bus_faulted());
        f.set_len(0).unwrap();
        // Past the file's end now: SIGBUS, caught; the region reads as zeros from here on.
        assert_eq!(mem.read_obj::<u8>(GuestAddress(4096)).unwrap(), 0);
        assert!(mem.bus_faulted());
        mem.write_obj(1u8, GuestAddress(0)).unwrap();
    }
}
