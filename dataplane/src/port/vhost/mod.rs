//! vhost-user ports: a VM's (or DPDK virtio-user's) virtio-net device, driven through the
//! guest's own memory. The vhost-user protocol (the socket, the memory table, the vrings'
//! addresses and eventfds) is served by a thread of its own ([`backend`], with rust-vmm's
//! `vhost` crate); the rings are polled here, by the worker that owns the port, like any other
//! port: no syscall per packet (an eventfd write per burst only when the guest asks for one,
//! with event-idx suppression), no allocation per packet, one copy each way between guest
//! memory and the frame area (`vm-memory` does the bounds checks against the guest's regions).
//!
//! Queue pair 0 only: vring 0 is the guest's receive queue (our transmit), vring 1 its transmit
//! queue (our receive).
//!
//! The two sides share a [`Link`]: the protocol thread sends [`Update`]s (rings to start, a new
//! memory table, stop), the port answers a stop with where its rings stand. A guest that breaks
//! the ring protocol (a descriptor outside its memory, a chain that loops or never ends, an
//! index far beyond the ring) stops only this port: the rings are dropped, the fault counted and
//! named in the link, and the protocol thread closes the connection.
#![allow(unsafe_code)] // eventfds (the vhost-user memory boundary); every block has its SAFETY comment

pub mod backend;
pub mod guard;
pub mod offload;

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::batch::Batch;
use crate::frame::{FrameArea, FramePool, FrameRef, Gso};
use crate::tso::{self, Cut, MAX_HDRS, MAX_TSO_SEGS, MAX_WHOLE};

use self::guard::Guarded;
use self::offload::{Descs, NetHdr, Packet, Took};
use crate::port::{Breath, Port, PortCensus};

/// The largest packet taken from a guest (a 64 KiB TSO segment and its Ethernet header would
/// be; without TSO offered, an MTU-sized frame is). A chain of more bytes is a broken guest.
pub const MAX_PACKET: usize = 65_536 + 14 + 4;

/// Frames written into the guest a port holds until its next reclaim (once a breath): beyond,
/// its `tx` takes no more (the rest stay the caller's, as with a full TX ring), so the list
/// never grows.
const DONE: usize = 1024;

/// Packets on the wire one receive takes from the guest at most, large segments counted as
/// the segments they stand for (the output stage's TX lists hold 4 batches a port).
const WIRE_BUDGET: usize = 2 * crate::batch::BATCH_SIZE;

/// Guest receive buffers one packet may take with `VIRTIO_NET_F_MRG_RXBUF` (a large TCP
/// segment written whole spans up to 64 KiB of them).
const MAX_RX_BUFS: usize = MAX_WHOLE + 2;

/// A guest that broke the ring protocol, by what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A descriptor (or a ring) outside the guest's memory.
    OutOfMemory,
    /// A descriptor chain that loops, or names a descriptor beyond the table.
    BadChain,
    /// The available index ran further ahead of ours than the ring is long.
    BadIndex,
    /// A packet longer than [`MAX_PACKET`], or a transmit chain with a buffer to write.
    BadPacket,
    /// A memory region larger than the file it is mapped from (touching it past the file's
    /// end would kill the switch with SIGBUS).
    PastEof,
}

impl Fault {
    /// The reason as the logs and counters spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::OutOfMemory => "descriptor outside guest memory",
            Fault::BadChain => "descriptor chain loops or is cut",
            Fault::BadIndex => "ring index beyond the ring",
            Fault::BadPacket => "packet too long or chain malformed",
            Fault::PastEof => "memory region beyond the end of its file",
        }
    }
}

/// The guest's rings, ready to switch through.
pub struct Rings {
    mem: Arc<Guarded>,
    /// The guest's receive queue (vring 0): we write into it.
    rx: Queue,
    /// The guest's transmit queue (vring 1): we read from it.
    tx: Queue,
    rx_call: Option<File>,
    tx_call: Option<File>,
    /// The guest's kicks on its transmit queue (what an idle worker waits on).
    tx_kick: Option<File>,
    /// Bytes of the virtio-net header before every packet (12 with VERSION_1 or MRG_RXBUF).
    hdr_len: usize,
    /// Packets may span several receive buffers.
    mrg_rxbuf: bool,
    /// The guest may send TCP segments larger than the MTU (`HOST_TSO4/6`), for the port to
    /// segment.
    tso: bool,
    /// The guest takes TCP segments larger than its MTU, over IPv4 and over IPv6, whole
    /// (`GUEST_TSO4/6`, with `GUEST_CSUM`: their checksums left partial).
    whole: (bool, bool),
}

impl Rings {
    /// True when the guest takes a large segment cut as `g` says whole.
    fn takes_whole(&self, g: Gso) -> bool {
        if g.v6 { self.whole.1 } else { self.whole.0 }
    }
}

/// What the protocol thread tells the port.
pub enum Update {
    /// Rings ready: switch through them.
    Start(Box<Rings>),
    /// A new memory table, for the rings already running.
    Memory(Arc<Guarded>),
    /// Stop using the rings and answer with where they stand.
    Stop,
}

/// Where stopped rings stand: the next available index of the receive and transmit queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Vring 0's next available index.
    pub rx: u16,
    /// Vring 1's next available index.
    pub tx: u16,
}

/// What a worker is done with, for the protocol thread to drop: closing descriptors and
/// unmapping guest memory are not a worker's calls (its seccomp filter refuses some of what
/// dropping them does, and an unmap of a guest's memory takes long).
pub enum Gone {
    /// Rings stopped, or given up after a fault.
    Rings(Box<Rings>),
    /// A memory table replaced by a newer one.
    Memory(Arc<Guarded>),
}

/// What the port and its protocol thread share.
pub struct Link {
    updates: (Sender<Update>, Receiver<Update>),
    replies: (Sender<Option<Stopped>>, Receiver<Option<Stopped>>),
    gone: (Sender<Gone>, Receiver<Gone>),
    /// Rung with every update: the port's wait descriptor while it has no rings.
    bell: File,
    /// The port should close its connection and stop serving (removal, switch stop).
    pub closing: AtomicBool,
    /// Faults of guests on this port, and the last one's reason.
    pub faults: AtomicU64,
    last_fault: Mutex<Option<Fault>>,
    /// Connections accepted or made.
    pub connections: AtomicU64,
    /// Connections closed for a message the protocol does not allow.
    pub protocol_errors: AtomicU64,
    /// The rings are running (a guest is connected and switching).
    pub running: AtomicBool,
}

impl Link {
    /// A new link (its bell an eventfd).
    pub fn new() -> std::io::Result<Arc<Link>> {
        Ok(Arc::new(Link {
            updates: crossbeam_channel::bounded(16),
            replies: crossbeam_channel::bounded(4),
            gone: crossbeam_channel::bounded(64),
            bell: eventfd()?,
            closing: AtomicBool::new(false),
            faults: AtomicU64::new(0),
            last_fault: Mutex::new(None),
            connections: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            running: AtomicBool::new(false),
        }))
    }

