//! The egress scheduler of one port: a bounded queue per tenant, each with an optional shaper
//! (maximum rate and burst) and an optional guaranteed minimum, served by deficit round robin
//! by weight, under the port's own rate when it has one.
//!
//! # How a breath is scheduled
//! [`PortSched::schedule`] is called once per breath with the room the port's ready list has
//! (a few dozen frames: the kernel's TX ring is not where frames should wait, or a quiet
//! tenant's frame would wait behind a busy one's there). It
//! 1. refills the port's bucket;
//! 2. serves the tenants below their guaranteed minimum first, in turn, while their minimum
//!    bucket has tokens;
//! 3. then runs deficit round robin over the active queues: a queue that comes to the head of
//!    the round earns `quantum × weight` bytes of deficit and sends head frames while they
//!    fit its deficit, its shaper and the port's bucket.
//!
//! Work-conserving: a tenant that has nothing queued is not in the round, so its share goes to
//! the others; a tenant held back by its own shaper is skipped and keeps at most one quantum of
//! deficit (it cannot save up a burst while shaped). A guarantee is on top of the weights: a
//! tenant gets its minimum, then its weighted share of what the minimums leave. The port's
//! bucket is what makes it a scheduler of a
//! congested link: without a port rate the ready list's room is the only limit, and the round
//! only orders frames.
//!
//! # Ownership
//! A queue is a ring of frame references allocated when the snapshot is installed; enqueueing
//! and scheduling never allocate. Every frame in a queue is owned by it (the worker's census
//! counts them as pending). A full queue refuses the frame: the caller drops it under
//! `queue_full`. A tenant's queue is its own share of frames, so one tenant's backlog never
//! takes the room of another's.

use std::collections::VecDeque;

use super::{Rate, Unit};
use crate::frame::FrameRef;
use crate::shaping::TokenBucket;
use crate::snapshot::{PortKind, Snapshot};
use crate::time::Nanos;
use crate::vocab::{PortId, TenantId};

/// Bytes of deficit a queue earns per round and unit of weight: at least the largest frame, so
/// every head frame fits after one round.
pub const QUANTUM: u64 = 4096;
const NONE: u32 = u32::MAX;

/// A bucket and what it counts, one cache line each: tenants' shapers are read at random, and
/// a 56-byte stride would put most of them across two lines (PERF(shaping)).
#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
struct Bucket {
    b: TokenBucket,
    unit: Unit,
}

const _: () = assert!(std::mem::size_of::<Option<Bucket>>() == 64, "one line per tenant");

impl Bucket {
    fn new(r: &Rate, share: u64, now: Nanos) -> Bucket {
        let share = share.max(1);
        Bucket { b: TokenBucket::new(r.per_sec / share, r.burst, now), unit: r.unit }
    }

    #[inline]
    fn cost(&self, len: u32) -> u64 {
        self.unit.cost(len)
    }

    /// True when a frame of `len` bytes may go. One larger than the whole bucket goes when the
    /// bucket is full (and empties it), rather than blocking its queue forever.
    #[inline]
    fn has(&self, len: u32) -> bool {
        self.b.has(self.cost(len).min(self.b.size()))
    }

    #[inline]
    fn take(&mut self, len: u32) {
        self.b.drain(self.cost(len));
    }
}

/// One tenant's queue on the port.
#[derive(Debug)]
struct Queue {
    tenant: TenantId,
    /// Frames and their ingress port. Made with room for `limit` and never holding more, so it
    /// never grows on the packet path (and its index wraps with a compare, no division).
    ring: VecDeque<(FrameRef, PortId)>,
    /// Most frames it holds (the tenant's `queue`).
    limit: usize,
    min: Option<Bucket>,
    weight: u64,
    deficit: u64,
    /// In the round (has frames).
    active: bool,
    /// Earns its quantum when it next comes to the head of the round.
    fresh: bool,
}

impl Queue {
    /// The length of the frame at the head of the queue.
    #[inline]
    fn front_len(&self) -> Option<u32> {
        self.ring.front().map(|(f, _)| f.len())
    }

