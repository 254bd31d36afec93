//! The poll loop body: the only place that composes clock, ports and pipeline.
//!
//! One [`Worker::poll`] is one "breath": take what other workers handed over, then for every
//! socket return completed TX frames to the pool, receive a batch, run the pipeline on it and
//! hand the TX lists out; then retry what full rings refused, tell the other workers what was
//! learned, send their frames home, and kick the sockets. A new snapshot is adopted only
//! between breaths ([`Worker::install`]), so a batch is always switched against one consistent
//! configuration.
//!
//! # Several workers
//! Each worker owns a set of (port, queue) sockets and a contiguous share of the frame area's
//! chunks ([`mesh::Shares`]). A frame whose egress port has no socket on this worker crosses
//! to a worker that has one through a [`handoff`](crate::handoff) ring, by address; after it
//! is sent (or dropped) there its chunk goes back to its owner over a `returns` ring. MACs
//! learned by one worker are announced to the others ([`crate::flow::fdb`]). Nothing on
//! these paths locks, allocates or makes a syscall.
//!
//! # Frame accounting
//! Every chunk of the area is, at every breath boundary, either in a pool, held by a socket
//! (fill, RX, TX, completion), waiting in a TX list, set aside to go home, or in a handoff
//! ring. [`Worker::census`] adds up one worker's part; with one worker debug builds assert
//! after every breath that it equals the number of chunks, so a leaked or doubly-owned frame
//! fails the first test that causes it. With several, the caller adds the parts up once the
//! workers have stopped.
#![forbid(unsafe_code)]

pub mod mesh;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::batch::{BATCH_SIZE, Batch};
use crate::frame::{FrameArea, FramePool, FrameRef};
use crate::pipeline::output::Owner;
use crate::pipeline::{Dispositions, Egress, Pipeline, TxLists};
use crate::port::afxdp::wait::Waiter;
use crate::port::{Breath, Port, PortCensus};
use crate::snapshot::Snapshot;
use crate::time::{Clock, Nanos};
use crate::trace::record::FrameTrace;
use crate::vocab::{DropReason, PortId, TenantId};
use mesh::{Handoff, Links, PeerOut, decode_learn, encode_learn};

/// Most batches taken from one port in one breath.
const BATCHES_PER_VISIT: usize = 4;

/// How often the MAC table is swept for expired entries.
const AGE_INTERVAL: Nanos = Nanos::from_millis(250);

/// Most consecutive breaths a worker skips RX while its TX lists are nearly full.
const MAX_PAUSED_BREATHS: u32 = 64;

/// Most breaths [`Worker::drain`] takes.
const MAX_DRAIN_BREATHS: u32 = 100_000;

/// Most announcements applied from one peer per breath.
const LEARNS_PER_BREATH: usize = 256;

/// Most rounds of completions and kicks a removed socket gets to finish sending.
const RETIRE_KICKS: usize = 64;

/// What the control plane tells a worker; applied between breaths by [`Worker::apply`], in
/// the order sent (a reload that removes a port sends its sockets' removal before the
/// snapshot without it).
#[derive(Debug)]
pub enum WorkerCmd<P> {
    /// Adopt a snapshot.
    Install(Arc<Snapshot>),
    /// Adopt a new cluster map (where the other hosts' MACs are).
    Overlay(Arc<crate::flow::overlay::OverlayMap>),
    /// Poll a new socket of `port` (boxed: the channel's slots stay small).
    AddSocket {
        /// Its port.
        port: PortId,
        /// The socket.
        driver: Box<P>,
    },
    /// Stop polling the socket of (`port`, `queue`) and give back its frames.
    RemoveSocket {
        /// Its port.
        port: PortId,
        /// Its queue.
        queue: u32,
    },
    /// The socket's device is gone: nothing is received on it or sent to it.
    SocketDown {
        /// Its port.
        port: PortId,
        /// Its queue.
        queue: u32,
    },
    /// The socket's device is back: `driver` (of the same port and queue) takes its place.
    ReplaceSocket {
        /// Its port.
        port: PortId,
        /// The new socket.
        driver: Box<P>,
    },
    /// Who polls which port, after ports came or went: per port id, a worker polling it
    /// (frames for a port this worker has no socket of go there; `None`: nobody does), and
    /// how many workers poll it (each enforces that part of the port's and tenants' rates).
    Plan {
        /// Per port id, a worker polling it.
        owners: Vec<Option<usize>>,
        /// Per port id, the workers polling it.
        shares: Vec<u64>,
    },
}

/// What applying a [`WorkerCmd`] left the caller.
#[derive(Debug)]
pub enum Applied<P> {
    /// Nothing to hand back.
    Done,
    /// The snapshot replaced (to be freed off the poll loop, by the caller).
    Replaced(Arc<Snapshot>),
    /// The cluster map replaced (to be freed off the poll loop, by the caller).
    MapReplaced(Arc<crate::flow::overlay::OverlayMap>),
    /// A socket taken out (removed, or replaced after its device vanished), and the frames
    /// it kept that were written off.
    Removed {
        /// The socket (closing it is the caller's business: a close can wait for the kernel).
        driver: Box<P>,
        /// Frames written off.
        lost: u32,
    },
    /// No socket of that port and queue.
    NoSuchSocket,
}

