//! Flow logs: per-flow packet and byte counts of the tenants that ask for them, exported as a
//! record when the flow ends (TCP FIN or RST, then a second of quiet), when it goes idle, or
//! every interval while it lasts.
//!
//! A flow is one direction of a 5-tuple in one tenant (like cloud flow logs). The table is
//! allocated once at its full size; a flow beyond it is counted (`full`), never a reason to
//! drop the packet. Records leave through a bounded channel to a writer thread; if the writer
//! is behind, the record is counted lost, never the packet.

use std::collections::HashMap;

use crossbeam_channel::Sender;

use crate::batch::Meta;
use crate::pipeline::Disposition;
use crate::snapshot::TenantId;
use crate::time::Nanos;
use crate::trace::DropReason;

const FIN: u8 = 0x01;
const RST: u8 = 0x04;
/// Quiet after a FIN or RST before the record of an ended TCP flow goes out.
const ENDED_QUIET: Nanos = Nanos::from_secs(1);

/// One flow's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRecord {
    /// The tenant.
    pub tenant: TenantId,
    /// IP protocol.
    pub proto: u8,
    /// Source address (v4-mapped for IPv4) and port.
    pub src: ([u8; 16], u16),
    /// Destination address and port.
    pub dst: ([u8; 16], u16),
    /// Frames in this record's span.
    pub packets: u64,
    /// Frame bytes in this record's span.
    pub bytes: u64,
    /// First and last frame of the span (worker's monotonic clock).
    pub start: Nanos,
    /// Last frame.
    pub end: Nanos,
    /// Accepted (false: every frame of the span was dropped).
    pub accepted: bool,
    /// Why the last dropped frame was dropped.
    pub reason: Option<DropReason>,
    /// The flow ended (TCP FIN or RST) rather than being reported while active or idle.
    pub ended: bool,
}

/// A flow in five words (tenant | proto | ports, then the two addresses): hashing five `u64`s
/// costs a fraction of hashing the fields one by one (the derived `Hash` of two byte arrays
/// hashes their lengths and bytes separately).
#[derive(Debug, Clone, Copy, Eq)]
struct Key([u64; 5]);

impl std::hash::Hash for Key {
    /// The five words, consistent with `eq` (equal words, equal keys).
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.hash(h);
    }
}

impl PartialEq for Key {
    /// Without a `memcmp` call (the derived comparison of the array makes one).
    #[inline]
    fn eq(&self, o: &Key) -> bool {
        self.0.iter().zip(&o.0).fold(0, |a, (x, y)| a | (x ^ y)) == 0
    }
}

impl Key {
    #[inline]
    fn new(tenant: u16, proto: u8, src: &[u8; 16], dst: &[u8; 16], sport: u16, dport: u16) -> Key {
        let (s, d) = (u128::from_be_bytes(*src), u128::from_be_bytes(*dst));
        Key([
            u64::from(tenant)
                | u64::from(proto) << 16
                | u64::from(sport) << 24
                | u64::from(dport) << 40,
            (s >> 64) as u64,
            s as u64,
            (d >> 64) as u64,
            d as u64,
        ])
    }

    fn tenant(&self) -> u16 {
        self.0[0] as u16
    }

    fn proto(&self) -> u8 {
        (self.0[0] >> 16) as u8
    }

    fn ports(&self) -> (u16, u16) {
        ((self.0[0] >> 24) as u16, (self.0[0] >> 40) as u16)
    }

    fn addrs(&self) -> ([u8; 16], [u8; 16]) {
        let s = u128::from(self.0[1]) << 64 | u128::from(self.0[2]);
        let d = u128::from(self.0[3]) << 64 | u128::from(self.0[4]);
        (s.to_be_bytes(), d.to_be_bytes())
    }
}

#[derive(Debug, Clone, Copy)]
struct Stat {
    packets: u64,
    bytes: u64,
    start: Nanos,
    last: Nanos,
    accepted: u64,
    reason: Option<DropReason>,
    closing: bool,
}

