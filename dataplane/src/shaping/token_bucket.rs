//! A token bucket kept as a debt: `take_at(now, n)`, or `refill(now)` then `has(n)`, `drain(n)`.
//!
//! Tokens are bytes or packets, whatever the caller takes. Instead of counting tokens, which a
//! refill must raise by the elapsed time times the rate (a multiplication per frame, and a
//! division of nanoseconds into microseconds), the bucket keeps its *debt*: how long it takes
//! until it is full again, in nanoseconds with 16 bits of fraction. Time passing pays the debt
//! off one for one (a subtraction); taking `n` tokens adds `n` times the time one token takes
//! to earn; the bucket has `n` tokens when the debt after taking them is at most its size's
//! worth of time. The same bucket (same bursts, the same long-run rate up to the rounding
//! below), in fewer
//! instructions than the counting form with its 128-bit product (PERF(shaping) in
//! docs/PERFORMANCE.md); everything fits 64 bits.
//!
//! `per_token` is rounded up, so the bucket is never faster than its rate: at most 2^-16 ns per
//! token slow, 0.002 % at 100 Gbit/s. A bucket's size in time is capped at 2^47 ns (39 hours:
//! a burst of more than 39 hours at the rate, which no config means). Time is a parameter: the
//! worker reads its clock once per breath, tests pass a manual one.

use crate::time::Nanos;

/// Bits of fraction in the fixed-point nanoseconds.
const FRAC: u32 = 16;
/// The longest debt (and idle time paid at once) in fixed point: 2^47 ns.
const MAX_DEBT: u64 = 1 << (47 + FRAC);
/// The most tokens one take counts (a frame's bytes are far fewer). With `per_token` below
/// 2^46 (a rate of at least one token a second) a take costs less than 2^63, and a debt of at
/// most 2^63 plus a take fits 64 bits: no saturating arithmetic on the packet path.
pub const MAX_TAKE: u64 = 1 << 17;

/// A token bucket of `size` tokens filling at `per_sec` tokens a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// Time until the bucket is full again (fixed-point nanoseconds; 0: full).
    debt: u64,
    /// The size's worth of time: the most debt a take may leave.
    cap: u64,
    /// Nanoseconds to earn one token, fixed point, rounded up.
    per_token: u64,
    /// The size in tokens (1..=2^32).
    size: u64,
    per_sec: u64,
    /// The time of the last refill, fixed point and modulo 2^64 (it wraps after 3.2 days; only
    /// differences of it are used, which stay right for gaps below 2^47 ns).
    last: u64,
}

impl TokenBucket {
    /// A full bucket of `size` tokens (1..=2^32) filling at `per_sec` (at least 1) a second,
    /// as of `now`.
    pub fn new(per_sec: u64, size: u64, now: Nanos) -> Self {
        let size = size.clamp(1, u64::from(u32::MAX));
        let per_sec = per_sec.max(1);
        let per_token = (1_000_000_000u128 << FRAC).div_ceil(u128::from(per_sec));
        let per_token = u64::try_from(per_token).unwrap_or(u64::MAX).min(MAX_DEBT);
        let cap = size.saturating_mul(per_token).min(MAX_DEBT);
        TokenBucket { debt: 0, cap, per_token, size, per_sec, last: now.0 << FRAC }
    }

    /// Pays the debt off by the time passed since the last refill. The worker's clock is
    /// monotonic, so a gap that looks negative is one of 2^63 fixed-point units (39 hours) or
    /// more, longer than any debt: the bucket is full. (A gap of a multiple of 2^64 units, 78
    /// hours, plus a little pays only the little: a tenant silent that long may find its bucket
    /// less than full once.)
    #[inline(always)]
    pub fn refill(&mut self, now: Nanos) {
        let now = now.0 << FRAC;
        let dt = now.wrapping_sub(self.last);
        self.last = now;
        self.debt = if (dt as i64) < 0 { 0 } else { self.debt.saturating_sub(dt) };
    }

    /// The debt after taking `n` tokens now (at most [`MAX_TAKE`] count).
    #[inline]
    fn after(&self, n: u64) -> u64 {
        self.debt + n.min(MAX_TAKE) * self.per_token
    }

    /// Refills to `now` and takes `n` tokens if there are that many (false, and nothing taken,
    /// otherwise); a take larger than the whole bucket goes when the bucket is full instead of
    /// never, and leaves the bucket in debt for all of it (so a guest's large TCP segments,
    /// which cross the switch whole, are held to the rate as the packets they stand for). Always inlined: as a call it cost a third again of itself in
    /// argument passing on the shaper's path (callgrind, PERF(shaping)).
    #[inline(always)]
    pub fn take_at(&mut self, now: Nanos, n: u64) -> bool {
        self.refill(now);
        let cost = n.min(MAX_TAKE) * self.per_token;
        let next = self.debt + cost;
        if next <= self.cap {
            self.debt = next;
            true
        } else if cost > self.cap && self.debt == 0 {
            // Larger than the whole bucket: it goes when the bucket is full, and the bucket
            // stays empty until time has paid for all of it.
            self.debt = cost;
            true
        } else {
            false
        }
    }

