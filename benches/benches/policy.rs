//! Policy costs: ACL classification on a flow-cache miss, and the whole pipeline on the
//! cache-hit path, for 10, 1 000 and 10 000 rules and 100 000 active flows, beside the same
//! pipeline without rules.
//!
//! Run: `cargo bench -p xswitch-benches --bench policy`
//!
//! - `acl_miss/rules=N`: `AclSet::classify` (tuple-space search, no cache) on keys of 64
//!   packets of different flows per iteration; time per 64 lookups.
//! - `pipeline_acl/rules=N`: the L2 pipeline of the `pipeline` bench (1 tenant, 1 000 MACs)
//!   with the tenant's from-tenant ACL holding N rules; before each batch the bench stamps the
//!   next 64 of 100 000 flows (source address and port) into the frames, as a NIC would write
//!   new packets, so the flow cache holds 100 000 live entries and every lookup hits one of
//!   them (after one warm-up pass). `rules=0` is the pipeline without policy, stamped alike.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dataplane::batch::{BATCH_SIZE, Meta};
use dataplane::pipeline::parse::parse_one;
use dataplane::policy::Action;
use dataplane::policy::acl::{AclSet, key_of};
use dataplane::snapshot::PortId;
use dataplane::time::Nanos;
use xswitch_benches::{bench_rules, flows, frame, setup_with};

const RULES: [usize; 3] = [10, 1_000, 10_000];

fn acl_miss(c: &mut Criterion) {
    let mut g = c.benchmark_group("acl_miss");
    g.throughput(Throughput::Elements(BATCH_SIZE as u64));
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(3));
    // Keys of flows() distinct packets.
    let keys: Vec<_> = (0..flows())
        .map(|k| {
            let mut f = frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], 1).to_vec();
            let [_, x, y, z] = k.to_be_bytes();
            f[30..34].copy_from_slice(&[10, x, y, z]);
            f[38..40].copy_from_slice(&(1024 + (k % 50_000) as u16).to_be_bytes());
            let mut m = Meta::EMPTY;
            parse_one(&f, &mut m).expect("bench frame");
            key_of(&m, PortId(0))
        })
        .collect();
    for n in RULES {
        let set = AclSet::new(bench_rules(n), Action::Allow);
        let (tables, entries) = set.shape();
        eprintln!("acl_miss rules={n}: {tables} masks, {entries} entries");
        let mut i = 0usize;
        g.bench_function(BenchmarkId::from_parameter(format!("rules={n}")), |b| {
            b.iter(|| {
                for _ in 0..BATCH_SIZE {
                    black_box(set.classify(&keys[i]));
                    i = (i + 7919) % keys.len();
                }
            })
        });
    }
    g.finish();
}

fn pipeline_acl(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline_acl");
    g.throughput(Throughput::Elements(BATCH_SIZE as u64));
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(3));
    for n in [0usize, 10, 1_000, 10_000] {
        let rules = (n > 0).then(|| bench_rules(n));
        let mut s = setup_with(1, 1000, rules);
        let nflows = flows();
        let mut flow = 0u32;
        let mut i = 0usize;
        let mut step = |s: &mut xswitch_benches::Setup| {
            s.forward_flows(i, &mut flow, nflows, 1000, Nanos::from_secs(2));
            i += 1;
        };
        // Warm-up: every flow once, so the cache holds all of them.
        for _ in 0..(nflows as usize).div_ceil(BATCH_SIZE) {
            step(&mut s);
        }
        if n > 0 {
            let cache = &s.pipeline.flows;
            eprintln!("pipeline_acl rules={n}: {} cached flows", cache.len());
            // A 4-way set-associative table: a few sets overflow and those flows evict each
            // other (the hit rate of the measured run is printed below).
            if std::env::var("XSWITCH_BENCH_CACHE").is_err() {
                assert!(cache.len() >= nflows * 95 / 100, "flows did not fit the cache");
            }
        }
        let misses = s.pipeline.flows.stats.misses;
        g.bench_function(BenchmarkId::from_parameter(format!("rules={n}")), |b| {
            b.iter(|| {
                step(&mut s);
                black_box(&s.disp);
            })
        });
        let st = s.pipeline.flows.stats;
        let (hits, missed) = (st.hits, st.misses - misses);
        eprintln!(
            "pipeline_acl rules={n}: {hits} hits, {missed} misses after warm-up ({:.2} % hits), \
             {} frames dropped by a rule; cache {st:?}",
            100.0 * hits as f64 / (hits + missed).max(1) as f64,
            s.pipeline.counters.total_drops()
        );
    }
    g.finish();
}

criterion_group!(benches, acl_miss, pipeline_acl);
criterion_main!(benches);
