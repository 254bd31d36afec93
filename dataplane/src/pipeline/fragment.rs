//! Stage 3c, for IP fragments of tenants with policy: a first fragment opens its datagram's
//! entry in the fragment table, a later fragment takes the first one's layer-4 identity (and
//! is then judged by the flow cache and the ACLs as the first one was) or is dropped
//! ([`crate::policy::fragments`] says when). After the batch's decisions, [`settle`] gives each
//! first fragment's verdict to its entry and drops the later fragments of the same batch whose
//! first fragment was dropped.
//!
//! Frames that are not fragments pass with one test of a flag the parser set; the table is
//! touched only by fragments.

use crate::batch::{BATCH_SIZE, Meta, PacketFlags};
use crate::policy::fragments::{FirstL4, FragInfo, FragKey, FragTable, Handle};
use crate::time::Nanos;
use crate::vocab::{Disposition, DropReason};
use crate::wire::ipv6::FragmentHeader;
use crate::wire::{Ipv4Packet, Ipv6Packet};

const ETH_IPV4: u16 = 0x0800;

/// The fragments of one batch whose verdict is settled after the batch's decisions.
#[derive(Debug)]
pub struct FragBatch {
    firsts: [(u8, Handle); BATCH_SIZE],
    nf: usize,
    laters: [(u8, Handle); BATCH_SIZE],
    nl: usize,
}

impl Default for FragBatch {
    fn default() -> Self {
        FragBatch {
            firsts: [(0, Handle::default()); BATCH_SIZE],
            nf: 0,
            laters: [(0, Handle::default()); BATCH_SIZE],
            nl: 0,
        }
    }
}

impl FragBatch {
    /// True when a fragment of the batch waits for [`settle`].
    #[inline]
    pub fn any(&self) -> bool {
        self.nf + self.nl > 0
    }
}

/// Where fragment `frame` (parsed into `m`) lies in its datagram; None when its IP header does
/// not say (cannot happen for a frame the parser flagged as a fragment).
pub fn info(frame: &[u8], m: &Meta) -> Option<FragInfo> {
    let l3 = frame.get(usize::from(m.l3_offset)..)?;
    let mut key = FragKey {
        tenant: m.tenant.0,
        proto: m.key.proto,
        src: m.key.src_ip,
        dst: m.key.dst_ip,
        ident: 0,
    };
    if m.key.ethertype == ETH_IPV4 {
        let ip = Ipv4Packet::new_checked(l3).ok()?;
        let start = u32::from(ip.frag_offset()) * 8;
        key.ident = u32::from(ip.ident());
        let len = (usize::from(ip.total_len()) - ip.header_len()) as u32;
        return Some(FragInfo { key, start, end: start + len, more: ip.more_frags() });
    }
    let ip = Ipv6Packet::new_checked(l3).ok()?;
    let up = ip.upper_layer().ok()?;
    let pkt = ip.packet();
    let fh = FragmentHeader::read(pkt, up.frag_header).filter(|_| up.fragment)?;
    // The protocol after the fragment header names the datagram (the first fragment's
    // upper-layer protocol may lie behind more extension headers).
    key.proto = pkt[up.frag_header];
    key.ident = fh.ident;
    let len = (pkt.len() - (up.frag_header + 8)) as u32;
    Some(FragInfo { key, start: fh.offset, end: fh.offset + len, more: fh.more })
}

/// Admits fragment `i` of the batch (`m`, bytes `frame`): a first fragment opens its entry; a
/// later one takes its first fragment's layer-4 identity into `m`. The drop reason otherwise.
#[inline]
pub fn admit(
    table: &mut FragTable,
    batch: &mut FragBatch,
    now: Nanos,
    i: usize,
    m: &mut Meta,
    frame: &[u8],
) -> Result<(), DropReason> {
    let f = info(frame, m).ok_or(DropReason::Fragment)?;
    if !m.flags.has(PacketFlags::LATER_FRAGMENT) {
        let l4 = FirstL4 {
            proto: m.key.proto,
            src_port: m.key.src_port,
            dst_port: m.key.dst_port,
            tcp_flags: m.tcp_flags,
        };
        let h = table.first(now, &f, l4)?;
        if let Some(slot) = batch.firsts.get_mut(batch.nf) {
            *slot = (i as u8, h);
            batch.nf += 1;
        }
        return Ok(());
    }
    let later = table.later(now, &f)?;
    m.key.proto = later.l4.proto;
    m.key.src_port = later.l4.src_port;
    m.key.dst_port = later.l4.dst_port;
    m.tcp_flags = later.l4.tcp_flags;
    m.flags.0 |= PacketFlags::PORTS_FROM_FIRST;
    if later.pending
        && let Some(slot) = batch.laters.get_mut(batch.nl)
    {
        *slot = (i as u8, later.handle);
        batch.nl += 1;
    }
    Ok(())
}

/// After the batch's decisions (`out`): each first fragment's verdict goes to its entry, and a
/// later fragment whose first fragment in the same batch was dropped is dropped too, under the
/// same reason. Empties `batch`.
pub fn settle(table: &mut FragTable, batch: &mut FragBatch, out: &mut [Disposition]) {
    for &(i, h) in &batch.firsts[..batch.nf] {
        let dropped = match out.get(usize::from(i)) {
            Some(Disposition::Drop(r)) => Some(*r),
            Some(_) => None,
            None => Some(DropReason::Fragment),
        };
        table.settle(h, dropped);
    }
    for &(i, h) in &batch.laters[..batch.nl] {
        if let Some(r) = table.denied(h)
            && let Some(d) = out.get_mut(usize::from(i))
            && !matches!(d, Disposition::Drop(_))
        {
            *d = Disposition::Drop(r);
        }
    }
    batch.nf = 0;
    batch.nl = 0;
}