    #[inline]
    fn refill(&mut self, now: Nanos) {
        if let Some(m) = &mut self.min {
            m.b.refill(now);
        }
    }
}

/// What one call of [`PortSched::schedule`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scheduled {
    /// Frames handed on.
    pub frames: usize,
    /// The port's bucket ran dry (the port is congested).
    pub port_limited: bool,
}

/// The egress scheduler of one port.
#[derive(Debug)]
pub struct PortSched {
    queues: Vec<Queue>,
    /// Each tenant's shaper, apart from the queues and indexed by tenant, not queue: the
    /// cut-through path reads only this, and its load does not wait for `by_tenant`'s
    /// (PERF(shaping)).
    shapers: Vec<Option<Bucket>>,
    /// Tenant id → index in `queues` (`NONE`: not attached here).
    by_tenant: Vec<u32>,
    port: Option<Bucket>,
    /// Within a batch ([`PortSched::begin_batch`]): the port's bucket held enough for every
    /// frame the batch can bring, so cut-through frames only add up their cost here, charged
    /// once at [`PortSched::end_batch`].
    batch_free: bool,
    batch_owed: u64,
    /// The round: indexes of active queues, a ring (a power of two in size).
    round: Box<[u32]>,
    round_mask: usize,
    round_head: usize,
    round_len: usize,
    has_min: bool,
    queued: usize,
}

impl PortSched {
    /// The scheduler of `port` under `snap`, if it needs one: the port has a rate, or a tenant
    /// attached to it shapes its egress there. `share` divides every rate (the number of
    /// workers sending on the port, each enforcing its part).
    pub fn new(snap: &Snapshot, port: PortId, share: u64, now: Nanos) -> Option<PortSched> {
        let spec = snap.ports.get(port.index())?;
        let mut queues = Vec::new();
        let mut shapers = vec![None; snap.tenants.len()];
        let mut by_tenant = vec![NONE; snap.tenants.len()];
        for (i, t) in snap.tenants.iter().enumerate() {
            if !t.attachments.iter().any(|a| a.port == port) {
                continue;
            }
            let s = &t.shaping;
            let egress = match spec.kind {
                PortKind::Uplink | PortKind::Underlay => s.to_uplink,
                PortKind::Tenant => s.to_tenant,
            };
            by_tenant[i] = queues.len() as u32;
            shapers[i] = egress.map(|r| Bucket::new(&r, share, now));
            let limit = s.queue.max(1) as usize;
            queues.push(Queue {
                tenant: TenantId(i as u16),
                ring: VecDeque::with_capacity(limit),
                limit,
                min: s.min_rate.map(|r| Bucket::new(&r, share, now)),
                weight: u64::from(s.weight.max(1)),
                deficit: 0,
                active: false,
                fresh: true,
            });
        }
        let port_rate = spec.rate.map(|r| Bucket::new(&r, share, now));
        if port_rate.is_none() && shapers.iter().all(Option::is_none) {
            return None;
        }
        let n = queues.len().max(1).next_power_of_two();
        Some(PortSched {
            has_min: queues.iter().any(|q| q.min.is_some()),
            queues,
            shapers,
            by_tenant,
            port: port_rate,
            batch_free: false,
            batch_owed: 0,
            round: vec![0; n].into_boxed_slice(),
            round_mask: n - 1,
            round_head: 0,
            round_len: 0,
            queued: 0,
        })
    }

    /// Queues a frame of `tenant` (that came in on `ingress`). The frame comes back when the
    /// tenant's queue is full or the tenant is not attached here: the caller drops it
    /// (`queue_full`).
    #[inline]
    pub fn enqueue(
        &mut self,
        tenant: TenantId,
        f: FrameRef,
        ingress: PortId,
    ) -> Result<(), FrameRef> {
        let Some(&qi) = self.by_tenant.get(tenant.index()) else { return Err(f) };
        let Some(q) = self.queues.get_mut(qi as usize) else { return Err(f) };
        if q.ring.len() >= q.limit {
            return Err(f);
        }
        q.ring.push_back((f, ingress));
        self.queued += 1;
        if !q.active {
            q.active = true;
            q.fresh = true;
            let slot = (self.round_head + self.round_len) & self.round_mask;
            self.round[slot] = qi;
            self.round_len += 1;
        }
        Ok(())
    }

