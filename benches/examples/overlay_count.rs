//! Runs one case of the overlay bench N times, for a profiler or `callgrind`:
//! `target/release/examples/overlay_count encap 200000`.
use std::hint::black_box;

use dataplane::time::Nanos;
use xswitch_benches::overlay::{Case, setup};

fn main() {
    let mut args = std::env::args().skip(1);
    let case = match args.next().as_deref() {
        Some("plain") => Case::Plain,
        Some("decap") => Case::Decap,
        _ => Case::Encap,
    };
    let n: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let mut s = setup(case);
    for i in 0..n {
        s.forward(i, Nanos::from_secs(2));
        black_box(&s.disp);
    }
    let c = &s.pipeline.counters;
    println!(
        "{case:?}: {} encapsulated, {} decapsulated",
        c.overlay.encap.packets, c.overlay.decap.packets
    );
}
