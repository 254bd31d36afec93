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

use crate::flow::cache::FlowView;
use crate::time::Nanos;

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

/// Where one worker's flow records go, and when.
#[derive(Debug)]
pub struct FlowExport {
    out: Sender<FlowRecord>,
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
        FlowExport { out, interval, idle, stats: FlowLogStats::default() }
    }

    /// Hands a record to the writer, or counts it lost.
    #[inline]
    pub fn emit(&mut self, r: FlowRecord) {
        if self.out.try_send(r).is_ok() {
            self.stats.exported += 1;
        } else {
            self.stats.lost += 1;
        }
    }
}
