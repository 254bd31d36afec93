//! Stage 5: carry out the dispositions. Rewrites, pops or pushes the VLAN tag each egress
//! attachment wants, makes flood copies into fresh frames, and appends frames to per-port TX
//! lists; [`TxLists::flush`] then hands them to the ports, counts what was sent and keeps
//! what a full TX ring could not take yet.
//!
//! Edits happen in place in the frame's chunk: a pop moves the 12 MAC bytes forward by 4, a push
//! moves them back into the headroom, a rewrite touches 2 bytes. The payload never moves.
//!
//! Flood copies are separate packets for the counters: a copy that finds no free frame or no
//! room in a TX list is dropped under its own reason, while the other copies still go out.

use crate::batch::{Batch, Meta, PacketFlags};
use crate::flow::overlay::{NO_VTEP, OverlayMap, Vtep, VtepId};
use crate::frame::{FrameArea, FramePool, FrameRef};
use crate::pipeline::Dispositions;
use crate::shaping::PortSched;
use crate::snapshot::{Snapshot, Underlay};
use crate::time::Nanos;
use crate::trace::Counters;
use crate::trace::counters::{PktBytes, TenantRun};
use crate::tso::{self, MAX_TSO_SEGS};
use crate::vocab::{Disposition, DropReason, PortId, TenantId};

use crate::wire::checksum;

const TPID_8021Q: [u8; 2] = [0x81, 0x00];
const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// A bounded list that never grows past the capacity it was made with (so pushing never
/// allocates on the packet path).
#[derive(Debug)]
struct TxList {
    frames: Vec<FrameRef>,
    /// Who each frame is for the counters, parallel to `frames`, which stays a plain list of
    /// frames for [`Egress::send`] to take from.
    owners: Vec<Owner>,
}

/// Whose a frame in a TX list is, for the counters once it is sent: its tenant, the port it
/// came in on, and its length (the frame itself is gone by then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The frame's tenant.
    pub tenant: TenantId,
    /// The port it came in on.
    pub ingress: PortId,
    /// Its length in bytes.
    pub len: u32,
}

/// Frames waiting to be sent, per egress port.
#[derive(Debug)]
pub struct TxLists {
    lists: Vec<TxList>,
    capacity: usize,
    /// Per port this worker sends on: its egress scheduler, when it has one. Frames for such a
    /// port wait in their tenant's queue; the scheduler moves them to the port's list (its
    /// ready list) a few at a time.
    scheds: Vec<Option<PortSched>>,
    /// The segments a large TCP segment was just cut into, on their way to a port's list
    /// (capacity [`MAX_TSO_SEGS`], so cutting never allocates).
    cut: Vec<FrameRef>,
}

/// Most frames a scheduled port's list holds: frames wait in the tenants' queues, where the
/// scheduler can still order them, not here.
const READY: usize = 32;

/// Where [`TxLists::push`] put a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// In the port's list, to be sent at the next flush.
    Ready,
    /// In its tenant's queue of the port's scheduler.
    Scheduled,
}

impl Queued {
    /// Counts a frame of `tenant` that went into a scheduler's queue.
    #[inline]
    pub fn count(self, c: &mut Counters, tenant: TenantId, len: u32) {
        if self == Queued::Scheduled
            && let Some(q) = c.tenant_queued.get_mut(tenant.index())
        {
            q.add(len);
        }
    }
}

impl TxLists {
    /// Lists for `ports` ports, each holding up to `capacity` frames.
    pub fn new(ports: usize, capacity: usize) -> Self {
        let mut t = TxLists {
            lists: Vec::new(),
            capacity,
            scheds: Vec::new(),
            cut: Vec::with_capacity(MAX_TSO_SEGS),
        };
        t.resize(ports);
        t
    }

    /// Sets up the egress schedulers of `snap` on the ports `local` says this worker sends on,
    /// each rate divided by `share(port)` (the workers sending on it). Frames queued in the
    /// previous schedulers move to the new ones; those that find no room are returned, for
    /// the caller to drop (`queue_full`) and free.
    pub fn schedule(
        &mut self,
        snap: &Snapshot,
        local: impl Fn(PortId) -> bool,
        share: impl Fn(PortId) -> u64,
        now: Nanos,
    ) -> Vec<(FrameRef, TenantId, PortId)> {
        let old = std::mem::take(&mut self.scheds);
        self.scheds = (0..snap.ports.len())
            .map(|p| {
                let p = PortId(p as u16);
                if local(p) { PortSched::new(snap, p, share(p), now) } else { None }
            })
            .collect();
        let mut left = Vec::new();
        for (p, s) in old.into_iter().enumerate() {
            let Some(mut s) = s else { continue };
            let port = PortId(p as u16);
            s.take_all(|f, t, ingress| {
                if let Err((_, f)) = self.push(port, f, t, ingress, now) {
                    left.push((f, t, ingress));
                }
            });
        }
        left
    }

