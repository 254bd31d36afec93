//! Decision records: what each stage of the pipeline decided for one frame, written by the
//! stages themselves as they run, when the batch is traced.
//!
//! One mechanism serves both traces. A live trace (`trace-live`) records the real batches of a
//! traced tenant's port while its sampler runs; a decision trace (`ctl trace`) runs a frame the
//! operator describes through the very same stages with learning, caching, connection opening
//! and counting off ([`crate::pipeline::Pipeline::process_dry`]). Either way the stages write
//! small `Copy` outcomes here and nothing else; the text and JSON people read are made outside
//! the dataplane from these records and the snapshot. Nothing here re-runs a stage.
//!
//! Recording is chosen once per batch (a const generic of the pipeline): the batches of a
//! switch that traces nothing run code with no recording in it.
#![forbid(unsafe_code)]

use crate::batch::Meta;
use crate::policy::conntrack::Judgement;
use crate::policy::spoof::Refusal;
use crate::vocab::{Direction, Disposition, DropReason, ParseError, PortId};

/// Most outcomes recorded for one frame: the stages, two ACL directions and the `count`
/// rules they hit. A frame that hits more counting rules keeps the first ones and says so.
pub const MAX_STEPS: usize = 16;

/// How the flow cache took part in a frame's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowPath {
    /// The tenant has no policy and no flow log: the MAC table alone decided.
    NotCached,
    /// A current decision was in the cache.
    Hit,
    /// Decided from scratch (and cached, when there was room).
    Miss,
    /// An entry was there but out of date (rules or MAC table changed, or due): decided again.
    Stale,
}

impl FlowPath {
    /// For people.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowPath::NotCached => "not used (no policy, no flow log)",
            FlowPath::Hit => "hit",
            FlowPath::Miss => "miss",
            FlowPath::Stale => "stale",
        }
    }
}

/// The policer's state when it judged a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policed {
    /// The frame had its tokens.
    pub passed: bool,
    /// Tokens in the bucket before the frame took its own.
    pub tokens: u64,
    /// The rate this worker enforces (the tenant's, divided among the workers receiving).
    pub per_sec: u64,
    /// Tokens are frames (else bytes).
    pub packets: bool,
}

/// One stage's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The headers parsed, or the check that failed.
    Parse(Result<(), ParseError>),
    /// The tenant of the port and outer VLAN was found (the metadata names it), or not.
    Tenant(Result<(), DropReason>),
    /// The source MAC may send (not a group or zero address).
    SourceMac(Result<(), DropReason>),
    /// Anti-spoofing, ether type, TCP flags and the IPv4 header checksum passed (`true` when
    /// the attachment is guarded), or the refusal.
    Guard(Result<bool, Refusal>),
    /// The ingress policer (`None`: the tenant is not policed, or the frame is not one it
    /// sends).
    Police(Option<Policed>),
    /// The fragment stage: a fragment admitted with its datagram, or dropped.
    Fragment(Result<(), DropReason>),
    /// The flow cache's part.
    FlowCache(FlowPath),
    /// Where the MAC table sends the frame (on a cache hit, where the cached decision does).
    Fdb(Disposition),
    /// An ACL direction's verdict: the rule that decided (`None`: the default, or an empty
    /// set), and whether it denied.
    Acl {
        /// The direction judged.
        dir: Direction,
        /// The set has no rules.
        open: bool,
        /// The rule that decided.
        rule: Option<u32>,
        /// It denied the frame.
        deny: bool,
    },
    /// A `count` rule of a direction counted the frame.
    Counted {
        /// The direction.
        dir: Direction,
        /// The rule.
        rule: u32,
    },
    /// The security group's judgement (`None`: the tenant has none).
    Group(Option<Judgement>),
    /// A later fragment took its first fragment's verdict; the group had nothing to track.
    GroupFromFirstFragment,
}

/// Everything recorded for one frame: where it came in, its metadata as the stages left it,
/// each stage's outcome in order, and the disposition it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTrace {
    /// Ingress port.
    pub port: PortId,
    /// The metadata after the stages (tenant, attachment, headers).
    pub meta: Meta,
    /// What the pipeline decided.
    pub disposition: Disposition,
    steps: [Option<Outcome>; MAX_STEPS],
    n: u8,
    /// Outcomes that did not fit ([`MAX_STEPS`]).
    pub truncated: u8,
}

impl FrameTrace {
    /// Nothing recorded yet.
    pub const EMPTY: FrameTrace = FrameTrace {
        port: PortId(0),
        meta: Meta::EMPTY,
        disposition: Disposition::Drop(DropReason::NoRoute),
        steps: [None; MAX_STEPS],
        n: 0,
        truncated: 0,
    };

    /// Starts the record of a frame arriving on `port`.
    #[inline]
    pub fn begin(&mut self, port: PortId) {
        self.port = port;
        self.n = 0;
        self.truncated = 0;
    }

    /// Appends a stage's outcome.
    #[inline]
    pub fn push(&mut self, o: Outcome) {
        match self.steps.get_mut(usize::from(self.n)) {
            Some(s) => {
                *s = Some(o);
                self.n += 1;
            }
            None => self.truncated = self.truncated.saturating_add(1),
        }
    }

    /// The outcomes, in stage order.
    pub fn steps(&self) -> impl Iterator<Item = Outcome> + '_ {
        self.steps[..usize::from(self.n)].iter().flatten().copied()
    }

    /// The flow cache's part in the decision.
    pub fn flow_path(&self) -> FlowPath {
        self.steps()
            .find_map(|o| if let Outcome::FlowCache(p) = o { Some(p) } else { None })
            .unwrap_or(FlowPath::NotCached)
    }
}

/// The records of one batch, one per frame; written only when the batch is traced.
#[derive(Debug)]
pub struct BatchTrace {
    frames: [FrameTrace; crate::batch::BATCH_SIZE],
}

impl Default for BatchTrace {
    fn default() -> Self {
        BatchTrace { frames: [FrameTrace::EMPTY; crate::batch::BATCH_SIZE] }
    }
}

impl BatchTrace {
    /// Frame `i`'s record (`i` below the batch size).
    #[inline]
    pub fn frame(&self, i: usize) -> Option<&FrameTrace> {
        self.frames.get(i)
    }

    /// Frame `i`'s record, to write.
    #[inline]
    pub fn frame_mut(&mut self, i: usize) -> Option<&mut FrameTrace> {
        self.frames.get_mut(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_keep_their_order_and_overflow_is_counted() {
        let mut t = FrameTrace::EMPTY;
        t.begin(PortId(3));
        t.push(Outcome::Parse(Ok(())));
        t.push(Outcome::FlowCache(FlowPath::Hit));
        assert_eq!(t.steps().count(), 2);
        assert_eq!(t.flow_path(), FlowPath::Hit);
        for _ in 0..MAX_STEPS {
            t.push(Outcome::Counted { dir: Direction::FromTenant, rule: 1 });
        }
        assert_eq!((t.steps().count(), t.truncated), (MAX_STEPS, 2));
        t.begin(PortId(1));
        assert_eq!((t.steps().count(), t.truncated, t.flow_path()), (0, 0, FlowPath::NotCached));
    }
}
