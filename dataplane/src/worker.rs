//! The poll loop body: the only place that composes clock, ports and pipeline.
//!
//! One [`Worker::poll`] is one "breath": for every port, return completed TX frames to the pool,
//! receive a batch, run the pipeline on it and hand the TX lists to the ports; then retry what
//! full TX rings refused and kick the ports. A new
//! snapshot is adopted only between breaths ([`Worker::install`]), so a batch is always switched
//! against one consistent configuration.
//!
//! # Frame accounting
//! Every chunk of the area is, at every breath boundary, either in the pool, held by a port
//! (fill, RX, TX, completion) or waiting in a TX list. [`Worker::census`] adds them up; debug builds assert after every
//! breath that the sum equals the number of chunks, so a leaked or doubly-owned frame fails the
//! first test that causes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::batch::Batch;
use crate::pipeline::{Dispositions, Pipeline, TxLists};
use crate::port::{Breath, FrameArea, FramePool, Port, PortCensus};
use crate::snapshot::{PortId, Snapshot};
use crate::time::{Clock, Nanos};

/// Most batches taken from one port in one breath.
const BATCHES_PER_VISIT: usize = 4;

/// How often the MAC table is swept for expired entries.
const AGE_INTERVAL: Nanos = Nanos::from_millis(250);

/// What a worker does when a breath finds no traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdlePolicy {
    /// Poll again at once: lowest latency, one core at 100 %.
    Busy,
    /// After a run of empty breaths, sleep a little, longer the longer it stays idle (up to
    /// 500 µs), so an idle switch does not burn a core.
    Adaptive,
}

/// Empty breaths before an adaptive worker starts sleeping.
const IDLE_SPIN: u32 = 256;
/// Longest adaptive sleep, in microseconds.
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
}

impl LoopStats {
    /// Busy nanoseconds per received frame.
    pub fn busy_ns_per_packet(&self) -> f64 {
        if self.packets == 0 { 0.0 } else { self.busy.0 as f64 / self.packets as f64 }
    }
}

/// Where every frame of the area is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameCensus {
    /// In the free list.
    pub free: u32,
    /// Held by ports, by state.
    pub ports: PortCensus,
    /// Waiting in TX lists for room in a TX ring.
    pub pending: u32,
    /// Chunks in the area.
    pub total: u32,
}

impl FrameCensus {
    /// True when every frame is accounted for exactly once.
    pub fn balanced(&self) -> bool {
        self.free + self.ports.total() + self.pending == self.total
    }
}

/// A worker: its ports, its share of frames and its pipeline.
#[derive(Debug)]
pub struct Worker<P: Port> {
    area: FrameArea,
    pool: FramePool,
    ports: Vec<P>,
    pipeline: Pipeline,
    snap: Arc<Snapshot>,
    batch: Batch,
    disp: Dispositions,
    tx: TxLists,
    next_age: Nanos,
}

impl<P: Port> Worker<P> {
    /// A worker over `ports` (indexed by `PortId`) and the frames of `area`.
    pub fn new(area: FrameArea, ports: Vec<P>, snap: Arc<Snapshot>) -> Self {
        let pool = FramePool::new(&area);
        Worker {
            pipeline: Pipeline::new(&snap),
            tx: TxLists::new(ports.len(), 4 * crate::batch::BATCH_SIZE),
            area,
            pool,
            ports,
            snap,
            batch: Batch::new(),
            disp: Dispositions::default(),
            next_age: Nanos::ZERO,
        }
    }