    /// Frames waiting in `tenant`'s queues (all ports) and the room those queues have.
    pub fn queue_depth(&self, tenant: TenantId) -> (usize, usize) {
        self.scheds
            .iter()
            .flatten()
            .fold((0, 0), |(d, l), s| (d + s.depth(tenant), l + s.limit(tenant)))
    }

    /// Adapts to a new number of ports (snapshot change).
    pub fn resize(&mut self, ports: usize) {
        let cap = self.capacity;
        self.lists.resize_with(ports, || TxList {
            frames: Vec::with_capacity(cap),
            owners: Vec::with_capacity(cap),
        });
    }

    /// Appends a frame to the port's list, or to its tenant's queue when the port has a
    /// scheduler (unless nothing is queued there and the rates allow it at `now`: then it goes
    /// to the list at once). When the list (`tx_full`) or the queue (`queue_full`) is full, or
    /// the port does not exist, the frame comes back with the reason to drop it.
    /// PERF(overlay): always inlined: called out of line (once the underlay's output called it
    /// too) the frame went through the stack and its reload stalled on store forwarding,
    /// 12 % of plain forwarding's time.
    #[inline(always)]
    pub fn push(
        &mut self,
        port: PortId,
        f: FrameRef,
        tenant: TenantId,
        ingress: PortId,
        now: Nanos,
    ) -> Result<Queued, (DropReason, FrameRef)> {
        if let Some(Some(s)) = self.scheds.get_mut(port.index()) {
            // Frames that cut through do not pass others (nothing is queued), so the list's
            // whole room may take them.
            if let Some(l) = self.lists.get_mut(port.index())
                && l.frames.len() < self.capacity
                && s.cut_through(tenant, f.len(), now)
            {
                l.push(f, tenant, ingress);
                return Ok(Queued::Ready);
            }
            return match s.enqueue(tenant, f, ingress) {
                Ok(()) => Ok(Queued::Scheduled),
                Err(f) => Err((DropReason::QueueFull, f)),
            };
        }
        match self.lists.get_mut(port.index()) {
            Some(l) if l.frames.len() < self.capacity => {
                l.push(f, tenant, ingress);
                Ok(Queued::Ready)
            }
            _ => Err((DropReason::TxFull, f)),
        }
    }

    /// A batch begins at `now` (see [`PortSched::begin_batch`]): at most `frames` frames per
    /// port of at most `max_len` bytes.
    #[inline]
    pub fn begin_batch(&mut self, now: Nanos, frames: u64, max_len: u32) {
        for s in self.scheds.iter_mut().flatten() {
            s.begin_batch(now, frames, max_len);
        }
    }

    /// The batch is over: each port's bucket is charged for what cut through.
    #[inline]
    pub fn end_batch(&mut self) {
        for s in self.scheds.iter_mut().flatten() {
            s.end_batch();
        }
    }

    /// True when `port` can take another frame (a scheduled port always can: its queues say
    /// for themselves).
    #[inline]
    pub fn has_room(&self, port: PortId) -> bool {
        matches!(self.scheds.get(port.index()), Some(Some(_)))
            || self.lists.get(port.index()).is_some_and(|l| l.frames.len() < self.capacity)
    }

    /// The most frames pending on any one port, and the capacity of a list.
    #[inline]
    pub fn fullest(&self) -> (usize, usize) {
        (self.lists.iter().map(|l| l.frames.len()).max().unwrap_or(0), self.capacity)
    }

    /// Frames pending on all ports (in lists and in schedulers' queues).
    pub fn total_pending(&self) -> usize {
        self.lists.iter().map(|l| l.frames.len()).sum::<usize>()
            + self.scheds.iter().flatten().map(PortSched::len).sum::<usize>()
    }

    /// Chunks held by the frames pending on all ports (a chain holds several), for the frame
    /// census.
    pub fn pending_chunks(&self) -> usize {
        let lists = self.lists.iter().flat_map(|l| l.frames.iter());
        lists.map(|f| f.chunks() as usize).sum::<usize>()
            + self.scheds.iter().flatten().map(PortSched::chunks).sum::<usize>()
    }

