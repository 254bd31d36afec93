//! Pipeline throughput over in-memory batches of 64-byte frames: L2 forwarding for 1, 100 and
//! 1000 tenants and 1, 1 000 and 100 000 learned MACs. Reports time per batch of 64 and
//! elements (packets) per second; ns/packet = time / 64.
//!
//! Run: `cargo bench -p xswitch-benches --bench pipeline`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dataplane::batch::BATCH_SIZE;
use dataplane::time::Nanos;
use xswitch_benches::{BATCHES, setup};

fn l2_forwarding(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline_l2");
    g.throughput(Throughput::Elements(BATCH_SIZE as u64));
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    for tenants in [1u32, 100, 1000] {
        for macs in [1u32, 1000, 100_000] {
            let mut s = setup(tenants, macs);
            let mut i = 0usize;
            let id = BenchmarkId::from_parameter(format!("tenants={tenants}/macs={macs}"));
            g.bench_function(id, |b| {
                b.iter(|| {
                    s.forward(i, Nanos::from_secs(2));
                    i = (i + 1) % BATCHES;
                    black_box(&s.disp);
                })
            });
            assert_eq!(s.pipeline.counters.total_drops(), 0, "bench traffic was dropped");
        }
    }
    g.finish();
}

criterion_group!(benches, l2_forwarding);
criterion_main!(benches);
