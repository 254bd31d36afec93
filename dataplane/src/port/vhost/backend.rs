//! The vhost-user protocol side of a port: the Unix socket (listening in server mode,
//! connecting and reconnecting in client mode), the frontend's messages (rust-vmm's `vhost`
//! crate parses them and calls [`Conn`]), the guest's memory table mapped once per
//! `SET_MEM_TABLE`, and the rings handed to the port's worker when both are ready. Runs on a
//! thread of its own per port ([`serve`]); never on a worker.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vhost::VhostUserMemoryRegionBase;
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    BackendReqHandler, Error as VhostError, GpuBackend, Result as VhostResult,
    VhostUserBackendReqHandlerMut,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use super::guard::Guarded;
use super::{Fault, Link, Rings, Stopped, Update, set_nonblocking};

/// `VIRTIO_NET_F_CSUM` (virtio 1.2, 5.1.3): the guest may leave checksums partial, for the
/// port to complete ([`super::offload`]).
const F_CSUM: u64 = 1 << 0;
/// `VIRTIO_NET_F_GUEST_CSUM`: the guest takes packets whose checksum is left partial (a
/// large TCP segment written into it whole).
const F_GUEST_CSUM: u64 = 1 << 1;
/// `VIRTIO_NET_F_GUEST_TSO4` and `_TSO6`: the guest takes TCP segments larger than its MTU,
/// which cross the switch whole from another guest's `HOST_TSO` ([`super::write_packet`]).
const F_GUEST_TSO4: u64 = 1 << 7;
const F_GUEST_TSO6: u64 = 1 << 8;
/// `VIRTIO_NET_F_MTU`: the device's MTU in its config space (QEMU's `host_mtu`; QEMU keeps
/// the config space of a vhost-user net device).
const F_MTU: u64 = 1 << 3;
/// `VIRTIO_NET_F_HOST_TSO4` and `_TSO6`: the guest may send TCP segments larger than the MTU,
/// for the port to segment ([`super::offload`]).
const F_HOST_TSO4: u64 = 1 << 11;
const F_HOST_TSO6: u64 = 1 << 12;
/// `VIRTIO_NET_F_STATUS`: the link status in the config space (kept by QEMU).
const F_STATUS: u64 = 1 << 16;
/// `VIRTIO_NET_F_MRG_RXBUF` (virtio 1.2, 5.1.3): packets may span several receive buffers.
const F_MRG_RXBUF: u64 = 1 << 15;
/// `VIRTIO_RING_F_INDIRECT_DESC` (2.7.5.3): indirect descriptor tables.
const F_INDIRECT_DESC: u64 = 1 << 28;
/// `VIRTIO_RING_F_EVENT_IDX` (2.7.7): notifications suppressed by index.
const F_EVENT_IDX: u64 = 1 << 29;
/// `VIRTIO_F_VERSION_1` (6): a modern device (12-byte net header, little endian).
const F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_NET_F_MQ` (5.1.6.5.5): several queue pairs, offered when the port has them (the
/// frontend keeps the control queue: QEMU and DPDK's virtio-user both do).
const F_MQ: u64 = 1 << 22;

/// What the port offers the guest (with one queue pair; [`Conn::features`]).
pub const FEATURES: u64 = F_CSUM
    | F_GUEST_CSUM
    | F_GUEST_TSO4
    | F_GUEST_TSO6
    | F_MTU
    | F_HOST_TSO4
    | F_HOST_TSO6
    | F_STATUS
    | F_MRG_RXBUF
    | F_INDIRECT_DESC
    | F_EVENT_IDX
    | F_VERSION_1
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// How long the protocol thread waits for a message before it looks at its link again.
const TICK: Duration = Duration::from_millis(200);

/// How long a stop waits for the worker's answer (it takes updates between breaths, at least
/// every 10 ms while idle).
const STOP_WAIT: Duration = Duration::from_secs(2);

/// Who makes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The switch creates the socket and the frontend (QEMU, testpmd) connects.
    Server,
    /// The frontend created it; the switch connects, and again after either side restarts.
    Client,
}

/// The socket of a port, opened before its thread starts (so a bad path is an error of the
/// reload that adds the port, not a log line later).
pub enum Endpoint {
    /// Listening (server mode).
    Listening(UnixListener, PathBuf),
    /// To connect to (client mode).
    Connect(PathBuf),
}

impl Endpoint {
    /// Opens the socket at `path`: in server mode binds it (a stale socket left by a switch
    /// that died is replaced; any other file there is an error), in client mode only checks
    /// that its directory exists.
    pub fn open(path: &Path, mode: Mode) -> std::io::Result<Endpoint> {
        match mode {
            Mode::Server => {
                if let Ok(m) = std::fs::symlink_metadata(path) {
                    if !m.file_type().is_socket() {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::AlreadyExists,
                            format!("{} exists and is not a socket", path.display()),
                        ));
                    }
                    std::fs::remove_file(path)?;
                }
                let l = UnixListener::bind(path)?;
                l.set_nonblocking(true)?;
                Ok(Endpoint::Listening(l, path.to_path_buf()))
            }
            Mode::Client => {
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
                if let Some(d) = dir
                    && !d.is_dir()
                {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("no directory {}", d.display()),
                    ));
                }
                Ok(Endpoint::Connect(path.to_path_buf()))
            }
        }
    }
}

/// Serves the port's socket until `link.closing`: accepts (or makes) one connection at a time,
/// handles its messages, and when it ends (the frontend went away, broke the protocol, or a
/// guest faulted its rings) stops the rings and waits for the next. Unlinks a server socket at
/// the end.
///
/// `links` has one link per queue pair, in order; the first carries the connection's own
/// counters (connections, protocol errors), every one its pair's faults.
pub fn serve(name: &str, ep: Endpoint, links: Vec<Arc<Link>>) {
    let Some(link) = links.first().cloned() else {
        return;
    };
    let sweep = || links.iter().for_each(|l| l.sweep());
    let mut said_waiting = false;
    while !link.closing.load(Ordering::Acquire) {
        sweep();
        let stream = match &ep {
            Endpoint::Listening(l, _) => match l.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    wait_readable(l.as_raw_fd(), TICK);
                    continue;
                }
                Err(e) => {
                    tracing::warn!("vhost-user port {name}: accept: {e}");
                    std::thread::sleep(TICK);
                    continue;
                }
            },
            Endpoint::Connect(p) => match UnixStream::connect(p) {
                Ok(s) => s,
                Err(e) => {
                    if !said_waiting {
                        tracing::info!(
                            "vhost-user port {name}: waiting for {} ({e}); retrying every {} ms",
                            p.display(),
                            TICK.as_millis() * 2
                        );
                        said_waiting = true;
                    }
                    std::thread::sleep(TICK * 2);
                    continue;
                }
            },
        };
        said_waiting = false;
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        link.connections.fetch_add(1, Ordering::Relaxed);
        tracing::info!("vhost-user port {name}: frontend connected");
        let why = connection(name, stream, &links);
        tracing::info!("vhost-user port {name}: connection closed: {why}");
    }
    if let Endpoint::Listening(_, p) = &ep {
        let _ = std::fs::remove_file(p);
    }
}

/// Handles one connection until it ends; says why it ended.
fn connection(name: &str, stream: UnixStream, links: &[Arc<Link>]) -> String {
    let link = &links[0];
    let conn = Arc::new(Mutex::new(Conn::new(name, links.to_vec())));
    let mut req = BackendReqHandler::from_stream(stream, conn.clone());
    let faults: Vec<u64> = links.iter().map(|l| l.faults.load(Ordering::Relaxed)).collect();
    let why = loop {
        if link.closing.load(Ordering::Acquire) {
            break "the port is closing".to_string();
        }
        let faulted =
            links.iter().zip(&faults).find(|(l, f)| l.faults.load(Ordering::Relaxed) != **f);
        if let Some((l, _)) = faulted {
            let what = l.last_fault().map_or("?", Fault::as_str);
            tracing::error!(
                "vhost-user port {name}: the guest broke the ring protocol ({what}): its rings \
                 are stopped and the connection closed; the port is down until it reconnects"
            );
            break format!("guest fault: {what}");
        }
        links.iter().for_each(|l| l.sweep());
        if !wait_readable(req.as_raw_fd(), TICK) {
            continue;
        }
        if early_enable(req.as_raw_fd(), &conn) {
            continue;
        }
        match req.handle_request() {
            Ok(()) => {}
            Err(VhostError::Disconnected | VhostError::PartialMessage) => {
                break "the frontend disconnected".to_string();
            }
            Err(e) => {
                link.protocol_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("vhost-user port {name}: bad message from the frontend: {e}");
                break format!("protocol error: {e}");
            }
        }
    };
    conn.lock().unwrap_or_else(|e| e.into_inner()).stop_all();
    links.iter().for_each(|l| l.sweep());
    why
}

/// `VHOST_USER_SET_VRING_ENABLE`.
const SET_VRING_ENABLE: u32 = 18;

/// DPDK's virtio-user (22.11 at least), reconnecting in server mode, sends
/// `SET_VRING_ENABLE` before it negotiates features again. The vhost crate refuses it (the
/// spec allows it once `VHOST_USER_F_PROTOCOL_FEATURES` is acked) and the frontend gives up
/// for good. Such a message (header and 8-byte body, no descriptors, no reply asked) is taken
/// here, before the crate sees it: true when it was.
fn early_enable(fd: std::os::fd::RawFd, conn: &Mutex<Conn>) -> bool {
    let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
    if c.features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
        return false;
    }
    let mut m = [0u8; 20];
    let peek = |m: &mut [u8; 20], flags: i32| {
        // SAFETY: receives at most 20 bytes into a live stack buffer from a socket the
        // handler keeps open.
        #[allow(unsafe_code)]
        let n = unsafe { libc::recv(fd, m.as_mut_ptr().cast(), m.len(), flags) };
        n
    };
    if peek(&mut m, libc::MSG_PEEK | libc::MSG_DONTWAIT) != 20 {
        return false;
    }
    let word =
        |m: &[u8; 20], at: usize| u32::from_le_bytes([m[at], m[at + 1], m[at + 2], m[at + 3]]);
    // Header: request, flags (version 1, no NEED_REPLY), size 8; body: index, num.
    if word(&m, 0) != SET_VRING_ENABLE || word(&m, 4) & !0x3 != 0 || word(&m, 8) != 8 {
        return false;
    }
    if peek(&mut m, libc::MSG_DONTWAIT) != 20 {
        return false;
    }
    tracing::debug!("vhost-user port {}: SET_VRING_ENABLE before features, taken", c.name);
    let _ = c.set_vring_enable(word(&m, 12), word(&m, 16) == 1);
    true
}

/// Polls `fd` for input for at most `limit`. True when readable (or hung up).
fn wait_readable(fd: std::os::fd::RawFd, limit: Duration) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd on the stack, alive for the call; `fd` stays open during it.
    #[allow(unsafe_code)]
    let n = unsafe { libc::poll(&mut p, 1, limit.as_millis() as i32) };
    n > 0
}

/// A vring as the frontend configured it.
#[derive(Default)]
struct Vring {
    num: u16,
    /// Descriptor table, available and used ring: the frontend's virtual addresses.
    addrs: Option<(u64, u64, u64)>,
    base: u16,
    kick: Option<File>,
    call: Option<File>,
    enabled: bool,
    /// A kick descriptor came and no GET_VRING_BASE since.
    started: bool,
}

/// One region of the guest's memory: guest physical address, size, the frontend's virtual
/// address of it.
#[derive(Debug, Clone, Copy)]
struct Region {
    gpa: u64,
    size: u64,
    uaddr: u64,
}

/// One connection's state; the `vhost` crate calls it for each message.
pub struct Conn {
    name: String,
    /// A link per queue pair: pair `p` is vrings `2p` (the guest's receive queue) and `2p + 1`.
    links: Vec<Arc<Link>>,
    features: u64,
    protocol: u64,
    regions: Vec<Region>,
    mem: Option<Arc<Guarded>>,
    vrings: Vec<Vring>,
    /// Per queue pair: its rings are with its worker.
    running: Vec<bool>,
}

fn unsupported(what: &'static str) -> VhostError {
    VhostError::InvalidOperation(what)
}

impl Conn {
    fn new(name: &str, links: Vec<Arc<Link>>) -> Conn {
        let pairs = links.len();
        Conn {
            name: name.to_string(),
            links,
            features: 0,
            protocol: 0,
            regions: Vec::new(),
            mem: None,
            vrings: (0..2 * pairs).map(|_| Vring::default()).collect(),
            running: vec![false; pairs],
        }
    }

    /// What the port offers: [`FEATURES`], and `MQ` with more than one queue pair.
    fn features(&self) -> u64 {
        if self.links.len() > 1 { FEATURES | F_MQ } else { FEATURES }
    }

    fn vring(&mut self, index: u32) -> VhostResult<&mut Vring> {
        self.vrings.get_mut(index as usize).ok_or(VhostError::InvalidParam)
    }

    /// The queue pair of vring `index`.
    fn pair(index: u32) -> usize {
        index as usize / 2
    }

    /// The guest physical address of the frontend's virtual address `va`.
    fn gpa(&self, va: u64) -> Option<u64> {
        self.regions
            .iter()
            .find(|r| va >= r.uaddr && va - r.uaddr < r.size)
            .map(|r| r.gpa + (va - r.uaddr))
    }

    /// Starts the rings of every queue pair whose two are configured, kicked and enabled, once
    /// the memory is known.
    fn maybe_start(&mut self) {
        for p in 0..self.links.len() {
            self.maybe_start_pair(p);
        }
    }

    fn maybe_start_pair(&mut self, p: usize) {
        if self.running[p] || self.mem.is_none() {
            return;
        }
        let two = &self.vrings[2 * p..2 * p + 2];
        if !two.iter().all(|v| v.started && v.enabled && v.addrs.is_some() && v.num > 0) {
            return;
        }
        match self.rings(p) {
            Ok(r) => {
                if self.links[p].send(Update::Start(Box::new(r))) {
                    self.running[p] = true;
                    tracing::info!(
                        "vhost-user port {}: rings running on queue pair {p} ({} and {} \
                         descriptors)",
                        self.name,
                        self.vrings[2 * p].num,
                        self.vrings[2 * p + 1].num
                    );
                }
            }
            Err(f) => {
                tracing::error!("vhost-user port {}: rings not started: {}", self.name, f.as_str());
                self.links[p].fault(f);
            }
        }
    }

    /// The rings of queue pair `p` as its port will drive them.
    fn rings(&self, p: usize) -> Result<Rings, Fault> {
        let mem = self.mem.clone().ok_or(Fault::OutOfMemory)?;
        let event_idx = self.features & F_EVENT_IDX != 0;
        let queue = |v: &Vring| -> Result<Queue, Fault> {
            let (d, u, a) = v.addrs.ok_or(Fault::OutOfMemory)?;
            let (d, u, a) = (
                self.gpa(d).ok_or(Fault::OutOfMemory)?,
                self.gpa(u).ok_or(Fault::OutOfMemory)?,
                self.gpa(a).ok_or(Fault::OutOfMemory)?,
            );
            let mut q = Queue::new(v.num).map_err(|_| Fault::BadIndex)?;
            let split = |x: u64| (Some(x as u32), Some((x >> 32) as u32));
            let (lo, hi) = split(d);
            q.set_desc_table_address(lo, hi);
            let (lo, hi) = split(a);
            q.set_avail_ring_address(lo, hi);
            let (lo, hi) = split(u);
            q.set_used_ring_address(lo, hi);
            q.set_event_idx(event_idx);
            q.set_next_avail(v.base);
            q.set_next_used(v.base);
            q.set_ready(true);
            if !q.is_valid(&**mem) {
                return Err(Fault::OutOfMemory);
            }
            // A frontend that reconnects may give base 0 for rings it has used (DPDK's
            // virtio-user does, for split rings): the used index in its memory is where they
            // stand, as DPDK's own vhost library also takes it.
            let used = q
                .used_idx(&**mem, std::sync::atomic::Ordering::Acquire)
                .map_err(|_| Fault::OutOfMemory)?
                .0;
            if used != v.base {
                tracing::info!(
                    "vhost-user port {}: a ring's base is {}, its used index {used}: resuming there",
                    self.name,
                    v.base
                );
                q.set_next_avail(used);
                q.set_next_used(used);
            }
            Ok(q)
        };
        let (rxv, txv) = (&self.vrings[2 * p], &self.vrings[2 * p + 1]);
        let rx = queue(rxv)?;
        let tx = queue(txv)?;
        let clone = |f: &Option<File>| f.as_ref().and_then(|f| f.try_clone().ok());
        let tx_kick = clone(&txv.kick);
        if let Some(k) = &tx_kick {
            set_nonblocking(k);
        }
        Ok(Rings {
            mem,
            rx,
            tx,
            rx_call: clone(&rxv.call),
            tx_call: clone(&txv.call),
            tx_kick,
            hdr_len: if self.features & (F_VERSION_1 | F_MRG_RXBUF) != 0 { 12 } else { 10 },
            mrg_rxbuf: self.features & F_MRG_RXBUF != 0,
            tso: self.features & (F_HOST_TSO4 | F_HOST_TSO6) != 0,
            whole: (
                self.features & (F_GUEST_CSUM | F_GUEST_TSO4) == F_GUEST_CSUM | F_GUEST_TSO4,
                self.features & (F_GUEST_CSUM | F_GUEST_TSO6) == F_GUEST_CSUM | F_GUEST_TSO6,
            ),
        })
    }

    /// Stops the rings of every queue pair.
    fn stop_all(&mut self) {
        for p in 0..self.links.len() {
            self.stop(p);
        }
    }

    /// Stops the rings of queue pair `p` (its worker answers with where they stand, kept for
    /// a restart).
    fn stop(&mut self, p: usize) {
        if !self.running[p] {
            return;
        }
        self.running[p] = false;
        let link = self.links[p].clone();
        while link.replies.1.try_recv().is_ok() {}
        // Closing (the port removed, the switch stopping): its worker may have let go of it
        // already, and nobody restarts these rings.
        if !link.send(Update::Stop) || link.closing.load(Ordering::Acquire) {
            return;
        }
        // In steps, so that a switch that stops meanwhile (its workers with it) is not waited for.
        let end = std::time::Instant::now() + STOP_WAIT;
        while std::time::Instant::now() < end {
            match link.replies.1.recv_timeout(Duration::from_millis(20)) {
                Ok(Some(Stopped { rx, tx })) => {
                    self.vrings[2 * p].base = rx;
                    self.vrings[2 * p + 1].base = tx;
                    return;
                }
                Ok(None) => return,
                Err(_) if link.closing.load(Ordering::Acquire) => return,
                Err(_) => {}
            }
        }
        tracing::warn!(
            "vhost-user port {}: its worker did not stop the rings within {} s",
            self.name,
            STOP_WAIT.as_secs()
        );
    }

    /// Applies a change to the running rings of queue pair `p`: stopped, then started again
    /// as they now are.
    fn restart(&mut self, p: usize) {
        if self.running.get(p).copied().unwrap_or(false) {
            self.stop(p);
            self.maybe_start_pair(p);
        }
    }

    /// As [`Conn::restart`], every queue pair.
    fn restart_all(&mut self) {
        for p in 0..self.links.len() {
            self.restart(p);
        }
    }
}

impl VhostUserBackendReqHandlerMut for Conn {
    fn set_owner(&mut self) -> VhostResult<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> VhostResult<()> {
        self.stop_all();
        self.vrings.iter_mut().for_each(|v| *v = Vring::default());
        Ok(())
    }

    fn reset_device(&mut self) -> VhostResult<()> {
        self.reset_owner()
    }

    fn get_features(&mut self) -> VhostResult<u64> {
        Ok(self.features())
    }

    fn set_features(&mut self, features: u64) -> VhostResult<()> {
        if features & !self.features() != 0 {
            return Err(VhostError::InvalidParam);
        }
        self.features = features;
        self.restart_all();
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VhostResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        if ctx.len() != files.len() {
            return Err(VhostError::InvalidParam);
        }
        let mut ranges = Vec::with_capacity(ctx.len());
        let mut regions = Vec::with_capacity(ctx.len());
        for (r, f) in ctx.iter().zip(files) {
            let size = usize::try_from(r.memory_size).map_err(|_| VhostError::InvalidParam)?;
            // A mapping past the end of its file would kill the switch with SIGBUS at the first
            // access there: refused, and counted as the guest's fault (the connection closes).
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let (offset, bytes) = (r.mmap_offset, r.memory_size);
            if offset.checked_add(bytes).is_none_or(|end| end > len) {
                tracing::warn!(
                    "vhost-user port {}: a memory region of {bytes} bytes at offset {offset} of a \
                     file of {len}",
                    self.name
                );
                self.links[0].fault(Fault::PastEof);
                return Err(VhostError::InvalidParam);
            }
            ranges.push((
                GuestAddress(r.guest_phys_addr),
                size,
                Some(FileOffset::new(f, r.mmap_offset)),
            ));
            regions.push(Region {
                gpa: r.guest_phys_addr,
                size: r.memory_size,
                uaddr: r.user_addr,
            });
        }
        let mem = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(|e| {
            tracing::warn!("vhost-user port {}: mapping the guest's memory: {e}", self.name);
            VhostError::InvalidParam
        })?;
        let mem = Arc::new(Guarded::new(mem));
        self.regions = regions;
        self.mem = Some(mem.clone());
        for (l, _) in self.links.iter().zip(&self.running).filter(|(_, r)| **r) {
            l.send(Update::Memory(mem.clone()));
        }
        self.maybe_start();
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VhostResult<()> {
        if num == 0 || num > 32_768 || !num.is_power_of_two() {
            return Err(VhostError::InvalidParam);
        }
        self.vring(index)?.num = num as u16;
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VhostResult<()> {
        self.vring(index)?.addrs = Some((descriptor, used, available));
        self.restart(Self::pair(index));
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VhostResult<()> {
        self.vring(index)?.base = base as u16;
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VhostResult<VhostUserVringState> {
        self.vring(index)?;
        self.stop(Self::pair(index));
        let v = self.vring(index)?;
        v.started = false;
        v.kick = None;
        Ok(VhostUserVringState::new(index, u32::from(v.base)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        let plain = self.protocol == 0
            && self.features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0;
        let v = self.vring(u32::from(index))?;
        v.kick = fd;
        v.started = true;
        if plain {
            // Without protocol features a ring is enabled by its kick.
            v.enabled = true;
        }
        self.restart(Self::pair(u32::from(index)));
        self.maybe_start_pair(Self::pair(u32::from(index)));
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VhostResult<()> {
        self.vring(u32::from(index))?.call = fd;
        self.restart(Self::pair(u32::from(index)));
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> VhostResult<()> {
        self.vring(u32::from(index))?;
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VhostResult<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::MQ)
    }

    fn set_protocol_features(&mut self, features: u64) -> VhostResult<()> {
        self.protocol = features;
        Ok(())
    }

    /// The queue pairs, as DPDK's vhost library answers it (and its virtio-user and QEMU
    /// take it: at most this many pairs).
    fn get_queue_num(&mut self) -> VhostResult<u64> {
        Ok(self.links.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VhostResult<()> {
        self.vring(index)?.enabled = enable;
        if enable {
            self.maybe_start_pair(Self::pair(index));
        } else {
            self.stop(Self::pair(index));
        }
        Ok(())
    }

    fn get_config(
        &mut self,
        _offset: u32,
        _size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VhostResult<Vec<u8>> {
        Err(unsupported("get_config"))
    }

    fn set_config(&mut self, _: u32, _: &[u8], _: VhostUserConfigFlags) -> VhostResult<()> {
        Err(unsupported("set_config"))
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VhostResult<()> {
        Err(unsupported("gpu socket"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VhostResult<File> {
        Err(unsupported("shared objects"))
    }

    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> VhostResult<(VhostUserInflight, File)> {
        Err(unsupported("inflight descriptors"))
    }

    fn set_inflight_fd(&mut self, _: &VhostUserInflight, _: File) -> VhostResult<()> {
        Err(unsupported("inflight descriptors"))
    }

    fn get_max_mem_slots(&mut self) -> VhostResult<u64> {
        Err(unsupported("memory slots"))
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VhostResult<Option<VhostUserMemoryRegionBase>> {
        Err(unsupported("memory slots"))
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> VhostResult<()> {
        Err(unsupported("memory slots"))
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VhostResult<Option<File>> {
        Err(unsupported("device state"))
    }

    fn check_device_state(&mut self) -> VhostResult<()> {
        Err(unsupported("device state"))
    }

    fn get_shmem_config(&mut self) -> VhostResult<VhostUserShMemConfig> {
        Err(unsupported("shared memory"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VhostResult<()> {
        Err(unsupported("dirty logging (live migration)"))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn region(size: u64) -> VhostUserMemoryRegion {
        VhostUserMemoryRegion::new(0, size, 0x7f00_0000_0000, 0)
    }

    fn file(len: usize) -> File {
        let mut f = tempfile();
        f.write_all(&vec![0u8; len]).unwrap();
        f
    }

    fn tempfile() -> File {
        let p = std::env::temp_dir().join(format!("xswitch-vhost-mem-{}", std::process::id()));
        let f = File::options().read(true).write(true).create(true).truncate(true).open(&p);
        let _ = std::fs::remove_file(&p);
        f.unwrap()
    }

    #[test]
    fn a_memory_region_past_the_end_of_its_file_is_refused_and_counted() {
        let link = Link::new().unwrap();
        let mut c = Conn::new("vm", vec![link.clone()]);
        assert!(c.set_mem_table(&[region(1 << 20)], vec![file(4096)], None).is_err());
        assert!(c.mem.is_none(), "nothing was mapped");
        assert_eq!(link.last_fault(), Some(Fault::PastEof));
        let link = Link::new().unwrap();
        let mut c = Conn::new("vm", vec![link.clone()]);
        assert!(c.set_mem_table(&[region(4096)], vec![file(4096)], None).is_ok());
        assert!(c.mem.is_some());
        assert_eq!(link.faults.load(Ordering::Relaxed), 0);
    }
}