    /// Drops every frame waiting for `port` (in its list and its scheduler's queues) as
    /// `reason`, counted per ingress port and tenant, and frees them: the port is down.
    pub fn discard(
        &mut self,
        port: PortId,
        reason: DropReason,
        c: &mut Counters,
        area: &FrameArea,
        pool: &mut FramePool,
    ) {
        if let Some(l) = self.lists.get_mut(port.index()) {
            l.drop_all(reason, c, area, pool);
        }
        if let Some(Some(s)) = self.scheds.get_mut(port.index()) {
            s.take_all(|f, t, ingress| {
                c.drop(ingress, Some(t), reason);
                pool.free(area, f);
            });
        }
    }

    /// Hands each port's pending frames to `out`. What it does not take yet (a full TX ring
    /// or handoff ring) stays queued, in order, for the next call: a short burst is absorbed
    /// here instead of dropped; a list that is still full when more frames arrive drops those
    /// as `tx_full`. Frames for a port no socket serves ([`Egress::reachable`]: one still
    /// waiting for its interface) are dropped as `port_down` and go back to `pool`.
    pub fn flush<E: Egress + ?Sized>(
        &mut self,
        out: &mut E,
        c: &mut Counters,
        area: &FrameArea,
        pool: &mut FramePool,
        now: Nanos,
    ) {
        for (i, l) in self.lists.iter_mut().enumerate() {
            let port = PortId(i as u16);
            if !l.frames.is_empty() && !out.reachable(port) {
                l.drop_all(DropReason::PortDown, c, area, pool);
                continue;
            }
            let Some(Some(s)) = self.scheds.get_mut(i) else {
                send_list(out, area, port, l, c);
                continue;
            };
            // The scheduler fills the ready list as far as rates and weights allow, a few
            // frames at a time, for as long as the port takes them: the frames wait in the
            // tenants' queues, where the order can still change, not in the TX ring.
            loop {
                let room = READY.saturating_sub(l.frames.len());
                let got = s.schedule(now, room, |f, t, ingress| l.push(f, t, ingress));
                let offered = l.frames.len();
                if offered == 0 || send_list(out, area, port, l, c) < offered || got.frames < room {
                    break;
                }
            }
        }
    }
}

/// Hands one port's pending frames to `out` and counts what it took; the rest stays in the
/// list, in order. Returns how many it took.
fn send_list<E: Egress + ?Sized>(
    out: &mut E,
    area: &FrameArea,
    port: PortId,
    l: &mut TxList,
    c: &mut Counters,
) -> usize {
    if l.frames.is_empty() {
        return 0;
    }
    let before = l.frames.len();
    let sent = out.send(area, port, &mut l.frames, &l.owners);
    debug_assert_eq!(before - l.frames.len(), sent, "send took a prefix of the list");
    if sent == 0 {
        return 0;
    }
    if out.counts_tx(port) {
        let mut total = PktBytes::default();
        let mut tenant_tx = TenantRun::default();
        for o in &l.owners[..sent] {
            total.add(o.len);
            tenant_tx.add(&mut c.tenant_tx, o.tenant, o.len);
        }
        tenant_tx.flush(&mut c.tenant_tx);
        if let Some(pt) = c.port_tx.get_mut(port.index()) {
            pt.packets += total.packets;
            pt.bytes += total.bytes;
        }
    }
    // Handed to another worker (not counted here: it counts them when it sends them), or
    // sent. Shifts the unsent rest to the front; never allocates.
    l.owners.drain(..sent);
    sent
}

impl TxList {
    #[inline]
    fn push(&mut self, f: FrameRef, tenant: TenantId, ingress: PortId) {
        self.owners.push(Owner { tenant, ingress, len: f.len() });
        self.frames.push(f);
    }

    /// Drops every frame of the list as `reason`, counted per ingress port and tenant, and
    /// frees them.
    fn drop_all(
        &mut self,
        reason: DropReason,
        c: &mut Counters,
        area: &FrameArea,
        pool: &mut FramePool,
    ) {
        for (f, o) in self.frames.drain(..).zip(self.owners.drain(..)) {
            c.drop(o.ingress, Some(o.tenant), reason);
            pool.free(area, f);
        }
    }
}

/// Where TX lists go: the port drivers of this worker, or another worker that owns the port.
pub trait Egress {
    /// Takes a prefix of `frames` for `port` (removing it from the list: the frames are the
    /// port's, or the other worker's, now); `owners[i]` says whose `frames[i]` is. Returns how
    /// many it took; the rest stay in `frames`, still the caller's. `area` holds the frames
    /// (a chain's segments are read from it).
    fn send(
        &mut self,
        area: &FrameArea,
        port: PortId,
        frames: &mut Vec<FrameRef>,
        owners: &[Owner],
    ) -> usize;