/// What a worker does when a breath finds no traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdlePolicy {
    /// Poll again at once: lowest latency, one core at 100 %.
    Busy,
    /// After a run of empty breaths, wait in `poll` on the sockets (every fill ring topped
    /// up first) until a frame arrives, another worker hands one over, or [`IDLE_WAIT`]
    /// passes, so an idle switch does not burn a core and a waking one loses nothing.
    Adaptive,
}

/// Empty breaths before an adaptive worker starts waiting.
const IDLE_SPIN: u32 = 256;
/// Longest wait of an adaptive worker whose ports can all wake it: it still breathes this
/// often (ageing, commands, figures).
pub const IDLE_WAIT: Duration = Duration::from_millis(10);
/// Longest sleep, in microseconds, of an adaptive worker with a port that cannot wake it
/// (in-memory ports): it sleeps in growing steps up to this.
const IDLE_MAX_SLEEP_US: u32 = 500;

/// Where the worker's time went, as Open vSwitch's `pmd-perf-show` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopStats {
    /// Breaths that received at least one frame.
    pub busy_polls: u64,
    /// Breaths that received nothing.
    pub idle_polls: u64,
    /// Time spent in busy breaths.
    pub busy: Nanos,
    /// Time spent in idle breaths and sleeps.
    pub idle: Nanos,
    /// Frames received.
    pub packets: u64,
    /// Breaths (not counting an adaptive worker's waits) that lasted longer than each of
    /// [`STALL_BOUNDS`], and the worker's business between breaths (commands, figures): a breath
    /// that long is a time the worker's fill rings were not topped up (descheduled, a long
    /// run of wakeups, a slow command), where a burst can empty them.
    pub stalls: [u64; 4],
    /// The longest breath.
    pub longest: Nanos,
}

/// The breath lengths [`LoopStats::stalls`] counts beyond: 50 µs, 200 µs, 1 ms, 5 ms.
pub const STALL_BOUNDS: [Nanos; 4] =
    [Nanos(50_000), Nanos(200_000), Nanos(1_000_000), Nanos(5_000_000)];

impl LoopStats {
    /// Busy nanoseconds per received frame.
    pub fn busy_ns_per_packet(&self) -> f64 {
        if self.packets == 0 { 0.0 } else { self.busy.0 as f64 / self.packets as f64 }
    }

    /// Counts a breath of `took`, longer than the first bound.
    #[cold]
    fn stall(&mut self, took: Nanos) {
        for (n, bound) in self.stalls.iter_mut().zip(STALL_BOUNDS) {
            *n += u64::from(took > bound);
        }
        self.longest = self.longest.max(took);
    }
}

/// Where every frame of the area is (one worker's part, or the sum over all workers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameCensus {
    /// In the free list.
    pub free: u32,
    /// Held by ports, by state.
    pub ports: PortCensus,
    /// Waiting in TX lists for room in a TX ring.
    pub pending: u32,
    /// Chunks of other workers set aside to go home.
    pub returning: u32,
    /// In handoff rings this worker wrote (frames to send elsewhere, chunks going home); exact
    /// only when the readers are stopped.
    pub handoff: u32,
    /// Written off: kept by the kernel for a device that vanished (see `WorkerCmd::ReplaceSocket`).
    pub lost: u32,
    /// Chunks in the area.
    pub total: u32,
}

impl FrameCensus {
    /// Frames accounted for.
    pub fn counted(&self) -> u32 {
        self.free + self.ports.total() + self.pending + self.returning + self.handoff + self.lost
    }

    /// True when every frame is accounted for exactly once.
    pub fn balanced(&self) -> bool {
        self.counted() == self.total
    }

    /// The sum of two workers' parts (`total` is the area's, the same for both).
    pub fn merge(self, o: FrameCensus) -> FrameCensus {
        FrameCensus {
            free: self.free + o.free,
            ports: PortCensus {
                fill: self.ports.fill + o.ports.fill,
                rx: self.ports.rx + o.ports.rx,
                tx: self.ports.tx + o.ports.tx,
                completion: self.ports.completion + o.ports.completion,
            },
            pending: self.pending + o.pending,
            returning: self.returning + o.returning,
            handoff: self.handoff + o.handoff,
            lost: self.lost + o.lost,
            total: self.total.max(o.total),
        }
    }
}

/// How a worker reaches a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Through this worker's socket at this index.
    Local(usize),
    /// Through the worker at this index.
    Peer(usize),
    /// No socket anywhere: its frames are dropped as `port_down`.
    Unreachable,
}

/// One (port, queue) socket and the logical port it belongs to.
#[derive(Debug)]
struct Socket<P> {
    port: PortId,
    queue: u32,
    driver: P,
    /// Its device is gone: nothing is received or sent, frames for its port are dropped as
    /// `port_down` until a new socket replaces it.
    down: bool,
}

/// The TX side of one breath: local sockets, or the rings to the workers owning a port.
struct Out<'a, P> {
    sockets: &'a mut [Socket<P>],
    routes: &'a [Route],
    peers: &'a mut [Option<PeerOut>],
    /// The snapshot generation handoffs are stamped with.
    stamp: u16,
}

