//! Several workers over in-memory ports: frames cross between workers through handoff rings,
//! chunks go home to the worker that owns them, MACs learned on one worker reach the others,
//! and the frame census over all workers always balances.
// Integration tests live outside `mod tests` by nature; the lint is for unit tests in src/.
#![allow(clippy::tests_outside_test_module)]

use std::sync::Arc;

use dataplane::policy::conntrack::{SecurityGroup, SgRule};
use dataplane::policy::{Direction, TenantPolicy};
use dataplane::port::mem::MemPort;
use dataplane::port::{FrameArea, PageSize};
use dataplane::snapshot::{Attachment, PortId, PortKind, Snapshot, SnapshotBuilder, TenantSpec};
use dataplane::time::Nanos;
use dataplane::trace::DropReason;
use dataplane::worker::mesh::mesh;
use dataplane::worker::{Applied, FrameCensus, Route, Worker, WorkerCmd};
use etherparse::PacketBuilder;

const UP: PortId = PortId(0);
const A1: PortId = PortId(1);
const A2: PortId = PortId(2);

/// red: uplink/100, a1, a2. Worker 0 polls the uplink and a1, worker 1 polls a2.
fn snapshot() -> Snapshot {
    snapshot_with(TenantPolicy::default())
}

fn snapshot_with(policy: TenantPolicy) -> Snapshot {
    let mut b = SnapshotBuilder::new(1).fdb_capacity(1024);
    let up = b.port("uplink", "up0", PortKind::Uplink);
    let a1 = b.port("a1", "a1", PortKind::Tenant);
    let a2 = b.port("a2", "a2", PortKind::Tenant);
    let mut red = TenantSpec::new(
        "red",
        vec![
            Attachment { port: up, vlan: Some(100) },
            Attachment { port: a1, vlan: None },
            Attachment { port: a2, vlan: None },
        ],
    );
    red.mac_aging = Nanos::from_secs(10);
    red.policy = policy;
    b.tenant(red);
    b.build().unwrap()
}

const CHUNKS: u32 = 512;

fn two_workers() -> [Worker<MemPort>; 2] {
    two_workers_with(snapshot())
}

fn two_workers_with(snap: Snapshot) -> [Worker<MemPort>; 2] {
    let area = FrameArea::new(CHUNKS, 2048, PageSize::Normal).unwrap();
    let snap = Arc::new(snap);
    let owners = [Some(0), Some(0), Some(1)];
    let mut links = mesh(2, area.chunks()).into_iter();
    // SAFETY: the two workers keep the frame ownership discipline (FrameArea::share), which
    // these tests exercise; each runs on one thread at a time.
    #[allow(unsafe_code)]
    let handle = unsafe { area.share() };
    let w0 = Worker::in_mesh(
        handle,
        vec![(UP, MemPort::new(128)), (A1, MemPort::new(128))],
        links.next().unwrap(),
        &owners,
        snap.clone(),
    );
    let w1 =
        Worker::in_mesh(area, vec![(A2, MemPort::new(128))], links.next().unwrap(), &owners, snap);
    [w0, w1]
}

fn mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, i]
}

fn udp(src: [u8; 6], dst: [u8; 6], vlan: Option<u16>) -> Vec<u8> {
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(src, dst);
    match vlan {
        Some(v) => b
            .single_vlan(v.try_into().unwrap())
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1, 2)
            .write(&mut out, &[7; 18]),
        None => b.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(1, 2).write(&mut out, &[7; 18]),
    }
    .unwrap();
    out
}

/// A few breaths of both workers, alternating, so handoffs and returns arrive.
fn breathe(ws: &mut [Worker<MemPort>; 2], now: Nanos) {
    for _ in 0..3 {
        ws[0].poll(now);
        ws[1].poll(now);
    }
}

fn census(ws: &[Worker<MemPort>; 2]) -> FrameCensus {
    ws[0].census().merge(ws[1].census())
}

#[test]
fn routes_point_at_the_worker_that_polls_the_port() {
    let ws = two_workers();
    assert_eq!(ws[0].routes(), &[Route::Local(0), Route::Local(1), Route::Peer(1)]);
    assert_eq!(ws[1].routes(), &[Route::Peer(0), Route::Peer(0), Route::Local(0)]);
}