    /// True when `send` on `port` puts frames on the wire (they count as transmitted); false
    /// when it hands them to another worker, which counts them when it sends them.
    fn counts_tx(&self, port: PortId) -> bool {
        let _ = port;
        true
    }

    /// False when no socket serves `port`, here or on another worker (a port waiting for its
    /// interface): its frames are dropped as `port_down` rather than left to fill its list.
    fn reachable(&self, port: PortId) -> bool {
        let _ = port;
        true
    }
}

/// How the outer tag must change between ingress and egress: the frame as it leaves, or back
/// when it cannot be changed (too short, no headroom), for the caller to drop.
#[inline(always)]
fn retag(
    area: &mut FrameArea,
    f: FrameRef,
    tagged: bool,
    vlan: Option<u16>,
) -> Result<FrameRef, FrameRef> {
    // Only the first segment changes: the tag is in the headers.
    let (addr, len) = (f.addr(), f.head_len());
    match (tagged, vlan) {
        (false, None) => Ok(f),
        (true, Some(v)) => {
            // Same length: rewrite TPID and VLAN id, keep the priority bits.
            let Some(b) = area.frame_mut(&f) else { return Err(f) };
            if b.len() < 16 {
                return Err(f);
            }
            b[12..14].copy_from_slice(&TPID_8021Q);
            let tci = (u16::from_be_bytes([b[14], b[15]]) & 0xf000) | (v & 0x0fff);
            b[14..16].copy_from_slice(&tci.to_be_bytes());
            Ok(f)
        }
        (true, None) => {
            // Pop: the MACs move 4 bytes forward over the tag.
            if len < 18 {
                return Err(f);
            }
            let Some((chunk, off)) = area.chunk_mut(addr) else { return Err(f) };
            chunk.copy_within(off..off + 12, off + 4);
            Ok(f.with_head(addr + 4, len - 4))
        }
        (false, Some(v)) => {
            // Push: the MACs move 4 bytes back into the headroom, the tag goes after them.
            let Some((chunk, off)) = area.chunk_mut(addr) else { return Err(f) };
            if off < 4 || len < 12 || off + len as usize > chunk.len() {
                return Err(f);
            }
            chunk.copy_within(off..off + 12, off - 4);
            chunk[off + 8..off + 10].copy_from_slice(&TPID_8021Q);
            chunk[off + 10..off + 12].copy_from_slice(&(v & 0x0fff).to_be_bytes());
            Ok(f.with_head(addr - 4, len + 4))
        }
    }
}

/// Completes the TCP or UDP checksum of frame `f` if its sender left it partial (checksum
/// offload on a veth or tap: [`checksum::complete_partial`]). Returns true when it did. Costs
/// a pseudo-header sum per TCP or UDP frame; the whole segment is summed only for a partial
/// one.
#[inline]
fn complete_checksum(area: &mut FrameArea, f: &FrameRef, m: &Meta) -> bool {
    if f.segs() != 0 {
        return complete_chain(area, f, m);
    }
    area.frame_mut(f).is_some_and(|b| complete_in(b, m))
}