impl<P: Port> Egress for Out<'_, P> {
    #[inline]
    fn send(
        &mut self,
        area: &FrameArea,
        port: PortId,
        frames: &mut Vec<FrameRef>,
        owners: &[Owner],
    ) -> usize {
        match self.routes.get(port.index()) {
            Some(&Route::Local(s)) => match self.sockets.get_mut(s) {
                Some(s) if !s.down => s.driver.tx(area, frames),
                _ => 0,
            },
            Some(&Route::Peer(w)) => {
                let Some(Some(link)) = self.peers.get_mut(w) else { return 0 };
                let stamp = self.stamp;
                let n = link.frames.room_for(frames.len());
                for (frame, o) in frames.drain(..n).zip(owners) {
                    let (tenant, ingress) = (o.tenant, o.ingress);
                    let pushed =
                        link.frames.push(Handoff { frame, port, tenant, ingress, stamp }.encode());
                    debug_assert!(pushed, "room was checked");
                }
                link.frames.publish();
                n
            }
            _ => 0,
        }
    }

    #[inline]
    fn counts_tx(&self, port: PortId) -> bool {
        matches!(self.routes.get(port.index()), Some(Route::Local(_)))
    }

    #[inline]
    fn reachable(&self, port: PortId) -> bool {
        matches!(self.routes.get(port.index()), Some(Route::Local(_) | Route::Peer(_)))
    }
}

/// A worker: its sockets, its share of frames, its links to the other workers and its
/// pipeline.
#[derive(Debug)]
pub struct Worker<P: Port> {
    area: FrameArea,
    pool: FramePool,
    sockets: Vec<Socket<P>>,
    routes: Vec<Route>,
    /// Per port, a worker that polls one of its sockets (frames for it go there when this
    /// worker has none).
    owners: Vec<Option<usize>>,
    links: Links,
    pipeline: Pipeline,
    snap: Arc<Snapshot>,
    batch: Batch,
    disp: Dispositions,
    tx: TxLists,
    next_age: Nanos,
    batch_sizes: [u64; 8],
    /// Frames in those batches, by the same buckets (a histogram's sum is of the sizes seen).
    batch_frames: [u64; 8],
    /// Consecutive breaths without RX because of backpressure.
    paused: u32,
    /// Stopping: breathe without receiving, to send what is queued.
    draining: bool,
    /// Frames written off with sockets whose device vanished.
    written_off: u32,
    /// What an idle worker waits on.
    waiter: Waiter,
}

impl<P: Port> Worker<P> {
    /// A lone worker over `ports` (indexed by `PortId`) and every frame of `area`.
    pub fn new(area: FrameArea, ports: Vec<P>, snap: Arc<Snapshot>) -> Self {
        let links = Links::alone(area.chunks());
        let sockets = ports.into_iter().enumerate().map(|(i, p)| (PortId(i as u16), p)).collect();
        let owners: Vec<Option<usize>> = snap.ports.iter().map(|_| Some(0)).collect();
        Self::in_mesh(area, sockets, links, &owners, snap)
    }

    /// Worker `links.me` of several: `sockets` are its (port, queue) sockets, `owners[p]` a
    /// worker that has a socket of port `p` (frames for ports it lacks go there). It owns the
    /// chunks `links.shares` gives it.
    pub fn in_mesh(
        area: FrameArea,
        sockets: Vec<(PortId, P)>,
        links: Links,
        owners: &[Option<usize>],
        snap: Arc<Snapshot>,
    ) -> Self {
        let pipeline = Pipeline::new(&snap);
        Self::in_mesh_with(area, sockets, links, owners, snap, pipeline)
    }

    /// [`Worker::in_mesh`] around a pipeline made beforehand for `snap` (its tables are the
    /// costly part: a takeover makes them before it stops the old process's workers).
    pub fn in_mesh_with(
        area: FrameArea,
        sockets: Vec<(PortId, P)>,
        links: Links,
        owners: &[Option<usize>],
        snap: Arc<Snapshot>,
        mut pipeline: Pipeline,
    ) -> Self {
        let pool = FramePool::range(&area, links.shares.range(links.me));
        let sockets: Vec<Socket<P>> = sockets
            .into_iter()
            .map(|(port, driver)| Socket { port, queue: driver.queue(), driver, down: false })
            .collect();
        if links.has_peers() {
            pipeline.announce_to_peers();
        }
        let mut w = Worker {
            pipeline,
            tx: TxLists::new(snap.ports.len(), 4 * BATCH_SIZE),
            area,
            pool,
            sockets,
            routes: Vec::new(),
            owners: owners.to_vec(),
            links,
            snap,
            batch: Batch::new(),
            disp: Dispositions::default(),
            next_age: Nanos::ZERO,
            batch_sizes: [0; 8],
            batch_frames: [0; 8],
            paused: 0,
            draining: false,
            written_off: 0,
            waiter: Waiter::default(),
        };
        w.route();
        w.schedule_ports();
        w
    }

    /// How each port is reached: through a socket of this worker's, else through the worker
    /// that owns it. Rebuilt when sockets or owners change (between breaths).
    fn route(&mut self) {
        let (sockets, me) = (&self.sockets, self.links.me);
        let n = self.snap.ports.len().max(self.owners.len());
        self.routes = (0..n)
            .map(|p| match sockets.iter().position(|s| s.port.index() == p) {
                Some(i) => Route::Local(i),
                None => match self.owners.get(p).copied().flatten() {
                    Some(w) if w != me => Route::Peer(w),
                    _ => Route::Unreachable,
                },
            })
            .collect();
    }

