//! Counts work for `callgrind`: forwards N batches through the tracing bench's switch (100
//! tenants, 1 000 MACs), plain or with every tenant's flows logged.
//! `valgrind --tool=callgrind target/release/examples/tracing_count logged 20000`.
use dataplane::time::Nanos;
use xswitch_benches::setup_logged;

fn main() {
    let mut args = std::env::args().skip(1);
    let logged = args.next().as_deref() == Some("logged");
    let n: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let mut s = setup_logged(100, 1000, if logged { 100 } else { 0 });
    if logged {
        s.log_flows_nowhere();
    }
    for i in 0..n {
        s.forward(i, Nanos(2_000_000_000 + i as u64 * 3_000));
    }
    println!("{}", s.pipeline.counters.port_tx.iter().map(|x| x.packets).sum::<u64>());
}