/// Flow-log counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowLogStats {
    /// Records handed to the writer.
    pub exported: u64,
    /// Records lost because the writer was behind.
    pub lost: u64,
    /// Packets of new flows not tracked because the table was full.
    pub full: u64,
}

/// One worker's flow table.
#[derive(Debug)]
pub struct FlowLog {
    map: HashMap<Key, Stat, ahash::RandomState>,
    capacity: usize,
    interval: Nanos,
    idle: Nanos,
    out: Sender<FlowRecord>,
    /// Counters.
    pub stats: FlowLogStats,
}

impl FlowLog {
    /// A table of `capacity` flows reporting to `out`: active flows every `interval`, a flow
    /// idle for `idle` once.
    pub fn new(capacity: usize, interval: Nanos, idle: Nanos, out: Sender<FlowRecord>) -> Self {
        let mut map = HashMap::with_hasher(ahash::RandomState::new());
        map.reserve(2 * capacity);
        FlowLog { map, capacity, interval, idle, out, stats: FlowLogStats::default() }
    }

    /// Counts one frame (of a tenant that logs flows) and what became of it.
    #[inline]
    pub fn record(&mut self, now: Nanos, m: &Meta, len: u32, d: &Disposition) {
        let k = &m.key;
        if !matches!(k.ethertype, 0x0800 | 0x86dd) {
            return;
        }
        let key = Key::new(m.tenant.0, k.proto, &k.src_ip, &k.dst_ip, k.src_port, k.dst_port);
        let dropped = match d {
            Disposition::Drop(r) => Some(*r),
            _ => None,
        };
        let closing = k.proto == 6 && m.tcp_flags & (FIN | RST) != 0;
        let room = self.map.len() < self.capacity;
        match self.map.get_mut(&key) {
            Some(s) => {
                s.packets += 1;
                s.bytes += u64::from(len);
                s.last = now;
                s.accepted += u64::from(dropped.is_none());
                if dropped.is_some() {
                    s.reason = dropped;
                }
                s.closing |= closing;
            }
            None if room => {
                self.map.insert(
                    key,
                    Stat {
                        packets: 1,
                        bytes: u64::from(len),
                        start: now,
                        last: now,
                        accepted: u64::from(dropped.is_none()),
                        reason: dropped,
                        closing,
                    },
                );
            }
            None => self.stats.full += 1,
        }
    }

    fn emit(out: &Sender<FlowRecord>, stats: &mut FlowLogStats, k: &Key, s: &Stat, ended: bool) {
        let ((src, dst), (sport, dport)) = (k.addrs(), k.ports());
        let r = FlowRecord {
            tenant: TenantId(k.tenant()),
            proto: k.proto(),
            src: (src, sport),
            dst: (dst, dport),
            packets: s.packets,
            bytes: s.bytes,
            start: s.start,
            end: s.last,
            accepted: s.accepted > 0,
            reason: s.reason,
            ended,
        };
        if out.try_send(r).is_ok() {
            stats.exported += 1;
        } else {
            stats.lost += 1;
        }
    }

    /// Between batches: reports ended and idle flows (and forgets them) and long-running ones
    /// (and starts their next span).
    pub fn sweep(&mut self, now: Nanos) {
        let (out, stats, interval, idle) = (&self.out, &mut self.stats, self.interval, self.idle);
        self.map.retain(|k, s| {
            let quiet = now.since(s.last);
            if s.closing && quiet >= ENDED_QUIET {
                Self::emit(out, stats, k, s, true);
                return false;
            }
            if quiet >= idle {
                Self::emit(out, stats, k, s, false);
                return false;
            }
            if now.since(s.start) >= interval {
                Self::emit(out, stats, k, s, false);
                *s = Stat { packets: 0, bytes: 0, start: now, accepted: 0, reason: None, ..*s };
            }
            true
        });
    }

    /// Reports every flow and forgets them (at a clean stop).
    pub fn flush(&mut self) {
        for (k, s) in self.map.drain() {
            if s.packets > 0 {
                Self::emit(&self.out, &mut self.stats, &k, &s, s.closing);
            }
        }
    }
}
