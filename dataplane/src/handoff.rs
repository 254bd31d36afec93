//! Bounded single-producer, single-consumer rings between two workers.
//!
//! Three kinds of message cross between workers, all as two words: a frame to send on a port
//! the other worker owns, a frame going back to the worker whose pool owns it, and a learned
//! MAC. The rings carry frame _addresses_, never frame bytes.
//!
//! Written by hand rather than taken from `crossbeam-channel`: that channel is multi-producer,
//! multi-consumer and pays a compare-and-swap per message, while here each ring has exactly one
//! writer and one reader, and the writer publishes a whole batch with one release store
//! ([`Sender::publish`]). Slots are atomics, so the module is safe code: the release/acquire
//! pair on the indexes orders the relaxed slot accesses (the usual Lamport queue).
//!
//! It does _not_ block, allocate after creation, or wake the reader: workers poll.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A message of `N` words (two by default) whose meaning belongs to the ring's user.
pub type Message<const N: usize = 2> = [u64; N];

/// An index on its own cache line, so the writer's and the reader's do not share one.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicUsize);

#[derive(Debug)]
struct Ring<const N: usize> {
    slots: Box<[[AtomicU64; N]]>,
    mask: usize,
    /// Next slot the reader takes (written by the reader only).
    head: Padded,
    /// Next slot the writer fills, as published (written by the writer only).
    tail: Padded,
}

/// The writing end.
#[derive(Debug)]
pub struct Sender<const N: usize = 2> {
    ring: Arc<Ring<N>>,
    /// Slots written, published or not.
    tail: usize,
    /// The reader's head as last seen (refreshed only when the ring looks full).
    head: usize,
}

/// The reading end.
#[derive(Debug)]
pub struct Receiver<const N: usize = 2> {
    ring: Arc<Ring<N>>,
    head: usize,
}

/// A ring with room for at least `capacity` messages (rounded up to a power of two).
pub fn ring<const N: usize>(capacity: usize) -> (Sender<N>, Receiver<N>) {
    let size = capacity.max(2).next_power_of_two();
    let slots = (0..size).map(|_| std::array::from_fn(|_| AtomicU64::new(0))).collect();
    let ring =
        Arc::new(Ring { slots, mask: size - 1, head: Padded::default(), tail: Padded::default() });
    (Sender { ring: ring.clone(), tail: 0, head: 0 }, Receiver { ring, head: 0 })
}

impl<const N: usize> Sender<N> {
    /// Writes a message; the reader sees it after the next [`Sender::publish`]. False when the
    /// ring is full (the message was not written).
    #[inline]
    pub fn push(&mut self, m: Message<N>) -> bool {
        let size = self.ring.mask + 1;
        if self.tail.wrapping_sub(self.head) == size {
            self.head = self.ring.head.0.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.head) == size {
                return false;
            }
        }
        let slot = &self.ring.slots[self.tail & self.ring.mask];
        for (s, v) in slot.iter().zip(m) {
            s.store(v, Ordering::Relaxed);
        }
        self.tail = self.tail.wrapping_add(1);
        true
    }

    /// True when `k` more messages fit (the reader's position is read again only when the
    /// last one seen leaves too little room).
    #[inline]
    pub fn has_room(&mut self, k: usize) -> bool {
        let size = self.ring.mask + 1;
        if size - self.tail.wrapping_sub(self.head) < k {
            self.head = self.ring.head.0.load(Ordering::Acquire);
        }
        size - self.tail.wrapping_sub(self.head) >= k
    }

    /// How many of `want` more messages fit (the reader's position is read again only when
    /// the last one seen leaves room for fewer).
    #[inline]
    pub fn room_for(&mut self, want: usize) -> usize {
        let size = self.ring.mask + 1;
        if size - self.tail.wrapping_sub(self.head) < want {
            self.head = self.ring.head.0.load(Ordering::Acquire);
        }
        (size - self.tail.wrapping_sub(self.head)).min(want)
    }

    /// Makes every message pushed so far visible to the reader.
    #[inline]
    pub fn publish(&mut self) {
        self.ring.tail.0.store(self.tail, Ordering::Release);
    }

    /// Messages written and not yet taken by the reader (exact when the reader is stopped).
    pub fn len(&self) -> usize {
        self.tail.wrapping_sub(self.ring.head.0.load(Ordering::Acquire))
    }

    /// True when the reader has taken everything written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sums `f` over the messages written and not yet taken (exact when the reader is
    /// stopped; for the frame census, not the packet path).
    pub fn sum_unread(&self, f: impl Fn(Message<N>) -> usize) -> usize {
        let head = self.ring.head.0.load(Ordering::Acquire);
        (0..self.tail.wrapping_sub(head))
            .map(|i| {
                let slot = &self.ring.slots[head.wrapping_add(i) & self.ring.mask];
                f(std::array::from_fn(|w| slot[w].load(Ordering::Relaxed)))
            })
            .sum()
    }

    /// How many messages the ring holds at most.
    pub fn capacity(&self) -> usize {
        self.ring.mask + 1
    }
}