    /// One pass over every socket. Returns the number of frames received.
    pub fn poll(&mut self, now: Nanos) -> usize {
        if self.links.has_peers() {
            self.take_inbox(now);
        }
        let mut received = 0;
        let mut held_back = false;
        for i in 0..self.sockets.len() {
            let port = self.sockets[i].port;
            self.sockets[i].driver.reclaim(&self.area, &mut self.pool);
            if self.sockets[i].down {
                // Nothing arrives on a vanished device; what waits for it is dropped.
                self.tx.discard(
                    port,
                    DropReason::PortDown,
                    &mut self.pipeline.counters,
                    &self.area,
                    &mut self.pool,
                );
                continue;
            }
            // Up to a few batches per socket and breath, while batches come in full: under load
            // this drains a burst in one visit without starving the other sockets.
            for _ in 0..BATCHES_PER_VISIT {
                // Backpressure: while some egress list is three quarters full (less room than
                // one batch could add to it), receive nothing more; the kernel's RX rings hold
                // or drop the excess, counted in their statistics, rather than the switch taking
                // frames only to drop them as `tx_full`. For a bounded number of breaths, so one
                // port that never drains cannot stop the others.
                let (fullest, cap) = self.tx.fullest();
                if self.draining {
                    break;
                }
                if fullest + BATCH_SIZE > cap && self.paused < MAX_PAUSED_BREATHS {
                    held_back = true;
                    break;
                }
                self.batch.reset(port);
                let n = self.sockets[i].driver.rx(&mut self.area, &mut self.pool, &mut self.batch);
                for _ in 0..self.sockets[i].driver.take_rx_drops() {
                    self.pipeline.counters.drop(port, None, DropReason::TooBig);
                }
                if n == 0 {
                    break;
                }
                received += n;
                // Batch sizes by power of two: 1, 2-3, 4-7, ... 64.
                let bucket = (usize::BITS - 1 - n.leading_zeros()) as usize & 7;
                self.batch_sizes[bucket] += 1;
                self.batch_frames[bucket] += n as u64;
                let mut out = Out {
                    sockets: &mut self.sockets,
                    routes: &self.routes,
                    peers: &mut self.links.out,
                    stamp: self.snap.generation as u16,
                };
                self.pipeline.run(
                    now,
                    &self.snap,
                    &mut self.area,
                    &mut self.pool,
                    &mut self.batch,
                    &mut self.disp,
                    &mut self.tx,
                    &mut out,
                );
                if n < BATCH_SIZE {
                    break;
                }
            }
        }
        self.paused = if held_back { self.paused + 1 } else { 0 };
        // Frames a full ring could not take get another chance after the completions above.
        if self.tx.total_pending() > 0 {
            let mut out = Out {
                sockets: &mut self.sockets,
                routes: &self.routes,
                peers: &mut self.links.out,
                stamp: self.snap.generation as u16,
            };
            self.tx.flush(&mut out, &mut self.pipeline.counters, &self.area, &mut self.pool, now);
        }
        if self.links.has_peers() {
            self.tell_peers();
        }
        let breath = if received == 0 { Breath::Idle } else { Breath::Received };
        for s in self.sockets.iter_mut().filter(|s| !s.down) {
            if !s.driver.kick(breath) {
                self.pipeline.counters.kick_errors += 1;
            }
        }
        if now >= self.next_age {
            self.pipeline.age(now);
            self.next_age = now.add(AGE_INTERVAL);
        }
        self.pipeline.sweep_flows(now);
        debug_assert!(
            self.links.has_peers() || self.census().balanced(),
            "frame accounting: {:?}",
            self.census()
        );
        received
    }

    /// Takes what the other workers sent: chunks coming home, MACs they learned, frames for
    /// this worker's sockets.
    fn take_inbox(&mut self, now: Nanos) {
        for inbox in self.links.inbox.iter_mut().flatten() {
            let (pool, area) = (&mut self.pool, &self.area);
            inbox.returns.pop(usize::MAX, |m| pool.free_addr(m[0]));
            let pipeline = &mut self.pipeline;
            inbox.learns.pop(LEARNS_PER_BREATH, |m| pipeline.learn_remote(now, decode_learn(m)));
            inbox.conns.pop(LEARNS_PER_BREATH, |m| pipeline.policy.conns.apply(now, m));
            let (tx, c, snap) = (&mut self.tx, &mut self.pipeline.counters, &self.snap);
            // Only as many as the TX lists take: the rest wait in the ring (and, when it is
            // full, in the sender's lists), instead of being dropped here.
            inbox.frames.pop_while(usize::MAX, |m| {
                let h = Handoff::decode(m);
                if h.is_stale(snap.port_since(h.port)) {
                    // For a port a reload removed (its id vacant or given to another).
                    c.drop(h.ingress, None, DropReason::PortDown);
                    pool.free(area, h.frame);
                    return true;
                }
                if !tx.has_room(h.port) {
                    // Left on the ring (`false` does not pop it): the frame stays the ring's.
                    return false;
                }
                let len = h.frame.len();
                match tx.push(h.port, h.frame, h.tenant, h.ingress, now) {
                    Ok(q) => q.count(c, h.tenant, len),
                    Err((r, f)) => {
                        c.drop(h.ingress, Some(h.tenant), r);
                        pool.free(area, f);
                    }
                }
                true
            });
        }
        let mut out = Out {
            sockets: &mut self.sockets,
            routes: &self.routes,
            peers: &mut self.links.out,
            stamp: self.snap.generation as u16,
        };
        self.tx.flush(&mut out, &mut self.pipeline.counters, &self.area, &mut self.pool, now);
    }

