//! Counts work for `callgrind`: forwards N batches through the tracing bench's switch (100
//! tenants, 1 000 MACs) with flow logs for every tenant and a live capture of tenant 0 (all its
//! frames, about 1 %), the capture ring drained between batches on the same thread (callgrind
//! runs one thread at a time; a writer thread would make the count depend on its schedule).
//! `valgrind --tool=callgrind target/release/examples/capture_count 20000`.
use std::hint::black_box;

use dataplane::time::Nanos;
use xswitch_benches::setup_logged;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let mut s = setup_logged(100, 1000, 100);
    s.log_flows_nowhere();
    let mut reader = s.capture_tenant_zero();
    for i in 0..n {
        s.forward(i, Nanos(2_000_000_000 + i as u64 * 3_000));
        reader.drain(|c| _ = black_box(c.data.len()));
    }
    let tap = s.pipeline.capture.as_ref().map_or((0, 0), |t| (t.copied, t.skipped));
    println!(
        "{} sent, {} copied, {} skipped",
        s.pipeline.counters.port_tx.iter().map(|x| x.packets).sum::<u64>(),
        tap.0,
        tap.1
    );
}