impl<const N: usize> Receiver<N> {
    /// Hands up to `max` published messages to `f`, in order. Returns how many.
    #[inline]
    pub fn pop(&mut self, max: usize, mut f: impl FnMut(Message<N>)) -> usize {
        let tail = self.ring.tail.0.load(Ordering::Acquire);
        let n = tail.wrapping_sub(self.head).min(max);
        for _ in 0..n {
            let slot = &self.ring.slots[self.head & self.ring.mask];
            f(std::array::from_fn(|i| slot[i].load(Ordering::Relaxed)));
            self.head = self.head.wrapping_add(1);
        }
        if n > 0 {
            self.ring.head.0.store(self.head, Ordering::Release);
        }
        n
    }

    /// Like [`Receiver::pop`], but stops before the first message `f` refuses (returns
    /// false for); that message stays in the ring for the next call.
    #[inline]
    pub fn pop_while(&mut self, max: usize, mut f: impl FnMut(Message<N>) -> bool) -> usize {
        let tail = self.ring.tail.0.load(Ordering::Acquire);
        let avail = tail.wrapping_sub(self.head).min(max);
        let mut n = 0;
        while n < avail {
            let slot = &self.ring.slots[self.head & self.ring.mask];
            if !f(std::array::from_fn(|i| slot[i].load(Ordering::Relaxed))) {
                break;
            }
            self.head = self.head.wrapping_add(1);
            n += 1;
        }
        if n > 0 {
            self.ring.head.0.store(self.head, Ordering::Release);
        }
        n
    }

    /// Published messages not yet taken.
    pub fn len(&self) -> usize {
        self.ring.tail.0.load(Ordering::Acquire).wrapping_sub(self.head)
    }

    /// True when nothing published waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_arrive_in_order_after_publish_and_a_full_ring_refuses() {
        let (mut tx, mut rx) = ring::<2>(3);
        assert_eq!(tx.capacity(), 4);
        for i in 0..4 {
            assert!(tx.push([i, i * 10]));
        }
        assert!(!tx.push([9, 9]), "full");
        assert_eq!(rx.pop(usize::MAX, |_| panic!("not published yet")), 0);
        tx.publish();
        let mut got = Vec::new();
        assert_eq!(rx.pop(3, |m| got.push(m)), 3);
        assert_eq!(got, [[0, 0], [1, 10], [2, 20]]);
        assert_eq!((tx.len(), rx.len()), (1, 1));
        assert!(tx.push([4, 40]) && tx.push([5, 50]) && tx.push([6, 60]));
        assert!(!tx.push([7, 70]));
        tx.publish();
        got.clear();
        assert_eq!(rx.pop(usize::MAX, |m| got.push(m)), 4);
        assert_eq!(got, [[3, 30], [4, 40], [5, 50], [6, 60]]);
        assert!(tx.is_empty() && rx.is_empty());
        // pop_while leaves the refused message in place.
        assert!(tx.push([7, 0]) && tx.push([8, 0]));
        tx.publish();
        assert_eq!(rx.pop_while(9, |m| m[0] == 7), 1);
        assert_eq!(rx.len(), 1);
        assert_eq!(rx.pop_while(9, |m| m[0] == 8), 1);
    }

    #[test]
    fn a_million_messages_cross_threads_intact() {
        const N: u64 = 1_000_000;
        let (mut tx, mut rx) = ring::<2>(256);
        let writer = std::thread::spawn(move || {
            let mut i = 0;
            // Bounded: the reader drains continuously, so this ends long before the limit.
            let mut spins = 0u64;
            while i < N && spins < 1_000_000_000 {
                if tx.push([i, !i]) {
                    i += 1;
                    if i % 32 == 0 {
                        tx.publish();
                    }
                } else {
                    tx.publish();
                    spins += 1;
                    std::hint::spin_loop();
                }
            }
            tx.publish();
            i
        });
        let mut next = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while next < N && std::time::Instant::now() < deadline {
            rx.pop(64, |m| {
                assert_eq!(m, [next, !next]);
                next += 1;
            });
        }
        assert_eq!(writer.join().unwrap(), N);
        assert_eq!(next, N);
    }
}