    /// A batch of at most `frames` frames of at most `max_len` bytes each begins at `now`:
    /// when the port's bucket holds enough for all of them, the frames of this batch are not
    /// checked against it one by one (PERF(shaping)).
    #[inline]
    pub fn begin_batch(&mut self, now: Nanos, frames: u64, max_len: u32) {
        self.batch_owed = 0;
        self.batch_free = match &mut self.port {
            Some(p) => {
                p.b.refill(now);
                p.b.has(frames * p.cost(max_len))
            }
            None => false,
        };
    }

    /// The batch is over: the port's bucket is charged for what cut through.
    #[inline]
    pub fn end_batch(&mut self) {
        if self.batch_free
            && let Some(p) = &mut self.port
        {
            p.b.drain(self.batch_owed);
        }
        self.batch_free = false;
        self.batch_owed = 0;
    }

    /// Lets a frame of `tenant` skip the queues when nothing is queued on the port and both its
    /// tenant's shaper and the port's rate allow it now (their tokens are taken): with no
    /// backlog there is nobody to be fair to, and the frame conforms. True when it may go
    /// straight to the port's ready list; false: [`PortSched::enqueue`] it.
    #[inline]
    pub fn cut_through(&mut self, tenant: TenantId, len: u32, now: Nanos) -> bool {
        if self.queued != 0 {
            return false;
        }
        let (Some(&qi), Some(shaper)) =
            (self.by_tenant.get(tenant.index()), self.shapers.get_mut(tenant.index()))
        else {
            return false;
        };
        if qi == NONE {
            return false;
        }
        // The port's bucket is checked before the shaper is charged, and charged after it:
        // within a batch it covers whole, only the cost is added up (paid at the batch's end).
        if !self.batch_free
            && let Some(p) = &mut self.port
        {
            p.b.refill(now);
            if !p.has(len) {
                return false;
            }
        }
        if let Some(sh) = shaper
            && !sh.b.take_at(now, sh.cost(len))
        {
            return false;
        }
        if let Some(p) = &mut self.port {
            if self.batch_free {
                self.batch_owed += p.cost(len);
            } else {
                p.take(len);
            }
        }
        true
    }

