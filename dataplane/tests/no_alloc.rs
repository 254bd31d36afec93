//! The packet path allocates nothing: a counting global allocator watches whole poll rounds
//! (RX, parse, tenant, learning, forwarding, flooding with copies, VLAN edits, TX, completion,
//! aging) after warm-up, and must see zero allocations.
// Integration tests live outside `mod tests` by nature; the lint is for unit tests in src/.
#![allow(clippy::tests_outside_test_module)]
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dataplane::policy::acl::AclSet;
use dataplane::policy::conntrack::{SecurityGroup, SgRule, Timeouts};
use dataplane::policy::{Action, Direction, Guard, Match, Prefix, Rule, TenantPolicy};
use dataplane::port::mem::MemPort;
use dataplane::port::{FrameArea, PageSize};
use dataplane::snapshot::{
    Attachment, PolicyLimits, PortId, PortKind, SnapshotBuilder, TenantSpec,
};
use dataplane::time::Nanos;
use dataplane::trace::DropReason;
use dataplane::trace::flowlog::FlowExport;
use dataplane::wire::MacAddr;
use dataplane::worker::Worker;
use etherparse::PacketBuilder;

struct Counting;

static ARMED: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn frame(src: u8, dst: [u8; 6], vlan: Option<u16>) -> Vec<u8> {
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, src], dst);
    match vlan {
        Some(v) => b
            .single_vlan(v.try_into().unwrap())
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 2)
            .write(&mut out, &[0; 18]),
        None => b.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(1, 2).write(&mut out, &[0; 18]),
    }
    .unwrap();
    out
}

#[test]
fn poll_rounds_do_not_allocate() {
    let mut b = SnapshotBuilder::new(1).fdb_capacity(1024);
    let up = b.port("up", "up", PortKind::Uplink);
    let p1 = b.port("p1", "p1", PortKind::Tenant);
    let p2 = b.port("p2", "p2", PortKind::Tenant);
    let mut t = TenantSpec::new(
        "red",
        vec![
            Attachment { port: up, vlan: Some(100) },
            Attachment { port: p1, vlan: None },
            Attachment { port: p2, vlan: None },
        ],
    );
    t.fdb_quota = 64;
    t.mac_aging = Nanos::from_millis(500);
    b.tenant(t);
    let snap = Arc::new(b.build().unwrap());
    let area = FrameArea::new(4096, 2048, PageSize::Normal).unwrap();
    let ports = (0..3).map(|_| MemPort::new(4096)).collect();
    let mut w = Worker::new(area, ports, snap);

    // Prebuilt frames: broadcasts (flood + copies), unicasts to learned and unknown MACs,
    // tagged frames from the uplink (pop) and untagged towards it (push), a runt, and a flood
    // of new sources beyond the quota.
    let mut frames = Vec::new();
    for i in 0..200u8 {
        frames.push((p1, frame(i, [0xff; 6], None)));
        frames.push((p2, frame(i.wrapping_add(1), [2, 0, 0, 0, 0, i], None)));
        frames.push((up, frame(i.wrapping_add(2), [2, 0, 0, 0, 0, i], Some(100))));
        frames.push((p1, vec![0u8; 9]));
    }

    // Warm-up: queues and tables reach their working size.
    play_round(&mut w, &frames, 1);
    play_round(&mut w, &frames, 2);
    let rx_before: u64 = w.pipeline().counters.port_rx.iter().map(|p| p.packets).sum();

    // `inject` (the test's own traffic source) is not the packet path; it copies into frames
    // that already exist and pushes onto queues that are already sized.
    ARMED.store(true, Ordering::SeqCst);
    for t in 3..50 {
        play_round(&mut w, &frames, t * 1000); // 1 s apart: every round ages out the last one's MACs
    }
    ARMED.store(false, Ordering::SeqCst);

    let rx_after: u64 = w.pipeline().counters.port_rx.iter().map(|p| p.packets).sum();
    assert!(rx_after - rx_before >= 47 * 800, "the rounds moved traffic");
    assert!(w.pipeline().counters.flood_copies > 0 && w.pipeline().counters.fdb.aged > 0);
    assert_eq!(ALLOCS.load(Ordering::SeqCst), 0, "allocations on the packet path");
    assert!(w.census().balanced());

    // The same with the policy stages busy: guards, ACLs with a count rule through a cache
    // too small for the flows (puts and evictions every round), and a security group whose
    // 1-second UDP timeout makes every round expire and open the connections again.
    let policy = policed_snapshot();
    let area = FrameArea::new(4096, 2048, PageSize::Normal).unwrap();
    let ports = (0..3).map(|_| MemPort::new(4096)).collect();
    let mut w = Worker::new(area, ports, Arc::new(policy));
    // Flow logs on too: records go to a channel nobody reads (when it is full they are lost
    // and counted, which is also a path that must not allocate).
    let (records, _reader) = crossbeam_channel::bounded(1024);
    w.pipeline_mut().flows.log_flows(FlowExport::new(
        Nanos::from_secs(1),
        Nanos::from_secs(1),
        records,
    ));
    let mut frames = Vec::new();
    for i in 0..200u16 {
        frames.push((PortId(1), udp_from(1, 1000 + i, 53)));
        frames.push((PortId(1), udp_from(1, 1000 + i, 9))); // denied
        frames.push((PortId(1), udp_from(7, 1000 + i, 53))); // spoofed MAC
    }
    play_round(&mut w, &frames, 1);
    play_round(&mut w, &frames, 2_000);
    // A live trace samples one frame in 50 into buffers it was given when installed.
    w.pipeline_mut().sampler =
        Some(dataplane::trace::sample::Sampler::new(dataplane::snapshot::TenantId(0), 100, 50));
    ALLOCS.store(0, Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
    for t in 3..30 {
        play_round(&mut w, &frames, t * 2_000);
    }
    ARMED.store(false, Ordering::SeqCst);
    let c = &w.pipeline().counters;
    let (st, flows) = (&w.pipeline().policy, &w.pipeline().flows);
    assert!(c.drops(DropReason::Policy) >= 27 * 200, "{:?}", c.port_drops);
    assert!(c.drops(DropReason::Spoof) >= 27 * 200, "{:?}", c.port_drops);
    assert!(
        flows.stats.evictions > 0 && st.conns.stats.expired > 0 && st.conns.stats.opened > 27 * 100,
        "{:?} {:?}",
        flows.stats,
        st.conns.stats
    );
    assert!(c.acl_hits[0][0] > 0, "count rule");
    let fl = flows.log_stats().unwrap();
    assert!(w.pipeline().sampler.as_ref().is_some_and(|s| s.is_full()), "the sampler filled");
    assert!(fl.exported > 0 && fl.lost > 0, "{fl:?}");
    assert_eq!(ALLOCS.load(Ordering::SeqCst), 0, "allocations on the policy path");
    assert!(w.census().balanced());
}

/// Injects `frames` (polling whenever a port has a batch waiting), then completes what was
/// sent: one round of traffic at time `t` ms.
fn play_round(w: &mut Worker<MemPort>, frames: &[(PortId, Vec<u8>)], t: u64) {
    for (port, f) in frames {
        w.inject(*port, f);
        if w.sockets_mut().any(|(p, d)| p == *port && d.rx_pending() >= 64) {
            w.poll(Nanos::from_millis(t));
        }
    }
    w.poll(Nanos::from_millis(t));
    for (_, p) in w.sockets_mut() {
        p.discard_sent();
    }
    w.poll(Nanos::from_millis(t));
}

fn udp_from(src: u8, sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, src], [2, 0, 0, 0, 0, 0xee])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(sport, dport)
        .write(&mut out, &[0; 18])
        .unwrap();
    out
}

