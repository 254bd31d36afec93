//! How an idle worker waits: in `ppoll` on its XDP sockets (the kernel wakes it on the first
//! frame a socket receives, as Open vSwitch's non-PMD AF_XDP mode and the kernel's xdpsock do)
//! and on its [`Bell`], which the other workers ring when they hand it frames while it sleeps.
//! Nothing here runs per packet: a worker waits only after a run of empty breaths.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::time::Duration;

/// The descriptors one wait watches, kept between waits so that waiting allocates nothing
/// once it has seen its largest set.
#[derive(Debug, Default)]
pub struct Waiter {
    fds: Vec<libc::pollfd>,
}

impl Waiter {
    /// Forgets the descriptors of the last wait.
    pub fn clear(&mut self) {
        self.fds.clear();
    }

    /// Watches `fd` for readability (an XDP socket's RX ring, a bell).
    pub fn add(&mut self, fd: RawFd) {
        self.fds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
    }

    /// Sleeps until one of the descriptors is readable or `timeout` has passed. Returns how
    /// many are readable (0 on a timeout or an interrupted wait).
    pub fn wait(&mut self, timeout: Duration) -> usize {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `fds` is a live, writable array of `len` pollfd structs; `ts` lives across
        // the call; no signal mask is passed.
        let r = unsafe {
            libc::ppoll(
                self.fds.as_mut_ptr(),
                self.fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        r.max(0) as usize
    }
}

/// A worker's doorbell: an eventfd the others write to when they hand it frames while it
/// sleeps, and the flag that says it does.
#[derive(Debug)]
pub struct Bell {
    fd: Option<OwnedFd>,
    asleep: AtomicBool,
}

impl Bell {
    /// A new bell. Without an eventfd (the kernel refused one) it never rings: the sleeper
    /// wakes at its timeout.
    pub fn new() -> Bell {
        // SAFETY: plain eventfd creation; the descriptor is owned by nobody else.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        // SAFETY: `raw` is a new descriptor owned by nobody else.
        let fd = (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw) });
        Bell { fd, asleep: AtomicBool::new(false) }
    }

    /// The descriptor to wait on, if there is one.
    pub fn fd(&self) -> Option<RawFd> {
        self.fd.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The sleeper, before it checks its inbox one last time and waits: from now on a sender
    /// that publishes frames rings. The fence orders this store before the sleeper's reads of
    /// its inbox, against the sender's fence between its publish and its read of the flag:
    /// either the sleeper sees the frames or the sender sees it asleep.
    pub fn arm(&self) {
        self.asleep.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// The sleeper is awake again: empties the eventfd.
    pub fn disarm(&self) {
        self.asleep.store(false, Ordering::Relaxed);
        if let Some(fd) = &self.fd {
            let mut v = 0u64;
            // SAFETY: reads 8 bytes into `v` from our non-blocking eventfd.
            let _ = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        }
    }

    /// A sender, after publishing frames for the sleeper: wakes it if it sleeps. Returns
    /// whether it rang.
    pub fn ring_if_asleep(&self) -> bool {
        fence(Ordering::SeqCst);
        if !self.asleep.load(Ordering::Relaxed) {
            return false;
        }
        let Some(fd) = &self.fd else { return false };
        let one = 1u64;
        // SAFETY: writes 8 bytes from `one` to our non-blocking eventfd.
        let r = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        r == 8 || io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)
    }
}

impl Default for Bell {
    fn default() -> Self {
        Bell::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_bell_wakes_its_sleeper_only_while_it_sleeps() {
        let bell = Bell::new();
        assert!(bell.fd().is_some());
        assert!(!bell.ring_if_asleep(), "nobody sleeps: no ring");
        bell.arm();
        assert!(bell.ring_if_asleep());
        let mut w = Waiter::default();
        w.add(bell.fd().unwrap());
        let t = Instant::now();
        assert_eq!(w.wait(Duration::from_secs(5)), 1);
        assert!(t.elapsed() < Duration::from_secs(1));
        bell.disarm();
        w.clear();
        w.add(bell.fd().unwrap());
        let t = Instant::now();
        assert_eq!(w.wait(Duration::from_millis(20)), 0, "drained: the next wait times out");
        assert!(t.elapsed() >= Duration::from_millis(15));
    }
}
