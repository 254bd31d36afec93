//! Per-tenant shaping: a policer on what a tenant sends, and on every port a scheduler of the
//! tenants' egress queues with shapers, weights and guaranteed minimums.
//!
//! ```text
//! tenant port ─► police (token bucket; excess dropped: rate_limit)
//!              ... forwarding and policy ...
//!   ─► egress port: tenant's queue (bounded; overflow dropped: queue_full)
//!   ─► scheduler: guarantees first, then deficit round robin by weight, each queue under its
//!      shaper and all under the port's rate ─► ready list ─► TX ring
//! ```
//!
//! Rates count frame bytes as the switch handles them (Ethernet header to the end of the
//! payload: no preamble, FCS or gap) or frames. With several workers each one enforces its part
//! of a rate: the rate divided by the number of workers that receive the tenant's frames
//! (policer) or send on the port (scheduler), since the workers share no state on the packet
//! path.
#![forbid(unsafe_code)]

pub mod drr;
pub mod token_bucket;

pub use drr::PortSched;
pub use token_bucket::TokenBucket;

use crate::time::Nanos;

/// What a rate counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Frame bytes.
    Bytes,
    /// Frames.
    Packets,
}

impl Unit {
    /// What a frame of `len` bytes costs: its bytes, or one frame.
    #[inline]
    pub fn cost(self, len: u32) -> u64 {
        match self {
            Unit::Bytes => u64::from(len),
            Unit::Packets => 1,
        }
    }
}

/// A rate and the burst it allows, in bytes or frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Bytes or frames per second.
    pub per_sec: u64,
    /// Bytes or frames that may pass at once (the bucket's size).
    pub burst: u64,
    /// What the numbers count.
    pub unit: Unit,
}

impl Rate {
    /// A full bucket for this rate, divided among `share` workers.
    pub fn bucket(&self, share: u64, now: Nanos) -> TokenBucket {
        TokenBucket::new(self.per_sec / share.max(1), self.burst, now)
    }
}

/// A tenant's shaping (all optional; the default shapes nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantShaping {
    /// Policer on the frames the tenant sends (from its tenant-facing ports).
    pub police: Option<Rate>,
    /// Shaper of its queue on uplink ports.
    pub to_uplink: Option<Rate>,
    /// Shaper of its queue on tenant-facing ports.
    pub to_tenant: Option<Rate>,
    /// Deficit round robin weight on a congested port (at least 1).
    pub weight: u32,
    /// Guaranteed rate on each port with a scheduler, served before the weights.
    pub min_rate: Option<Rate>,
    /// Frames its queue on one port holds.
    pub queue: u32,
}

impl Default for TenantShaping {
    fn default() -> Self {
        TenantShaping {
            police: None,
            to_uplink: None,
            to_tenant: None,
            weight: 1,
            min_rate: None,
            queue: 256,
        }
    }
}