    /// Hands up to `room` frames to `emit` (frame, tenant, ingress port), as the rates, the
    /// guarantees and the weights allow at `now`.
    pub fn schedule(
        &mut self,
        now: Nanos,
        room: usize,
        mut emit: impl FnMut(FrameRef, TenantId, PortId),
    ) -> Scheduled {
        let mut done = Scheduled::default();
        if room == 0 || self.round_len == 0 {
            return done;
        }
        if let Some(p) = &mut self.port {
            p.b.refill(now);
        }
        let mut room = room;
        let port = &mut self.port;
        let port_allows = |p: &Option<Bucket>, len: u32| p.as_ref().is_none_or(|b| b.has(len));
        // Phase 1: the guarantees, in round order.
        if self.has_min {
            for k in 0..self.round_len {
                let qi = self.round[(self.round_head + k) & self.round_mask] as usize;
                let q = &mut self.queues[qi];
                let sh = &mut self.shapers[q.tenant.index()];
                // Buckets are refilled when their queue is visited (again at the same time is
                // a no-op).
                q.refill(now);
                if let Some(b) = sh {
                    b.b.refill(now);
                }
                while room > 0 {
                    let Some(len) = q.front_len() else { break };
                    let under_min = q.min.as_ref().is_some_and(|m| m.has(len));
                    if !under_min || !allows(sh, len) {
                        break;
                    }
                    if !port_allows(port, len) {
                        done.port_limited = true;
                        return done;
                    }
                    send(q, sh, port, Phase::Guarantee, &mut emit);
                    self.queued -= 1;
                    room -= 1;
                    done.frames += 1;
                }
            }
        }
        // Phase 2: deficit round robin. Stops when the room is used, the port's bucket is dry,
        // or a whole round passes without a frame sent.
        let mut idle = 0;
        while room > 0 && self.round_len > 0 && idle < self.round_len {
            let qi = self.round[self.round_head] as usize;
            let q = &mut self.queues[qi];
            let sh = &mut self.shapers[q.tenant.index()];
            q.refill(now);
            if let Some(b) = sh {
                b.b.refill(now);
            }
            if q.fresh {
                q.deficit += QUANTUM * q.weight;
                q.fresh = false;
            }
            let mut sent = false;
            let mut shaped = false;
            while room > 0 {
                let Some(len) = q.front_len() else { break };
                if u64::from(len) > q.deficit {
                    break;
                }
                if !allows(sh, len) {
                    shaped = true;
                    break;
                }
                if !port_allows(port, len) {
                    done.port_limited = true;
                    return done;
                }
                send(q, sh, port, Phase::Weight, &mut emit);
                q.deficit -= u64::from(len);
                self.queued -= 1;
                room -= 1;
                done.frames += 1;
                sent = true;
            }
            if q.ring.is_empty() {
                // Leaves the round; an empty queue keeps no deficit.
                q.active = false;
                q.deficit = 0;
                self.round_head = (self.round_head + 1) & self.round_mask;
                self.round_len -= 1;
                idle = 0;
                continue;
            }
            if room == 0 {
                // Its turn goes on at the next call, without a new quantum.
                break;
            }
            if shaped {
                // Held back by its own shaper: no saving up beyond one quantum.
                q.deficit = q.deficit.min(QUANTUM * q.weight);
            }
            q.fresh = true;
            let head = self.round[self.round_head];
            self.round_head = (self.round_head + 1) & self.round_mask;
            let tail = (self.round_head + self.round_len - 1) & self.round_mask;
            self.round[tail] = head;
            idle = if sent { 0 } else { idle + 1 };
        }
        done
    }

    /// Frames queued, all tenants.
    pub fn len(&self) -> usize {
        self.queued
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Chunks the queued frames hold (a chain holds several), for the frame census.
    pub fn chunks(&self) -> usize {
        self.queues.iter().flat_map(|q| q.ring.iter()).map(|(f, _)| f.chunks() as usize).sum()
    }

    /// Frames queued for `tenant`.
    pub fn depth(&self, tenant: TenantId) -> usize {
        match self.by_tenant.get(tenant.index()) {
            Some(&qi) if qi != NONE => self.queues[qi as usize].ring.len(),
            _ => 0,
        }
    }

    /// A tenant's queue limit here (0: not attached).
    pub fn limit(&self, tenant: TenantId) -> usize {
        match self.by_tenant.get(tenant.index()) {
            Some(&qi) if qi != NONE => self.queues[qi as usize].limit,
            _ => 0,
        }
    }

    /// Takes every queued frame out (when the scheduler is replaced), in queue order.
    pub fn take_all(&mut self, mut f: impl FnMut(FrameRef, TenantId, PortId)) {
        for q in &mut self.queues {
            while let Some((fr, ingress)) = q.ring.pop_front() {
                f(fr, q.tenant, ingress);
            }
            q.active = false;
            q.deficit = 0;
        }
        self.round_len = 0;
        self.queued = 0;
    }
}

/// True when a queue's shaper (if any) lets a frame of `len` bytes go.
#[inline]
fn allows(shaper: &Option<Bucket>, len: u32) -> bool {
    shaper.as_ref().is_none_or(|s| s.has(len))
}

/// Whether a frame is sent under the tenant's guarantee or its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Guarantee,
    Weight,
}