#[test]
fn frames_cross_workers_learning_follows_and_chunks_go_home() {
    let mut ws = two_workers();
    let t = Nanos::from_secs(1);
    let own0 = ws[0].census().free;
    let own1 = ws[1].census().free;

    // a2 (worker 1) broadcasts: worker 1 floods to a1 and the uplink through worker 0.
    assert!(ws[1].inject(A2, &udp(mac(2), [0xff; 6], None)));
    breathe(&mut ws, t);
    let a1 = ws[0].take_sent(A1);
    let up = ws[0].take_sent(UP);
    assert_eq!((a1.len(), up.len()), (1, 1));
    assert_eq!(&up[0][12..16], &[0x81, 0x00, 0, 100], "tagged for the uplink by worker 1");
    assert_eq!(ws[1].take_sent(A2).len(), 0, "never back out of the ingress port");

    // a1 (worker 0) answers: worker 0 learned mac(2) behind a2 from worker 1's announcement,
    // so the answer is unicast to a2, through worker 1, not flooded to the uplink.
    assert!(ws[0].inject(A1, &udp(mac(1), mac(2), None)));
    breathe(&mut ws, t);
    assert_eq!(ws[1].take_sent(A2).len(), 1);
    assert_eq!(ws[0].take_sent(UP).len(), 0, "unicast, not flooded");
    // And back: worker 1 learned mac(1) behind a1.
    assert!(ws[1].inject(A2, &udp(mac(2), mac(1), None)));
    breathe(&mut ws, t);
    assert_eq!(ws[0].take_sent(A1).len(), 1);
    assert_eq!(ws[0].take_sent(UP).len(), 0);

    let c0 = &ws[0].pipeline().counters;
    let c1 = &ws[1].pipeline().counters;
    assert!(c0.fdb.remote >= 1 && c1.fdb.remote >= 1, "{:?} {:?}", c0.fdb, c1.fdb);
    assert_eq!(c0.total_drops() + c1.total_drops(), 0);
    // Frames are counted as sent by the worker that sent them: 4 in all.
    let sent: u64 = [c0, c1].iter().flat_map(|c| c.port_tx.iter()).map(|p| p.packets).sum();
    assert_eq!(sent, 4);

    // Every chunk is back in the pool of the worker that owns it.
    breathe(&mut ws, t);
    let c = census(&ws);
    assert!(c.balanced(), "{c:?}");
    assert_eq!((ws[0].census().free, ws[1].census().free), (own0, own1), "{c:?}");
}

#[test]
fn one_way_traffic_does_not_drain_the_senders_pool() {
    // 10 000 frames from a2 (worker 1) to a1 (worker 0): without returns worker 1's pool, a
    // quarter of this size, would run dry after 256 frames.
    let mut ws = two_workers();
    let t = Nanos::from_secs(1);
    assert!(ws[0].inject(A1, &udp(mac(1), [0xff; 6], None)));
    breathe(&mut ws, t);
    ws[0].take_sent(UP);
    ws[1].take_sent(A2);
    let frame = udp(mac(2), mac(1), None);
    let mut delivered = 0;
    for _ in 0..10_000 / 50 {
        for _ in 0..50 {
            assert!(ws[1].inject(A2, &frame), "worker 1 ran out of frames");
        }
        breathe(&mut ws, t);
        delivered += ws[0].take_sent(A1).len();
        assert!(census(&ws).balanced(), "{:?}", census(&ws));
    }
    assert_eq!(delivered, 10_000);
    breathe(&mut ws, t);
    assert_eq!(ws[1].census().free, CHUNKS / 2);
}