    /// One pass over every port. Returns the number of frames received.
    pub fn poll(&mut self, now: Nanos) -> usize {
        let mut received = 0;
        for i in 0..self.ports.len() {
            let port = PortId(i as u16);
            self.ports[i].reclaim(&mut self.pool);
            // Up to a few batches per port and breath, while batches come in full: under load
            // this drains a burst in one visit without starving the other ports.
            for _ in 0..BATCHES_PER_VISIT {
                self.batch.reset(port);
                let n = self.ports[i].rx(&mut self.pool, &mut self.batch);
                if n == 0 {
                    break;
                }
                received += n;
                self.pipeline.run(
                    now,
                    &self.snap,
                    &mut self.area,
                    &mut self.pool,
                    &mut self.batch,
                    &mut self.disp,
                    &mut self.tx,
                    &mut self.ports,
                );
                if n < crate::batch::BATCH_SIZE {
                    break;
                }
            }
        }
        // Frames a full TX ring could not take get another chance after the completions above.
        if self.tx.total_pending() > 0 {
            self.tx.flush(&mut self.ports, &mut self.pipeline.counters);
        }
        let breath = if received == 0 { Breath::Idle } else { Breath::Received };
        for p in &mut self.ports {
            if !p.kick(breath) {
                self.pipeline.counters.kick_errors += 1;
            }
        }
        if now >= self.next_age {
            self.pipeline.age(now);
            self.next_age = now.add(AGE_INTERVAL);
        }
        debug_assert!(self.census().balanced(), "frame accounting: {:?}", self.census());
        received
    }

    /// Breathes until `stop` is set, following `idle`; accounts busy and idle time (two clock
    /// reads per breath, none per packet).
    pub fn run(&mut self, clock: &impl Clock, idle: IdlePolicy, stop: &AtomicBool) -> LoopStats {
        let mut st = LoopStats::default();
        let mut empty = 0u32;
        let mut t0 = clock.now();
        while !stop.load(Ordering::Relaxed) {
            let n = self.poll(t0);
            if n > 0 {
                empty = 0;
            } else if idle == IdlePolicy::Adaptive {
                empty = empty.saturating_add(1);
                if empty > IDLE_SPIN {
                    let us = (empty - IDLE_SPIN).min(IDLE_MAX_SLEEP_US);
                    std::thread::sleep(Duration::from_micros(u64::from(us)));
                }
            }
            let t1 = clock.now();
            if n > 0 {
                st.busy_polls += 1;
                st.busy = st.busy.add(t1.since(t0));
                st.packets += n as u64;
            } else {
                st.idle_polls += 1;
                st.idle = st.idle.add(t1.since(t0));
            }
            t0 = t1;
        }
        st
    }

    /// Adopts a new snapshot between breaths; returns the old one so that the caller, not the
    /// poll loop, pays for freeing it.
    pub fn install(&mut self, snap: Arc<Snapshot>) -> Arc<Snapshot> {
        self.pipeline.install(&snap);
        self.tx.resize(snap.ports.len());
        std::mem::replace(&mut self.snap, snap)
    }

    /// Where every frame is.
    pub fn census(&self) -> FrameCensus {
        let mut ports = PortCensus::default();
        for p in &self.ports {
            let c = p.census();
            ports.fill += c.fill;
            ports.rx += c.rx;
            ports.tx += c.tx;
            ports.completion += c.completion;
        }
        FrameCensus {
            free: self.pool.len() as u32,
            ports,
            pending: self.tx.total_pending() as u32,
            total: self.area.chunks(),
        }
    }

    /// The pipeline (counters, MAC table).
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The installed snapshot.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snap
    }

    /// The port drivers.
    pub fn ports_mut(&mut self) -> &mut [P] {
        &mut self.ports
    }

    /// Double frees the pool refused (always zero unless there is a bug).
    pub fn double_frees(&self) -> u64 {
        self.pool.double_frees
    }
}

impl Worker<crate::port::mem::MemPort> {
    /// Queues `bytes` for reception on `port`. False if no frame is free or it is too large.
    pub fn inject(&mut self, port: PortId, bytes: &[u8]) -> bool {
        match self.ports.get_mut(port.index()) {
            Some(p) => p.inject(&mut self.area, &mut self.pool, bytes),
            None => false,
        }
    }

    /// Takes what `port` sent.
    pub fn take_sent(&mut self, port: PortId) -> Vec<Vec<u8>> {
        match self.ports.get_mut(port.index()) {
            Some(p) => p.take_sent(&self.area),
            None => Vec::new(),
        }
    }
}