/// Hands the head frame of `q` (which has one) on and charges the buckets (the guarantee's
/// only for frames sent under it).
#[inline]
fn send(
    q: &mut Queue,
    shaper: &mut Option<Bucket>,
    port: &mut Option<Bucket>,
    phase: Phase,
    emit: &mut impl FnMut(FrameRef, TenantId, PortId),
) {
    let Some((f, ingress)) = q.ring.pop_front() else { return };
    let len = f.len();
    if let Some(s) = shaper {
        s.take(len);
    }
    if phase == Phase::Guarantee
        && let Some(m) = &mut q.min
    {
        m.take(len);
    }
    if let Some(p) = port {
        p.take(len);
    }
    emit(f, q.tenant, ingress);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaping::TenantShaping;
    use crate::snapshot::{Attachment, SnapshotBuilder, TenantSpec};

    const MBIT: u64 = 125_000;

    fn bytes(per_sec: u64, burst: u64) -> Rate {
        Rate { per_sec, burst, unit: Unit::Bytes }
    }

    /// An uplink at `port_rate` (bytes/s) shared by tenants with these shapings.
    fn snap(port_rate: Option<Rate>, shapings: &[TenantShaping]) -> Snapshot {
        let mut b = SnapshotBuilder::new(1);
        let up = b.port("up", "up", PortKind::Uplink);
        b.port_rate(up, port_rate);
        for (i, s) in shapings.iter().enumerate() {
            let mut t = TenantSpec::new(
                &format!("t{i}"),
                vec![Attachment { port: up, vlan: Some(i as u16 + 1) }],
            );
            t.shaping = *s;
            b.tenant(t);
        }
        b.build().unwrap()
    }

    fn frame(i: u64, len: u32) -> FrameRef {
        FrameRef::new(i * 4096, len)
    }

    /// Keeps every tenant's queue full of `len`-byte frames for `secs` seconds, scheduling
    /// every `step` ns with room for 32 frames; returns the bytes each tenant sent.
    fn saturate(s: &mut PortSched, tenants: &[usize], len: u32, secs: u64, step: u64) -> Vec<u64> {
        let mut sent = vec![0u64; 8];
        let mut n = 0;
        let mut t = 0;
        while t < secs * 1_000_000_000 {
            for &tn in tenants {
                while s.enqueue(TenantId(tn as u16), frame(n, len), PortId(9)).is_ok() {
                    n += 1;
                }
            }
            s.schedule(Nanos(t), 32, |f, tn, _| sent[tn.index()] += u64::from(f.len()));
            t += step;
        }
        sent
    }

    fn shaping(weight: u32) -> TenantShaping {
        TenantShaping { weight, queue: 64, ..TenantShaping::default() }
    }

    #[test]
    fn weights_share_a_congested_port_exactly() {
        let sn = snap(Some(bytes(100 * MBIT, 16_384)), &[shaping(1), shaping(3)]);
        let mut s = PortSched::new(&sn, PortId(0), 1, Nanos::ZERO).unwrap();
        let sent = saturate(&mut s, &[0, 1], 1514, 10, 100_000);
        let total = (sent[0] + sent[1]) as f64;
        // The port's rate, to within its burst, and 1:3 to within a quantum per round.
        assert!((total - 10.0 * 100.0 * MBIT as f64).abs() < 16_384.0 + 1514.0, "{total}");
        let share = sent[0] as f64 / total;
        assert!((share - 0.25).abs() < 0.001, "{share}");
    }

    #[test]
    fn an_idle_tenants_share_goes_to_the_busy_ones() {
        let sn = snap(Some(bytes(100 * MBIT, 16_384)), &[shaping(1), shaping(1), shaping(2)]);
        let mut s = PortSched::new(&sn, PortId(0), 1, Nanos::ZERO).unwrap();
        // Tenant 2 (weight 2) sends nothing: 0 and 1 get half each of the whole port.
        let sent = saturate(&mut s, &[0, 1], 1514, 5, 100_000);
        let total = (sent[0] + sent[1]) as f64;
        assert!((total - 5.0 * 100.0 * MBIT as f64).abs() < 16_384.0 + 1514.0, "{total}");
        assert!((sent[0] as f64 / total - 0.5).abs() < 0.001);
        assert_eq!(sent[2], 0);
    }

    #[test]
    fn a_shaped_tenant_gets_its_rate_and_the_rest_goes_to_the_others() {
        let limited = TenantShaping { to_uplink: Some(bytes(10 * MBIT, 8_192)), ..shaping(1) };
        let sn = snap(Some(bytes(100 * MBIT, 16_384)), &[limited, shaping(1)]);
        let mut s = PortSched::new(&sn, PortId(0), 1, Nanos::ZERO).unwrap();
        let sent = saturate(&mut s, &[0, 1], 1000, 10, 50_000);
        // Within 1 % of 10 Mbit/s, and the other tenant takes the remaining 90.
        let r0 = sent[0] as f64 / 10.0 / MBIT as f64;
        let r1 = sent[1] as f64 / 10.0 / MBIT as f64;
        assert!((r0 - 10.0).abs() < 0.1, "{r0} Mbit/s");
        assert!((r1 - 90.0).abs() < 0.2, "{r1} Mbit/s");
    }

    #[test]
    fn without_a_port_rate_each_shaper_alone_limits_and_the_burst_is_exact() {
        let t = TenantShaping { to_uplink: Some(bytes(MBIT, 10_000)), ..shaping(1) };
        let sn = snap(None, &[t]);
        let mut s = PortSched::new(&sn, PortId(0), 1, Nanos::ZERO).unwrap();
        for i in 0..20 {
            assert!(s.enqueue(TenantId(0), frame(i, 1000), PortId(9)).is_ok());
        }
        // At time zero exactly the burst: ten 1000-byte frames.
        let d = s.schedule(Nanos::ZERO, 64, |_, _, _| {});
        assert_eq!((d.frames, s.len()), (10, 10));
        // 8 ms later, 1 000 bytes more (125 000 B/s).
        assert_eq!(s.schedule(Nanos::from_millis(8), 64, |_, _, _| {}).frames, 1);
        // The queue refuses beyond its 64 frames: queue_full for the caller.
        let mut refused = 0;
        for i in 0..100 {
            refused += u32::from(s.enqueue(TenantId(0), frame(100 + i, 1000), PortId(9)).is_err());
        }
        assert_eq!((refused, s.depth(TenantId(0)), s.limit(TenantId(0))), (45, 64, 64));
    }

    #[test]
    fn a_guaranteed_minimum_is_served_first() {
        // Weight 1 against 9, but tenant 0 is guaranteed 40 of the 100 Mbit/s.
        let g = TenantShaping { min_rate: Some(bytes(40 * MBIT, 8_192)), ..shaping(1) };
        let sn = snap(Some(bytes(100 * MBIT, 16_384)), &[g, shaping(9)]);
        let mut s = PortSched::new(&sn, PortId(0), 1, Nanos::ZERO).unwrap();
        let sent = saturate(&mut s, &[0, 1], 1514, 10, 100_000);
        let r0 = sent[0] as f64 / 10.0 / MBIT as f64;
        // 40 guaranteed, plus a tenth of what is left over: 46.
        assert!((r0 - 46.0).abs() < 1.0, "{r0} Mbit/s");
    }

    #[test]
    fn nothing_to_schedule_no_scheduler_and_take_all_returns_every_frame() {
        let sn = snap(None, &[shaping(1)]);
        assert!(PortSched::new(&sn, PortId(0), 1, Nanos::ZERO).is_none());
        let sn = snap(Some(bytes(MBIT, 2000)), &[shaping(1), shaping(2)]);
        let mut s = PortSched::new(&sn, PortId(0), 1, Nanos::ZERO).unwrap();
        for i in 0..10 {
            assert!(s.enqueue(TenantId((i % 2) as u16), frame(i, 100), PortId(3)).is_ok());
        }
        let mut back = Vec::new();
        s.take_all(|f, t, p| back.push((f.addr(), t.0, p.0)));
        assert_eq!(back.len(), 10);
        assert!(s.is_empty());
        assert_eq!(s.schedule(Nanos::from_secs(1), 64, |_, _, _| panic!("empty")).frames, 0);
    }
}