#[test]
fn workers_on_two_threads_keep_every_frame() {
    // The real arrangement: each worker on its own thread, traffic both ways across them.
    let [mut w0, mut w1] = two_workers();
    let t = Nanos::from_secs(1);
    let run = |w: &mut Worker<MemPort>, inject: PortId, frame: Vec<u8>, out: PortId| {
        let mut got = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut sent = 0;
        while (sent < 5_000 || got < 5_000) && std::time::Instant::now() < deadline {
            if sent < 5_000 && w.inject(inject, &frame) {
                sent += 1;
            }
            w.poll(t);
            got += w.take_sent(out).len();
        }
        // Keep breathing a little so the peer's last frames and chunks are taken.
        for _ in 0..1000 {
            w.poll(t);
            got += w.take_sent(out).len();
        }
        (sent, got)
    };
    // Learn both MACs first so nothing floods.
    assert!(w0.inject(A1, &udp(mac(1), [0xff; 6], None)));
    assert!(w1.inject(A2, &udp(mac(2), [0xff; 6], None)));
    for _ in 0..3 {
        w0.poll(t);
        w1.poll(t);
    }
    w0.take_sent(UP);
    w0.take_sent(A1);
    w1.take_sent(A2);
    let ((s0, g0), (s1, g1)) = std::thread::scope(|s| {
        let h = s.spawn(|| run(&mut w1, A2, udp(mac(2), mac(1), None), A2));
        let a = run(&mut w0, A1, udp(mac(1), mac(2), None), A1);
        (a, h.join().unwrap())
    });
    assert_eq!((s0, s1), (5_000, 5_000));
    // Worker 0 receives a2's frames on a1, worker 1 receives a1's frames on a2.
    assert_eq!((g0, g1), (5_000, 5_000));
    let ws = [w0, w1];
    let c = census(&ws);
    assert!(c.balanced(), "{c:?}");
}

/// TCP with `flags` (SYN 2, ACK 16) between 10.0.0.1:1000 (a tenant host) and 10.0.0.9:443
/// (behind the uplink); `out` picks the direction.
fn tcp(src: [u8; 6], dst: [u8; 6], vlan: Option<u16>, out: bool, flags: u8) -> Vec<u8> {
    let (sa, da, sp, dp) = if out {
        ([10, 0, 0, 1], [10, 0, 0, 9], 1000, 443)
    } else {
        ([10, 0, 0, 9], [10, 0, 0, 1], 443, 1000)
    };
    let eth = PacketBuilder::ethernet2(src, dst);
    let mut b = match vlan {
        Some(v) => eth.single_vlan(v.try_into().unwrap()).ipv4(sa, da, 64).tcp(sp, dp, 1, 1000),
        None => eth.ipv4(sa, da, 64).tcp(sp, dp, 1, 1000),
    };
    if flags & 2 != 0 {
        b = b.syn();
    }
    if flags & 16 != 0 {
        b = b.ack(1);
    }
    let mut v = Vec::new();
    b.write(&mut v, &[]).unwrap();
    v
}

#[test]
fn return_traffic_passes_on_the_worker_that_did_not_open_the_connection() {
    // Anything may leave the tenant; nothing may open a connection into it.
    let group = SecurityGroup {
        rules: vec![SgRule { dir: Some(Direction::FromTenant), ..SgRule::default() }],
        quota: 100,
        max_half_open: 0,
        max_half_open_per_source: 0,
        ..SecurityGroup::default()
    };
    let mut ws = two_workers_with(snapshot_with(TenantPolicy {
        group: Some(group),
        ..TenantPolicy::default()
    }));
    let t = Nanos::from_secs(1);
    let far = mac(9);
    // The far host behind the uplink (worker 0) makes itself known with a broadcast that is
    // not IP (security groups track IP only).
    let hello = [&[0xff; 6][..], &far, &[0x81, 0x00, 0, 100, 0x88, 0xb5], &[0; 46]].concat();
    assert!(ws[0].inject(UP, &hello));
    breathe(&mut ws, t);
    for p in [UP, A1] {
        ws[0].take_sent(p);
    }
    ws[1].take_sent(A2);
    // a2's host (worker 1) opens a connection to it: from the tenant only, so it is opened on
    // worker 1, and leaves on the uplink through worker 0.
    assert!(ws[1].inject(A2, &tcp(mac(2), far, None, true, 2)));
    breathe(&mut ws, t);
    assert_eq!(ws[0].take_sent(UP).len(), 1);
    // The answer arrives on the uplink, polled by worker 0, which never saw the opening
    // packet's connection check: it must know the connection from worker 1's announcement.
    assert!(ws[0].inject(UP, &tcp(far, mac(2), Some(100), false, 2 | 16)));
    breathe(&mut ws, t);
    assert_eq!(ws[1].take_sent(A2).len(), 1, "the SYN-ACK was refused");
    // An unsolicited connection from the far host is refused.
    let mut syn = tcp(far, mac(2), Some(100), false, 2);
    syn[40..42].copy_from_slice(&22u16.to_be_bytes()); // another destination port
    assert!(ws[0].inject(UP, &syn));
    breathe(&mut ws, t);
    assert_eq!(ws[1].take_sent(A2).len(), 0);
    let c0 = &ws[0].pipeline();
    assert_eq!(c0.counters.drops(DropReason::Policy), 1);
    assert_eq!(c0.policy.conns.stats.remote, 1);
    assert!(census(&ws).balanced());
}