    /// Applies every MAC announcement and connection the other workers sent so far, however
    /// many (between breaths, before a snapshot change: what they learned under the old
    /// snapshot is applied under it, never under a new one that may have given its ids to
    /// others; the control plane changes snapshots only once every worker runs the last one).
    fn take_messages(&mut self, now: Nanos) {
        for inbox in self.links.inbox.iter_mut().flatten() {
            let pipeline = &mut self.pipeline;
            inbox.learns.pop(usize::MAX, |m| pipeline.learn_remote(now, decode_learn(m)));
            inbox.conns.pop(usize::MAX, |m| pipeline.policy.conns.apply(now, m));
        }
    }

    /// An idle worker's sleep: every fill ring topped up (the most room to receive into while
    /// nobody polls), then a wait in `poll` on the sockets and this worker's bell until a frame
    /// arrives, another worker hands frames over, or [`IDLE_WAIT`] passes. When some port
    /// cannot wake it, it sleeps `step` instead. Not when frames from other workers wait.
    fn wait(&mut self, step: Duration) {
        self.waiter.clear();
        let mut wakes = true;
        for s in self.sockets.iter_mut().filter(|s| !s.down) {
            s.driver.fill_up(&mut self.pool);
            match s.driver.wait_fd() {
                Some(fd) => self.waiter.add(fd),
                None => wakes = false,
            }
        }
        let bell = self.links.bell();
        if let Some(b) = bell {
            b.arm();
            if self.links.frames_waiting() {
                b.disarm();
                return;
            }
            match b.fd() {
                Some(fd) => self.waiter.add(fd),
                None => wakes = false,
            }
        }
        if wakes {
            self.waiter.wait(IDLE_WAIT);
        } else {
            std::thread::sleep(step);
        }
        if let Some(b) = bell {
            b.disarm();
        }
    }

    /// Sends this breath's announcements to every other worker and other workers' chunks home.
    fn tell_peers(&mut self) {
        let mut lost = 0;
        for a in self.pipeline.announcements() {
            let m = encode_learn(&a);
            for link in self.links.out.iter_mut().flatten() {
                if !link.learns.push(m) {
                    lost += 1;
                }
            }
        }
        self.pipeline.counters.fdb.unannounced += lost;
        let mut lost = 0;
        for m in self.pipeline.policy.conns.take_outbox() {
            for link in self.links.out.iter_mut().flatten() {
                if !link.conns.push(m) {
                    lost += 1;
                }
            }
        }
        self.pipeline.policy.conns.stats.unannounced += lost;
        let (shares, out) = (self.links.shares, &mut self.links.out);
        let area = &self.area;
        self.pool.take_foreign(|addr| {
            let owner = shares.owner(area.chunk_index(addr));
            match out.get_mut(owner) {
                Some(Some(link)) => link.returns.push([addr, 0]),
                // Cannot happen (only other workers' chunks are set aside); keep it rather
                // than lose it.
                _ => false,
            }
        });
        for link in self.links.out.iter_mut().flatten() {
            link.learns.publish();
            link.conns.publish();
            link.returns.publish();
        }
        self.links.ring_sleepers();
    }

    /// Breathes until `stop` is set, following `idle`; accounts busy and idle time (two clock
    /// reads per breath, none per packet).
    pub fn run(&mut self, clock: &impl Clock, idle: IdlePolicy, stop: &AtomicBool) -> LoopStats {
        self.run_reporting(clock, idle, stop, Nanos::from_secs(3600), |_, _| {})
    }

    /// [`Worker::run`], calling `report` between breaths every `every` (and once at the end)
    /// so the caller can publish this worker's figures. Whatever `report` does (a lock, a
    /// syscall for socket statistics) happens a few times a second, never per packet.
    pub fn run_reporting(
        &mut self,
        clock: &impl Clock,
        idle: IdlePolicy,
        stop: &AtomicBool,
        every: Nanos,
        mut report: impl FnMut(&mut Self, &LoopStats),
    ) -> LoopStats {
        let mut st = LoopStats::default();
        let mut next_report = clock.now().add(every);
        let mut empty = 0u32;
        let mut t0 = clock.now();
        while !stop.load(Ordering::Relaxed) {
            let n = self.poll(t0);
            let mut waited = false;
            if n > 0 {
                empty = 0;
            } else if idle == IdlePolicy::Adaptive {
                empty = empty.saturating_add(1);
                if empty > IDLE_SPIN {
                    let us = (empty - IDLE_SPIN).min(IDLE_MAX_SLEEP_US);
                    self.wait(Duration::from_micros(u64::from(us)));
                    waited = true;
                }
            }
            let t1 = clock.now();
            let took = t1.since(t0);
            // A wait is no stall: the fill rings were topped up before it.
            if took > STALL_BOUNDS[0] && !waited {
                st.stall(took);
            }
            if n > 0 {
                st.busy_polls += 1;
                st.busy = st.busy.add(t1.since(t0));
                st.packets += n as u64;
            } else {
                st.idle_polls += 1;
                st.idle = st.idle.add(t1.since(t0));
            }
            t0 = t1;
            if t1 >= next_report {
                report(self, &st);
                next_report = t1.add(every);
                t0 = clock.now();
                // Nobody polls while the report runs either.
                if t0.since(t1) > STALL_BOUNDS[0] {
                    st.stall(t0.since(t1));
                }
            }
        }
        report(self, &st);
        st
    }