    /// Sends `u` to the port and rings its bell.
    fn send(&self, u: Update) -> bool {
        let ok = self.updates.0.try_send(u).is_ok();
        ring(&self.bell);
        ok
    }

    /// The last fault's reason, if any.
    pub fn last_fault(&self) -> Option<Fault> {
        *self.last_fault.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands what a worker is done with to the protocol thread (which drops it at its next
    /// look). Were the channel full (64 updates not yet looked at), it is leaked rather than
    /// dropped on the worker.
    fn bury(&self, g: Gone) {
        if let Err(e) = self.gone.0.try_send(g) {
            std::mem::forget(e.into_inner());
        }
    }

    /// Drops what the workers are done with (the protocol thread, between messages).
    pub fn sweep(&self) {
        while self.gone.1.try_recv().is_ok() {}
    }

    fn fault(&self, f: Fault) {
        self.faults.fetch_add(1, Ordering::Relaxed);
        *self.last_fault.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }
}

/// Counters of a vhost-user port, kept by its worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VhostStats {
    /// Packets taken from the guest.
    pub rx_packets: u64,
    /// Packets written into the guest.
    pub tx_packets: u64,
    /// Packets longer than the guest's receive buffers hold (dropped).
    pub too_big_for_guest: u64,
    /// Packets from the guest dropped for want of frames.
    pub no_frame: u64,
    /// Eventfd writes to the guest (notifications it asked for).
    pub calls: u64,
    /// Large TCP segments from the guest cut into MTU-sized ones.
    pub segmented: u64,
    /// The segments they were cut into.
    pub segments: u64,
    /// Packets whose partial checksum the port completed.
    pub checksums: u64,
    /// Packets dropped for an offload that cannot be done as asked (see [`Took::Bad`]).
    pub bad_offload: u64,
    /// Large TCP segments taken from the guest whole, to cross the switch so.
    pub whole_in: u64,
    /// Large TCP segments written into the guest whole (`GUEST_TSO4/6`).
    pub whole_out: u64,
    /// Large TCP segments cut for a guest that does not take them whole.
    pub cut_out: u64,
}

/// A vhost-user port as its worker polls it.
pub struct VhostPort {
    name: String,
    /// Its queue pair (vrings `2 * queue` and `2 * queue + 1`).
    queue: u32,
    link: Arc<Link>,
    run: Option<Box<Rings>>,
    /// Frames written into the guest, to go back to the pool at the next reclaim.
    done: Vec<FrameRef>,
    /// The guest's transmit kicks are enabled: the worker is about to wait on them.
    armed: bool,
    /// Used entries added since the last notification, per queue.
    rx_used: bool,
    tx_used: bool,
    /// Packets dropped on receive since the worker last asked (too long for a chain).
    rx_drops: u32,
    /// Packets taken from the guest that the last batch had no room for (the segments of a
    /// large one), handed out first at the next receive. Never beyond its capacity.
    pending: VecDeque<FrameRef>,
    /// The buffers of the guest packet being taken (kept: it is 1 KiB).
    descs: Box<Descs>,
    /// The guest's receive buffers one packet is being written into (kept, not zeroed per
    /// packet).
    heads: Box<[(u16, u32); MAX_RX_BUFS]>,
    /// Segments of the first frame waiting to be sent already written into the guest: a
    /// large segment cut for it when its receive ring filled midway.
    resume: usize,
    /// Large TCP segments from the guest cross the switch whole (else they are cut as they
    /// are taken).
    pub whole: bool,
    /// Its counters.
    pub stats: VhostStats,
}

impl VhostPort {
    /// Queue pair `queue` of the port of `name`, served through `link`.
    pub fn new(name: &str, queue: u32, link: Arc<Link>) -> VhostPort {
        VhostPort {
            name: name.to_string(),
            queue,
            link,
            run: None,
            done: Vec::with_capacity(DONE),
            armed: false,
            rx_used: false,
            tx_used: false,
            rx_drops: 0,
            pending: VecDeque::with_capacity(MAX_TSO_SEGS),
            descs: Box::default(),
            heads: Box::new([(0, 0); MAX_RX_BUFS]),
            resume: 0,
            whole: true,
            stats: VhostStats::default(),
        }
    }

    /// The port's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True while a guest's rings are running.
    pub fn running(&self) -> bool {
        self.run.is_some()
    }

    /// Applies what the protocol thread sent (between bursts: one channel poll per call).
    fn updates(&mut self) {
        while let Ok(u) = self.link.updates.1.try_recv() {
            match u {
                Update::Start(r) => {
                    if let Some(old) = self.run.replace(r) {
                        self.link.bury(Gone::Rings(old));
                    }
                    self.armed = false;
                    self.link.running.store(true, Ordering::Release);
                }
                Update::Memory(m) => match &mut self.run {
                    Some(r) => self.link.bury(Gone::Memory(std::mem::replace(&mut r.mem, m))),
                    None => self.link.bury(Gone::Memory(m)),
                },
                Update::Stop => {
                    let at = self.run.take().map(|r| {
                        let at = Stopped { rx: r.rx.next_avail(), tx: r.tx.next_avail() };
                        self.link.bury(Gone::Rings(r));
                        at
                    });
                    self.link.running.store(false, Ordering::Release);
                    let _ = self.link.replies.0.try_send(at);
                }
            }
        }
    }

    /// Faults the port if its guest shrank the file of its memory under the switch (a SIGBUS
    /// caught by [`guard`]): one load per region, once per burst.
    #[inline]
    fn bus_check(&mut self) {
        if self.run.as_ref().is_some_and(|r| r.mem.bus_faulted()) {
            self.faulted(Fault::PastEof);
        }
    }

