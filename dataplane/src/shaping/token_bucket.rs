//! A token bucket with integer arithmetic: `refill(now)` then `try_take(n)`.
//!
//! Tokens are bytes or packets, whatever the caller takes. They are kept in fixed point with 32
//! bits of fraction, and the rate as fixed-point tokens per microsecond: a refill is a division
//! of the elapsed time by a constant (a multiplication) and one multiplication, no division by
//! a variable, which matters because a policer refills on every frame (a 128-bit division per
//! frame cost more than the rest of the policer: PERF(shaping)), and the whole bucket is five
//! words. Time is consumed in whole microseconds (the rest waits for the next refill) and the
//! fraction of a token an interval earns is kept, so the long-run rate is exact to the rate's
//! own rounding up to 2^-32 tokens per microsecond: at most 0.00024 tokens a second more than
//! asked, whatever the rate. Time is a parameter: the worker reads its clock
//! once per breath, tests pass a manual one.

use crate::time::Nanos;

/// Bits of fraction in the fixed-point tokens and rate.
const FRAC: u32 = 32;

/// A token bucket of `size` tokens filling at `per_sec` tokens a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// Tokens, fixed point.
    tokens: u64,
    /// The size, fixed point (sizes up to 2^32 tokens).
    cap: u64,
    /// Tokens per microsecond, fixed point (rounded up).
    per_us: u64,
    per_sec: u64,
    /// Time accounted up to (a whole number of microseconds after creation).
    last: Nanos,
}

impl TokenBucket {
    /// A full bucket of `size` tokens (1..=2^32) filling at `per_sec` (at least 1) a second,
    /// as of `now`.
    pub fn new(per_sec: u64, size: u64, now: Nanos) -> Self {
        let size = size.clamp(1, u64::from(u32::MAX));
        let per_sec = per_sec.max(1);
        let cap = size << FRAC;
        // Rounded up: a rate of whole tokens per microsecond, millisecond or second earns each
        // token exactly on time, never a hair late.
        let per_us = (u128::from(per_sec) << FRAC).div_ceil(1_000_000);
        let per_us = u64::try_from(per_us).unwrap_or(u64::MAX);
        TokenBucket { tokens: cap, cap, per_us, per_sec, last: now }
    }

    /// Adds the tokens earned since the last refill (none if not a microsecond later).
    #[inline]
    pub fn refill(&mut self, now: Nanos) {
        let us = now.since(self.last).0 / 1000;
        if us == 0 {
            return;
        }
        self.last = self.last.add(Nanos(us * 1000));
        let earned = u128::from(us) * u128::from(self.per_us);
        let room = u128::from(self.cap - self.tokens);
        // No more than the room: the bucket is full, the rest is lost.
        self.tokens += earned.min(room) as u64;
    }

    /// Takes `n` tokens if there are that many; false (and nothing taken) otherwise.
    #[inline]
    pub fn try_take(&mut self, n: u64) -> bool {
        let n = n.min(u64::from(u32::MAX)) << FRAC;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Takes up to `n` tokens, as many as there are (for a guarantee that is used up by any
    /// traffic, conforming or not).
    #[inline]
    pub fn drain(&mut self, n: u64) {
        self.tokens = self.tokens.saturating_sub(n.min(u64::from(u32::MAX)) << FRAC);
    }

    /// True when `n` tokens are there.
    #[inline]
    pub fn has(&self, n: u64) -> bool {
        self.tokens >= n.min(u64::from(u32::MAX)) << FRAC
    }

    /// Whole tokens now.
    #[inline]
    pub fn tokens(&self) -> u64 {
        self.tokens >> FRAC
    }

    /// The bucket's size (the burst).
    pub fn size(&self) -> u64 {
        self.cap >> FRAC
    }

    /// Tokens per second.
    pub fn rate(&self) -> u64 {
        self.per_sec
    }

    /// The same bucket with a new rate and size, keeping the tokens it has (up to the new
    /// size): a reload re-parameterises a bucket rather than filling it anew.
    pub fn retuned(self, per_sec: u64, size: u64) -> Self {
        let fresh = TokenBucket::new(per_sec, size, self.last);
        TokenBucket { tokens: self.tokens.min(fresh.cap), ..fresh }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_long_run_rate_is_exact_and_the_burst_is_honoured() {
        // 12.5 MB/s (100 Mbit/s) with a 64 KiB burst, refilled at odd intervals.
        let mut b = TokenBucket::new(12_500_000, 65_536, Nanos::ZERO);
        assert_eq!(core::mem::size_of::<TokenBucket>(), 40);
        // The burst: exactly 65 536 bytes at once, then nothing.
        assert!(b.try_take(65_536));
        assert!(!b.try_take(1));
        let mut taken = 0u64;
        let mut t = 0u64;
        // Ten seconds of 1514-byte frames taken as soon as there are tokens, refilled every
        // 7 919 ns (a prime, so refills and frames never line up).
        while t < 10_000_000_000 {
            t += 7_919;
            b.refill(Nanos(t));
            while b.try_take(1514) {
                taken += 1514;
            }
        }
        let expected = 12_500_000u64 * 10;
        // Within one frame of exact (the tokens left over are less than a frame).
        assert!(taken <= expected && expected - taken < 1514, "{taken} vs {expected}");
    }

    #[test]
    fn a_rare_refill_carries_fractions_and_a_full_bucket_wastes() {
        // 3 tokens a second, 1 ms at a time: no whole token until a third of a second passes.
        let mut b = TokenBucket::new(3, 5, Nanos::ZERO);
        assert!(b.try_take(5));
        for i in 1..=333 {
            b.refill(Nanos::from_millis(i));
        }
        assert_eq!(b.tokens(), 0);
        b.refill(Nanos(333_333_400));
        assert_eq!(b.tokens(), 1);
        // Left idle for a minute: full, not more.
        b.refill(Nanos::from_secs(60));
        assert_eq!(b.tokens(), 5);
        // Retuned to a smaller size keeps what fits.
        let r = b.retuned(100, 2);
        assert_eq!((r.tokens(), r.size(), r.rate()), (2, 2, 100));
    }

    proptest! {
        #[test]
        fn never_above_its_size_nor_more_than_rate_times_time_plus_burst(
            rate in 1u64..100_000_000_000,
            size in 1u64..4_000_000_000,
            steps in proptest::collection::vec((0u64..5_000_000, 0u64..100_000), 1..200),
        ) {
            let mut b = TokenBucket::new(rate, size, Nanos::ZERO);
            let (mut t, mut taken) = (0u64, 0u128);
            for (dt, want) in steps {
                t += dt;
                b.refill(Nanos(t));
                prop_assert!(b.tokens() <= size);
                if b.try_take(want) {
                    taken += u128::from(want);
                }
                let bound = u128::from(rate) * u128::from(t) / 1_000_000_000 + u128::from(size);
                prop_assert!(taken <= bound, "{} > {}", taken, bound);
            }
        }
    }
}