    /// After [`Worker::run`]: keeps breathing without receiving until everything queued has been
    /// sent and completed (TX lists, handoffs, TX rings) or `limit` has passed, so a clean stop
    /// does not throw away frames the switch already accepted. Returns what is still queued.
    /// With other workers, call it once every worker has stopped receiving (no frame is handed
    /// over after that), so that each sends what the others handed it before it stops.
    pub fn drain(&mut self, clock: &impl Clock, limit: Duration) -> usize {
        self.draining = true;
        let end = clock.now().add(Nanos(limit.as_nanos() as u64));
        // Frames handed to other workers count until they take them (they send them in their
        // own drain); chunks going home do not (nothing is sent for them, and a peer that
        // has finished no longer takes them: `hand_over` and the census find them there).
        let queued = |w: &Self| {
            let c = w.census();
            let handed: usize = w.links.out.iter().flatten().map(|l| l.frames.len()).sum();
            c.pending as usize + (c.ports.tx + c.ports.completion) as usize + handed
        };
        // Also bounded in breaths, so a clock that does not move cannot keep it here.
        for _ in 0..MAX_DRAIN_BREATHS {
            let now = clock.now();
            self.poll(now);
            if queued(self) == 0 || now >= end {
                break;
            }
            std::thread::yield_now();
        }
        queued(self)
    }

    /// After the worker stopped, with every other worker of the mesh stopped too: gives up
    /// its sockets for another process to poll (a takeover) and says which chunks it held
    /// free. Frames other workers handed it to send, and frames still waiting in its TX lists
    /// (none after [`Worker::drain`] unless a port could not take them), are dropped as
    /// `port_down` and counted; chunks coming home, and other workers' chunks set aside here,
    /// are free. Every chunk of the area is then either in the returned list or given to a
    /// socket's rings (its census says how many), each once across all the workers.
    pub fn hand_over(&mut self) -> (Vec<(PortId, P)>, Vec<u64>) {
        // First, the most room for what arrives until the other process polls.
        for s in self.sockets.iter_mut().filter(|s| !s.down) {
            // A packet half received cannot be handed over: its frames are freed and it is
            // dropped (the other process skips the rest of it: `XskPort::skipping`).
            if s.driver.drop_partial(&self.area, &mut self.pool) {
                self.pipeline.counters.drop(s.port, None, DropReason::PortDown);
            }
            s.driver.fill_up(&mut self.pool);
        }
        for inbox in self.links.inbox.iter_mut().flatten() {
            let (pool, c, area) = (&mut self.pool, &mut self.pipeline.counters, &self.area);
            inbox.returns.pop(usize::MAX, |m| pool.free_addr(m[0]));
            inbox.frames.pop_while(usize::MAX, |m| {
                let h = Handoff::decode(m);
                c.drop(h.ingress, None, DropReason::PortDown);
                pool.free(area, h.frame);
                true
            });
        }
        for p in 0..self.snap.ports.len() {
            let id = PortId(p as u16);
            let c = &mut self.pipeline.counters;
            self.tx.discard(id, DropReason::PortDown, c, &self.area, &mut self.pool);
        }
        for (f, _) in self.batch.take_frames() {
            self.pool.free(&self.area, f);
        }
        let mut free = Vec::with_capacity(self.pool.len() + self.pool.foreign_len());
        while let Some(a) = self.pool.alloc() {
            free.push(a);
        }
        self.pool.take_foreign(|a| {
            free.push(a);
            true
        });
        let sockets = std::mem::take(&mut self.sockets);
        self.route();
        (sockets.into_iter().map(|s| (s.port, s.driver)).collect(), free)
    }

    /// Before the first breath of a worker that takes over from another process: its pool
    /// holds exactly `free` (the chunks of its share that process held free; the others are
    /// in the sockets' rings it is given, and come back through them).
    pub fn take_free(&mut self, free: impl Iterator<Item = u64>) {
        while self.pool.alloc().is_some() {}
        for a in free {
            self.pool.free_addr(a);
        }
    }

    /// Adopts a new snapshot between breaths; returns the old one so that the caller, not the
    /// poll loop, pays for freeing it. What other workers announced is applied first, under
    /// the old snapshot; frames waiting for a port the new one removed (or gave its id to
    /// another) are dropped as `port_down`.
    pub fn install(&mut self, now: Nanos, snap: Arc<Snapshot>) -> Arc<Snapshot> {
        if self.links.has_peers() {
            self.take_messages(now);
        }
        for (i, p) in self.snap.ports.iter().enumerate() {
            let id = PortId(i as u16);
            if !p.is_vacant() && snap.port_since(id) != p.since {
                self.tx.discard(
                    id,
                    DropReason::PortDown,
                    &mut self.pipeline.counters,
                    &self.area,
                    &mut self.pool,
                );
            }
        }
        self.pipeline.install(&snap);
        self.tx.resize(snap.ports.len());
        let old = std::mem::replace(&mut self.snap, snap);
        // A port added by the new snapshot has no socket yet: nothing reaches it until one
        // comes ([`WorkerCmd::AddSocket`], [`WorkerCmd::Plan`]).
        self.route();
        self.schedule_ports();
        old
    }