    /// The guest broke the ring protocol: its rings are dropped, the fault counted, and the
    /// protocol thread closes the connection.
    #[cold]
    fn faulted(&mut self, f: Fault) {
        if let Some(r) = self.run.take() {
            self.link.bury(Gone::Rings(r));
        }
        self.link.running.store(false, Ordering::Release);
        self.link.fault(f);
        ring(&self.link.bell);
    }
}

/// Collects the readable buffers of a guest transmit chain into `descs`. False when they are
/// more than [`offload::MAX_DESCS`] (the packet is dropped).
fn collect(
    chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    descs: &mut Descs,
) -> Result<bool, Fault> {
    descs.clear();
    let (mut cut, mut fits) = (false, true);
    for d in chain {
        if d.is_write_only() {
            return Err(Fault::BadPacket);
        }
        cut = d.has_next();
        if descs.total() + d.len() as usize > MAX_PACKET + 12 {
            return Err(Fault::BadPacket);
        }
        fits &= descs.push(d.addr().0, d.len());
    }
    if cut {
        return Err(Fault::BadChain);
    }
    Ok(fits)
}

/// Copies guest bytes at `addr` into `dst`: the bytes found with one region lookup
/// (`get_slice`) when they lie in one region, as every descriptor of a sane driver does; else
/// through `read_slice`, which walks the regions (profiled: that walk took a third of the
/// worker's time when every copy went through it). False when they are not all guest memory.
#[inline]
fn from_guest(mem: &GuestMemoryMmap, addr: u64, dst: &mut [u8]) -> bool {
    match mem.get_slice(GuestAddress(addr), dst.len()) {
        Ok(s) => s.copy_to(dst) == dst.len(),
        Err(_) => mem.read_slice(dst, GuestAddress(addr)).is_ok(),
    }
}

/// Copies `src` into guest memory at `addr`, as [`from_guest`] reads.
#[inline]
fn to_guest(mem: &GuestMemoryMmap, addr: u64, src: &[u8]) -> bool {
    match mem.get_slice(GuestAddress(addr), src.len()) {
        Ok(s) => {
            s.copy_from(src);
            true
        }
        Err(_) => mem.write_slice(src, GuestAddress(addr)).is_ok(),
    }
}

/// What writing a packet into the guest gave.
enum Wrote {
    /// Written.
    Done,
    /// The guest has too few receive buffers now (nothing taken from its ring).
    Full,
    /// The packet is longer than the guest's buffers take (it is dropped).
    TooBig,
    /// A large TCP segment whose headers the switch does not cut (it is dropped).
    Bad,
}

/// Writes frame `f` into the guest's receive queue: as it is; a large TCP segment whole, its
/// virtio-net header saying how to cut it, when the guest takes it so; else cut into the
/// segments it stands for ([`write_cut`], from segment `*resume`).
fn write_packet(
    r: &mut Rings,
    heads: &mut [(u16, u32); MAX_RX_BUFS],
    area: &FrameArea,
    f: &FrameRef,
    resume: &mut usize,
) -> Result<Wrote, Fault> {
    // Header flags and GSO type 0 (a whole packet, checksum complete); num_buffers 1.
    let mut hdr = [0u8; 12];
    hdr[10] = 1;
    let Some(g) = area.gso(f) else {
        let hl = r.hdr_len;
        return write_parts(r, heads, std::iter::once(&hdr[..hl]).chain(area.segments(f)));
    };
    if !r.takes_whole(g) {
        return write_cut(r, heads, area, f, g, resume);
    }
    let hd = area.frame(f).and_then(|b| tso::tcp_hdrs(&b[..b.len().min(MAX_HDRS)], g.v6));
    let Some(hd) = hd else { return Ok(Wrote::Bad) };
    // virtio 1.2, 5.1.6.4: the checksum is partial from the TCP header on (the sender's, left
    // as it came), the segment to be cut at gso_size.
    hdr[0] = offload::NEEDS_CSUM;
    hdr[1] = if g.v6 { offload::GSO_TCPV6 } else { offload::GSO_TCPV4 };
    if g.ecn {
        hdr[1] |= offload::GSO_ECN;
    }
    hdr[2..4].copy_from_slice(&(hd.len() as u16).to_le_bytes());
    hdr[4..6].copy_from_slice(&g.mss.to_le_bytes());
    hdr[6..8].copy_from_slice(&(hd.l4 as u16).to_le_bytes());
    hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
    let hl = r.hdr_len;
    write_parts(r, heads, std::iter::once(&hdr[..hl]).chain(area.segments(f)))
}

/// Writes large segment `f` into a guest that does not take it whole as the segments it stands
/// for (each with its own headers and checksums, as [`tso::cut`] makes them), from segment
/// `*resume`: when the guest's ring fills midway, `*resume` says where the next call goes on.
fn write_cut(
    r: &mut Rings,
    heads: &mut [(u16, u32); MAX_RX_BUFS],
    area: &FrameArea,
    f: &FrameRef,
    g: Gso,
    resume: &mut usize,
) -> Result<Wrote, Fault> {
    let mut h = [0u8; MAX_HDRS];
    let Some(head) = area.frame(f) else { return Ok(Wrote::Bad) };
    let hl = head.len().min(MAX_HDRS);
    h[..hl].copy_from_slice(&head[..hl]);
    let Some(hd) = tso::tcp_hdrs(&h[..hl], g.v6) else { return Ok(Wrote::Bad) };
    let Some(payload) = (f.len() as usize).checked_sub(hd.len()) else { return Ok(Wrote::Bad) };
    let c = Cut { h: &h[..hl], hd, mss: usize::from(g.mss), payload };
    if c.mss == 0 || c.segments() > MAX_TSO_SEGS {
        return Ok(Wrote::Bad);
    }
    let mut vh = [0u8; 12];
    vh[10] = 1;
    let vh = &vh[..r.hdr_len];
    for i in *resume..c.segments() {
        let s = c.seg(i);
        let mut sh = [0u8; MAX_HDRS];
        sh[..hd.len()].copy_from_slice(&h[..hd.len()]);
        let start = hd.len() + s.at;
        tso::fix_headers(&mut sh, &hd, &s, tso::sum_range(area, f, start, start + s.n));
        let parts = [vh, &sh[..hd.len()]].into_iter().chain(bytes_of(area, f, start, s.n));
        match write_parts(r, heads, parts)? {
            Wrote::Done => *resume = i + 1,
            Wrote::Full => return Ok(Wrote::Full),
            other => {
                *resume = 0;
                return Ok(other);
            }
        }
    }
    *resume = 0;
    Ok(Wrote::Done)
}

/// The bytes `start..start + n` of packet `f`, a slice per segment they touch.
fn bytes_of<'a>(
    area: &'a FrameArea,
    f: &FrameRef,
    start: usize,
    n: usize,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut off = 0usize;
    area.segments(f).filter_map(move |seg| {
        let (s, e) = (off, off + seg.len());
        off = e;
        let (a, b) = (start.max(s), (start + n).min(e));
        (a < b).then(|| &seg[a - s..b - s])
    })
}

