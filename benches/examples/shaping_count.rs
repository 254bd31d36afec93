//! Counts work for `callgrind` (instructions are repeatable where time is not): forwards N
//! batches through the shaping bench's switch, plain, shaped, or with port B congested (then
//! on fresh frames, and the plain switch too when given `fresh`). `valgrind --tool=callgrind
//! target/release/examples/shaping_count shaped|plain|congested|fresh 20000`.
use dataplane::time::Nanos;
use xswitch_benches::{LoopbackPort, setup, setup_congested, setup_shaped};

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let n: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let mut s = match mode.as_str() {
        "shaped" => setup_shaped(1000, 1000),
        "congested" => setup_congested(1000, 1000, 5, 4),
        _ => setup(1000, 1000),
    };
    let fresh = matches!(mode.as_str(), "congested" | "fresh");
    if fresh {
        s.ports = vec![LoopbackPort::recycling(), LoopbackPort::recycling()];
    }
    for i in 0..n {
        let now = Nanos(2_000_000_000 + i as u64 * 3_000);
        if fresh { s.forward_fresh(i, now) } else { s.forward(i, now) }
    }
    println!("{}", s.pipeline.counters.port_tx.iter().map(|x| x.packets).sum::<u64>());
}
