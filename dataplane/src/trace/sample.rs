//! Sampled live traces: copies of real frames of one tenant, one in `every`, each with the
//! record the stages wrote while deciding it ([`super::record`]).
//!
//! The sampler is installed between breaths with room for all its samples (allocated then, not
//! on the packet path). While it runs, the pipeline records the batches of the tenant's ports
//! and offers the sampler every frame of the tenant after the decision stages; it copies the
//! chosen ones, bytes and record, until it is full. The control plane turns the records into
//! words between breaths: the explanation is what the stages did, as they did it.

use super::record::FrameTrace;
use crate::time::Nanos;
use crate::vocab::TenantId;

/// Most bytes kept of a sampled frame (every frame of a 4096-byte chunk).
pub const SAMPLE_BYTES: usize = 4096;
/// Most samples one sampler takes.
pub const MAX_SAMPLES: usize = 100;

/// One sampled frame.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was processed (worker's clock).
    pub at: Nanos,
    /// What the stages recorded: ingress port, metadata, every stage's outcome, disposition.
    pub trace: FrameTrace,
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

    /// Offers a frame of the sampler's tenant and the record of what became of it. No
    /// allocation: the copy goes into a preallocated buffer.
    #[inline]
    pub fn offer(&mut self, at: Nanos, frame: &[u8], trace: &FrameTrace) {
        self.countdown -= 1;
        if self.countdown > 0 {
            return;
        }
        self.countdown = self.every;
        let Some(mut bytes) = self.spare.pop() else { return };
        bytes.clear();
        bytes.extend_from_slice(&frame[..frame.len().min(SAMPLE_BYTES)]);
        self.samples.push(Sample { at, trace: *trace, bytes, len: frame.len() as u32 });
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
    use crate::vocab::{Disposition, DropReason, PortId};

    #[test]
    fn one_in_every_n_until_full() {
        let mut s = Sampler::new(TenantId(3), 2, 3);
        let d = Disposition::Drop(DropReason::Policy);
        let mut t = FrameTrace::EMPTY;
        t.begin(PortId(1));
        t.disposition = d;
        for i in 0..20u8 {
            t.meta.tcp_flags = i;
            s.offer(Nanos(u64::from(i)), &[i; 70], &t);
        }
        assert!(s.is_full());
        let v = s.into_samples();
        // The 1st, then every 3rd: frames 0 and 3, each with its own record.
        assert_eq!(v.iter().map(|x| x.bytes[0]).collect::<Vec<_>>(), [0, 3]);
        assert_eq!(v.iter().map(|x| x.trace.meta.tcp_flags).collect::<Vec<_>>(), [0, 3]);
        assert_eq!((v[1].len, v[1].bytes.len(), v[1].trace.disposition), (70, 70, d));
    }
}
