//! What observability costs: the L2 pipeline of the `pipeline` bench (100 tenants, 1 000 MACs)
//! with counters only (always on), against the same with flow logging for every tenant and a
//! live capture of one tenant of the 100 (a filter that matches its traffic: about 1 % of the
//! frames are copied). Time per batch of 64.
//!
//! Run: `cargo bench -p xswitch-benches --bench tracing`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dataplane::batch::BATCH_SIZE;
use dataplane::snapshot::TenantId;
use dataplane::time::Nanos;
use dataplane::trace::capture::{CaptureFilter, Tap, channels};
use dataplane::trace::flowlog::FlowLog;
use xswitch_benches::{BATCHES, setup, setup_logged};

fn tracing(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline_tracing");
    g.throughput(Throughput::Elements(BATCH_SIZE as u64));
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(3));
    for on in [false, true] {
        let mut s = if on { setup_logged(100, 1000) } else { setup(100, 1000) };
        // The capture writer's part: take copies and hand the buffers back, on another thread.
        let mut keep = None;
        if on {
            let (records, sink) = crossbeam_channel::bounded(1 << 16);
            s.pipeline.flowlog =
                Some(FlowLog::new(65_536, Nanos::from_secs(60), Nanos::from_secs(15), records));
            let (free, filled, taken, back) = channels(4096);
            s.pipeline.capture = Some(Tap {
                tenant: TenantId(0),
                filter: CaptureFilter {
                    proto: Some(17),
                    port: Some(53),
                    ..CaptureFilter::default()
                },
                snaplen: 128,
                free,
                filled,
                skipped: 0,
                copied: 0,
            });
            // Polls, as the switch's writer does (a blocking receive would make every send a
            // wakeup syscall).
            let writer = std::thread::spawn(move || {
                loop {
                    match taken.try_recv() {
                        Ok(b) => {
                            let _ = back.send(b);
                        }
                        Err(crossbeam_channel::TryRecvError::Empty) => {
                            std::thread::sleep(Duration::from_millis(1))
                        }
                        Err(crossbeam_channel::TryRecvError::Disconnected) => break,
                    }
                }
            });
            keep = Some((sink, writer));
        }
        let mut i = 0usize;
        let name = if on { "counters+flowlog+capture" } else { "counters" };
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                s.forward(i, Nanos::from_secs(2));
                i = (i + 1) % BATCHES;
                black_box(&s.disp);
            })
        });
        if let Some(tap) = &s.pipeline.capture {
            eprintln!("capture: {} frames copied, {} skipped", tap.copied, tap.skipped);
            assert!(tap.copied > 0, "the capture matched nothing");
        }
        // Ends the writer thread: the tap's channels close with the pipeline.
        s.pipeline.capture = None;
        drop(keep);
    }
    g.finish();
}

criterion_group!(benches, tracing);
criterion_main!(benches);