/// Writes one packet, `parts` in order (its virtio-net header first, never empty; no part
/// after it empty), into the guest's receive queue: in one buffer, or several with
/// `VIRTIO_NET_F_MRG_RXBUF`, their count written into the header's `num_buffers`.
fn write_parts<'a>(
    r: &mut Rings,
    heads: &mut [(u16, u32); MAX_RX_BUFS],
    mut parts: impl Iterator<Item = &'a [u8]>,
) -> Result<Wrote, Fault> {
    let mem: &GuestMemoryMmap = &r.mem;
    let q = &mut r.rx;
    let mut src: &[u8] = parts.next().unwrap_or(&[]);
    let mut nb = 0usize;
    let mut num_buffers_at = None;
    let undo = |q: &mut Queue, nb: usize| {
        for _ in 0..nb {
            q.go_to_previous_position();
        }
    };
    while !src.is_empty() {
        if nb == MAX_RX_BUFS || (nb == 1 && !r.mrg_rxbuf) {
            // Its buffers did not hold it: they stay the guest's, for the next packet.
            undo(q, nb);
            return Ok(Wrote::TooBig);
        }
        let next = q.iter(mem).map_err(|_| Fault::BadIndex)?.next();
        let Some(chain) = next else {
            undo(q, nb);
            return Ok(Wrote::Full);
        };
        let head = chain.head_index();
        let mut wrote = 0u32;
        let mut cut = false;
        for d in chain {
            if !d.is_write_only() {
                return Err(Fault::BadPacket);
            }
            cut = d.has_next();
            if nb == 0 && wrote == 0 {
                if (d.len() as usize) < r.hdr_len {
                    return Err(Fault::BadPacket);
                }
                num_buffers_at = Some(d.addr().0 + 10);
            }
            let (mut addr, mut room) = (d.addr().0, d.len() as usize);
            while room > 0 && !src.is_empty() {
                let k = room.min(src.len());
                if !to_guest(mem, addr, &src[..k]) {
                    return Err(Fault::OutOfMemory);
                }
                (addr, room, wrote) = (addr + k as u64, room - k, wrote + k as u32);
                src = &src[k..];
                if src.is_empty() {
                    src = parts.next().unwrap_or(&[]);
                }
            }
            if src.is_empty() {
                break;
            }
        }
        if cut && !src.is_empty() {
            return Err(Fault::BadChain);
        }
        heads[nb] = (head, wrote);
        nb += 1;
    }
    if nb > 1
        && let Some(at) = num_buffers_at
    {
        mem.write_obj((nb as u16).to_le(), GuestAddress(at)).map_err(|_| Fault::OutOfMemory)?;
    }
    for &(head, len) in &heads[..nb] {
        q.add_used(mem, head, len).map_err(|_| Fault::BadIndex)?;
    }
    Ok(Wrote::Done)
}

/// Moves packets taken from the guest into `batch` while it has room.
fn hand_out(pending: &mut VecDeque<FrameRef>, batch: &mut Batch) {
    while !batch.is_full() {
        let Some(f) = pending.pop_front() else { break };
        // Not while the batch has room.
        if let Err(f) = batch.push(f) {
            pending.push_front(f);
            break;
        }
    }
}

/// Tells the guest about used buffers of `q` when it asked to be told (event idx or flags).
fn notify(mem: &GuestMemoryMmap, q: &mut Queue, call: Option<&File>) -> Result<bool, Fault> {
    match call {
        Some(c) if q.needs_notification(mem).map_err(|_| Fault::OutOfMemory)? => {
            ring(c);
            Ok(true)
        }
        _ => Ok(false),
    }
}

impl Port for VhostPort {
    fn rx(&mut self, area: &mut FrameArea, pool: &mut FramePool, batch: &mut Batch) -> usize {
        self.updates();
        self.bus_check();
        let before = batch.len();
        hand_out(&mut self.pending, batch);
        let Some(r) = self.run.as_deref_mut() else { return batch.len() - before };
        let mem: &GuestMemoryMmap = &r.mem;
        if self.armed {
            self.armed = false;
            if let Some(k) = &r.tx_kick {
                drain(k);
            }
            let _ = r.tx.disable_notification(mem);
        }
        let mut fault = None;
        // Packets on the wire the frames taken stand for: a large segment carried whole is cut
        // into up to dozens on its way out of an AF_XDP port, so a burst of them is taken only
        // while the TX lists have room for what they become.
        let mut wire = 0usize;
        while !batch.is_full() && self.pending.is_empty() && wire < WIRE_BUDGET {
            let next = match r.tx.iter(mem) {
                Ok(mut it) => it.next(),
                Err(_) => {
                    fault = Some(Fault::BadIndex);
                    break;
                }
            };
            let Some(chain) = next else { break };
            let head = chain.head_index();
            let took = collect(chain, &mut self.descs).and_then(|fits| {
                if fits {
                    match offload::take_simple(mem, &self.descs, r.hdr_len, area, pool) {
                        offload::Simple::Frame(f) => {
                            // The batch has room (the loop's condition).
                            if let Err(f) = batch.push(f) {
                                self.pending.push_back(f);
                            }
                            return Ok(Took::Packets(1));
                        }
                        offload::Simple::NoFrame => return Ok(Took::NoFrame),
                        offload::Simple::No => {}
                    }
                }
                let mut vh = [0u8; 12];
                if self.descs.total() < r.hdr_len {
                    return Err(Fault::BadPacket);
                }
                if !self.descs.read(mem, 0, &mut vh[..r.hdr_len]) {
                    return Err(Fault::OutOfMemory);
                }
                if !fits {
                    return Ok(Took::TooBig);
                }
                let h = NetHdr::parse(vh[..10].try_into().unwrap_or(&[0; 10]));
                let pending = &mut self.pending;
                let took = offload::take(
                    Packet { mem, descs: &self.descs, base: r.hdr_len },
                    &h,
                    (r.tso, self.whole),
                    area,
                    pool,
                    &mut |f| pending.push_back(f),
                )?;
                if let Took::Packets(k) = took
                    && !h.plain()
                {
                    let s = &mut self.stats;
                    if h.gso_type == 0 {
                        s.checksums += 1;
                    } else {
                        (s.segmented, s.segments) = (s.segmented + 1, s.segments + k as u64);
                    }
                }
                Ok(took)
            });
            match took {
                Ok(Took::Packets(k)) => {
                    self.stats.rx_packets += k as u64;
                    wire += k;
                    hand_out(&mut self.pending, batch);
                }
                Ok(Took::Whole(n)) => {
                    (self.stats.rx_packets, self.stats.whole_in) =
                        (self.stats.rx_packets + 1, self.stats.whole_in + 1);
                    wire += n;
                    hand_out(&mut self.pending, batch);
                }
                Ok(Took::NoFrame) => {
                    // Left in the guest's ring, for the next breath.
                    r.tx.go_to_previous_position();
                    self.stats.no_frame += 1;
                    break;
                }
                Ok(Took::TooBig) => self.rx_drops += 1,
                Ok(Took::Bad) => self.stats.bad_offload += 1,
                Err(f) => {
                    fault = Some(f);
                    break;
                }
            }
            if r.tx.add_used(mem, head, 0).is_err() {
                fault = Some(Fault::BadIndex);
                break;
            }
            self.tx_used = true;
        }
        if fault.is_none() && self.tx_used {
            self.tx_used = false;
            match notify(mem, &mut r.tx, r.tx_call.as_ref()) {
                Ok(called) => self.stats.calls += u64::from(called),
                Err(f) => fault = Some(f),
            }
        }
        if let Some(f) = fault {
            self.faulted(f);
        }
        batch.len() - before
    }

    fn take_rx_drops(&mut self) -> u32 {
        std::mem::take(&mut self.rx_drops)
    }

    fn fill_up(&mut self, _pool: &mut FramePool) {
        // About to wait: the guest's kicks wake the worker. Frames that came meanwhile ring
        // the port's own bell, so the wait returns at once.
        let Some(r) = self.run.as_deref_mut() else { return };
        if r.tx_kick.is_none() {
            return;
        }
        self.armed = true;
        match r.tx.enable_notification(&**r.mem) {
            Ok(false) => {}
            Ok(true) => ring(r.tx_kick.as_ref().unwrap_or(&self.link.bell)),
            Err(_) => self.faulted(Fault::OutOfMemory),
        }
    }

