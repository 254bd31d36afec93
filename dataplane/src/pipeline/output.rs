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

use crate::batch::{Batch, FrameRef};
use crate::pipeline::{Disposition, Dispositions};
use crate::port::{FRAME_HEADROOM, FrameArea, FramePool, Port};
use crate::snapshot::{PortId, Snapshot, TenantId};
use crate::trace::counters::{PktBytes, TenantRun};
use crate::trace::{Counters, DropReason};

const TPID_8021Q: [u8; 2] = [0x81, 0x00];

/// A bounded list that never grows past the capacity it was made with (so pushing never
/// allocates on the packet path).
#[derive(Debug)]
struct TxList {
    frames: Vec<FrameRef>,
    /// Tenant and ingress port of each frame (for the counters), parallel to `frames`, which
    /// stays a plain slice for `Port::tx`.
    owners: Vec<(TenantId, PortId)>,
}

/// Frames waiting to be sent, per egress port.
#[derive(Debug)]
pub struct TxLists {
    lists: Vec<TxList>,
    capacity: usize,
}

impl TxLists {
    /// Lists for `ports` ports, each holding up to `capacity` frames.
    pub fn new(ports: usize, capacity: usize) -> Self {
        let mut t = TxLists { lists: Vec::new(), capacity };
        t.resize(ports);
        t
    }

    /// Adapts to a new number of ports (snapshot change).
    pub fn resize(&mut self, ports: usize) {
        let cap = self.capacity;
        self.lists.resize_with(ports, || TxList {
            frames: Vec::with_capacity(cap),
            owners: Vec::with_capacity(cap),
        });
    }

    /// Appends a frame; false when the port's list is full or the port does not exist.
    #[inline]
    fn push(&mut self, port: PortId, f: FrameRef, tenant: TenantId, ingress: PortId) -> bool {
        match self.lists.get_mut(port.index()) {
            Some(l) if l.frames.len() < self.capacity => {
                l.frames.push(f);
                l.owners.push((tenant, ingress));
                true
            }
            _ => false,
        }
    }

    /// Appends a frame another worker handed over for `port`; false when the list is full
    /// (the caller drops and counts it).
    #[inline]
    pub fn enqueue(
        &mut self,
        port: PortId,
        f: FrameRef,
        tenant: TenantId,
        ingress: PortId,
    ) -> bool {
        self.push(port, f, tenant, ingress)
    }

    /// True when `port`'s list can take another frame.
    #[inline]
    pub fn has_room(&self, port: PortId) -> bool {
        self.lists.get(port.index()).is_some_and(|l| l.frames.len() < self.capacity)
    }

    /// The most frames pending on any one port, and the capacity of a list.
    #[inline]
    pub fn fullest(&self) -> (usize, usize) {
        (self.lists.iter().map(|l| l.frames.len()).max().unwrap_or(0), self.capacity)
    }

    /// Frames pending on all ports.
    pub fn total_pending(&self) -> usize {
        self.lists.iter().map(|l| l.frames.len()).sum()
    }

    /// Hands each port's pending frames to `out`. What it does not take yet (a full TX ring
    /// or handoff ring) stays queued, in order, for the next call: a short burst is absorbed
    /// here instead of dropped; a list that is still full when more frames arrive drops those
    /// as `tx_full`.
    pub fn flush<E: Egress + ?Sized>(&mut self, out: &mut E, c: &mut Counters) {
        for (i, l) in self.lists.iter_mut().enumerate() {
            if l.frames.is_empty() {
                continue;
            }
            let port = PortId(i as u16);
            let sent = out.send(port, &l.frames, &l.owners);
            if sent == 0 {
                continue;
            }
            if !out.counts_tx(port) {
                // Handed to the worker that owns the port; it counts them when it sends them.
                l.frames.drain(..sent);
                l.owners.drain(..sent);
                continue;
            }
            let mut out = PktBytes::default();
            let mut tenant_tx = TenantRun::default();
            for (f, (t, _)) in l.frames.iter().zip(&l.owners).take(sent) {
                out.add(f.len);
                tenant_tx.add(&mut c.tenant_tx, *t, f.len);
            }
            tenant_tx.flush(&mut c.tenant_tx);
            if let Some(pt) = c.port_tx.get_mut(i) {
                pt.packets += out.packets;
                pt.bytes += out.bytes;
            }
            // Shifts the unsent rest to the front; never allocates.
            l.frames.drain(..sent);
            l.owners.drain(..sent);
        }
    }
}

/// Where TX lists go: the port drivers of this worker, or another worker that owns the port.
pub trait Egress {
    /// Takes a prefix of `frames` (with their `(tenant, ingress port)` in `owners`) for
    /// `port`; returns how many. The rest still belong to the caller.
    fn send(&mut self, port: PortId, frames: &[FrameRef], owners: &[(TenantId, PortId)]) -> usize;

    /// True when `send` on `port` puts frames on the wire (they count as transmitted); false
    /// when it hands them to another worker, which counts them when it sends them.
    fn counts_tx(&self, port: PortId) -> bool {
        let _ = port;
        true
    }
}