#[test]
fn a_port_whose_device_vanished_drops_its_frames_as_port_down_and_comes_back_replaced() {
    let area = FrameArea::new(CHUNKS, 2048, PageSize::Normal).unwrap();
    let ports = vec![MemPort::new(128), MemPort::new(128), MemPort::new(128)];
    let mut w = Worker::new(area, ports, Arc::new(snapshot()));
    let mut now = Nanos::from_secs(1);
    let mut step = |w: &mut Worker<MemPort>, port: PortId, src: u8, dst: u8| {
        let vlan = (port == UP).then_some(100);
        let dst = if dst == 0xff { [0xff; 6] } else { mac(dst) };
        assert!(w.inject(port, &udp(mac(src), dst, vlan)));
        now = now.add(Nanos::from_millis(1));
        w.poll(now);
        [UP, A1, A2].map(|p| w.take_sent(p).len())
    };
    // Hosts 1 (a1) and 2 (a2) are learned.
    step(&mut w, A1, 1, 2);
    step(&mut w, A2, 2, 1);
    assert_eq!(step(&mut w, A1, 1, 2), [0, 0, 1]);

    // a2's device goes: frames for it are dropped as port_down, the others still flow.
    assert!(matches!(
        w.apply(Nanos::from_secs(1), WorkerCmd::SocketDown { port: A2, queue: 0 }),
        Applied::Done
    ));
    assert!(w.is_down(A2, 0));
    let before = w.pipeline().counters.drops(DropReason::PortDown);
    assert_eq!(step(&mut w, A1, 1, 2), [0, 0, 0]);
    assert_eq!(w.pipeline().counters.drops(DropReason::PortDown), before + 1);
    assert_eq!(step(&mut w, UP, 3, 1), [0, 1, 0], "uplink -> a1 still flows");
    // A flood reaches the ports that are up; the copy for the down one is a port_down drop.
    assert_eq!(step(&mut w, A1, 1, 0xff), [1, 0, 0]);
    assert_eq!(w.pipeline().counters.drops(DropReason::PortDown), before + 2);
    assert!(w.census().balanced(), "{:?}", w.census());

    // Frames the vanished device still holds: received, never read (a down socket is not
    // polled: the step below would otherwise have switched them to a1).
    for _ in 0..3 {
        assert!(w.inject(A2, &udp(mac(2), mac(1), None)));
    }
    let free = w.census().free;

    // It comes back: a new socket takes its place and frames flow again; the old one's frames
    // go back to the pool, and the old socket to the caller (to close off the poll loop).
    let cmd = WorkerCmd::ReplaceSocket { port: A2, driver: Box::new(MemPort::new(128)) };
    assert!(matches!(w.apply(Nanos::from_secs(1), cmd), Applied::Removed { lost: 0, .. }));
    assert_eq!(w.census().free, free + 3, "the old socket's frames are free again");
    assert!(!w.is_down(A2, 0));
    assert_eq!(step(&mut w, A1, 1, 2), [0, 0, 1]);
    assert!(w.census().balanced(), "{:?}", w.census());
}

/// Red on up/100, a1, a2 (ids 0..2, since generation 1), and what reloads make of it.
fn red_and(b: &mut SnapshotBuilder, a2: bool) {
    let up = b.port_at(UP, "uplink", "up0", PortKind::Uplink, 1);
    let a1 = b.port_at(A1, "a1", "a1", PortKind::Tenant, 1);
    let mut at =
        vec![Attachment { port: up, vlan: Some(100) }, Attachment { port: a1, vlan: None }];
    if a2 {
        at.push(Attachment { port: b.port_at(A2, "a2", "a2", PortKind::Tenant, 1), vlan: None });
    } else {
        b.vacant_port(A2);
    }
    let mut red = TenantSpec::new("red", at);
    red.since = 1;
    b.tenant_at(dataplane::snapshot::TenantId(0), red);
}