    /// Takes up to `n` tokens, as many as there are (for a guarantee that is used up by any
    /// traffic, conforming or not).
    #[inline]
    pub fn drain(&mut self, n: u64) {
        self.debt = self.after(n).min(self.cap);
    }

    /// True when `n` tokens are there.
    #[inline]
    pub fn has(&self, n: u64) -> bool {
        self.after(n) <= self.cap
    }

    /// Whole tokens now (a division: for traces and tests, not the packet path).
    pub fn tokens(&self) -> u64 {
        (self.cap - self.debt.min(self.cap)) / self.per_token
    }

    /// The bucket's size (the burst).
    #[inline]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Tokens per second.
    pub fn rate(&self) -> u64 {
        self.per_sec
    }

    /// The same bucket with a new rate and size, keeping the tokens it has (up to the new
    /// size): a reload re-parameterises a bucket rather than filling it anew.
    pub fn retuned(self, per_sec: u64, size: u64) -> Self {
        let mut fresh = TokenBucket::new(per_sec, size, Nanos(self.last >> FRAC));
        let keep = self.tokens().min(fresh.size);
        fresh.debt = fresh.cap - keep.saturating_mul(fresh.per_token).min(fresh.cap);
        fresh
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
        assert!(core::mem::size_of::<TokenBucket>() <= 48);
        // The burst: exactly 65 536 bytes at once, then nothing.
        assert!(b.take_at(Nanos::ZERO, 65_536));
        assert!(!b.take_at(Nanos::ZERO, 1));
        let mut taken = 0u64;
        let mut t = 0u64;
        // Ten seconds of 1514-byte frames taken as soon as there are tokens, refilled every
        // 7 919 ns (a prime, so refills and frames never line up).
        while t < 10_000_000_000 {
            t += 7_919;
            while b.take_at(Nanos(t), 1514) {
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
        assert!(b.take_at(Nanos::ZERO, 5));
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

    #[test]
    fn a_take_larger_than_the_bucket_goes_only_when_it_is_full_and_is_paid_for_whole() {
        // 1 000 tokens a second, 1 000 deep: a 1 500-token frame (a guest's large TCP segment
        // is one frame of up to 64 KiB).
        let mut b = TokenBucket::new(1_000, 1_000, Nanos::ZERO);
        assert!(b.take_at(Nanos::ZERO, 1_500));
        assert_eq!(b.tokens(), 0);
        assert!(!b.take_at(Nanos::ZERO, 1));
        // 500 tokens short of empty: still empty at 500 ms.
        assert!(!b.take_at(Nanos::from_millis(500), 1));
        assert_eq!(b.tokens(), 0);
        // 100 tokens at 600 ms; the big one waits for a full bucket, at 1 600 ms.
        assert!(!b.take_at(Nanos::from_millis(599), 100));
        assert!(b.take_at(Nanos::from_millis(600), 100));
        assert!(!b.take_at(Nanos::from_millis(1_599), 1_500));
        assert!(b.take_at(Nanos::from_millis(1_600), 1_500));
        // 3 100 tokens in 1.6 s from a full bucket of 1 000: the rate holds.
        assert_eq!(b.tokens(), 0);
    }

    #[test]
    fn a_bucket_silent_for_days_is_full_again() {
        let mut b = TokenBucket::new(1_000, 500, Nanos::from_secs(5));
        assert!(b.take_at(Nanos::from_secs(5), 500));
        // 40 hours: past the span a difference of fixed-point times can tell from a negative.
        b.refill(Nanos::from_secs(5 + 40 * 3600));
        assert_eq!(b.tokens(), 500);
        let t = Nanos::from_secs(5 + 40 * 3600);
        assert!(b.take_at(t, 500) && !b.take_at(t, 1));
        // And it goes on from there at its rate.
        b.refill(Nanos::from_secs(5 + 40 * 3600 + 1));
        assert_eq!(b.tokens(), 500);
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
                // A take beyond the whole bucket goes only when it is full, and costs the
                // whole bucket: what the bound limits is what the bucket charged.
                if b.take_at(Nanos(t), want) {
                    taken += u128::from(want.min(size));
                }
                let bound = u128::from(rate) * u128::from(t) / 1_000_000_000 + u128::from(size);
                prop_assert!(taken <= bound, "{} > {}", taken, bound);
            }
        }
    }
}
