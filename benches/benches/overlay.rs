//! VXLAN against plain forwarding (issue 22), over in-memory batches of 64-byte tenant frames,
//! 1 000 destination MACs:
//!
//! - `plain`: port A to port B, both attachments of the tenant (the MACs learned behind B);
//! - `encap`: port A to the underlay, the MACs on 8 other hosts of the cluster map: the map's
//!   answer for the MAC table's miss, the outer headers written into the headroom (114 bytes
//!   on the wire);
//! - `decap`: VXLAN frames from those hosts on the underlay to port A: the outer headers
//!   checked and stepped over, the VNI resolved, then the inner frame switched.
//!
//! Then side by side ([`paired`]): a round trip over the overlay (one batch encapsulated by
//! one switch, one decapsulated by another) against two plain batches (of two switches alike),
//! the ratio the bar reads (≤ 1.3).
//!
//! Run: `cargo bench -p xswitch-benches --bench overlay`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dataplane::batch::BATCH_SIZE;
use dataplane::time::Nanos;
use xswitch_benches::overlay::{B, Case, setup};
use xswitch_benches::paired;

/// The bench's clock: the MACs were learned at 1 s.
const NOW: Nanos = Nanos(2_000_000_000);

fn overlay(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline_overlay");
    g.throughput(Throughput::Elements(BATCH_SIZE as u64));
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    for (name, case) in [("plain", Case::Plain), ("encap", Case::Encap), ("decap", Case::Decap)] {
        let mut s = setup(case);
        let mut i = 0usize;
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                s.forward(i, NOW);
                i += 1;
                black_box(&s.disp);
            })
        });
        let c = &s.pipeline.counters;
        assert_eq!(c.total_drops(), 0, "{name}: bench traffic dropped: {:?}", c.port_drops);
        let out = match case {
            Case::Plain => c.port_tx[B.index()].packets,
            Case::Encap => c.overlay.encap.packets,
            Case::Decap => c.overlay.decap.packets,
        };
        assert!(out >= 64 * 100, "{name}: the frames went where they should ({out})");
        assert_eq!(c.overlay.replicas, 0, "{name}: unicast, no replication");
    }
    g.finish();
    // Two switches on each side (two plain ones against the encapsulating and the
    // decapsulating one), so both sides switch between two working sets alike.
    let (mut p1, mut p2) = (setup(Case::Plain), setup(Case::Plain));
    let (mut enc, mut dec) = (setup(Case::Encap), setup(Case::Decap));
    let (mut i, mut j) = (0usize, 0usize);
    let p = paired(
        201,
        500,
        || {
            p1.forward(i, NOW);
            p2.forward(i, NOW);
            i += 1;
        },
        || {
            enc.forward(j, NOW);
            dec.forward(j, NOW);
            j += 1;
        },
    );
    eprintln!(
        "paired (201 rounds of 500): two plain batches {:.3} us, encap + decap {:.3} us (per \
         pair of batches of 64), median ratio {:.3}",
        p.a_ns / 1e3,
        p.b_ns / 1e3,
        p.ratio
    );
}

criterion_group!(benches, overlay);
criterion_main!(benches);