// Issue 17: a reload adds a port and a tenant, removes a port and a tenant, and gives a vacant
// id to a new tenant; each through `Worker::apply`, as the switch sends them. What a reload
// does not touch keeps its MACs and counters; a removed port's frames are `port_down` drops;
// an id given to a new holder starts at zero; the census balances throughout.
#[test]
fn reloads_add_and_remove_ports_and_tenants_and_the_rest_keeps_its_state() {
    use dataplane::snapshot::TenantId;
    const A3: PortId = PortId(3);
    let blue = TenantId(1);
    let area = FrameArea::new(CHUNKS, 2048, PageSize::Normal).unwrap();
    let ports = vec![MemPort::new(128), MemPort::new(128), MemPort::new(128)];
    let mut w = Worker::new(area, ports, Arc::new(snapshot()));
    let mut now = Nanos::from_secs(1);
    let mut step = |w: &mut Worker<MemPort>, port: PortId, src: u8, dst: u8, vlan: Option<u16>| {
        let dst = if dst == 0xff { [0xff; 6] } else { mac(dst) };
        assert!(w.inject(port, &udp(mac(src), dst, vlan)));
        now = now.add(Nanos::from_millis(1));
        w.poll(now);
        [UP, A1, A2, A3].map(|p| w.take_sent(p).len())
    };
    step(&mut w, A1, 1, 2, None);
    step(&mut w, A2, 2, 1, None);
    assert_eq!(step(&mut w, A1, 1, 2, None), [0, 0, 1, 0]);
    let red_rx = |w: &Worker<MemPort>| w.pipeline().counters.tenant_rx[0].packets;
    let (rx, macs) = (red_rx(&w), w.pipeline().fdb().len());
    assert_eq!(macs, 2);

    // Generation 2: port a3 and tenant blue (a3, up/200) come; red is untouched.
    let mut b = SnapshotBuilder::new(2).fdb_capacity(1024);
    red_and(&mut b, true);
    let a3 = b.port_at(A3, "a3", "a3", PortKind::Tenant, 2);
    let mut t = TenantSpec::new(
        "blue",
        vec![Attachment { port: a3, vlan: None }, Attachment { port: UP, vlan: Some(200) }],
    );
    t.since = 2;
    b.tenant_at(blue, t);
    let g2 = Arc::new(b.build().unwrap());
    assert!(matches!(w.apply(Nanos::from_secs(1), WorkerCmd::Install(g2)), Applied::Replaced(_)));
    let cmd = WorkerCmd::AddSocket { port: A3, driver: Box::new(MemPort::new(128)) };
    assert!(matches!(w.apply(Nanos::from_secs(1), cmd), Applied::Done));
    assert_eq!(w.routes()[3], Route::Local(3));
    assert_eq!((red_rx(&w), w.pipeline().fdb().len()), (rx, 2), "red's state across the reload");
    // Known unicast is not flooded: red's MACs survived.
    let copies = w.pipeline().counters.flood_copies;
    assert_eq!(step(&mut w, A1, 1, 2, None), [0, 0, 1, 0]);
    assert_eq!(w.pipeline().counters.flood_copies, copies);
    // Blue switches between a3 and its VLAN, apart from red.
    assert_eq!(step(&mut w, A3, 7, 0xff, None), [1, 0, 0, 0], "blue's broadcast: up/200 only");
    assert_eq!(w.pipeline().counters.tenant_rx[1].packets, 1);

    // Frames a2 received but the worker has not read when a2 is removed: port_down drops.
    for _ in 0..3 {
        assert!(w.inject(A2, &udp(mac(2), mac(1), None)));
    }
    let down = w.pipeline().counters.drops(DropReason::PortDown);
    let removed = w.apply(Nanos::from_secs(1), WorkerCmd::RemoveSocket { port: A2, queue: 0 });
    assert!(matches!(removed, Applied::Removed { lost: 0, .. }), "{removed:?}");
    assert_eq!(w.pipeline().counters.drops(DropReason::PortDown), down + 3);
    assert!(matches!(
        w.apply(Nanos::from_secs(1), WorkerCmd::RemoveSocket { port: A2, queue: 0 }),
        Applied::NoSuchSocket
    ));
    // Generation 3: a2 removed (its id vacant), blue removed (its id vacant).
    let mut b = SnapshotBuilder::new(3).fdb_capacity(1024);
    red_and(&mut b, false);
    b.vacant_port(A3);
    b.vacant_tenant(blue);
    w.apply(Nanos::from_secs(1), WorkerCmd::Install(Arc::new(b.build().unwrap())));
    assert_eq!(w.pipeline().fdb().len(), 1, "red's MAC behind a2 went with a2");
    assert_eq!(step(&mut w, A1, 1, 2, None), [1, 0, 0, 0], "to the vanished MAC: flooded");
    assert_eq!(w.pipeline().counters.tenant_rx[1].packets, 1, "kept until the id is reused");
    assert!(w.census().balanced(), "{:?}", w.census());

    // Generation 4: green takes blue's id (vacant since generation 3): it starts at zero.
    let mut b = SnapshotBuilder::new(4).fdb_capacity(1024);
    red_and(&mut b, false);
    b.vacant_port(A3);
    let mut t = TenantSpec::new("green", vec![Attachment { port: UP, vlan: Some(300) }]);
    t.since = 4;
    b.tenant_at(blue, t);
    w.apply(Nanos::from_secs(1), WorkerCmd::Install(Arc::new(b.build().unwrap())));
    assert_eq!(w.pipeline().counters.tenant_rx[1].packets, 0, "green inherits blue's counts");
    assert_eq!(red_rx(&w), rx + 2, "red counts on (two frames from a1 since)");
    assert!(w.census().balanced(), "{:?}", w.census());
}

