//! What shaping costs: the L2 pipeline of the `pipeline` bench with 1 000 tenants and 1 000
//! MACs, without shaping, against the same with every tenant policed on what it sends and
//! shaped on what it receives and the egress port scheduled under its own rate (deficit round
//! robin over 1 000 queues). Time advances 3 us per batch, so the buckets refill as they
//! would, and the rates are far above what is offered: nothing is dropped, the cost measured
//! is the mechanism's on a port that is not congested (frames cut through the empty queues,
//! with every rate checked and charged). Then both side by side ([`paired`]) for the ratio.
//!
//! Run: `cargo bench -p xswitch-benches --bench shaping`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dataplane::batch::BATCH_SIZE;
use dataplane::time::Nanos;
use xswitch_benches::{BATCHES, Setup, paired, setup, setup_shaped};

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
}

criterion_group!(benches, shaping);
criterion_main!(benches);
