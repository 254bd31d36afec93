//! Time as a parameter: the worker samples a clock once per batch and passes [`Nanos`] down, so
//! every stage is deterministic under a manual clock in tests (no `Instant::now()` inside).
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::time::Instant;

/// Nanoseconds on a monotonic clock with an arbitrary origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Nanos(pub u64);

impl Nanos {
    /// Zero.
    pub const ZERO: Nanos = Nanos(0);

    /// Whole seconds.
    #[inline]
    pub const fn from_secs(s: u64) -> Nanos {
        Nanos(s.saturating_mul(1_000_000_000))
    }

    /// Milliseconds.
    #[inline]
    pub const fn from_millis(ms: u64) -> Nanos {
        Nanos(ms.saturating_mul(1_000_000))
    }

    /// `self - earlier`, or zero if `earlier` is later.
    #[inline]
    pub const fn since(self, earlier: Nanos) -> Nanos {
        Nanos(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, saturating.
    #[inline]
    pub const fn add(self, d: Nanos) -> Nanos {
        Nanos(self.0.saturating_add(d.0))
    }
}

/// A source of [`Nanos`].
pub trait Clock {
    /// The current time.
    fn now(&self) -> Nanos;
}

/// The process's monotonic clock (vDSO `clock_gettime`, no syscall), origin at creation.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        MonotonicClock { origin: Instant::now() }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now(&self) -> Nanos {
        // u64 nanoseconds wrap after 584 years of uptime.
        Nanos(self.origin.elapsed().as_nanos() as u64)
    }
}

/// A clock that moves only when told to (tests, simulations).
#[derive(Debug, Default)]
pub struct ManualClock {
    now: Cell<u64>,
}

impl ManualClock {
    /// A clock at `start`.
    pub fn new(start: Nanos) -> Self {
        ManualClock { now: Cell::new(start.0) }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Nanos) {
        self.now.set(self.now.get().saturating_add(d.0));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Nanos {
        Nanos(self.now.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(Nanos::from_secs(1));
        assert_eq!(c.now(), Nanos(1_000_000_000));
        c.advance(Nanos::from_millis(5));
        assert_eq!(c.now(), Nanos(1_005_000_000));
        assert_eq!(c.now().since(Nanos::from_secs(2)), Nanos::ZERO);
    }

    #[test]
    fn monotonic_clock_does_not_go_back() {
        let c = MonotonicClock::new();
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
    }
}