    /// Applies one command of the control plane, between breaths.
    pub fn apply(&mut self, now: Nanos, cmd: WorkerCmd<P>) -> Applied<P> {
        match cmd {
            WorkerCmd::Install(snap) => Applied::Replaced(self.install(now, snap)),
            WorkerCmd::Overlay(map) => {
                Applied::MapReplaced(self.pipeline.set_overlay(&self.snap, map))
            }
            WorkerCmd::AddSocket { port, driver } => {
                let queue = driver.queue();
                // A port with a socket here is reached through it, whoever else polls it.
                self.sockets.push(Socket { port, queue, driver: *driver, down: false });
                self.route();
                self.schedule_ports();
                Applied::Done
            }
            WorkerCmd::RemoveSocket { port, queue } => match self.take_socket(port, queue) {
                Some((driver, lost)) => Applied::Removed { driver: Box::new(driver), lost },
                None => Applied::NoSuchSocket,
            },
            WorkerCmd::SocketDown { port, queue } => match self.socket_index(port, queue) {
                Some(i) => {
                    self.socket_down(i);
                    Applied::Done
                }
                None => Applied::NoSuchSocket,
            },
            WorkerCmd::ReplaceSocket { port, driver } => {
                match self.socket_index(port, driver.queue()) {
                    Some(i) => {
                        let (old, lost) = self.swap_socket(i, *driver);
                        Applied::Removed { driver: Box::new(old), lost }
                    }
                    None => Applied::NoSuchSocket,
                }
            }
            WorkerCmd::Plan { owners, shares } => {
                self.owners = owners;
                self.route();
                // Rebuilds the schedulers once, for the routes and the shares together.
                self.share_rates(shares);
                Applied::Done
            }
        }
    }

    /// The index of the socket of (`port`, `queue`).
    fn socket_index(&self, port: PortId, queue: u32) -> Option<usize> {
        self.sockets.iter().position(|s| s.port == port && s.queue == queue)
    }

    /// Takes the socket of (`port`, `queue`) out (its port was removed by a reload; its XDP
    /// program is detached already, so nothing new arrives): what it received is dropped as
    /// `port_down`, what it sends gets a few breaths' worth of kicks to complete, then it
    /// gives every frame back it can; the rest are written off (returned with the driver).
    /// Frames read from it now count as received on the port and dropped as `port_down`.
    fn take_socket(&mut self, port: PortId, queue: u32) -> Option<(P, u32)> {
        let i = self.socket_index(port, queue)?;
        let mut s = self.sockets.remove(i);
        // Bounded: copy mode completes a kicked frame within the `sendto`.
        for _ in 0..RETIRE_KICKS {
            s.driver.reclaim(&self.area, &mut self.pool);
            if s.driver.census().tx == 0 {
                break;
            }
            s.driver.kick(Breath::Idle);
        }
        loop {
            self.batch.reset(port);
            let n = s.driver.rx(&mut self.area, &mut self.pool, &mut self.batch);
            // Received (counted so), and dropped: the port is going.
            let c = &mut self.pipeline.counters;
            for (f, _) in self.batch.take_frames() {
                if let Some(rx) = c.port_rx.get_mut(port.index()) {
                    rx.add(f.len());
                }
                c.drop(port, None, DropReason::PortDown);
                self.pool.free(&self.area, f);
            }
            if n == 0 {
                break;
            }
        }
        let lost = s.driver.retire(&self.area, &mut self.pool);
        self.written_off += lost;
        // Without a socket here the port is reached through its owner, if another worker
        // polls it (this worker as owner means nobody: `route` makes it unreachable).
        self.route();
        if !matches!(self.routes.get(port.index()), Some(Route::Local(_))) {
            self.tx.discard(
                port,
                DropReason::PortDown,
                &mut self.pipeline.counters,
                &self.area,
                &mut self.pool,
            );
        }
        self.schedule_ports();
        Some((s.driver, lost))
    }

    /// Tells the worker how many workers send on each port (a port with several queues is
    /// polled by several): each enforces that part of the port's and its tenants' rates.
    pub fn share_rates(&mut self, workers_per_port: Vec<u64>) {
        self.pipeline.share_rates(&self.snap, workers_per_port);
        self.schedule_ports();
    }

    /// (Re)builds the egress schedulers of the ports this worker sends on; frames queued in
    /// the old ones that the new ones cannot take are dropped as `queue_full`.
    fn schedule_ports(&mut self) {
        let (routes, shares) = (&self.routes, self.pipeline.rate_shares());
        let local = |p: PortId| matches!(routes.get(p.index()), Some(Route::Local(_)));
        let share = |p: PortId| shares.get(p.index()).copied().unwrap_or(1);
        for (f, t, ingress) in self.tx.schedule(&self.snap, local, share, Nanos::ZERO) {
            self.pipeline.counters.drop(ingress, Some(t), DropReason::QueueFull);
            self.pool.free(&self.area, f);
        }
    }

