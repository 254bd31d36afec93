//! One AF_XDP socket bound to one (interface, queue), as a [`Port`].
//!
//! All sockets of a switch share one UMEM: the first socket registers the frame area, the
//! others bind with `XDP_SHARED_UMEM` and bring their own fill and completion rings, so a frame
//! received on one interface is sent on another by passing its address. The kernel requires
//! shared sockets to inherit the bind mode (copy or zero-copy) and `need_wakeup` from the
//! first one.
//!
//! It does _not_ own the XDP program: [`super::XdpAttachment`] does, per interface.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::ring::Ring;
use crate::batch::Batch;
use crate::frame::{FrameArea, FramePool, FrameRef, MAX_SEGS};
use crate::port::{Breath, Port, PortCensus, PortError};

/// Bind mode requested for a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// Try zero-copy, fall back to copy.
    Auto,
    /// Zero-copy or fail.
    ZeroCopy,
    /// Copy mode.
    Copy,
}

/// The mode a socket actually got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundMode {
    /// Driver zero-copy.
    ZeroCopy,
    /// Kernel copies frames between the driver and the UMEM.
    Copy,
}

impl BoundMode {
    /// As the config and the logs write it: `zero-copy` or `copy`.
    pub const fn as_str(self) -> &'static str {
        match self {
            BoundMode::ZeroCopy => "zero-copy",
            BoundMode::Copy => "copy",
        }
    }
}

/// The kernel's six per-socket counters (`struct xdp_statistics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskStats {
    /// Dropped for other reasons (for example no fill frame after the first retry).
    pub rx_dropped: u64,
    /// Invalid RX (fill) descriptors.
    pub rx_invalid_descs: u64,
    /// Invalid TX descriptors.
    pub tx_invalid_descs: u64,
    /// RX ring was full.
    pub rx_ring_full: u64,
    /// Fill ring was empty when a frame arrived.
    pub rx_fill_ring_empty_descs: u64,
    /// TX ring was empty at a wakeup.
    pub tx_ring_empty_descs: u64,
}

impl XskStats {
    /// Frames the kernel dropped on their way to the socket, before the switch saw them: a full
    /// RX ring, and the other reasons (no fill frame). An empty fill ring is a condition, not
    /// a count of frames: the frames it costs are in `rx_dropped`.
    pub fn lost(&self) -> u64 {
        self.rx_ring_full + self.rx_dropped
    }
}

/// Counters of the port glue itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskPortStats {
    /// `sendto`/`recvfrom` wakeups that failed with something other than EAGAIN/EBUSY/ENOBUFS.
    pub kick_errors: u64,
    /// Wakeups issued.
    pub kicks: u64,
    /// Packets received as chains longer than [`MAX_SEGS`] segments after the first, dropped
    /// whole (the kernel's copy mode never builds one); also counted as `too_big` drops of
    /// the port ([`Port::take_rx_drops`]).
    pub chains_too_long: u64,
}

/// A packet whose first frames arrived and whose last has not (an RX read may end in the
/// middle of a chain): its head so far and the address of its last segment.
#[derive(Debug)]
struct Partial {
    head: FrameRef,
    last: u64,
}

/// The fill, completion and RX rings are this many times `ring_size` (the TX ring is
/// `ring_size`): PERF(stalls) in docs/PERFORMANCE.md.
pub const FILL_RINGS: u32 = 4;

/// Most `sendto` wakeups per kick: 8 x 32 frames covers a full TX list.
const MAX_KICKS: u32 = 8;
/// Frames the kernel sends per `sendto` in copy mode (`TX_BATCH_SIZE`).
const KICK_BURST: u32 = 32;
/// Breaths TX frames may wait for a fuller burst before a wakeup.
const MAX_WAIT_BREATHS: u32 = 4;

/// An AF_XDP socket as a switch port.
#[derive(Debug)]
pub struct XskPort {
    fd: OwnedFd,
    ifname: String,
    queue: u32,
    mode: BoundMode,
    fill: Ring<u64>,
    comp: Ring<u64>,
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    /// Frames given to the fill ring and not yet back on RX.
    in_fill: u32,
    /// Frames given to the TX ring and not yet back on completion.
    in_tx: u32,
    /// Keep the fill ring this full (its size).
    fill_target: u32,
    /// Breaths since TX frames started waiting for a wakeup.
    waiting: u32,
    /// Masks a frame address to its chunk (`retire` compares chunks).
    chunk_mask: u64,
    /// Bound with `XDP_USE_SG`: packets larger than a frame arrive and leave as chains.
    multi_buffer: bool,
    /// A chain being received.
    partial: Option<Partial>,
    /// The rest of a chain dropped whole is still to come: drop it too.
    skip: bool,
    /// Packets dropped while receiving since the worker last asked.
    rx_drops: u32,
    /// Glue counters.
    pub stats: XskPortStats,
}

