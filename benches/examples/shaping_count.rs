//! Counts work for `callgrind` (instructions are repeatable where time is not): forwards N
//! batches through the shaping bench's switch, plain or shaped. `valgrind --tool=callgrind
//! target/release/examples/shaping_count shaped 20000`.
use dataplane::time::Nanos;
use xswitch_benches::{setup, setup_shaped};

fn main() {
    let mut args = std::env::args().skip(1);
    let shaped = args.next().as_deref() == Some("shaped");
    let n: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let mut s = if shaped { setup_shaped(1000, 1000) } else { setup(1000, 1000) };
    for i in 0..n {
        s.forward(i, Nanos(2_000_000_000 + i as u64 * 3_000));
    }
    println!("{}", s.pipeline.counters.port_tx.iter().map(|x| x.packets).sum::<u64>());
}
