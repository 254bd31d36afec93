//! What shaping costs: the L2 pipeline of the `pipeline` bench with 1 000 tenants and 1 000
//! MACs, without shaping, against the same with every tenant policed on what it sends and
//! shaped on what it receives and the egress port scheduled under its own rate (deficit round
//! robin over 1 000 queues). Time advances 3 us per batch, so the buckets refill as they
//! would, and the rates are far above what is offered: nothing is dropped, the cost measured
//! is the mechanism's on a port that is not congested (frames cut through the empty queues,
//! with every rate checked and charged). Then both side by side ([`paired`]) for the ratio.
//!
//! Then a congested port: the same traffic with port B's rate at half of what is offered, so
//! all 1 000 tenants' queues there stay full, the scheduler shares the port among them, and
//! about half the frames are dropped at full queues. Frames outlive their batch there, so both
//! ends of that pair receive fresh frames from the pool and get back what they sent
//! ([`Setup::forward_fresh`]).
//!
//! Run: `cargo bench -p xswitch-benches --bench shaping`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dataplane::batch::BATCH_SIZE;
use dataplane::time::Nanos;
use dataplane::trace::DropReason;
use xswitch_benches::{BATCHES, LoopbackPort, Setup, paired, setup, setup_congested, setup_shaped};

const TENANTS: u32 = 1000;

/// Forwards batch `i` at `i` × 3 us.
fn step(s: &mut Setup, i: &mut usize) {
    s.forward(*i, Nanos(2_000_000_000 + *i as u64 * 3_000));
    *i += 1;
}

fn shaping(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline_shaping");
    g.throughput(Throughput::Elements(BATCH_SIZE as u64));
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(3));
    for (name, shaped) in [("plain", false), ("policed+shaped", true)] {
        let mut s = if shaped { setup_shaped(TENANTS, 1000) } else { setup(TENANTS, 1000) };
        let mut i = 0usize;
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                step(&mut s, &mut i);
                black_box(&s.disp);
            })
        });
    }
    g.finish();
    let (mut off, mut on) = (setup(TENANTS, 1000), setup_shaped(TENANTS, 1000));
    let (mut i, mut j) = (0usize, 0usize);
    let p = paired(201, 1000, || step(&mut off, &mut i), || step(&mut on, &mut j));
    let c = &on.pipeline.counters;
    let sent: u64 = c.port_tx.iter().map(|x| x.packets).sum();
    let queued: u64 = c.tenant_queued.iter().map(|x| x.packets).sum();
    assert_eq!(c.total_drops(), 0, "the bench must not drop: {:?}", c.port_drops);
    assert!(sent >= 64 * 201 * 1000, "the frames went out");
    let _ = BATCHES;
    eprintln!(
        "paired (201 rounds of 1000 batches): plain {:.3} us, policed+shaped {:.3} us per \
         batch of 64, median ratio {:.3}; {sent} sent, {queued} of them through the queues \
         (the others cut through: nothing was queued and the rates allowed them)",
        p.a_ns / 1e3,
        p.b_ns / 1e3,
        p.ratio
    );
    congested();
}

/// Forwards a fresh copy of batch `i` at `i` × 3 us.
fn step_fresh(s: &mut Setup, i: &mut usize) {
    s.forward_fresh(*i, Nanos(2_000_000_000 + *i as u64 * 3_000));
    *i += 1;
}

/// The congested port beside the plain pipeline, both on fresh frames.
fn congested() {
    // The plain end recycles its frames too (the same per-frame copy and return).
    let mut off = setup(TENANTS, 1000);
    off.ports = vec![LoopbackPort::recycling(), LoopbackPort::recycling()];
    // 10.9 Gbit/s offered; the port sends 5.
    let mut on = setup_congested(TENANTS, 1000, 5, 4);
    let (mut i, mut j) = (0usize, 0usize);
    // Fill the queues first: the port's burst (1 MiB) passes, then the queues fill.
    for _ in 0..20_000 {
        step_fresh(&mut on, &mut j);
    }
    let before = on.pipeline.counters.clone();
    let p = paired(201, 1000, || step_fresh(&mut off, &mut i), || step_fresh(&mut on, &mut j));
    let (c, b) = (&on.pipeline.counters, &before);
    let sent = |c: &dataplane::trace::Counters| c.port_tx.iter().map(|x| x.packets).sum::<u64>();
    let received =
        |c: &dataplane::trace::Counters| c.port_rx.iter().map(|x| x.packets).sum::<u64>();
    let (rx, tx) = (received(c) - received(b), sent(c) - sent(b));
    let full = c.drops(DropReason::QueueFull) - b.drops(DropReason::QueueFull);
    assert_eq!(off.pipeline.counters.total_drops(), 0, "the plain end must not drop");
    assert_eq!(rx, 64 * 201 * 1000, "every frame came from the pool");
    assert!(full > rx / 4 && tx > rx / 4, "the port was congested: {tx} sent, {full} dropped");
    assert_eq!(c.total_drops() - b.total_drops(), full, "dropped only at full queues");
    eprintln!(
        "paired, congested port (201 rounds of 1000 batches, fresh frames): plain {:.3} us, \
         congested {:.3} us per batch of 64, median ratio {:.3}; of {rx} frames {tx} sent \
         ({:.1} %), {full} dropped at full queues; {} frames queued at the end",
        p.a_ns / 1e3,
        p.b_ns / 1e3,
        p.ratio,
        100.0 * tx as f64 / rx as f64,
        on.tx.total_pending(),
    );
}

criterion_group!(benches, shaping);
criterion_main!(benches);
