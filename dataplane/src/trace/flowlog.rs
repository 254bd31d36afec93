//! Flow logs: per-flow packet and byte counts of the tenants that ask for them, reported as a
//! record when the flow ends (TCP FIN or RST, then a second of quiet), when it goes idle, or
//! every interval while it lasts.
//!
//! A flow is one direction of one conversation in one tenant, as the flow cache keys it
//! ([`crate::flow::cache`]): the counting happens in the cache entry the pipeline looks up
//! anyway, so logging adds no lookup. This module holds what leaves the worker: the record,
//! and the bounded channel to a writer thread. If the writer is behind, the record is counted
//! lost, never the packet.

use crossbeam_channel::Sender;

use crate::time::Nanos;
use crate::vocab::{DropReason, PortId, TenantId};

/// One flow's record: the flow as the cache holds it, over the span since its last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRecord {
    /// The flow and its counts in this record's span (start and last frame on the worker's
    /// monotonic clock).
    pub flow: FlowView,
    /// Why the record was sent.
    pub why: RecordReason,
}

/// Why a flow's record was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordReason {
    /// The flow ended: TCP FIN or RST, then a second of quiet.
    Ended,
    /// No frame for the idle time.
    Idle,
    /// It goes on: one record per interval.
    Interval,
    /// Its cache entry was taken by another flow.
    Evicted,
    /// The switch stopped.
    Flushed,
}

impl FlowRecord {
    /// True when the flow ended (FIN or RST).
    pub fn ended(&self) -> bool {
        self.why == RecordReason::Ended
    }
}

/// Flow-log counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowLogStats {
    /// Records handed to the writer.
    pub exported: u64,
    /// Records lost because the writer was behind.
    pub lost: u64,
    /// Frames of new flows not counted because the flow cache had no room for them.
    pub full: u64,
}

/// Records one worker holds between two breaths (made on the packet path, when a new flow
/// evicts a counted one); more are counted lost.
pub const HELD_RECORDS: usize = 256;

/// Where one worker's flow records go, and when.
#[derive(Debug)]
pub struct FlowExport {
    out: Sender<FlowRecord>,
    /// Records made on the packet path, handed to the writer between breaths
    /// ([`FlowExport::release`]): a channel send may wake the writer's thread, a syscall.
    held: Vec<FlowRecord>,
    /// A flow still running is reported every `interval`.
    pub interval: Nanos,
    /// A flow quiet for `idle` is reported (once).
    pub idle: Nanos,
    /// Counters.
    pub stats: FlowLogStats,
}

impl FlowExport {
    /// Reports to `out`: running flows every `interval`, a flow idle for `idle` once.
    pub fn new(interval: Nanos, idle: Nanos, out: Sender<FlowRecord>) -> Self {
        let held = Vec::with_capacity(HELD_RECORDS);
        FlowExport { out, held, interval, idle, stats: FlowLogStats::default() }
    }

    /// Between breaths: hands a record to the writer (after those held), or counts it lost.
    #[inline]
    pub fn emit(&mut self, r: FlowRecord) {
        self.release();
        self.send(r);
    }

    /// On the packet path: keeps a record for the next [`FlowExport::release`] (no allocation:
    /// the buffer's room is fixed), or counts it lost when the buffer is full.
    #[inline]
    pub fn hold(&mut self, r: FlowRecord) {
        if self.held.len() < self.held.capacity() {
            self.held.push(r);
        } else {
            self.stats.lost += 1;
        }
    }

    /// Between breaths: hands the held records to the writer.
    pub fn release(&mut self) {
        let mut held = std::mem::take(&mut self.held);
        for r in held.drain(..) {
            self.send(r);
        }
        self.held = held;
    }

    /// Records held for the writer.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    fn send(&mut self, r: FlowRecord) {
        if self.out.try_send(r).is_ok() {
            self.stats.exported += 1;
        } else {
            self.stats.lost += 1;
        }
    }
}

/// A flow of the flow cache, as the control API and the flow log see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowView {
    /// The tenant.
    pub tenant: TenantId,
    /// Ingress port.
    pub in_port: PortId,
    /// Outer VLAN it came in with.
    pub vlan: Option<u16>,
    /// Ether type.
    pub ethertype: u16,
    /// IP protocol.
    pub proto: u8,
    /// Source address (v4-mapped for IPv4) and port.
    pub src: ([u8; 16], u16),
    /// Destination address and port.
    pub dst: ([u8; 16], u16),
    /// Frames since the span began.
    pub packets: u64,
    /// Bytes since the span began.
    pub bytes: u64,
    /// First frame of the span.
    pub start: Nanos,
    /// Last frame.
    pub last: Nanos,
    /// Some frame of the span was accepted.
    pub accepted: bool,
    /// The last drop reason.
    pub reason: Option<DropReason>,
}

impl FlowView {
    /// The flow log's record of this span.
    pub fn record(self, why: RecordReason) -> FlowRecord {
        FlowRecord { flow: self, why }
    }
}