    fn tx(&mut self, area: &FrameArea, frames: &mut Vec<FrameRef>) -> usize {
        self.bus_check();
        let Some(r) = self.run.as_deref_mut() else { return 0 };
        let mut taken = 0;
        let mut fault = None;
        let room = DONE - self.done.len();
        for f in frames.iter().take(room) {
            let resumed = self.resume;
            match write_packet(r, &mut self.heads, area, f, &mut self.resume) {
                Ok(Wrote::Done) => {
                    let s = &mut self.stats;
                    s.tx_packets += 1;
                    match area.gso(f).map(|g| r.takes_whole(g)) {
                        Some(true) => s.whole_out += 1,
                        Some(false) => s.cut_out += 1,
                        None => {}
                    }
                    self.rx_used = true;
                }
                Ok(Wrote::TooBig) => self.stats.too_big_for_guest += 1,
                Ok(Wrote::Bad) => self.stats.bad_offload += 1,
                Ok(Wrote::Full) => {
                    self.rx_used |= self.resume != resumed;
                    break;
                }
                Err(e) => {
                    fault = Some(e);
                    break;
                }
            }
            taken += 1;
        }
        self.done.extend(frames.drain(..taken));
        if let Some(f) = fault {
            self.faulted(f);
        }
        taken
    }

    fn reclaim(&mut self, area: &FrameArea, pool: &mut FramePool) -> usize {
        pool.free_all(area, self.done.drain(..))
    }

    fn kick(&mut self, _breath: Breath) -> bool {
        if !self.rx_used {
            return true;
        }
        self.rx_used = false;
        let Some(r) = self.run.as_deref_mut() else { return true };
        match notify(&r.mem, &mut r.rx, r.rx_call.as_ref()) {
            Ok(called) => self.stats.calls += u64::from(called),
            Err(f) => self.faulted(f),
        }
        true
    }

    fn census(&self) -> PortCensus {
        PortCensus {
            fill: 0,
            rx: self.pending.iter().map(FrameRef::chunks).sum(),
            tx: 0,
            completion: self.done.iter().map(FrameRef::chunks).sum(),
        }
    }

    fn queue(&self) -> u32 {
        self.queue
    }

    fn wait_fd(&self) -> Option<RawFd> {
        match self.run.as_deref() {
            Some(Rings { tx_kick: Some(k), .. }) if self.armed => Some(k.as_raw_fd()),
            _ => Some(self.link.bell.as_raw_fd()),
        }
    }

    fn retire(&mut self, area: &FrameArea, pool: &mut FramePool) -> u32 {
        self.reclaim(area, pool);
        pool.free_all(area, self.pending.drain(..));
        0
    }
}

/// A new eventfd, non-blocking.
fn eventfd() -> std::io::Result<File> {
    // SAFETY: eventfd takes no pointers; the descriptor it returns is ours alone.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Adds 1 to an eventfd (a guest notification, a bell). A full counter only means it is
/// readable already.
fn ring(f: &File) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live stack buffer to a descriptor `f` keeps open.
    let _ = unsafe { libc::write(f.as_raw_fd(), one.as_ptr().cast(), one.len()) };
}