fn policed_snapshot() -> dataplane::snapshot::Snapshot {
    let limits = PolicyLimits {
        flow_cache_entries: 64,
        flow_cache_share_percent: 100,
        conntrack_capacity: 4096,
        ..PolicyLimits::default()
    };
    let mut b = SnapshotBuilder::new(1).fdb_capacity(1024).limits(limits);
    let up = b.port("up", "up", PortKind::Uplink);
    let p1 = b.port("p1", "p1", PortKind::Tenant);
    let mut t = TenantSpec::new(
        "red",
        vec![Attachment { port: up, vlan: Some(100) }, Attachment { port: p1, vlan: None }],
    );
    t.guards = vec![
        Guard::default(),
        Guard {
            macs: vec![MacAddr([2, 0, 0, 0, 0, 1])],
            ips: vec![Prefix::v4([10, 0, 0, 0], 24)],
            ethertypes: vec![],
        },
    ];
    let rules = vec![
        Rule {
            name: "count-udp".into(),
            priority: 1,
            action: Action::Count,
            m: Match { proto: Some(17), ..Match::default() },
        },
        Rule {
            name: "no-discard".into(),
            priority: 2,
            action: Action::Deny,
            m: Match {
                proto: Some(17),
                src_ports: Some((1000, 1300)),
                dst_ports: Some((9, 9)),
                ..Match::default()
            },
        },
    ];
    t.policy = TenantPolicy {
        acl: [AclSet::new(rules, Action::Allow), AclSet::default()],
        group: Some(SecurityGroup {
            rules: vec![SgRule { dir: Some(Direction::FromTenant), ..SgRule::default() }],
            quota: 1000,
            max_half_open: 0,
            max_half_open_per_source: 0,
            timeouts: Timeouts { udp: Nanos::from_secs(1), ..Timeouts::default() },
        }),
    };
    t.flow_log = true;
    b.tenant(t);
    b.build().unwrap()
}
