//! Stage 3c: the ingress policer. A frame a tenant sends (that arrives on one of its
//! tenant-facing ports) takes its cost from the tenant's token bucket; without enough tokens it
//! is dropped under `rate_limit`. Frames from the uplink are the tenant's incoming traffic and
//! are shaped on the way out instead ([`crate::shaping::drr`]).
//!
//! Runs before learning, so a frame dropped here teaches the MAC table nothing.

use crate::shaping::{TokenBucket, Unit};
use crate::snapshot::{PortKind, Snapshot};
use crate::time::Nanos;
use crate::trace::record::Policed;
use crate::vocab::TenantId;

/// A policed tenant's bucket and what it counts, one cache line (tenants are policed in random
/// order on a port that carries many; a 56-byte stride puts most across two lines).
#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
struct Policer(TokenBucket, Unit);

const _: () = assert!(std::mem::size_of::<Option<Policer>>() == 64, "one line per tenant");

/// One bucket per policed tenant.
#[derive(Debug, Default)]
pub struct Policers {
    buckets: Vec<Option<Policer>>,
}

impl Policers {
    /// Buckets for `snap`'s policers, each rate divided by the most workers receiving on one of
    /// the tenant's tenant-facing ports (`shares`, per port). A tenant whose policer is
    /// unchanged keeps its bucket's tokens; a changed one is retuned keeping what fits.
    pub fn install(&mut self, snap: &Snapshot, shares: &[u64], now: Nanos) {
        let old = std::mem::take(&mut self.buckets);
        self.buckets = snap
            .tenants
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let r = t.shaping.police?;
                let share = t
                    .attachments
                    .iter()
                    .filter(|a| {
                        snap.ports.get(a.port.index()).is_some_and(|p| p.kind == PortKind::Tenant)
                    })
                    .map(|a| shares.get(a.port.index()).copied().unwrap_or(1))
                    .max()
                    .unwrap_or(1)
                    .max(1);
                let per_sec = r.per_sec / share;
                let b = match old.get(i) {
                    Some(Some(Policer(b, u))) if *u == r.unit => b.retuned(per_sec, r.burst),
                    _ => TokenBucket::new(per_sec, r.burst, now),
                };
                Some(Policer(b, r.unit))
            })
            .collect();
    }

    /// True when tenant `t` may send a frame of `len` bytes, standing for `packets` packets on
    /// the wire (more than one for a large TCP segment carried whole), now (its tokens are
    /// taken).
    #[inline]
    pub fn admit(&mut self, t: TenantId, now: Nanos, (len, packets): (u32, u32)) -> bool {
        let Some(Some(Policer(b, unit))) = self.buckets.get_mut(t.index()) else { return true };
        // A frame larger than the whole burst passes when the bucket is full, and leaves it in
        // debt for all of it.
        b.take_at(now, cost(*unit, len, packets))
    }

    /// As [`Police::admit`], but nothing is taken (a dry run's policer).
    #[inline]
    pub fn would_admit(&self, t: TenantId, now: Nanos, (len, packets): (u32, u32)) -> bool {
        let Some(Some(Policer(mut b, unit))) = self.buckets.get(t.index()).copied() else {
            return true;
        };
        b.take_at(now, cost(unit, len, packets))
    }

    /// Tenant `t`'s bucket, if it is policed (for traces).
    pub fn bucket(&self, t: TenantId) -> Option<(TokenBucket, Unit)> {
        self.buckets.get(t.index()).copied().flatten().map(|Policer(b, u)| (b, u))
    }
}

/// The record of a policer's judgement: its bucket `b` before the frame (refilled to `now`),
/// and whether the frame passed.
pub fn policed((mut b, unit): (TokenBucket, Unit), now: Nanos, passed: bool) -> Policed {
    b.refill(now);
    Policed { passed, tokens: b.tokens(), per_sec: b.rate(), packets: unit == Unit::Packets }
}

/// What a frame of `len` bytes standing for `packets` packets costs a policer counting in
/// `unit`.
#[inline(always)]
fn cost(unit: Unit, len: u32, packets: u32) -> u64 {
    match unit {
        Unit::Packets => u64::from(packets),
        Unit::Bytes => u64::from(len),
    }
}