/// Empties an eventfd (non-blocking: an empty one just fails).
fn drain(f: &File) {
    let mut buf = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a live stack buffer from a descriptor `f` keeps open.
    let _ = unsafe { libc::read(f.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
}

/// Makes a descriptor non-blocking (the guest's kick eventfds: draining one must not block).
fn set_nonblocking(f: &File) {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor `f` keeps open; F_GETFL/F_SETFL take no pointers.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestMemoryMmap;

    use super::*;
    use crate::frame::PageSize;

    const QSIZE: u16 = 16;
    /// Descriptor table, available ring, used ring: the receive queue's, then the transmit's.
    const RX: (u64, u64, u64) = (0x0, 0x1000, 0x2000);
    const TX: (u64, u64, u64) = (0x3000, 0x4000, 0x5000);
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;

    fn queue(mem: &GuestMemoryMmap, (d, a, u): (u64, u64, u64)) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_desc_table_address(Some(d as u32), Some(0));
        q.set_avail_ring_address(Some(a as u32), Some(0));
        q.set_used_ring_address(Some(u as u32), Some(0));
        q.set_ready(true);
        assert!(q.is_valid(mem));
        q
    }

    /// A port running on 1 MiB of guest memory, its frame area and pool.
    fn port(mrg_rxbuf: bool) -> (VhostPort, Arc<Guarded>, FrameArea, FramePool) {
        port_with(mrg_rxbuf, (false, false))
    }

    /// [`port`] with a guest that takes large segments whole over IPv4 and IPv6 as `whole`
    /// says.
    fn port_with(
        mrg_rxbuf: bool,
        whole: (bool, bool),
    ) -> (VhostPort, Arc<Guarded>, FrameArea, FramePool) {
        let mem = Arc::new(Guarded::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap(),
        ));
        let rings = Rings {
            mem: mem.clone(),
            rx: queue(&mem, RX),
            tx: queue(&mem, TX),
            rx_call: None,
            tx_call: None,
            tx_kick: None,
            hdr_len: 12,
            mrg_rxbuf,
            tso: true,
            whole,
        };
        let link = Link::new().unwrap();
        let mut p = VhostPort::new("vm", 0, link.clone());
        assert!(link.send(Update::Start(Box::new(rings))));
        let area = FrameArea::new(256, 2048, PageSize::Normal).unwrap();
        let pool = FramePool::new(&area);
        p.updates();
        assert!(p.running());
        (p, mem, area, pool)
    }

    fn desc(mem: &GuestMemoryMmap, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(table + 16 * u64::from(i));
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
        mem.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
    }

    /// Makes chains with heads `heads` available on the ring at `avail`.
    fn offer(mem: &GuestMemoryMmap, avail: u64, heads: &[u16]) {
        for (i, h) in heads.iter().enumerate() {
            mem.write_obj(*h, GuestAddress(avail + 4 + 2 * i as u64)).unwrap();
        }
        mem.write_obj(heads.len() as u16, GuestAddress(avail + 2)).unwrap();
    }

    fn used_idx(mem: &GuestMemoryMmap, used: u64) -> u16 {
        mem.read_obj(GuestAddress(used + 2)).unwrap()
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn a_packet_across_descriptors_becomes_a_chain_of_frames() {
        let (mut p, mem, mut area, mut pool) = port(true);
        let bytes = pattern(3000);
        // The header alone, then the packet in two descriptors of 1 500 bytes.
        desc(&mem, TX.0, 0, 0x10000, 12, NEXT, 1);
        desc(&mem, TX.0, 1, 0x20000, 1500, NEXT, 2);
        desc(&mem, TX.0, 2, 0x30000, 1500, 0, 0);
        mem.write_slice(&bytes[..1500], GuestAddress(0x20000)).unwrap();
        mem.write_slice(&bytes[1500..], GuestAddress(0x30000)).unwrap();
        offer(&mem, TX.1, &[0]);
        let free = pool.len();
        let mut batch = Batch::new();
        assert_eq!(p.rx(&mut area, &mut pool, &mut batch), 1);
        let f = &batch.frames()[0];
        assert_eq!((f.len(), f.segs()), (3000, 1), "1 792 bytes in the head, the rest after");
        let got: Vec<u8> = area.segments(f).flatten().copied().collect();
        assert_eq!(got, bytes);
        assert_eq!(used_idx(&mem, TX.2), 1, "the chain went back to the guest");
        assert_eq!(pool.len(), free - 2);
    }

    #[test]
    fn broken_chains_fault_the_port_and_take_no_frame() {
        type Setup = fn(&GuestMemoryMmap);
        let cases: [(Setup, Fault); 3] = [
            (
                |m| {
                    desc(m, TX.0, 0, 0x10000, 64, NEXT, 1);
                    desc(m, TX.0, 1, 0x10100, 64, NEXT, 0);
                    offer(m, TX.1, &[0]);
                },
                Fault::BadChain,
            ),
            (
                |m| {
                    desc(m, TX.0, 0, 0x4000_0000, 64, 0, 0);
                    offer(m, TX.1, &[0]);
                },
                Fault::OutOfMemory,
            ),
            (|m| m.write_obj(1000u16, GuestAddress(TX.1 + 2)).unwrap(), Fault::BadIndex),
        ];
        for (setup, fault) in cases {
            let (mut p, mem, mut area, mut pool) = port(true);
            setup(&mem);
            let free = pool.len();
            let mut batch = Batch::new();
            assert_eq!(p.rx(&mut area, &mut pool, &mut batch), 0, "{fault:?}");
            assert!(!p.running(), "{fault:?}: the rings were dropped");
            assert_eq!(p.link.last_fault(), Some(fault));
            assert_eq!(p.link.faults.load(Ordering::Relaxed), 1);
            assert_eq!(pool.len(), free, "{fault:?}: every frame went back");
            // The rings went to the protocol thread, not dropped here.
            assert!(p.link.gone.1.try_recv().is_ok(), "{fault:?}");
        }
    }

    #[test]
    fn a_large_frame_spans_merged_receive_buffers() {
        let (mut p, mem, mut area, mut pool) = port(true);
        for i in 0..4u16 {
            desc(&mem, RX.0, i, 0x40000 + 0x1000 * u64::from(i), 1024, WRITE, 0);
        }
        offer(&mem, RX.1, &[0, 1, 2, 3]);
        let bytes = pattern(3000);
        let f = pool.copy_in(&mut area, &bytes).unwrap();
        let mut frames = vec![f];
        assert_eq!(p.tx(&area, &mut frames), 1);
        assert!(p.kick(Breath::Idle));
        assert_eq!(used_idx(&mem, RX.2), 3, "3 012 bytes with the header: three buffers");
        let mut got = vec![0u8; 3 * 1024];
        for i in 0..3 {
            let at = GuestAddress(0x40000 + 0x1000 * i as u64);
            mem.read_slice(&mut got[i * 1024..(i + 1) * 1024], at).unwrap();
        }
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
        assert_eq!(&got[12..3012], &bytes[..]);
        assert_eq!(p.reclaim(&area, &mut pool), 2, "both chunks of the frame come back");
    }

    #[test]
    fn without_merged_buffers_a_frame_too_large_is_dropped_and_the_buffer_kept() {
        let (mut p, mem, mut area, mut pool) = port(false);
        desc(&mem, RX.0, 0, 0x40000, 1024, WRITE, 0);
        offer(&mem, RX.1, &[0]);
        let big = pool.copy_in(&mut area, &pattern(3000)).unwrap();
        let small = pool.copy_in(&mut area, &pattern(100)).unwrap();
        let mut frames = vec![big, small];
        assert_eq!(p.tx(&area, &mut frames), 2);
        assert_eq!(p.stats.too_big_for_guest, 1);
        assert_eq!(p.stats.tx_packets, 1, "the small one took the buffer the big one left");
        assert_eq!(used_idx(&mem, RX.2), 1);
    }

    /// A virtio-net header asking for `gso` segmentation at `mss` and the checksum from
    /// `csum_start` (field at `csum_offset`) to be completed.
    fn vnet(gso: u8, mss: u16, csum_start: u16, csum_offset: u16) -> [u8; 12] {
        let mut h = [0u8; 12];
        h[0] = 1; // NEEDS_CSUM
        h[1] = gso;
        h[4..6].copy_from_slice(&mss.to_le_bytes());
        h[6..8].copy_from_slice(&csum_start.to_le_bytes());
        h[8..10].copy_from_slice(&csum_offset.to_le_bytes());
        h
    }

    /// A TCP packet (PSH and FIN set, checksum left partial as Linux leaves it: the folded
    /// pseudo-header sum) of `payload`, over IPv4 or IPv6; and the TCP header's offset.
    fn big_tcp(v6: bool, payload: &[u8]) -> (Vec<u8>, usize) {
        use etherparse::PacketBuilder;
        let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let mut out = Vec::new();
        let (l4, pseudo) = if v6 {
            let (a, b) = ([0xfd; 16], [0xfe; 16]);
            eth.ipv6(a, b, 64)
                .tcp(40000, 5201, 1000, 512)
                .psh()
                .fin()
                .write(&mut out, payload)
                .unwrap();
            (54, crate::wire::checksum::pseudo_header(true, &a, &b, 6, (20 + payload.len()) as u32))
        } else {
            let m = |x: [u8; 4]| {
                let mut m = [0u8; 16];
                m[10..12].fill(0xff);
                m[12..].copy_from_slice(&x);
                m
            };
            eth.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .tcp(40000, 5201, 1000, 512)
                .psh()
                .fin()
                .write(&mut out, payload)
                .unwrap();
            let p = crate::wire::checksum::pseudo_header(
                false,
                &m([10, 0, 0, 1]),
                &m([10, 0, 0, 2]),
                6,
                (20 + payload.len()) as u32,
            );
            (34, p)
        };
        out[l4 + 16..l4 + 18].copy_from_slice(&crate::wire::checksum::fold(pseudo).to_be_bytes());
        (out, l4)
    }

    /// Offers `pkt` after `vh` on the transmit queue: the header alone, then the packet in
    /// two descriptors (cut at byte 100).
    fn offer_tx(mem: &GuestMemoryMmap, vh: &[u8; 12], pkt: &[u8]) {
        mem.write_slice(vh, GuestAddress(0x10000)).unwrap();
        mem.write_slice(&pkt[..100], GuestAddress(0x11000)).unwrap();
        mem.write_slice(&pkt[100..], GuestAddress(0x20000)).unwrap();
        desc(mem, TX.0, 0, 0x10000, 12, NEXT, 1);
        desc(mem, TX.0, 1, 0x11000, 100, NEXT, 2);
        desc(mem, TX.0, 2, 0x20000, (pkt.len() - 100) as u32, 0, 0);
        offer(mem, TX.1, &[0]);
    }

    #[test]
    fn a_large_tcp_segment_is_cut_into_segments_with_their_own_headers_and_checksums() {
        for v6 in [false, true] {
            let (mut p, mem, mut area, mut pool) = port(true);
            p.whole = false;
            let payload = pattern(10_000);
            let (pkt, l4) = big_tcp(v6, &payload);
            let mss = 1448u16;
            offer_tx(&mem, &vnet(if v6 { 4 } else { 1 }, mss, l4 as u16, 16), &pkt);
            let mut batch = Batch::new();
            assert_eq!(p.rx(&mut area, &mut pool, &mut batch), 7, "10 000 bytes at 1 448: 7");
            assert_eq!((p.stats.segmented, p.stats.segments), (1, 7));
            let packets: Vec<Vec<u8>> = batch
                .frames()
                .iter()
                .map(|f| area.segments(f).flatten().copied().collect())
                .collect();
            check_segments(v6, &packets, &payload);
            assert_eq!(used_idx(&mem, TX.2), 1);
        }
    }

    /// Checks that `packets` are the segments of [`big_tcp`]`(v6, payload)` cut at an MSS of
    /// 1 448: headers, checksums, sequence numbers, flags, and the payload byte for byte.
    fn check_segments(v6: bool, packets: &[Vec<u8>], payload: &[u8]) {
        use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
        let n = payload.len().div_ceil(1448);
        assert_eq!(packets.len(), n);
        {
            let mut got = Vec::new();
            for (i, b) in packets.iter().enumerate() {
                let h = PacketHeaders::from_ethernet_slice(b).unwrap();
                let data = h.payload.slice();
                let Some(TransportHeader::Tcp(t)) = &h.transport else { panic!("not TCP") };
                let want = match &h.net {
                    Some(NetHeaders::Ipv4(ip, _)) => {
                        assert!(!v6);
                        assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "segment {i}");
                        assert_eq!(ip.identification, i as u16);
                        assert_eq!(usize::from(ip.total_len), 40 + data.len());
                        t.calc_checksum_ipv4(ip, data).unwrap()
                    }
                    Some(NetHeaders::Ipv6(ip, _)) => {
                        assert!(v6);
                        assert_eq!(usize::from(ip.payload_length), 20 + data.len());
                        t.calc_checksum_ipv6(ip, data).unwrap()
                    }
                    _ => panic!("not IP"),
                };
                assert_eq!(t.checksum, want, "v6 {v6}, segment {i}: TCP checksum");
                assert_eq!(t.sequence_number, 1000 + (i * 1448) as u32);
                let last = i == n - 1;
                assert_eq!((t.fin, t.psh), (last, last), "FIN and PSH on the last only");
                assert_eq!(data.len(), if last { payload.len() - (n - 1) * 1448 } else { 1448 });
                got.extend_from_slice(data);
            }
            assert_eq!(got, payload, "v6 {v6}: the payload, byte for byte");
        }
    }

    #[test]
    fn a_large_tcp_segment_crosses_whole_and_is_cut_on_the_way_out_as_on_the_way_in() {
        for v6 in [false, true] {
            let (mut p, mem, mut area, mut pool) = port(true);
            let payload = pattern(10_000);
            let (pkt, l4) = big_tcp(v6, &payload);
            offer_tx(&mem, &vnet(if v6 { 4 } else { 1 }, 1448, l4 as u16, 16), &pkt);
            let free = pool.len();
            let mut batch = Batch::new();
            assert_eq!(p.rx(&mut area, &mut pool, &mut batch), 1, "one frame, whole");
            assert_eq!((p.stats.whole_in, p.stats.segmented), (1, 0));
            let f = batch.take_frames().next().unwrap().0;
            assert!(f.is_gso());
            assert_eq!(area.gso(&f), Some(Gso { v6, ecn: false, mss: 1448 }));
            let whole: Vec<u8> = area.segments(&f).flatten().copied().collect();
            assert_eq!(whole, pkt, "the guest's bytes as they were");
            let (mut out, g) = (Vec::new(), area.gso(&f).unwrap());
            let cut = tso::cut_frame(&mut area, &mut pool, &f, g, &mut |s| out.push(s));
            assert_eq!(cut, Ok(7));
            let packets: Vec<Vec<u8>> =
                out.iter().map(|s| area.segments(s).flatten().copied().collect()).collect();
            check_segments(v6, &packets, &payload);
            pool.free(&area, f);
            for s in out {
                pool.free(&area, s);
            }
            assert_eq!(pool.len(), free, "every frame back");
        }
    }

    /// A large segment of [`big_tcp`]`(v6, 10 000 bytes)` carried whole, in frames of `pool`.
    fn whole_frame(v6: bool, area: &mut FrameArea, pool: &mut FramePool) -> (FrameRef, Vec<u8>) {
        let (pkt, _) = big_tcp(v6, &pattern(10_000));
        let f = pool.copy_in(area, &pkt).unwrap();
        (area.set_gso(f, Gso { v6, ecn: false, mss: 1448 }), pkt)
    }

    #[test]
    fn a_guest_that_takes_large_segments_gets_them_whole_with_their_virtio_header() {
        for v6 in [false, true] {
            let (mut p, mem, mut area, mut pool) = port_with(true, (true, true));
            for i in 0..4u16 {
                desc(&mem, RX.0, i, 0x40000 + 0x1000 * u64::from(i), 4096, WRITE, 0);
            }
            offer(&mem, RX.1, &[0, 1, 2, 3]);
            let (f, pkt) = whole_frame(v6, &mut area, &mut pool);
            let mut frames = vec![f];
            assert_eq!(p.tx(&area, &mut frames), 1);
            assert_eq!((p.stats.whole_out, p.stats.cut_out), (1, 0));
            assert_eq!(used_idx(&mem, RX.2), 3, "12 + 10 054 bytes: three buffers of 4 096");
            let mut got = vec![0u8; 3 * 4096];
            mem.read_slice(&mut got, GuestAddress(0x40000)).unwrap();
            let l4 = if v6 { 54u16 } else { 34 };
            let le = |i: usize| u16::from_le_bytes([got[i], got[i + 1]]);
            assert_eq!(got[0], 1, "NEEDS_CSUM");
            assert_eq!(got[1], if v6 { 4 } else { 1 }, "GSO_TCPV6 or GSO_TCPV4");
            assert_eq!((le(2), le(4), le(6), le(8), le(10)), (l4 + 20, 1448, l4, 16, 3));
            assert_eq!(&got[12..12 + pkt.len()], &pkt[..], "the packet as the sender made it");
        }
    }

    #[test]
    fn a_guest_that_does_not_gets_the_segments_even_when_its_ring_fills_midway() {
        for v6 in [false, true] {
            // The guest takes whole segments of the other IP version only.
            let (mut p, mem, mut area, mut pool) = port_with(false, (v6, !v6));
            for i in 0..7u16 {
                desc(&mem, RX.0, i, 0x40000 + 0x1000 * u64::from(i), 2048, WRITE, 0);
            }
            // Three buffers now, four more later.
            offer(&mem, RX.1, &[0, 1, 2]);
            let (f, pkt) = whole_frame(v6, &mut area, &mut pool);
            let mut frames = vec![f];
            assert_eq!(p.tx(&area, &mut frames), 0, "not taken: four segments to go");
            assert_eq!(used_idx(&mem, RX.2), 3);
            for i in 3..7u16 {
                mem.write_obj(i, GuestAddress(RX.1 + 4 + 2 * u64::from(i))).unwrap();
            }
            mem.write_obj(7u16, GuestAddress(RX.1 + 2)).unwrap();
            assert_eq!(p.tx(&area, &mut frames), 1);
            assert_eq!((p.stats.whole_out, p.stats.cut_out, p.stats.tx_packets), (0, 1, 1));
            assert_eq!(used_idx(&mem, RX.2), 7, "each segment once");
            let mut packets = Vec::new();
            for i in 0..7u64 {
                let len: u32 = mem.read_obj(GuestAddress(RX.2 + 4 + 8 * i + 4)).unwrap();
                let mut b = vec![0u8; len as usize];
                mem.read_slice(&mut b, GuestAddress(0x40000 + 0x1000 * i)).unwrap();
                assert_eq!(&b[..2], &[0, 0], "a plain packet: no flags, no GSO");
                packets.push(b[12..].to_vec());
            }
            check_segments(v6, &packets, &pkt[if v6 { 74 } else { 54 }..]);
        }
    }

    #[test]
    fn segments_beyond_a_batch_wait_for_the_next_receive() {
        let (mut p, mem, mut area, mut pool) = port(true);
        p.whole = false;
        let (pkt, l4) = big_tcp(false, &pattern(100 * 536));
        offer_tx(&mem, &vnet(1, 536, l4 as u16, 16), &pkt);
        let free = pool.len();
        let mut batch = Batch::new();
        assert_eq!(p.rx(&mut area, &mut pool, &mut batch), 64);
        assert_eq!(p.census().rx, 36, "the rest are the port's, counted");
        let mut next = Batch::new();
        assert_eq!(p.rx(&mut area, &mut pool, &mut next), 36);
        assert_eq!(p.census().rx, 0);
        assert_eq!(pool.len(), free - 100);
    }

    #[test]
    fn a_partial_checksum_is_completed() {
        use etherparse::{PacketBuilder, PacketHeaders, TransportHeader};
        let (mut p, mem, mut area, mut pool) = port(true);
        let mut pkt = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(5000, 53)
            .write(&mut pkt, &pattern(3001))
            .unwrap();
        let right = u16::from_be_bytes([pkt[40], pkt[41]]);
        let m = |x: [u8; 4]| {
            let mut m = [0u8; 16];
            m[10..12].fill(0xff);
            m[12..].copy_from_slice(&x);
            m
        };
        let ps = crate::wire::checksum::pseudo_header(
            false,
            &m([10, 0, 0, 1]),
            &m([10, 0, 0, 2]),
            17,
            3009,
        );
        pkt[40..42].copy_from_slice(&crate::wire::checksum::fold(ps).to_be_bytes());
        offer_tx(&mem, &vnet(0, 0, 34, 6), &pkt);
        let mut batch = Batch::new();
        assert_eq!(p.rx(&mut area, &mut pool, &mut batch), 1);
        let b: Vec<u8> = area.segments(&batch.frames()[0]).flatten().copied().collect();
        assert_eq!(batch.frames()[0].segs(), 1, "3 043 bytes: a chain of two frames");
        let h = PacketHeaders::from_ethernet_slice(&b).unwrap();
        let Some(TransportHeader::Udp(u)) = h.transport else { panic!("not UDP") };
        assert_eq!(u.checksum, right);
        assert_eq!(p.stats.checksums, 1);
    }

    #[test]
    fn offloads_that_cannot_be_done_drop_the_packet_and_take_no_frame() {
        let (pkt, l4) = big_tcp(false, &pattern(5000));
        let cases: [[u8; 12]; 4] = [
            vnet(1, 0, l4 as u16, 16),    // an MSS of 0
            vnet(1, 20, l4 as u16, 16),   // 250 segments, more than the port makes
            vnet(4, 1448, l4 as u16, 16), // TCPV6 for an IPv4 packet
            vnet(0, 0, 5000, 16),         // a checksum field beyond the headers
        ];
        for vh in cases {
            let (mut p, mem, mut area, mut pool) = port(true);
            offer_tx(&mem, &vh, &pkt);
            let free = pool.len();
            let mut batch = Batch::new();
            assert_eq!(p.rx(&mut area, &mut pool, &mut batch), 0, "{vh:?}");
            assert_eq!(p.stats.bad_offload, 1, "{vh:?}");
            assert!(p.running(), "{vh:?}: a dropped packet is not a fault");
            assert_eq!(pool.len(), free, "{vh:?}: every frame went back");
            assert_eq!(used_idx(&mem, TX.2), 1, "{vh:?}: the buffers went back to the guest");
        }
    }

    #[test]
    fn a_header_and_packet_in_one_descriptor_take_one_frame_and_offloads_still_apply() {
        let (mut p, mem, mut area, mut pool) = port(true);
        let bytes = pattern(64);
        // Plain: the header and the bytes in one descriptor.
        mem.write_slice(&[0u8; 12], GuestAddress(0x10000)).unwrap();
        mem.write_slice(&bytes, GuestAddress(0x1000c)).unwrap();
        desc(&mem, TX.0, 0, 0x10000, 76, 0, 0);
        // The same layout asking for a checksum (a TCP packet's, left partial).
        let (pkt, l4) = big_tcp(false, &pattern(100));
        let mut one = vnet(0, 0, l4 as u16, 16).to_vec();
        one.extend_from_slice(&pkt);
        mem.write_slice(&one, GuestAddress(0x11000)).unwrap();
        desc(&mem, TX.0, 1, 0x11000, one.len() as u32, 0, 0);
        offer(&mem, TX.1, &[0, 1]);
        let mut batch = Batch::new();
        assert_eq!(p.rx(&mut area, &mut pool, &mut batch), 2);
        let got: Vec<u8> = area.segments(&batch.frames()[0]).flatten().copied().collect();
        assert_eq!(got, bytes);
        assert_eq!(p.stats.checksums, 1, "the second asked for its checksum");
        let b: Vec<u8> = area.segments(&batch.frames()[1]).flatten().copied().collect();
        let h = etherparse::PacketHeaders::from_ethernet_slice(&b).unwrap();
        let (Some(etherparse::NetHeaders::Ipv4(ip, _)), Some(etherparse::TransportHeader::Tcp(t))) =
            (&h.net, &h.transport)
        else {
            panic!("not TCP over IPv4")
        };
        assert_eq!(t.checksum, t.calc_checksum_ipv4(ip, h.payload.slice()).unwrap(), "completed");
    }
}