/// [`complete_checksum`] for a chain: the segment's bytes run on from the first frame's L4
/// header through every segment after it.
#[cold]
fn complete_chain(area: &mut FrameArea, f: &FrameRef, m: &Meta) -> bool {
    let Some((udp, field, l4, len, pseudo)) = area.frame(f).and_then(|b| target(b, f.len(), m))
    else {
        return false;
    };
    let Some(b) = area.frame_mut(f) else { return false };
    let at = l4 + field;
    let stored = u16::from_be_bytes([b[at], b[at + 1]]);
    if stored != checksum::fold(pseudo) || (udp && stored == 0) {
        return false;
    }
    b[at..at + 2].fill(0);
    let head = &b[l4..b.len().min(l4 + len)];
    let (mut sum, mut done) = (checksum::add(pseudo, head), head.len());
    area.each_seg(f, |a, n| {
        let take = (n as usize).min(len - done);
        if let Some(seg) = area.seg(a, take as u32) {
            // A piece that starts at an odd offset of the segment sums byte-swapped (RFC 1071).
            let part = u64::from(checksum::fold(checksum::add(0, seg)));
            sum += if done % 2 == 1 { u64::from((part as u16).swap_bytes()) } else { part };
        }
        done += take;
    });
    let mut c = !checksum::fold(sum);
    if udp && c == 0 {
        c = 0xffff;
    }
    if let Some(b) = area.frame_mut(f) {
        b[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    true
}

/// Where the TCP or UDP checksum of a packet of `wire` bytes whose first segment is `b` lies:
/// (UDP?, the field's offset in the L4 header, the L4 offset, the L4 length, the
/// pseudo-header sum); None for other packets, fragments, or a field outside `b`.
fn target(b: &[u8], wire: u32, m: &Meta) -> Option<(bool, usize, usize, usize, u64)> {
    let udp = match m.key.proto {
        PROTO_TCP => false,
        PROTO_UDP => true,
        _ => return None,
    };
    let v6 = match m.key.ethertype {
        ETH_IPV4 => false,
        ETH_IPV6 => true,
        _ => return None,
    };
    if m.flags.has(PacketFlags::FRAGMENT) {
        return None; // a sender completes checksums before it fragments
    }
    let (l3, l4) = (usize::from(m.l3_offset), usize::from(m.l4_offset));
    let field = if udp { 6 } else { 16 };
    let len_at = if v6 { l3 + 4 } else { l3 + 2 };
    let &[hi, lo] = b.get(len_at..len_at + 2)? else { return None };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    let end = if v6 { l3 + 40 + len } else { l3 + len };
    if end > wire as usize || end < l4 || l4 + field + 2 > b.len() {
        return None;
    }
    let pseudo =
        checksum::pseudo_header(v6, &m.key.src_ip, &m.key.dst_ip, m.key.proto, (end - l4) as u32);
    Some((udp, field, l4, end - l4, pseudo))
}

/// A frame as the switch sends it: its partial TCP or UDP checksum completed, if it had one
/// (for tests and fuzz oracles that compare what left the switch with what came in).
pub fn complete_partial_checksum(b: &mut [u8]) -> bool {
    let mut m = Meta::EMPTY;
    super::parse::parse_one(b, &mut m).is_ok() && m.l4_offset != 0 && complete_in(b, &m)
}

/// [`complete_checksum`] on the bytes `b` of a frame parsed into `m`.
#[inline]
fn complete_in(b: &mut [u8], m: &Meta) -> bool {
    let Some((udp, field, l4, len, pseudo)) = target(b, b.len() as u32, m) else { return false };
    let Some(seg) = b.get_mut(l4..l4 + len) else { return false };
    checksum::complete_partial(seg, field, pseudo, udp) == checksum::Partial::Completed
}

/// Applies every disposition of the batch at `now`, taking its frames: each ends up in a TX
/// list, a scheduler's queue, or back in the pool.
#[allow(clippy::too_many_arguments)]
pub fn deliver(
    now: Nanos,
    snap: &Snapshot,
    (map, remote): (&OverlayMap, Option<&[VtepId]>),
    area: &mut FrameArea,
    pool: &mut FramePool,
    batch: &mut Batch,
    disp: &Dispositions,
    tx: &mut TxLists,
    c: &mut Counters,
) {
    let ingress = batch.port;
    // At most one frame per batch frame reaches a port (a flood sends one copy to each).
    tx.begin_batch(now, batch.len() as u64, area.chunk_size() + batch.extra());
    for (i, ((f, m), d)) in batch.take_frames().zip(disp.as_slice()).enumerate() {
        let tagged = m.outer_vlan.is_some();
        // A large TCP segment carried whole keeps its partial checksum: cut, each segment gets
        // its own; written whole into a guest, the guest takes it partial.
        if m.flags.has(PacketFlags::PARTIAL_CSUM)
            && !matches!(d, Disposition::Drop(_))
            && !f.is_gso()
        {
            c.checksums_completed += u64::from(complete_checksum(area, &f, m));
        }
        match *d {
            Disposition::Drop(r) => {
                if r == DropReason::NotOverlay && tunnel_arp_reply(snap, area, ingress, &f, m) {
                    // Back out on the underlay, as the owner of the address answers.
                    c.overlay.tunnel_arp += 1;
                    if let Err((r, f)) = tx.push(ingress, f, m.tenant, ingress, now) {
                        c.drop(ingress, None, r);
                        pool.free(area, f);
                    }
                    continue;
                }
                // A frame of no known tenant carries TenantId::NONE: counted per port only.
                c.drop(ingress, Some(m.tenant), r);
                pool.free(area, f);
            }
            Disposition::Tx { port, vlan } => {
                let limit = snap.max_frame(port, vlan.is_some());
                let host = match remote {
                    Some(r) => r.get(i).copied().unwrap_or(NO_VTEP),
                    None => NO_VTEP,
                };
                let to = (port, vlan, limit);
                send_one(now, snap, map, area, pool, ingress, f, m, tagged, to, host, tx, c);
            }
            Disposition::Flood => {
                let mut f = f;
                if answered(snap, map, area, ingress, &mut f, m, c) {
                    // Back where it came from, as the owner of the address would answer.
                    let to = (ingress, m.outer_vlan, u32::MAX);
                    send_one(now, snap, map, area, pool, ingress, f, m, tagged, to, NO_VTEP, tx, c);
                    continue;
                }
                flood(now, snap, map, area, pool, ingress, f, m, tx, c)
            }
        }
    }
    tx.end_batch();
}

/// Turns an ARP request for this host's tunnel address that arrived on underlay port
/// `ingress` (the pipeline found it no VXLAN frame) into the reply from the underlay port's MAC.
/// False, the frame untouched, for any other frame.
#[inline(never)]
fn tunnel_arp_reply(
    snap: &Snapshot,
    area: &mut FrameArea,
    ingress: PortId,
    f: &FrameRef,
    m: &Meta,
) -> bool {
    let Some(u) = snap.underlay(ingress) else { return false };
    super::overlay::is_tunnel_arp(m, u) && super::overlay::arp_reply(area, f, m, u.mac)
}

/// ARP and ND suppression: turns flooded frame `f` into the answer its target's owner would
/// send, when it is an ARP request or an IPv6 neighbour solicitation that a tenant spanning
/// hosts sent from one of its local attachments for an address the cluster map knows (as the
/// Linux bridge's `neigh_suppress` and VPP's `arp-term` do), and counts it. False, the frame
/// untouched, for any other frame.
#[inline]
fn answered(
    snap: &Snapshot,
    map: &OverlayMap,
    area: &mut FrameArea,
    ingress: PortId,
    f: &mut FrameRef,
    m: &Meta,
    c: &mut Counters,
) -> bool {
    const ETH_ARP: u16 = 0x0806;
    const ETH_IPV6: u16 = 0x86dd;
    if !matches!(m.key.ethertype, ETH_ARP | ETH_IPV6) {
        return false;
    }
    let Some((vni, underlay)) = snap.overlay_of(m.tenant) else { return false };
    if underlay == ingress {
        return false;
    }
    if m.key.ethertype == ETH_ARP {
        let Some(ip) = super::overlay::arp_target(m) else { return false };
        let Some(mac) = map.mac_of(vni, ip) else { return false };
        let done = super::overlay::arp_reply(area, f, m, mac);
        c.overlay.arp_suppressed += u64::from(done);
        return done;
    }
    let Some(target) = super::overlay::nd_target(area, f, m) else { return false };
    let Some(mac) = map.mac_of(vni, &target) else { return false };
    let done = super::overlay::nd_reply(area, f, m, &target, mac);
    c.overlay.nd_suppressed += u64::from(done);
    done
}

/// Re-tags frame `f` for port `to.0` (and VLAN `to.1`) and queues it there (on an underlay
/// port, encapsulated for the other hosts: to `host` when the map gave it already), or drops
/// it: too big for the port (`to.2` bytes), no headroom for the tag, or no room to queue it.
/// PERF(overlay): the target's fields travel as scalars: a struct of them went through the
/// stack, written field by field and read back wider, and stalled on store forwarding.
/// PERF(chains): always inlined, with [`retag`]: as calls (13 arguments, and retag's bounds
/// checks out of line) they cost 43 instructions a frame (callgrind, `tracing_count plain`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn send_one(
    now: Nanos,
    snap: &Snapshot,
    map: &OverlayMap,
    area: &mut FrameArea,
    pool: &mut FramePool,
    ingress: PortId,
    f: FrameRef,
    m: &Meta,
    tagged: bool,
    (port, vlan, limit): (PortId, Option<u16>, u32),
    host: VtepId,
    tx: &mut TxLists,
    c: &mut Counters,
) -> bool {
    let tenant = Some(m.tenant);
    match retag(area, f, tagged, vlan) {
        Ok(out) if out.is_gso() && !snap.takes_whole_segments(port) => {
            send_cut(now, snap, map, area, pool, ingress, out, m, (port, limit), host, tx, c)
        }
        Ok(out) if out.len() > limit && !out.is_gso() => {
            c.drop(ingress, tenant, DropReason::TooBig);
            pool.free(area, out);
            false
        }
        Ok(out) if snap.is_underlay(port) => {
            let Some(underlay) = snap.underlay(port) else {
                return unsent(area, pool, c, (ingress, tenant), out, DropReason::NoRoute);
            };
            let to = ToUnderlay { meta: m, ingress, port, underlay, host };
            to_underlay(now, snap, map, area, pool, out, &to, tx, c)
        }
        Ok(out) => {
            let len = out.len();
            match tx.push(port, out, m.tenant, ingress, now) {
                Ok(q) => {
                    q.count(c, m.tenant, len);
                    true
                }
                Err((r, out)) => {
                    c.drop(ingress, tenant, r);
                    pool.free(area, out);
                    false
                }
            }
        }
        Err(f) => {
            c.drop(ingress, tenant, DropReason::NoHeadroom);
            pool.free(area, f);
            false
        }
    }
}

/// Drops `f` for `reason`, counted, and gives it back to the pool: for the ways out of
/// [`send_one`] that a consistent snapshot never takes, kept out of its inlined body.
#[cold]
#[inline(never)]
fn unsent(
    area: &mut FrameArea,
    pool: &mut FramePool,
    c: &mut Counters,
    (ingress, tenant): (PortId, Option<TenantId>),
    f: FrameRef,
    reason: DropReason,
) -> bool {
    c.drop(ingress, tenant, reason);
    pool.free(area, f);
    false
}

/// Cuts `f`, a large TCP segment carried whole, into MTU-sized segments and queues each for
/// `port` as [`send_one`] would (each counts as the packet it is on the wire). A segment too big
/// for the port is dropped as `too_big`; when too few frames are free for all of them, or the
/// headers are not ones the switch cuts, `f` is dropped whole (`no_frame`, `malformed`).
#[cold]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn send_cut(
    now: Nanos,
    snap: &Snapshot,
    map: &OverlayMap,
    area: &mut FrameArea,
    pool: &mut FramePool,
    ingress: PortId,
    f: FrameRef,
    m: &Meta,
    (port, limit): (PortId, u32),
    host: VtepId,
    tx: &mut TxLists,
    c: &mut Counters,
) -> bool {
    let tenant = Some(m.tenant);
    let Some(g) = area.gso(&f) else {
        return unsent(area, pool, c, (ingress, tenant), f, DropReason::Malformed);
    };
    let mut segs = std::mem::take(&mut tx.cut);
    // `cut_frame` makes at most MAX_TSO_SEGS segments, the capacity: the test only keeps the
    // push from ever allocating.
    let r = tso::cut_frame(area, pool, &f, g, &mut |s| {
        if segs.len() < segs.capacity() {
            segs.push(s);
        }
    });
    pool.free(area, f);
    if let Err(e) = r {
        for s in segs.drain(..) {
            pool.free(area, s);
        }
        tx.cut = segs;
        let reason = match e {
            tso::Short::NoFrame | tso::Short::TooBig => DropReason::NoFrame,
            tso::Short::Copy | tso::Short::Bad => DropReason::Malformed,
        };
        c.drop(ingress, tenant, reason);
        return false;
    }
    c.segmented += 1;
    let mut any = false;
    for s in segs.drain(..) {
        if s.len() > limit {
            c.drop(ingress, tenant, DropReason::TooBig);
            pool.free(area, s);
            continue;
        }
        if let Some(underlay) = snap.underlay(port).filter(|_| snap.is_underlay(port)) {
            let to = ToUnderlay { meta: m, ingress, port, underlay, host };
            any |= to_underlay(now, snap, map, area, pool, s, &to, tx, c);
            continue;
        }
        let len = s.len();
        match tx.push(port, s, m.tenant, ingress, now) {
            Ok(q) => {
                q.count(c, m.tenant, len);
                any = true;
            }
            Err((r, s)) => {
                c.drop(ingress, tenant, r);
                pool.free(area, s);
            }
        }
    }
    tx.cut = segs;
    any
}