// Issue 17: `Plan` tells a worker which worker polls each port it has no socket of, and how
// many workers share each port's rates.
#[test]
fn plan_commands_reach_the_worker() {
    let [mut w0, mut w1] = two_workers();
    let t = Nanos::from_secs(1);
    // a2 moves from worker 1 to worker 0 (as a reload that removes and adds it would).
    let removed = w1.apply(t, WorkerCmd::RemoveSocket { port: A2, queue: 0 });
    assert!(matches!(removed, Applied::Removed { lost: 0, .. }));
    assert_eq!(w1.routes()[2], Route::Unreachable, "nobody polls a2 now");
    let cmd = WorkerCmd::AddSocket { port: A2, driver: Box::new(MemPort::new(128)) };
    assert!(matches!(w0.apply(t, cmd), Applied::Done));
    assert_eq!(w0.routes()[2], Route::Local(2));
    let plan =
        |owner| WorkerCmd::Plan { owners: vec![Some(0), Some(0), owner], shares: vec![2, 1, 1] };
    w1.apply(t, plan(Some(0)));
    assert_eq!(w1.routes()[2], Route::Peer(0));
    assert_eq!(w1.pipeline().rate_shares(), [2, 1, 1]);
    w1.apply(t, plan(None));
    assert_eq!(w1.routes()[2], Route::Unreachable);
    // A socket of its own wins over the plan.
    w0.apply(t, plan(Some(1)));
    assert_eq!(w0.routes()[2], Route::Local(2));
}

#[test]
fn frames_for_a_port_no_socket_serves_drop_as_port_down_not_tx_full() {
    let mut ws = two_workers();
    let t = Nanos::from_secs(1);
    // a2 loses its socket and nobody polls it (a port waiting for its interface).
    assert!(matches!(
        ws[1].apply(t, WorkerCmd::RemoveSocket { port: A2, queue: 0 }),
        Applied::Removed { .. }
    ));
    let plan = WorkerCmd::Plan { owners: vec![Some(0), Some(0), None], shares: vec![1, 1, 1] };
    ws[0].apply(t, plan);
    assert_eq!(ws[0].routes()[2], Route::Unreachable);
    // Broadcasts from a1 flood to the uplink and to a2: the uplink's copies go out, a2's are
    // dropped at once as port_down, however many come (more than a TX list holds).
    let frame = udp(mac(1), [0xff; 6], None);
    let n = 300;
    for k in 0..n {
        assert!(ws[0].inject(A1, &frame), "frame {k}");
        breathe(&mut ws, t);
        ws[0].take_sent(UP);
    }
    let c = &ws[0].pipeline().counters;
    assert_eq!(c.drops(DropReason::PortDown), n);
    assert_eq!(c.drops(DropReason::TxFull), 0);
    // Nothing waits for a2, and every frame is accounted for.
    breathe(&mut ws, t);
    let total = census(&ws);
    assert_eq!(total.pending, 0, "{total:?}");
    assert!(total.balanced(), "{total:?}");
}