fn err(ifname: &str, queue: u32, what: &'static str, source: io::Error) -> PortError {
    PortError { ifname: ifname.into(), queue, what, source }
}

fn setsockopt<T>(fd: RawFd, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` is a live value of the size passed; the kernel copies it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Reads an `SOL_XDP` option that is a plain struct.
///
/// # Safety
/// `T` must be a `repr(C)` struct of integers only, so that all-zero bytes and whatever the
/// kernel writes are valid values of it.
unsafe fn get_struct<T>(fd: RawFd, opt: libc::c_int) -> io::Result<T> {
    let mut v = std::mem::MaybeUninit::<T>::zeroed();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `v` is writable for `len` bytes; the kernel writes at most `len`.
    let r = unsafe { libc::getsockopt(fd, libc::SOL_XDP, opt, v.as_mut_ptr().cast(), &mut len) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised, then (partly) overwritten by the kernel; any bytes are a valid
    // integer-only `T` (caller's contract).
    Ok(unsafe { v.assume_init() })
}

/// A socket's fill, completion, RX and TX rings.
type Rings = (Ring<u64>, Ring<u64>, Ring<libc::xdp_desc>, Ring<libc::xdp_desc>);

/// Maps the four rings of socket `f`, sized for `ring_size` (the fill, completion and RX rings
/// [`FILL_RINGS`] times that, see [`XskPort::open`]); the error says which.
fn map_rings(f: RawFd, ring_size: u32) -> Result<Rings, (&'static str, io::Error)> {
    let fill_size = FILL_RINGS * ring_size;
    // SAFETY: xdp_mmap_offsets is integers only.
    let off: libc::xdp_mmap_offsets = unsafe { get_struct(f, libc::XDP_MMAP_OFFSETS) }
        .map_err(|s| ("reading ring offsets", s))?;
    let fill = Ring::map(f, libc::XDP_UMEM_PGOFF_FILL_RING, fill_size, &off.fr)
        .map_err(|s| ("mapping the fill ring", s))?;
    let comp = Ring::map(f, libc::XDP_UMEM_PGOFF_COMPLETION_RING, fill_size, &off.cr)
        .map_err(|s| ("mapping the completion ring", s))?;
    let rx = Ring::map(f, libc::XDP_PGOFF_RX_RING as u64, fill_size, &off.rx)
        .map_err(|s| ("mapping the RX ring", s))?;
    let tx = Ring::map(f, libc::XDP_PGOFF_TX_RING as u64, ring_size, &off.tx)
        .map_err(|s| ("mapping the TX ring", s))?;
    Ok((fill, comp, rx, tx))
}

/// Which side of the socket a wakeup is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// `recvfrom`: the fill ring has frames again.
    Rx,
    /// `sendto`: the TX ring has descriptors.
    Tx,
}

/// The interface index of `ifname`.
pub fn ifindex(ifname: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        Err(io::Error::new(io::ErrorKind::NotFound, format!("no interface named {ifname}")))
    } else {
        Ok(i)
    }
}

impl XskPort {
    /// Opens a socket on `ifname` queue `queue` with rings of `ring_size` entries.
    ///
    /// `shared`: the port that registered the UMEM, or None to register `area` here.
    pub fn open(
        area: &FrameArea,
        ifname: &str,
        queue: u32,
        ring_size: u32,
        mode: BindMode,
        shared: Option<&XskPort>,
    ) -> Result<XskPort, PortError> {
        let e = |what, source| err(ifname, queue, what, source);
        let idx = ifindex(ifname).map_err(|s| e("interface lookup", s))?;
        // SAFETY: plain socket creation.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(e(
                "creating an AF_XDP socket (is this kernel built with XDP sockets, and are we root?)",
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: `raw` is a new descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let f = fd.as_raw_fd();
        if shared.is_none() {
            let reg = libc::xdp_umem_reg {
                addr: area.base_ptr() as u64,
                len: area.len() as u64,
                chunk_size: area.chunk_size(),
                headroom: 0,
                flags: 0,
                tx_metadata_len: 0,
            };
            setsockopt(f, libc::XDP_UMEM_REG, &reg).map_err(|s| e("registering the UMEM", s))?;
        }
        // The fill ring is `FILL_RINGS` times `ring_size`, so that the kernel still finds empty
        // frames while the worker cannot refill: on a core it shares with the kernel's
        // softirqs, a `sendto` in copy mode can run the core's pending NET_RX work for a few
        // milliseconds, thousands of frames at line rate (PERF(stalls) in
        // docs/PERFORMANCE.md). The RX ring is as large as the fill ring, so every frame the
        // fill ring provides can wait there instead of being dropped as `rx_ring_full`
        // (PERF(rx-ring)).
        let fill_size = FILL_RINGS * ring_size;
        for (opt, size, what) in [
            (libc::XDP_UMEM_FILL_RING, fill_size, "sizing the fill ring"),
            (libc::XDP_UMEM_COMPLETION_RING, fill_size, "sizing the completion ring"),
            (libc::XDP_RX_RING, fill_size, "sizing the RX ring"),
            (libc::XDP_TX_RING, ring_size, "sizing the TX ring"),
        ] {
            setsockopt(f, opt, &size).map_err(|s| e(what, s))?;
        }
        let rings = map_rings(f, ring_size).map_err(|(what, s)| e(what, s))?;

        let bind = |flags: u16| -> io::Result<()> {
            let sa = libc::sockaddr_xdp {
                sxdp_family: libc::AF_XDP as u16,
                sxdp_flags: flags,
                sxdp_ifindex: idx,
                sxdp_queue_id: queue,
                sxdp_shared_umem_fd: shared.map_or(0, |s| s.fd.as_raw_fd() as u32),
            };
            // SAFETY: `sa` is a valid sockaddr_xdp of the size passed.
            let r = unsafe {
                libc::bind(
                    f,
                    (&sa as *const libc::sockaddr_xdp).cast(),
                    std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
                )
            };
            if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
        };
        // Multi-buffer (`XDP_USE_SG`, Linux 6.6) is asked for on the socket that registers the
        // UMEM; the sockets sharing it inherit it (the kernel refuses the flag on them). A
        // kernel or driver that refuses it gets the same bind without: single-buffer, whose
        // ports carry only what fits one frame (`multi_buffer` says which).
        let bind_sg = |flags: u16| -> io::Result<bool> {
            // Test hook: no kernel here refuses the flag on veth, so the tests of the fallback
            // make the switch take the refusal's path (`XSWITCH_TEST_REFUSE_SG=1`).
            let sg = if std::env::var_os("XSWITCH_TEST_REFUSE_SG").is_some() {
                Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
            } else {
                bind(flags | libc::XDP_USE_SG)
            };
            match sg {
                Ok(()) => Ok(true),
                Err(x) if matches!(x.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {
                    bind(flags).map(|()| false)
                }
                Err(x) => Err(x),
            }
        };
        let got = match (shared, mode) {
            (Some(s), _) => {
                bind(libc::XDP_SHARED_UMEM).map_err(|x| e("binding (shared UMEM)", x))?;
                (s.mode, s.multi_buffer)
            }
            (None, BindMode::Copy) => {
                let sg = bind_sg(libc::XDP_USE_NEED_WAKEUP | libc::XDP_COPY)
                    .map_err(|x| e("binding (copy mode)", x))?;
                (BoundMode::Copy, sg)
            }
            (None, BindMode::ZeroCopy) => {
                let sg = bind_sg(libc::XDP_USE_NEED_WAKEUP | libc::XDP_ZEROCOPY)
                    .map_err(|x| e("binding (zero-copy mode)", x))?;
                (BoundMode::ZeroCopy, sg)
            }
            (None, BindMode::Auto) => match bind_sg(libc::XDP_USE_NEED_WAKEUP | libc::XDP_ZEROCOPY)
            {
                Ok(sg) => (BoundMode::ZeroCopy, sg),
                Err(_) => {
                    let sg = bind_sg(libc::XDP_USE_NEED_WAKEUP | libc::XDP_COPY)
                        .map_err(|x| e("binding (copy mode)", x))?;
                    (BoundMode::Copy, sg)
                }
            },
        };
        Ok(XskPort::with_rings(fd, area, ifname, queue, got, rings, (0, 0)))
    }

    /// The port around socket `fd` and its mapped rings, with `held` frames on them (fill and
    /// RX, TX and completion).
    fn with_rings(
        fd: OwnedFd,
        area: &FrameArea,
        ifname: &str,
        queue: u32,
        (mode, multi_buffer): (BoundMode, bool),
        (fill, comp, rx, tx): Rings,
        (in_fill, in_tx): (u32, u32),
    ) -> XskPort {
        XskPort {
            fd,
            ifname: ifname.into(),
            queue,
            mode,
            fill_target: fill.size(),
            fill,
            comp,
            rx,
            tx,
            in_fill,
            in_tx,
            waiting: 0,
            chunk_mask: !(u64::from(area.chunk_size()) - 1),
            multi_buffer,
            partial: None,
            skip: false,
            rx_drops: 0,
            stats: XskPortStats::default(),
        }
    }

    /// The socket `fd` another process opened on `ifname` queue `queue` and handed over
    /// (a takeover): its rings mapped again and resumed where that process left them, with
    /// the frames it had given them (`in_fill` on the fill and RX rings, `in_tx` on TX and
    /// completion). That process must have stopped polling the socket for good.
    #[allow(clippy::too_many_arguments)]
    pub fn adopt(
        fd: OwnedFd,
        area: &FrameArea,
        ifname: &str,
        queue: u32,
        ring_size: u32,
        (mode, multi_buffer): (BoundMode, bool),
        in_fill: u32,
        in_tx: u32,
    ) -> Result<XskPort, PortError> {
        let e = |what, source| err(ifname, queue, what, source);
        let (mut fill, mut comp, mut rx, mut tx) =
            map_rings(fd.as_raw_fd(), ring_size).map_err(|(what, s)| e(what, s))?;
        fill.resume(true);
        tx.resume(true);
        rx.resume(false);
        comp.resume(false);
        let rings = (fill, comp, rx, tx);
        let modes = (mode, multi_buffer);
        Ok(XskPort::with_rings(fd, area, ifname, queue, modes, rings, (in_fill, in_tx)))
    }

    /// True when the socket was bound with `XDP_USE_SG`: packets larger than one frame are
    /// received and sent as chains. False: single-buffer, one frame a packet.
    pub fn multi_buffer(&self) -> bool {
        self.multi_buffer
    }

    /// True when the frames the socket receives next are the rest of a packet whose start was
    /// dropped (by [`Port::drop_partial`] before a takeover, or as too long): the process that
    /// polls it next skips them ([`XskPort::skip_rest`]).
    pub fn skipping(&self) -> bool {
        self.skip
    }

    /// Skips the frames received up to the end of the packet under way: a socket adopted from
    /// a process that was [`XskPort::skipping`].
    pub fn skip_rest(&mut self) {
        self.skip = true;
    }

    /// The socket descriptor, for handing it to another process (a takeover).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// The socket descriptor (for the XSKMAP).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Asks the kernel to busy-poll the device for this socket: `SO_PREFER_BUSY_POLL`,
    /// `SO_BUSY_POLL` (microseconds) and `SO_BUSY_POLL_BUDGET`. Kernels or devices that do not
    /// support it answer with an error; the socket works the same without.
    pub fn set_busy_poll(&self, usecs: u32, budget: u32) -> io::Result<()> {
        // asm-generic/socket.h; not in the libc crate for this target.
        const SO_BUSY_POLL: libc::c_int = 46;
        const SO_PREFER_BUSY_POLL: libc::c_int = 69;
        const SO_BUSY_POLL_BUDGET: libc::c_int = 70;
        for (opt, v) in
            [(SO_PREFER_BUSY_POLL, 1), (SO_BUSY_POLL, usecs), (SO_BUSY_POLL_BUDGET, budget)]
        {
            let v = v as libc::c_int;
            // SAFETY: `v` is a live c_int of the size passed; the kernel copies it.
            let r = unsafe {
                libc::setsockopt(
                    self.raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// The mode the socket got.
    pub fn mode(&self) -> BoundMode {
        self.mode
    }

    /// Interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Queue id.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// The kernel's counters for this socket (a syscall: call it from the control path).
    pub fn kernel_stats(&self) -> io::Result<XskStats> {
        // SAFETY: xdp_statistics is integers only.
        let s: libc::xdp_statistics = unsafe { get_struct(self.raw_fd(), libc::XDP_STATISTICS) }?;
        Ok(XskStats {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        })
    }

    /// Tops the fill ring up from the pool, unless it lacks only a few frames.
    fn refill(&mut self, pool: &mut FramePool) {
        let want = self.fill_target.saturating_sub(self.in_fill).min(pool.len() as u32);
        if want < 16 && self.in_fill > 0 {
            return; // not worth touching the ring for a few frames
        }
        self.fill_up(pool);
    }

    fn wake(&mut self, side: Wake) -> bool {
        self.stats.kicks += 1;
        // SAFETY: a zero-length send/receive on our socket only wakes the kernel.
        let r = unsafe {
            if side == Wake::Rx {
                libc::recvfrom(
                    self.raw_fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            } else {
                libc::sendto(
                    self.raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            }
        };
        if r >= 0 {
            return true;
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN) => true,
            _ => {
                self.stats.kick_errors += 1;
                false
            }
        }
    }
}

impl Port for XskPort {
    fn queue(&self) -> u32 {
        XskPort::queue(self)
    }

    fn wait_fd(&self) -> Option<RawFd> {
        Some(self.raw_fd())
    }

    fn rx(&mut self, area: &mut FrameArea, pool: &mut FramePool, batch: &mut Batch) -> usize {
        self.refill(pool);
        let room = batch.room() as u32;
        let before = batch.len();
        // The kernel gives the frames back: they are ours again. A packet is as many
        // descriptors as frames, all but its last marked `XDP_PKT_CONTD`, so `room`
        // descriptors never complete more than `room` packets. A chain cut by the end of the
        // read waits in `partial` for the next.
        let n = self.rx.consume(room, |d| {
            let more = d.options & libc::XDP_PKT_CONTD != 0;
            if self.skip {
                // The rest of a chain dropped whole.
                pool.free_addr(d.addr);
                self.skip = more;
                return;
            }
            let f = match self.partial.take() {
                None if !more => FrameRef::new(d.addr, d.len),
                None => {
                    let head = FrameRef::new(d.addr, d.len);
                    self.partial = Some(Partial { head, last: d.addr });
                    return;
                }
                Some(Partial { head, last }) => {
                    let next = head.grown(d.len);
                    if next.segs() > MAX_SEGS || !area.link(last, d.addr, d.len) {
                        // Dropped whole: what came so far, this frame, and what follows.
                        self.stats.chains_too_long += 1;
                        self.rx_drops += 1;
                        pool.free(area, next);
                        pool.free_addr(d.addr);
                        self.skip = more;
                        return;
                    }
                    if more {
                        self.partial = Some(Partial { head: next, last: d.addr });
                        return;
                    }
                    next
                }
            };
            let pushed = batch.push(f);
            debug_assert!(pushed.is_ok(), "a batch took fewer frames than its room");
        });
        self.in_fill -= n;
        if n == 0 && self.fill.needs_wakeup() {
            self.wake(Wake::Rx);
        }
        batch.len() - before
    }

    fn drop_partial(&mut self, area: &FrameArea, pool: &mut FramePool) -> bool {
        // The rest of that packet is still to come: whoever polls the socket next skips it
        // (`skipping`, handed over with the socket).
        let cut = self.partial.take().map(|p| pool.free(area, p.head)).is_some();
        self.skip |= cut;
        cut
    }

    fn take_rx_drops(&mut self) -> u32 {
        std::mem::take(&mut self.rx_drops)
    }

    fn fill_up(&mut self, pool: &mut FramePool) {
        let want = self.fill_target.saturating_sub(self.in_fill).min(pool.len() as u32);
        self.in_fill += self.fill.produce(std::iter::from_fn(|| pool.alloc()).take(want as usize));
    }

    fn tx(&mut self, area: &FrameArea, frames: &mut Vec<FrameRef>) -> usize {
        // The frames become the kernel's: only bare addresses go on the ring, and the
        // completion ring gives them back, one per frame of a chain.
        let free = self.tx.free();
        let (mut take, mut descs) = (0, 0);
        for f in frames.iter() {
            if descs + f.chunks() > free {
                break; // a chain goes whole or waits
            }
            descs += f.chunks();
            take += 1;
        }
        if descs == take as u32 {
            let n = self.tx.produce(frames.drain(..take).map(|f| libc::xdp_desc {
                addr: f.addr(),
                len: f.len(),
                options: 0,
            }));
            debug_assert_eq!(n as usize, take);
            self.in_tx += n;
            return take;
        }
        let n = self.tx.produce(chain_descs(area, frames.drain(..take)));
        debug_assert_eq!(n, descs);
        self.in_tx += n;
        take
    }

    fn reclaim(&mut self, _area: &FrameArea, pool: &mut FramePool) -> usize {
        let n = self.comp.consume(u32::MAX, |addr| pool.free_addr(addr));
        self.in_tx -= n;
        n as usize
    }

    fn kick(&mut self, breath: Breath) -> bool {
        let out = self.tx.outstanding();
        if out == 0 {
            self.waiting = 0;
            return true;
        }
        if self.mode == BoundMode::ZeroCopy && !self.tx.needs_wakeup() {
            return true; // the driver is polling the ring itself
        }
        // A wakeup is a syscall: batch them. Kick when a full copy-mode burst (32) waits, when
        // the worker found nothing to receive (no reason to wait), or when frames have waited
        // a few breaths; otherwise let the next breath add to the burst.
        self.waiting += 1;
        if out < KICK_BURST && breath == Breath::Received && self.waiting < MAX_WAIT_BREATHS {
            return true;
        }
        self.waiting = 0;
        // One sendto() moves at most 32 frames in copy mode: repeat while it makes progress.
        let mut ok = true;
        let mut before = out;
        for _ in 0..MAX_KICKS {
            ok &= self.wake(Wake::Tx);
            let after = self.tx.outstanding();
            if after == 0 || after >= before {
                break;
            }
            before = after;
        }
        ok
    }

    fn census(&self) -> PortCensus {
        let rx = self.partial.as_ref().map_or(0, |p| p.head.chunks());
        PortCensus { fill: self.in_fill, rx, tx: self.in_tx, completion: 0 }
    }

    /// Takes back what a socket whose device is gone still holds: completions, frames on the
    /// RX ring, and fill-ring frames the kernel never consumed. A frame can be both on the RX
    /// ring and, by the fill ring's published index, unconsumed (the kernel publishes its
    /// consumer index lazily), so the fill ring's are taken only when RX did not return them.
    /// The rest (frames the kernel had taken for itself, TX frames never completed) are lost
    /// with the device and written off. Not per packet: it allocates.
    fn retire(&mut self, area: &FrameArea, pool: &mut FramePool) -> u32 {
        self.reclaim(area, pool);
        if let Some(p) = self.partial.take() {
            pool.free(area, p.head);
        }
        let mask = self.chunk_mask;
        let mut returned = Vec::new();
        self.skip = false;
        let n = self.rx.consume(u32::MAX, |d| {
            returned.push(d.addr & mask);
            pool.free_addr(d.addr);
        });
        self.in_fill = self.in_fill.saturating_sub(n);
        for addr in self.fill.unconsumed() {
            if self.in_fill > 0 && !returned.contains(&(addr & mask)) {
                pool.free_addr(addr);
                self.in_fill -= 1;
            }
        }
        let lost = self.in_fill + self.in_tx;
        self.in_fill = 0;
        self.in_tx = 0;
        lost
    }
}

/// The descriptors of `frames`, each chain's frames in order, all but its last marked
/// `XDP_PKT_CONTD` (Documentation/networking/af_xdp.rst, multi-buffer).
fn chain_descs(
    area: &FrameArea,
    mut frames: impl Iterator<Item = FrameRef>,
) -> impl Iterator<Item = libc::xdp_desc> {
    let desc = |addr, len, more: bool| libc::xdp_desc {
        addr,
        len,
        options: if more { libc::XDP_PKT_CONTD } else { 0 },
    };
    // The segment last written and how many of its chain follow it.
    let mut at: Option<(u64, u32)> = None;
    std::iter::from_fn(move || {
        if let Some((addr, left)) = at {
            // The links were checked when the chain was built; a broken one (a bug) ends the
            // chain with an empty frame, which the kernel refuses and counts as invalid.
            let (next, len) = area.next_seg(addr).unwrap_or((addr, 0));
            debug_assert!(len != 0, "a broken chain link at {addr:#x}");
            at = (left > 1 && len != 0).then_some((next, left - 1));
            return Some(desc(next, len, left > 1 && len != 0));
        }
        let f = frames.next()?;
        if f.segs() != 0 {
            at = Some((f.addr(), f.segs()));
        }
        Some(desc(f.addr(), f.head_len(), f.segs() != 0))
    })
}
