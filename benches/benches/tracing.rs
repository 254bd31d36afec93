//! What observability costs: the L2 pipeline of the `pipeline` bench (100 tenants, 1 000 MACs)
//! with counters only (always on), against the same with flow logging for every tenant and a
//! live capture of one tenant of the 100 (a filter that matches its traffic: about 1 % of the
//! frames are copied). Time per batch of 64; then both ends side by side ([`paired`]) for the
//! ratio. Last, the same pair for one tenant whose 100 000 flows (`XSWITCH_BENCH_FLOWS`) make
//! a flow cache far larger than L2: logged against not logged.
//!
//! Run: `cargo bench -p xswitch-benches --bench tracing`

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dataplane::batch::BATCH_SIZE;
use dataplane::time::Nanos;
use xswitch_benches::{BATCHES, Setup, flows, paired, setup, setup_logged};

/// A switch as the bench measures it: counters always, flow logs for the first `logged` of its
/// 100 tenants, and a capture of tenant 0 (UDP port 53: all its frames) when asked; the
/// capture's writer drains its ring on another thread until the returned guard is dropped.
fn configure(logged: u32, cap: bool) -> (Setup, Option<Writer>) {
    let mut s = setup_logged(100, 1000, logged);
    if logged > 0 {
        s.log_flows_nowhere();
    }
    let mut writer = None;
    if cap {
        let mut reader = s.capture_tenant_zero();
        let done = Arc::new(AtomicBool::new(false));
        let done2 = done.clone();
        // Polls, as the switch's writer does.
        let thread = std::thread::spawn(move || {
            while !done2.load(Ordering::Relaxed) {
                if reader.drain(|c| _ = black_box(c.data.len())) == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        writer = Some(Writer { done, thread: Some(thread) });
    }
    (s, writer)
}

/// Stops a capture writer thread when dropped.
struct Writer {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tracing(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline_tracing");
    g.throughput(Throughput::Elements(BATCH_SIZE as u64));
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(3));
    for (name, logged, cap) in [
        ("counters", 0, false),
        ("counters+flowlog", 100, false),
        ("counters+capture", 0, true),
        ("counters+flowlog+capture", 100, true),
    ] {
        let (mut s, writer) = configure(logged, cap);
        let mut i = 0usize;
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                s.forward(i, Nanos::from_secs(2));
                i = (i + 1) % BATCHES;
                black_box(&s.disp);
            })
        });
        if let Some(tap) = &s.pipeline.capture {
            eprintln!("capture: {} frames copied, {} skipped", tap.copied, tap.skipped);
        }
        s.pipeline.capture = None;
        drop(writer);
    }
    g.finish();
    // The same ends side by side in one process, alternating every few milliseconds: the
    // ratios the tracing issue's bar is about, steady on a noisy machine. Flow logs for all
    // 100 tenants, then for the captured tenant only.
    for logged in [100, 1] {
        let (mut off, _) = configure(0, false);
        let (mut on, _w) = configure(logged, true);
        let (mut i, mut j) = (0usize, 0usize);
        let p = paired(
            201,
            1000,
            || {
                off.forward(i, Nanos::from_secs(2));
                i = (i + 1) % BATCHES;
            },
            || {
                on.forward(j, Nanos::from_secs(2));
                j = (j + 1) % BATCHES;
            },
        );
        let tap = on.pipeline.capture.as_ref().expect("capturing");
        assert!(tap.copied > 0, "the capture matched nothing");
        // Both ends did the same work: every frame forwarded, none dropped.
        let sent = |s: &Setup| s.pipeline.counters.port_tx.iter().map(|x| x.packets).sum::<u64>();
        let dropped = |s: &Setup| s.pipeline.counters.port_drops.iter().flatten().sum::<u64>();
        assert_eq!((sent(&off), dropped(&off)), (sent(&on), 0), "the two ends forwarded alike");
        let frames = (201 * 1000 * BATCH_SIZE) as f64;
        eprintln!(
            "paired, flow logs for {logged} of 100 tenants and a capture of one (201 rounds of \
             1000 batches): counters {:.3} us, with tracing {:.3} us per batch of 64, median \
             ratio {:.3}; {:.2} % of the frames captured, {} flows counted",
            p.a_ns / 1e3,
            p.b_ns / 1e3,
            p.ratio,
            100.0 * tap.copied as f64 / frames,
            on.pipeline.flows.len(),
        );
    }
}

/// One tenant, 1 000 MACs, its frames carrying the next of `flows()` flows each: forwarded
/// through the MAC table, against the same with the tenant's flows logged (every flow in the
/// cache, seen once before).
fn many_flows() {
    let n = flows();
    let step = |s: &mut Setup, i: &mut usize, flow: &mut u32| {
        s.forward_flows(*i, flow, n, 1000, Nanos::from_secs(2));
        *i += 1;
    };
    let mut off = setup(1, 1000);
    let mut on = setup_logged(1, 1000, 1);
    on.log_flows_nowhere();
    let (mut i, mut j, mut fi, mut fj) = (0usize, 0usize, 0u32, 0u32);
    for _ in 0..(n as usize).div_ceil(BATCH_SIZE) {
        step(&mut on, &mut j, &mut fj);
    }
    let p =
        paired(201, 1000, || step(&mut off, &mut i, &mut fi), || step(&mut on, &mut j, &mut fj));
    let st = on.pipeline.flows.stats;
    eprintln!(
        "paired, one tenant with {n} flows (201 rounds of 1000 batches): not logged {:.3} us, \
         logged {:.3} us per batch of 64, median ratio {:.3}; {} flows cached, {:.2} % hits",
        p.a_ns / 1e3,
        p.b_ns / 1e3,
        p.ratio,
        on.pipeline.flows.len(),
        100.0 * st.hits as f64 / (st.hits + st.misses).max(1) as f64,
    );
}

fn all(c: &mut Criterion) {
    tracing(c);
    many_flows();
}

criterion_group!(benches, all);
criterion_main!(benches);
