//! Counts work for `callgrind`: the policy bench's `pipeline_acl` (1 tenant, 1 000 MACs, RULES
//! rules in its from-tenant ACL, FLOWS flows stamped into the frames in turn), every flow seen
//! once first, then N batches.
//! `valgrind --tool=callgrind target/release/examples/policy_count 10000 100000 2000`.
use dataplane::batch::BATCH_SIZE;
use dataplane::time::Nanos;
use xswitch_benches::{bench_rules, setup_with};

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().ok());
    let rules = args.next().flatten().unwrap_or(10_000);
    let flows = args.next().flatten().unwrap_or(100_000) as u32;
    let n = args.next().flatten().unwrap_or(2_000);
    let mut s = setup_with(1, 1000, (rules > 0).then(|| bench_rules(rules)));
    let mut flow = 0u32;
    let warm = (flows as usize).div_ceil(BATCH_SIZE);
    for i in 0..warm + n {
        s.forward_flows(i, &mut flow, flows, 1000, Nanos::from_secs(2));
    }
    println!("{}", s.pipeline.counters.port_tx.iter().map(|x| x.packets).sum::<u64>());
}