/// Sends a frame to every attachment of its tenant that is not on the ingress port. The
/// original frame goes to the last target, copies to the others.
#[allow(clippy::too_many_arguments)]
fn flood(
    now: Nanos,
    snap: &Snapshot,
    map: &OverlayMap,
    area: &mut FrameArea,
    pool: &mut FramePool,
    ingress: PortId,
    f: FrameRef,
    m: &crate::batch::Meta,
    tx: &mut TxLists,
    c: &mut Counters,
) {
    let tagged = m.outer_vlan.is_some();
    let tenant = Some(m.tenant);
    let Some(t) = snap.tenants.get(m.tenant.index()) else {
        c.drop(ingress, None, DropReason::NoRoute);
        pool.free(area, f);
        return;
    };
    let mut targets = t.attachments.iter().filter(|a| a.port != ingress);
    let Some(mut cur) = targets.next() else {
        c.drop(ingress, tenant, DropReason::NoRoute);
        pool.free(area, f);
        return;
    };
    for next in targets {
        // A copy for `cur`; the original stays untouched for later targets.
        // The copy's tag changes its length as it changes the limit: the frame without its
        // ingress tag must fit the port's MTU. Too big: no copy made.
        if f.len() > snap.max_frame(cur.port, tagged) && !f.is_gso() {
            c.drop(ingress, tenant, DropReason::TooBig);
            cur = next;
            continue;
        }
        match pool.copy_frame(area, &f) {
            Some(copy) => {
                // The copy's length is the original's, which fits (checked above): only the
                // tag can be refused.
                let to = (cur.port, cur.vlan, u32::MAX);
                if send_one(
                    now, snap, map, area, pool, ingress, copy, m, tagged, to, NO_VTEP, tx, c,
                ) {
                    c.flood_copies += 1;
                }
            }
            None => c.drop(ingress, tenant, DropReason::NoFrame),
        }
        cur = next;
    }
    let limit = snap.max_frame(cur.port, cur.vlan.is_some());
    let to = (cur.port, cur.vlan, limit);
    send_one(now, snap, map, area, pool, ingress, f, m, tagged, to, NO_VTEP, tx, c);
}