/// Port drivers indexed by `PortId`, all owned by one worker.
impl<P: Port> Egress for [P] {
    #[inline]
    fn send(&mut self, port: PortId, frames: &[FrameRef], _: &[(TenantId, PortId)]) -> usize {
        self.get_mut(port.index()).map_or(0, |p| p.tx(frames))
    }
}

/// How the outer tag must change between ingress and egress.
#[inline]
fn retag(area: &mut FrameArea, f: FrameRef, tagged: bool, vlan: Option<u16>) -> Option<FrameRef> {
    match (tagged, vlan) {
        (false, None) => Some(f),
        (true, Some(v)) => {
            // Same length: rewrite TPID and VLAN id, keep the priority bits.
            let b = area.frame_mut(f)?;
            if b.len() < 16 {
                return None;
            }
            b[12..14].copy_from_slice(&TPID_8021Q);
            let tci = (u16::from_be_bytes([b[14], b[15]]) & 0xf000) | (v & 0x0fff);
            b[14..16].copy_from_slice(&tci.to_be_bytes());
            Some(f)
        }
        (true, None) => {
            // Pop: the MACs move 4 bytes forward over the tag.
            if f.len < 18 {
                return None;
            }
            let (chunk, off) = area.chunk_mut(f.addr)?;
            chunk.copy_within(off..off + 12, off + 4);
            Some(FrameRef { addr: f.addr + 4, len: f.len - 4 })
        }
        (false, Some(v)) => {
            // Push: the MACs move 4 bytes back into the headroom, the tag goes after them.
            let (chunk, off) = area.chunk_mut(f.addr)?;
            if off < 4 || f.len < 12 || off + f.len as usize > chunk.len() {
                return None;
            }
            chunk.copy_within(off..off + 12, off - 4);
            chunk[off + 8..off + 10].copy_from_slice(&TPID_8021Q);
            chunk[off + 10..off + 12].copy_from_slice(&(v & 0x0fff).to_be_bytes());
            Some(FrameRef { addr: f.addr - 4, len: f.len + 4 })
        }
    }
}

/// Applies every disposition of the batch. Each frame ends up in a TX list or back in the pool.
pub fn deliver(
    snap: &Snapshot,
    area: &mut FrameArea,
    pool: &mut FramePool,
    batch: &Batch,
    disp: &Dispositions,
    tx: &mut TxLists,
    c: &mut Counters,
) {
    let ingress = batch.port;
    for ((f, m), d) in batch.frames().iter().zip(batch.meta()).zip(disp.as_slice()) {
        let tagged = m.outer_vlan.is_some();
        let tenant = Some(m.tenant);
        match *d {
            Disposition::Drop(r) => {
                let t = if r == DropReason::Malformed || r == DropReason::UnknownTenant {
                    None
                } else {
                    tenant
                };
                c.drop(ingress, t, r);
                pool.free(f.addr);
            }
            Disposition::Tx { port, vlan } => match retag(area, *f, tagged, vlan) {
                Some(out) if tx.push(port, out, m.tenant, ingress) => {}
                Some(out) => {
                    c.drop(ingress, tenant, DropReason::TxFull);
                    pool.free(out.addr);
                }
                None => {
                    c.drop(ingress, tenant, DropReason::NoHeadroom);
                    pool.free(f.addr);
                }
            },
            Disposition::Flood => flood(snap, area, pool, ingress, *f, m, tx, c),
        }
    }
}

/// Sends a frame to every attachment of its tenant that is not on the ingress port. The
/// original frame goes to the last target, copies to the others.
#[allow(clippy::too_many_arguments)]
fn flood(
    snap: &Snapshot,
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
        pool.free(f.addr);
        return;
    };
    let mut targets = t.attachments.iter().filter(|a| a.port != ingress);
    let Some(mut cur) = targets.next() else {
        c.drop(ingress, tenant, DropReason::NoRoute);
        pool.free(f.addr);
        return;
    };
    for next in targets {
        // A copy for `cur`; the original stays untouched for later targets.
        match pool.alloc() {
            Some(base) => {
                let copied = area.copy_frame(f, base + FRAME_HEADROOM);
                match copied.and_then(|cf| retag(area, cf, tagged, cur.vlan)) {
                    Some(out) if tx.push(cur.port, out, m.tenant, ingress) => c.flood_copies += 1,
                    Some(_) => {
                        c.drop(ingress, tenant, DropReason::TxFull);
                        pool.free(base);
                    }
                    None => {
                        c.drop(ingress, tenant, DropReason::NoHeadroom);
                        pool.free(base);
                    }
                }
            }
            None => c.drop(ingress, tenant, DropReason::NoFrame),
        }
        cur = next;
    }
    match retag(area, f, tagged, cur.vlan) {
        Some(out) if tx.push(cur.port, out, m.tenant, ingress) => {}
        Some(out) => {
            c.drop(ingress, tenant, DropReason::TxFull);
            pool.free(out.addr);
        }
        None => {
            c.drop(ingress, tenant, DropReason::NoHeadroom);
            pool.free(f.addr);
        }
    }
}
