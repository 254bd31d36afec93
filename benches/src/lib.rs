//! Shared helpers for the benches: a synthetic multi-tenant switch and prebuilt batches.
//!
//! The layout: two trunk ports, A and B; tenant `i` has VLAN `i + 1` on both. Hosts of each
//! tenant sit behind B (destinations, learned beforehand) and behind A (sources). Traffic is
//! 64-byte IPv4/UDP frames from A to B, all destinations known, so the measured path is parse,
//! tenant lookup, MAC learning of the source, MAC lookup of the destination, VLAN rewrite and
//! the TX hand-off: L2 forwarding, the common case.

pub mod overlay;

use dataplane::batch::{BATCH_SIZE, Batch, FrameRef};
use dataplane::pipeline::{Dispositions, Pipeline, TxLists};
use dataplane::policy::acl::AclSet;
use dataplane::policy::{Action, Match, Prefix, Rule, TenantPolicy};
use dataplane::port::{Breath, FRAME_HEADROOM, FrameArea, FramePool, PageSize, Port, PortCensus};
use dataplane::shaping::{Rate, TenantShaping, Unit};
use dataplane::snapshot::{
    Attachment, PolicyLimits, PortId, PortKind, Snapshot, SnapshotBuilder, TenantSpec,
};
use dataplane::time::Nanos;

/// A port that takes every frame and completes it at once. By default without returning it
/// to the pool: the bench re-receives the same frames in its next batch (a zero-cost
/// loopback). [`LoopbackPort::recycling`] returns them at the next `reclaim`, for benches
/// whose frames outlive a batch (queued by a congested port) and are received fresh
/// ([`Setup::forward_fresh`]).
#[derive(Debug, Default)]
pub struct LoopbackPort {
    /// Sent frames not yet returned (`None`: never returned).
    sent: Option<Vec<FrameRef>>,
}

impl LoopbackPort {
    /// A loopback that returns the frames it sent to the pool at `reclaim`.
    pub fn recycling() -> Self {
        LoopbackPort { sent: Some(Vec::with_capacity(16_384)) }
    }
}

impl Port for LoopbackPort {
    fn rx(&mut self, _area: &mut FrameArea, _pool: &mut FramePool, _batch: &mut Batch) -> usize {
        0
    }
    fn tx(&mut self, _area: &FrameArea, frames: &mut Vec<FrameRef>) -> usize {
        match &mut self.sent {
            // The bench keeps the frames' addresses and sends them again (`Setup::forward`).
            None => frames.drain(..).count(),
            Some(sent) => {
                let n = frames.len().min(sent.capacity() - sent.len());
                sent.extend(frames.drain(..n));
                n
            }
        }
    }
    fn reclaim(&mut self, area: &FrameArea, pool: &mut FramePool) -> usize {
        let Some(sent) = &mut self.sent else { return 0 };
        let n = sent.len();
        for f in sent.drain(..) {
            pool.free(area, f);
        }
        n
    }
    fn kick(&mut self, _breath: Breath) -> bool {
        true
    }
    fn census(&self) -> PortCensus {
        PortCensus::default()
    }
    fn retire(&mut self, _area: &FrameArea, _pool: &mut FramePool) -> u32 {
        0
    }
}

/// Number of distinct prebuilt batches cycled through (4096 frames: larger than L1, so frame
/// bytes come from L2/L3 as with real traffic).
pub const BATCHES: usize = 16;

/// A switch ready to forward, and its prebuilt traffic.
pub struct Setup {
    /// The snapshot.
    pub snap: Snapshot,
    /// The pipeline, MACs learned.
    pub pipeline: Pipeline,
    /// Frame memory.
    pub area: FrameArea,
    /// Free frames.
    pub pool: FramePool,
    /// Sinks.
    pub ports: Vec<LoopbackPort>,
    /// TX lists.
    pub tx: TxLists,
    /// Scratch batch.
    pub batch: Batch,
    /// Scratch dispositions.
    pub disp: Dispositions,
    /// Prebuilt traffic: BATCHES batches of 64 frames from port A, by address and length.
    /// The bench owns these chunks for good (they never go back to the pool) and makes them
    /// frames again for every batch it forwards ([`Setup::forward`]), as a port driver does
    /// with the addresses its kernel rings give back.
    pub traffic: Vec<[(u64, u32); BATCH_SIZE]>,
    /// The port the prebuilt traffic comes in on (A, port 0, unless a bench says otherwise).
    pub ingress: PortId,
}