/// Whose a tenant frame for the underlay is, and where it goes: its metadata, the port and its
/// tunnel endpoint.
struct ToUnderlay<'a> {
    /// Its metadata.
    meta: &'a Meta,
    /// The port it came in on.
    ingress: PortId,
    /// The underlay port.
    port: PortId,
    /// Its tunnel endpoint.
    underlay: &'a Underlay,
    /// The host the map gave for its destination already, or [`NO_VTEP`].
    host: VtepId,
}

/// Sends tenant frame `f` (re-tagged for its untagged underlay attachment) to the other hosts
/// through the underlay: to the host that has its destination, or to each host of the tenant.
/// Returns true when at least one copy was queued. Never inlined: [`send_one`], on every
/// frame's path, stays as small as it was without an overlay.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn to_underlay(
    now: Nanos,
    snap: &Snapshot,
    map: &OverlayMap,
    area: &mut FrameArea,
    pool: &mut FramePool,
    f: FrameRef,
    out: &ToUnderlay<'_>,
    tx: &mut TxLists,
    c: &mut Counters,
) -> bool {
    let (m, ingress) = (out.meta, out.ingress);
    let Some((vni, _)) = snap.overlay_of(m.tenant) else {
        c.drop(ingress, Some(m.tenant), DropReason::NoRoute);
        pool.free(area, f);
        return false;
    };
    let sport = super::overlay::entropy(m);
    let known = match map.vtep(out.host) {
        Some(v) => Some(v),
        None if !m.dst.is_multicast() => map.host_of(vni, m.dst),
        None => None,
    };
    if let Some(v) = known {
        return push_encapsulated(now, area, pool, out, f, v, vni, sport, tx, c);
    }
    let members = map.members(vni);
    let Some((&last, rest)) = members.split_last() else {
        c.drop(ingress, Some(m.tenant), DropReason::NoVtep);
        pool.free(area, f);
        return false;
    };
    let mut sent = false;
    for &i in rest {
        let Some(v) = map.vtep(i) else { continue };
        match pool.copy_frame(area, &f) {
            Some(copy) => {
                c.overlay.replicas += 1;
                sent |= push_encapsulated(now, area, pool, out, copy, v, vni, sport, tx, c);
            }
            None => c.drop(ingress, Some(m.tenant), DropReason::NoFrame),
        }
    }
    match map.vtep(last) {
        Some(v) => push_encapsulated(now, area, pool, out, f, v, vni, sport, tx, c) || sent,
        None => {
            pool.free(area, f);
            sent
        }
    }
}

/// Encapsulates `f` for host `v` and queues it on the underlay port, or drops it.
#[allow(clippy::too_many_arguments)]
#[inline]
fn push_encapsulated(
    now: Nanos,
    area: &mut FrameArea,
    pool: &mut FramePool,
    out: &ToUnderlay<'_>,
    f: FrameRef,
    v: &Vtep,
    vni: u32,
    sport: u16,
    tx: &mut TxLists,
    c: &mut Counters,
) -> bool {
    let (tenant, ingress) = (out.meta.tenant, out.ingress);
    let inner = f.len();
    match super::overlay::encap(area, f, out.underlay, v, vni, sport) {
        Ok(e) => {
            let len = e.len();
            match tx.push(out.port, e, tenant, ingress, now) {
                Ok(q) => {
                    c.overlay.encap.add(inner);
                    q.count(c, tenant, len);
                    true
                }
                Err((r, e)) => {
                    c.drop(ingress, Some(tenant), r);
                    pool.free(area, e);
                    false
                }
            }
        }
        Err(f) => {
            c.drop(ingress, Some(tenant), DropReason::NoHeadroom);
            pool.free(area, f);
            false
        }
    }
}