    /// Where this worker's frames are.
    pub fn census(&self) -> FrameCensus {
        let mut ports = PortCensus::default();
        for s in &self.sockets {
            let c = s.driver.census();
            ports.fill += c.fill;
            ports.rx += c.rx;
            ports.tx += c.tx;
            ports.completion += c.completion;
        }
        let handoff: usize = self
            .links
            .out
            .iter()
            .flatten()
            .map(|l| l.frames.sum_unread(Handoff::chunks) + l.returns.len())
            .sum();
        FrameCensus {
            free: self.pool.len() as u32,
            ports,
            pending: self.tx.pending_chunks() as u32,
            returning: self.pool.foreign_len() as u32,
            handoff: handoff as u32,
            lost: self.written_off,
            total: self.area.chunks(),
        }
    }

    /// Socket `i` lost its device: from now on nothing is received on it or sent to it, and
    /// frames for its port are dropped as `port_down`.
    fn socket_down(&mut self, i: usize) {
        if let Some(s) = self.sockets.get_mut(i) {
            s.down = true;
            let port = s.port;
            self.tx.discard(
                port,
                DropReason::PortDown,
                &mut self.pipeline.counters,
                &self.area,
                &mut self.pool,
            );
        }
    }

    /// Whether the socket of (`port`, `queue`) is down (its device is gone).
    pub fn is_down(&self, port: PortId, queue: u32) -> bool {
        self.socket_index(port, queue).is_some_and(|i| self.sockets[i].down)
    }

    /// Socket `i`'s device is back: `new` takes its place (up). The old socket gives back what
    /// frames it can; those the kernel kept with the vanished device are written off in the
    /// census. The old socket and that count are returned (closing it is the caller's).
    fn swap_socket(&mut self, i: usize, new: P) -> (P, u32) {
        let s = &mut self.sockets[i];
        let mut old = std::mem::replace(&mut s.driver, new);
        s.down = false;
        let lost = old.retire(&self.area, &mut self.pool);
        self.written_off += lost;
        (old, lost)
    }

    /// Frames waiting in `tenant`'s egress queues on this worker's ports, and their room.
    pub fn tx_queue_depth(&self, tenant: TenantId) -> (usize, usize) {
        self.tx.queue_depth(tenant)
    }

    /// Received batches by size: entry `i` counts batches of `2^i ..= 2^(i+1) - 1` frames.
    pub fn batch_sizes(&self) -> &[u64; 8] {
        &self.batch_sizes
    }

    /// Frames received in the batches of each bucket of [`Worker::batch_sizes`].
    pub fn batch_frames(&self) -> &[u64; 8] {
        &self.batch_frames
    }

    /// The decision trace of `frame` arriving on `port` at `now` (`ctl trace`): the frame is
    /// copied into a chunk of this worker's pool and run through the real stages with
    /// learning, caching, connections and counting off ([`Pipeline::process_dry`]); the chunk
    /// goes back to the pool. None when no chunk is free or the frame does not fit one.
    /// Between breaths (it allocates).
    pub fn trace(&mut self, now: Nanos, port: PortId, frame: &[u8]) -> Option<FrameTrace> {
        let f = self.pool.copy_in(&mut self.area, frame)?;
        // The worker's own batch, empty between breaths.
        self.batch.reset(port);
        if let Err(f) = self.batch.push(f) {
            self.pool.free(&self.area, f);
            return None;
        }
        self.pipeline.process_dry(now, &self.snap, &self.area, &mut self.batch, &mut self.disp);
        for (f, _) in self.batch.take_frames() {
            self.pool.free(&self.area, f);
        }
        self.pipeline.traced(0).copied()
    }

    /// The pipeline (counters, MAC table).
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The pipeline, to change what it taps (capture); not for the packet path.
    pub fn pipeline_mut(&mut self) -> &mut Pipeline {
        &mut self.pipeline
    }

    /// The installed snapshot.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snap
    }

    /// The sockets: their port and driver.
    pub fn sockets_mut(&mut self) -> impl Iterator<Item = (PortId, &mut P)> {
        self.sockets.iter_mut().map(|s| (s.port, &mut s.driver))
    }

    /// How this worker reaches each port.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Double frees the pool refused (always zero unless there is a bug).
    pub fn double_frees(&self) -> u64 {
        self.pool.double_frees
    }
}

impl Worker<crate::port::mem::MemPort> {
    /// Queues `bytes` for reception on `port`. False if no frame is free or it is too large.
    pub fn inject(&mut self, port: PortId, bytes: &[u8]) -> bool {
        match self.sockets.iter_mut().find(|s| s.port == port) {
            Some(s) => s.driver.inject(&mut self.area, &mut self.pool, bytes),
            None => false,
        }
    }

    /// [`Worker::inject`], marked a large TCP segment ([`crate::port::mem::MemPort::inject_gso`]).
    pub fn inject_gso(&mut self, port: PortId, bytes: &[u8], g: crate::frame::Gso) -> bool {
        match self.sockets.iter_mut().find(|s| s.port == port) {
            Some(s) => s.driver.inject_gso(&mut self.area, &mut self.pool, bytes, g),
            None => false,
        }
    }

    /// Takes what `port` sent (through this worker's sockets).
    pub fn take_sent(&mut self, port: PortId) -> Vec<Vec<u8>> {
        let mut sent = Vec::new();
        for s in self.sockets.iter_mut().filter(|s| s.port == port) {
            sent.extend(s.driver.take_sent(&self.area));
        }
        sent
    }
}