fn mac(kind: u8, i: u32) -> [u8; 6] {
    let b = i.to_be_bytes();
    [0x02, kind, b[0], b[1], b[2], b[3]]
}

/// A 64-byte VLAN-tagged IPv4/UDP frame (FCS not included, as AF_XDP delivers it).
pub fn frame(src: [u8; 6], dst: [u8; 6], vlan: u16) -> [u8; 64] {
    let mut f = [0u8; 64];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x81, 0x00]);
    f[14..16].copy_from_slice(&vlan.to_be_bytes());
    f[16..18].copy_from_slice(&[0x08, 0x00]);
    // IPv4: 20-byte header, total length 46 (64 - 18), UDP 26 bytes.
    f[18..38]
        .copy_from_slice(&[0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    f[38..46].copy_from_slice(&[0x13, 0x88, 0x00, 0x35, 0, 26, 0, 0]);
    ipv4_header_checksum(&mut f[18..38]);
    f
}

/// Writes the checksum of an IPv4 header (as a NIC delivers it: tenants with policy verify
/// it). By hand, so the same harness builds against earlier commits for side-by-side runs.
pub fn ipv4_header_checksum(h: &mut [u8]) {
    h[10..12].copy_from_slice(&[0, 0]);
    let mut sum: u32 = h.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// Builds a switch with `tenants` tenants and `macs` learned destination MACs spread evenly
/// over them (at least one per tenant), plus one source host per tenant.
pub fn setup(tenants: u32, macs: u32) -> Setup {
    setup_with(tenants, macs, None)
}

/// `n` ACL rules of a realistic mix (source /24 networks with a destination port, single hosts,
/// /16 networks with a port range, protocol-and-port rules), alternately allow and deny. They
/// use 4 + (port-range prefixes) distinct masks, whatever `n`.
pub fn bench_rules(n: usize) -> Vec<Rule> {
    (0..n)
        .map(|i| {
            let (a, b) = ((i >> 8) as u8, i as u8);
            let m = match i % 10 {
                0..=5 => Match {
                    src: Some(Prefix::v4([10, a, b, 0], 24)),
                    proto: Some(17),
                    dst_ports: Some((1000 + (i % 500) as u16, 1000 + (i % 500) as u16)),
                    ..Match::default()
                },
                6 | 7 => Match {
                    src: Some(Prefix::v4([10, a, b, (i % 251) as u8], 32)),
                    proto: Some(17),
                    ..Match::default()
                },
                8 => Match {
                    src: Some(Prefix::v4([172, (i % 16) as u8, 0, 0], 16)),
                    proto: Some(17),
                    dst_ports: Some((2000, 2999)),
                    ..Match::default()
                },
                _ => Match {
                    proto: Some(6),
                    dst_ports: Some((i as u16, i as u16)),
                    ..Match::default()
                },
            };
            let action = if i % 2 == 0 { Action::Deny } else { Action::Allow };
            Rule { name: format!("r{i}"), priority: i as u32, action, m }
        })
        .collect()
}

/// Number of distinct flows the policy benches cycle through (100 000, or
/// `XSWITCH_BENCH_FLOWS`).
pub fn flows() -> u32 {
    std::env::var("XSWITCH_BENCH_FLOWS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
}

/// Stamps flow `k` into a bench frame of tenant 0: source address 10.k.k.k, source port, and
/// one of the `macs` learned destinations (a flow keeps its destination, as a real one does).
#[inline]
pub fn stamp_flow(area: &mut FrameArea, f: &FrameRef, k: u32, macs: u32) {
    if let Some(b) = area.frame_mut(f) {
        b[0..6].copy_from_slice(&mac(0xb, k % macs.max(1)));
        let [_, x, y, z] = k.to_be_bytes();
        b[30..34].copy_from_slice(&[10, x, y, z]);
        b[38..40].copy_from_slice(&(1024 + (k % 50_000) as u16).to_be_bytes());
        ipv4_header_checksum(&mut b[18..38]);
    }
}

/// [`setup`] with every tenant's from-tenant ACL holding `rules` (and a flow cache large
/// enough for [`FLOWS`] flows), or no policy at all for `None`.
pub fn setup_with(tenants: u32, macs: u32, rules: Option<Vec<Rule>>) -> Setup {
    build(tenants, macs, rules, 0, None)
}

/// [`setup`] with the flows of the first `logged` tenants logged (the export is the caller's
/// to add).
pub fn setup_logged(tenants: u32, macs: u32, logged: u32) -> Setup {
    build(tenants, macs, None, logged, None)
}

/// [`setup`] with every tenant policed on what it sends and shaped on what it receives, and
/// port B (where the traffic goes) scheduled under a rate of its own: every stage of shaping
/// runs for every frame. The rates (10 Gbit/s per tenant, 100 Gbit/s for the port) are far
/// above what the bench offers when it advances time by 3 us a batch: nothing is dropped, so
/// what is measured is the mechanism.
pub fn setup_shaped(tenants: u32, macs: u32) -> Setup {
    build(tenants, macs, None, 0, Some(Shaped { port_gbit: 100, queue: 64 }))
}

/// [`setup_shaped`] with port B congested: its rate (`port_gbit`) below what the bench offers
/// (64 frames of 64 bytes every 3 us, 10.9 Gbit/s), so every tenant's queue there fills and the
/// scheduler shares the port among them; each queue holds `queue` frames, the rest are dropped
/// (`queue_full`). Frames outlive their batch: forward with [`Setup::forward_fresh`].
pub fn setup_congested(tenants: u32, macs: u32, port_gbit: u64, queue: u32) -> Setup {
    let mut s = build(tenants, macs, None, 0, Some(Shaped { port_gbit, queue }));
    s.ports = vec![LoopbackPort::recycling(), LoopbackPort::recycling()];
    s
}

/// How [`build`] shapes: port B's rate and each tenant's queue there.
#[derive(Debug, Clone, Copy)]
struct Shaped {
    port_gbit: u64,
    queue: u32,
}

fn build(
    tenants: u32,
    macs: u32,
    rules: Option<Vec<Rule>>,
    logged: u32,
    shaped: Option<Shaped>,
) -> Setup {
    let macs = macs.max(tenants);
    let per_tenant = macs.div_ceil(tenants);
    let limits = PolicyLimits {
        flow_cache_entries: std::env::var("XSWITCH_BENCH_CACHE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(262_144),
        flow_cache_share_percent: 100,
        ..PolicyLimits::default()
    };
    let mut b = SnapshotBuilder::new(1).fdb_capacity(macs + tenants + 1024).limits(limits);
    let pa = b.port("a", "a", PortKind::Tenant);
    let pb = b.port("b", "b", PortKind::Tenant);
    let rate = |gbit: u64| Rate { per_sec: gbit * 125_000_000, burst: 1 << 20, unit: Unit::Bytes };
    if let Some(sh) = shaped {
        b.port_rate(pb, Some(rate(sh.port_gbit)));
    }
    for t in 0..tenants {
        let vlan = Some((t + 1) as u16);
        let mut spec = TenantSpec::new(
            &format!("t{t}"),
            vec![Attachment { port: pa, vlan }, Attachment { port: pb, vlan }],
        );
        spec.fdb_quota = per_tenant + 16;
        spec.mac_aging = Nanos::from_secs(3600);
        spec.flow_log = t < logged;
        if let Some(sh) = shaped {
            spec.shaping = TenantShaping {
                police: Some(rate(10)),
                to_tenant: Some(rate(10)),
                queue: sh.queue,
                ..TenantShaping::default()
            };
        }
        if let Some(r) = &rules {
            spec.policy = TenantPolicy {
                acl: [AclSet::new(r.clone(), Action::Allow), AclSet::default()],
                group: None,
            };
        }
        b.tenant(spec);
    }
    let snap = b.build().expect("bench snapshot");
    let area = FrameArea::new(16384, 2048, PageSize::Normal).expect("frame area");
    let mut s = Setup {
        pipeline: Pipeline::new(&snap),
        pool: FramePool::new(&area),
        tx: TxLists::new(2, 4 * BATCH_SIZE),
        ports: vec![LoopbackPort::default(), LoopbackPort::default()],
        batch: Batch::new(),
        disp: Dispositions::default(),
        traffic: Vec::new(),
        ingress: PortId(0),
        area,
        snap,
    };
    // Both ports are this bench's own: their schedulers run here.
    s.tx.schedule(&s.snap, |_| true, |_| 1, Nanos::ZERO);
    // Learn every destination behind B: broadcasts from B, one batch of 64 at a time, reusing
    // the same 64 frames (each floods to A only: the original frame, no copy).
    let scratch: Vec<u64> = (0..BATCH_SIZE).map(|_| s.pool.alloc().expect("frame")).collect();
    let learn = |s: &mut Setup, frames: &[([u8; 6], u16)]| {
        s.batch.reset(pb);
        for ((src, vlan), base) in frames.iter().zip(&scratch) {
            let f = FrameRef::new(base + FRAME_HEADROOM, 64);
            s.area.frame_mut(&f).expect("frame").copy_from_slice(&frame(*src, [0xff; 6], *vlan));
            s.batch.push(f).expect("a batch of 64");
        }
        s.run(Nanos::from_secs(1));
    };
    let dsts: Vec<([u8; 6], u16)> =
        (0..macs).map(|i| (mac(0xb, i), (i % tenants + 1) as u16)).collect();
    for chunk in dsts.chunks(BATCH_SIZE) {
        learn(&mut s, chunk);
    }
    // Traffic: frame k goes from tenant t's source host to one of t's destinations.
    s.prebuild(|r| {
        let d = r % macs;
        let t = d % tenants;
        frame(mac(0xa, t), mac(0xb, d), (t + 1) as u16).to_vec()
    });
    s
}

impl Setup {
    /// Builds the prebuilt traffic: [`BATCHES`] batches of frames made by `frame` from a
    /// pseudo-random number each (xorshift, the same sequence for every bench), in chunks the
    /// bench owns for good.
    pub fn prebuild(&mut self, mut frame: impl FnMut(u32) -> Vec<u8>) {
        let mut rng = 0x9e37_79b9_u32;
        for _ in 0..BATCHES {
            let mut batch = [(0, 0); BATCH_SIZE];
            for slot in &mut batch {
                rng ^= rng << 13;
                rng ^= rng >> 17;
                rng ^= rng << 5;
                let bytes = frame(rng);
                let base = self.pool.alloc().expect("frame");
                let f = FrameRef::new(base + FRAME_HEADROOM, bytes.len() as u32);
                self.area.frame_mut(&f).expect("frame").copy_from_slice(&bytes);
                *slot = (f.addr(), f.len());
            }
            self.traffic.push(batch);
        }
    }

    /// Starts a live capture of tenant 0's frames (UDP port 53: all its bench traffic), as the
    /// tracing bench measures it; the caller drains the returned ring (a writer's part).
    pub fn capture_tenant_zero(&mut self) -> dataplane::trace::capture::Reader {
        use dataplane::trace::capture::{self, CaptureFilter, Scope, Tap};
        let (ring, reader) = capture::ring(16_384);
        self.pipeline.capture = Some(Tap::new(
            Scope::Tenant(dataplane::snapshot::TenantId(0)),
            CaptureFilter { proto: Some(17), port: Some(53), ..CaptureFilter::default() },
            128,
            ring,
        ));
        reader
    }

    /// Turns flow logging on (for the tenants [`setup_logged`] marked) with records nobody
    /// reads: the channel fills and the rest are counted lost, like a slow writer (records
    /// leave only at flow ends, idle and interval, rare in a bench).
    pub fn log_flows_nowhere(&mut self) {
        let (records, sink) = crossbeam_channel::bounded(1 << 16);
        std::mem::forget(sink);
        self.pipeline.flows.log_flows(dataplane::trace::flowlog::FlowExport::new(
            Nanos::from_secs(60),
            Nanos::from_secs(15),
            records,
        ));
    }

    /// Runs the pipeline on the scratch batch and hands the result to the loopback ports.
    #[inline]
    pub fn run(&mut self, now: Nanos) {
        self.pipeline.run(
            now,
            &self.snap,
            &mut self.area,
            &mut self.pool,
            &mut self.batch,
            &mut self.disp,
            &mut self.tx,
            &mut self.ports[..],
        );
    }

    /// Forwards a copy of prebuilt batch `i` (from port A) in frames fresh from the pool, then
    /// lets the ports return what they sent: for benches where frames outlive their batch. A
    /// frame the pool cannot give is not sent (the caller sees it in the counters).
    #[inline]
    pub fn forward_fresh(&mut self, i: usize, now: Nanos) {
        self.batch.reset(self.ingress);
        for &(addr, len) in &self.traffic[i % BATCHES] {
            let Some(base) = self.pool.alloc() else { break };
            let fresh = self.area.copy_frame(&FrameRef::new(addr, len), base + FRAME_HEADROOM);
            match fresh {
                Some(fresh) => self.batch.push(fresh).expect("a batch of 64"),
                None => self.pool.free_addr(base),
            }
        }
        self.run(now);
        for p in &mut self.ports {
            p.reclaim(&self.area, &mut self.pool);
        }
    }

    /// Forwards prebuilt batch `i` (from port A) with flows `*flow`, `*flow + 1`, … (modulo
    /// `flows`) stamped into its frames in turn ([`stamp_flow`], destinations among `macs`);
    /// `*flow` moves on past them.
    #[inline]
    pub fn forward_flows(&mut self, i: usize, flow: &mut u32, flows: u32, macs: u32, now: Nanos) {
        for &(addr, len) in &self.traffic[i % BATCHES] {
            stamp_flow(&mut self.area, &FrameRef::new(addr, len), *flow, macs);
            *flow = (*flow + 1) % flows;
        }
        self.forward(i, now);
    }

    /// Forwards prebuilt batch `i` (from port A, or the bench's `ingress`).
    #[inline]
    pub fn forward(&mut self, i: usize, now: Nanos) {
        self.batch.reset(self.ingress);
        for &(addr, len) in &self.traffic[i % BATCHES] {
            // Never more than a batch: the push cannot fail.
            let _ = self.batch.push(FrameRef::new(addr, len));
        }
        self.run(now);
    }
}

/// What [`paired`] measured: medians over the rounds.
#[derive(Debug, Clone, Copy)]
pub struct Paired {
    /// Median time of one call of `a`, in nanoseconds.
    pub a_ns: f64,
    /// Median time of one call of `b`.
    pub b_ns: f64,
    /// Median over the rounds of (time of b) / (time of a) in the same round.
    pub ratio: f64,
}

/// Times `a` and `b` side by side: `rounds` rounds, each `iters` calls of one then `iters` of
/// the other (the order alternating), and reports the medians of the per-round times and of
/// the per-round ratios. On a shared machine whose speed drifts over seconds, a ratio taken
/// within one round of a few milliseconds is far steadier than two criterion runs taken one
/// after the other (docs/PERFORMANCE.md).
pub fn paired(rounds: usize, iters: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> Paired {
    let time = |f: &mut dyn FnMut()| {
        let t0 = std::time::Instant::now();
        for _ in 0..iters {
            f();
        }
        t0.elapsed().as_nanos() as f64 / iters as f64
    };
    let (mut ta, mut tb, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (x, y) = if round % 2 == 0 {
            let x = time(&mut a);
            (x, time(&mut b))
        } else {
            let y = time(&mut b);
            (time(&mut a), y)
        };
        ta.push(x);
        tb.push(y);
        r.push(y / x);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Paired { a_ns: median(&mut ta), b_ns: median(&mut tb), ratio: median(&mut r) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_reports_the_slower_side_as_a_larger_ratio() {
        let spin = |n: u64| {
            let mut x = 0u64;
            for i in 0..n {
                x = std::hint::black_box(x.wrapping_add(i));
            }
        };
        let p = paired(9, 20, || spin(1_000), || spin(4_000));
        assert!(p.ratio > 1.5, "{p:?}");
        assert!(p.b_ns > p.a_ns);
    }

    #[test]
    fn bench_traffic_is_forwarded_not_flooded_or_dropped() {
        let mut s = setup(100, 1000);
        let before = s.pipeline.counters.port_tx[1].packets;
        for i in 0..BATCHES {
            s.forward(i, Nanos::from_secs(2));
        }
        let c = &s.pipeline.counters;
        assert_eq!(c.port_tx[1].packets - before, (BATCHES * BATCH_SIZE) as u64);
        assert_eq!(c.total_drops(), 0, "drops by port and reason: {:?}", c.port_drops);
        assert_eq!(c.flood_copies, 0);
        assert!(s.pipeline.fdb().len() >= 1000);
    }
}
