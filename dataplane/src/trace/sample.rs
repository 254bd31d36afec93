//! Sampled live traces: copies of real frames of one tenant, one in `every`, with the decision
//! the pipeline actually took for each and whether the flow cache decided it.
//!
//! The sampler is installed between breaths with room for all its samples (allocated then, not
//! on the packet path); the pipeline offers it every frame of the tenant after the decision
//! stages, and it copies the chosen ones until it is full. Turning the copies into a per-stage
//! explanation is left to the control plane, which re-runs the read-only decision trace on
//! them ([`crate::pipeline::trace`]) between breaths: the explanation is computed against the
//! same tables right after the batch, the outcome is the one the frame got.

use crate::time::Nanos;
use crate::vocab::{Disposition, PortId, TenantId};

/// Most bytes kept of a sampled frame (every frame of a 4096-byte chunk).
pub const SAMPLE_BYTES: usize = 4096;
/// Most samples one sampler takes.
pub const MAX_SAMPLES: usize = 100;

/// How the flow cache took part in a frame's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowPath {
    /// The tenant has no policy and no flow log: the MAC table alone decided.
    NotCached,
    /// A current decision was in the cache.
    Hit,
    /// Decided from scratch (and cached, when there was room).
    Miss,
}

impl FlowPath {
    /// For people.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowPath::NotCached => "not used (no policy, no flow log)",
            FlowPath::Hit => "hit",
            FlowPath::Miss => "miss",
        }
    }
}

/// One sampled frame.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Ingress port.
    pub port: PortId,
    /// When it was processed (worker's clock).
    pub at: Nanos,
    /// What the pipeline decided.
    pub disposition: Disposition,
    /// Whether the flow cache decided it.
    pub flow: FlowPath,
    /// The frame (the first [`SAMPLE_BYTES`]).
    pub bytes: Vec<u8>,
    /// Its length on the wire.
    pub len: u32,
}

/// The worker's end of a live trace.
#[derive(Debug)]
pub struct Sampler {
    /// The tenant traced.
    pub tenant: TenantId,
    every: u32,
    countdown: u32,
    samples: Vec<Sample>,
    /// Buffers ready for the next samples (preallocated).
    spare: Vec<Vec<u8>>,
}

impl Sampler {
    /// A sampler of one in `every` frames of `tenant`, at most `want` (1..=[`MAX_SAMPLES`]).
    pub fn new(tenant: TenantId, want: usize, every: u32) -> Sampler {
        let want = want.clamp(1, MAX_SAMPLES);
        Sampler {
            tenant,
            every: every.max(1),
            countdown: 1,
            samples: Vec::with_capacity(want),
            spare: (0..want).map(|_| Vec::with_capacity(SAMPLE_BYTES)).collect(),
        }
    }

    /// Offers a frame of the sampler's tenant and what became of it. No allocation: the copy
    /// goes into a preallocated buffer.
    #[inline]
    pub fn offer(&mut self, at: Nanos, port: PortId, frame: &[u8], d: Disposition, flow: FlowPath) {
        self.countdown -= 1;
        if self.countdown > 0 {
            return;
        }
        self.countdown = self.every;
        let Some(mut bytes) = self.spare.pop() else { return };
        bytes.clear();
        bytes.extend_from_slice(&frame[..frame.len().min(SAMPLE_BYTES)]);
        self.samples.push(Sample {
            port,
            at,
            disposition: d,
            flow,
            bytes,
            len: frame.len() as u32,
        });
    }

    /// True when every sample was taken.
    pub fn is_full(&self) -> bool {
        self.spare.is_empty()
    }

    /// The samples taken (consumes the sampler).
    pub fn into_samples(self) -> Vec<Sample> {
        self.samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::DropReason;

    #[test]
    fn one_in_every_n_until_full() {
        let mut s = Sampler::new(TenantId(3), 2, 3);
        let d = Disposition::Drop(DropReason::Policy);
        for i in 0..20u8 {
            s.offer(Nanos(u64::from(i)), PortId(1), &[i; 70], d, FlowPath::Hit);
        }
        assert!(s.is_full());
        let v = s.into_samples();
        // The 1st, then every 3rd: frames 0 and 3.
        assert_eq!(v.iter().map(|x| x.bytes[0]).collect::<Vec<_>>(), [0, 3]);
        assert_eq!((v[1].len, v[1].bytes.len(), v[1].disposition), (70, 70, d));
    }
}
