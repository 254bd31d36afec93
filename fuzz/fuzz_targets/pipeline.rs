//! The whole pipeline of one worker over in-memory ports, with a config the fuzzer shapes
//! (tenants, attachments, anti-spoofing, ACLs, security groups, policers, shapers, port rate,
//! flow logs)
//! and a stream of frames, clock steps and reloads, some of which remove or bring back a
//! tenant or a port (its socket taken out of the worker or handed to it, as a live reload
//! does).
//!
//! Checked beyond "no panic" (debug assertions are on, so the worker also checks its frame
//! census after every poll):
//! - isolation: every frame a port sends is one that a tenant attached to that port (with the
//!   tag it leaves with) injected, modulo the tags the switch pushes or pops;
//! - accounting: every injected frame is counted received, and at the end every frame of the
//!   area is in exactly one place;
//! - fragments (sent in order, reversed, overlapping, with one missing), for tenants with ACLs
//!   or a security group: no later fragment leaves the switch unless its datagram's first
//!   fragment came before it and was not dropped by the pipeline's decision.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arbitrary::Arbitrary;
use dataplane::pipeline::output::complete_partial_checksum;
use dataplane::port::mem::MemPort;
use dataplane::port::{FrameArea, PageSize};
use dataplane::snapshot::CHECK_POLICY;
use dataplane::snapshot::{PortId, Snapshot, TenantId};
use dataplane::time::Nanos;
use dataplane::trace::DropReason;
use dataplane::worker::{Applied, Worker, WorkerCmd};
use libfuzzer_sys::fuzz_target;
use xswitch_fuzz::{FragSpec, FrameSpec, WorldSpec};

/// Drops the pipeline decides (a fragment dropped so is denied); the others happen on the
/// way out (a full queue), after the decision.
const DECIDED: [DropReason; 10] = [
    DropReason::Malformed,
    DropReason::UnknownTenant,
    DropReason::InvalidSrcMac,
    DropReason::Hairpin,
    DropReason::Spoof,
    DropReason::Policy,
    DropReason::ConntrackFull,
    DropReason::RateLimit,
    DropReason::Fragment,
    DropReason::Ethertype,
];

fn decided_drops(w: &Worker<MemPort>) -> u64 {
    DECIDED.iter().map(|r| w.pipeline().counters.drops(*r)).sum()
}

/// A datagram: source, destination, protocol, identification.
type Datagram = ([u8; 4], [u8; 4], u8, u16);

/// A fragment's datagram and offset, read back from a frame (tags skipped).
fn fragment_of(f: &[u8]) -> Option<(Datagram, usize)> {
    let mut l3 = 12;
    while matches!(f.get(l3..l3 + 2), Some([0x81, 0x00]) | Some([0x88, 0xa8])) {
        l3 += 4;
    }
    if f.get(l3..l3 + 2)? != [0x08, 0x00] {
        return None;
    }
    let ip = f.get(l3 + 2..l3 + 22)?;
    let word = u16::from_be_bytes([ip[6], ip[7]]);
    if word & 0x3fff == 0 {
        return None;
    }
    let addr = |at: usize| [ip[at], ip[at + 1], ip[at + 2], ip[at + 3]];
    let ident = u16::from_be_bytes([ip[4], ip[5]]);
    Some(((addr(12), addr(16), ip[9], ident), usize::from(word & 0x1fff) * 8))
}

#[derive(Arbitrary, Debug)]
enum Op {
    Frame {
        port: u8,
        frame: FrameSpec,
    },
    Fragments {
        port: u8,
        spec: FragSpec,
    },
    Poll {
        advance_us: u16,
    },
    Reload,
    /// Removes tenant `t` (index mod 4), or brings it back if removed.
    ToggleTenant {
        t: u8,
    },
    /// Removes tenant port `p` (p1..p3) and the attachments to it, or brings it back.
    TogglePort {
        p: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    world: WorldSpec,
    ops: Vec<Op>,
}

fn outer_vlan(f: &[u8]) -> Option<u16> {
    match f.get(12..16) {
        Some([0x81, 0x00, hi, lo]) | Some([0x88, 0xa8, hi, lo]) => {
            Some(u16::from_be_bytes([*hi, *lo]) & 0x0fff)
        }
        _ => None,
    }
}

fn untag(f: &[u8]) -> Vec<u8> {
    let mut v = f[..12].to_vec();
    v.extend_from_slice(&f[16..]);
    v
}

/// Who injected which bytes (with the tag of their attachment removed).
type Seen = HashMap<Vec<u8>, HashSet<TenantId>>;

/// Every frame a port sent was injected by a tenant attached to that port in one of the
/// snapshots the worker ran (a frame accepted before a reload may leave after it).
fn check_sent(snaps: &[Arc<Snapshot>], port: PortId, frames: Vec<Vec<u8>>, seen: &Seen) {
    for f in frames {
        let ok = snaps.iter().any(|snap| sent_by(snap, port, &f, seen));
        assert!(ok, "port {port:?} sent a frame no tenant attached there injected: {f:02x?}");
    }
}

fn sent_by(snap: &Snapshot, port: PortId, f: &[u8], seen: &Seen) -> bool {
    snap.tenants.iter().enumerate().any(|(t, spec)| {
        spec.attachments.iter().filter(|a| a.port == port).any(|a| {
            let inner = match a.vlan {
                Some(v) if outer_vlan(f) == Some(v) => untag(f),
                Some(_) => return false,
                None => f.to_vec(),
            };
            seen.get(&inner).is_some_and(|ts| ts.contains(&TenantId(t as u16)))
        })
    })
}

/// `full` without the removed tenants and ports (attachments to a removed port go; a tenant
/// left with none goes too).
fn without(
    full: &control::config::Config,
    tenants: &HashSet<String>,
    ports: &HashSet<String>,
) -> control::config::Config {
    let mut c = full.clone();
    c.ports.retain(|n, _| !ports.contains(n));
    c.tenants.retain(|n, _| !tenants.contains(n));
    for t in c.tenants.values_mut() {
        t.attach.retain(|a| !ports.contains(&a.port));
        t.static_macs.retain(|m| !ports.contains(&m.port));
    }
    c.tenants.retain(|_, t| !t.attach.is_empty());
    c
}

fuzz_target!(|input: Input| {
    let text = input.world.toml();
    let Ok(cfg) = control::config::load_str("fuzz.toml", &text) else { return };
    let Ok(snap) = control::compile(&cfg, 1) else { return };
    let snap = Arc::new(snap);
    let area = FrameArea::new(cfg.switch.frames, cfg.switch.frame_size, PageSize::Normal)
        .expect("a 4 MiB frame area");
    let ports: Vec<MemPort> = snap.ports.iter().map(|_| MemPort::new(256)).collect();
    let mut nports = ports.len();
    let mut w = Worker::new(area, ports, snap.clone());
    // What the worker runs, every snapshot it ran, and what is removed.
    let mut snap = snap;
    let mut snaps = vec![snap.clone()];
    let (mut gone_tenants, mut gone_ports) = (HashSet::new(), HashSet::new());
    // Frames received on ports whose ids went to new ports (their counters start again).
    let mut cleared = 0u64;
    let mut now = Nanos::from_secs(1);
    let mut seen = Seen::new();
    let mut injected = 0u64;
    let mut generation = 1;
    // Per tenant and datagram: was its last first fragment dropped by a decision?
    let mut firsts: HashMap<(TenantId, Datagram), bool> = HashMap::new();
    for op in input.ops.iter().take(256) {
        match op {
            Op::Frame { port, frame } => {
                let port = PortId(u16::from(*port) % nports as u16);
                let bytes = frame.build();
                if bytes.len() >= 16 || outer_vlan(&bytes).is_none() {
                    let vlan = outer_vlan(&bytes);
                    if let Some((t, a)) = snap.resolve(port, vlan) {
                        let tagged = snap.attachment(t, a).is_some_and(|a| a.vlan.is_some());
                        let inner = if tagged { untag(&bytes) } else { bytes.clone() };
                        // The switch completes a partial checksum on the way out.
                        let mut done = inner.clone();
                        if complete_partial_checksum(&mut done) {
                            seen.entry(done).or_default().insert(t);
                        }
                        seen.entry(inner).or_default().insert(t);
                    }
                }
                if w.inject(port, &bytes) {
                    injected += 1;
                }
            }
            Op::Fragments { port, spec } => {
                let port = PortId(u16::from(*port) % nports as u16);
                // Whatever waits is decided first, so the drops counted below are the
                // fragment's own.
                for _ in 0..5 {
                    w.poll(now);
                }
                for p in 0..nports {
                    let p = PortId(p as u16);
                    let sent = w.take_sent(p);
                    check_sent(&snaps, p, sent, &seen);
                }
                for frag in spec.build() {
                    let bytes = frag.bytes;
                    let tenant = snap.resolve(port, outer_vlan(&bytes)).map(|(t, a)| {
                        let tagged = snap.attachment(t, a).is_some_and(|a| a.vlan.is_some());
                        let inner = if tagged { untag(&bytes) } else { bytes.clone() };
                        seen.entry(inner).or_default().insert(t);
                        t
                    });
                    let before = decided_drops(&w);
                    if !w.inject(port, &bytes) {
                        continue;
                    }
                    injected += 1;
                    now = now.add(Nanos(1000));
                    w.poll(now);
                    let denied = decided_drops(&w) > before;
                    let Some(((dgram, _), t)) = fragment_of(&bytes).zip(tenant) else { continue };
                    if frag.offset == 0 {
                        firsts.insert((t, dgram), denied);
                    }
                    let policy = snap.checks(t) & CHECK_POLICY != 0;
                    for p in 0..nports {
                        let p = PortId(p as u16);
                        let sent = w.take_sent(p);
                        for f in &sent {
                            if let Some((d, off)) = fragment_of(f)
                                && policy
                                && d == dgram
                                && off != 0
                            {
                                assert_eq!(
                                    firsts.get(&(t, d)),
                                    Some(&false),
                                    "a later fragment left without its first fragment passing \
                                     first: {f:02x?}"
                                );
                            }
                        }
                        check_sent(&snaps, p, sent, &seen);
                    }
                }
            }
            Op::Poll { advance_us } => {
                now = now.add(Nanos(u64::from(*advance_us) * 1000));
                w.poll(now);
            }
            Op::Reload | Op::ToggleTenant { .. } | Op::TogglePort { .. } => {
                let (mut tenants, mut ports) = (gone_tenants.clone(), gone_ports.clone());
                let flip = |set: &mut HashSet<String>, name: String| {
                    if !set.remove(&name) {
                        set.insert(name);
                    }
                };
                match op {
                    Op::ToggleTenant { t } => flip(&mut tenants, format!("t{}", t % 4)),
                    Op::TogglePort { p } => flip(&mut ports, format!("p{}", 1 + p % 3)),
                    _ => {}
                }
                let next = without(&cfg, &tenants, &ports);
                let Ok(again) = control::compile_next(&next, Some(&snap), generation + 1) else {
                    continue;
                };
                generation += 1;
                let again = Arc::new(again);
                let rx = |w: &Worker<MemPort>| -> u64 {
                    w.pipeline().counters.port_rx.iter().map(|r| r.packets).sum()
                };
                // As a live reload does: the removed ports' sockets out, the snapshot in, the
                // added ports' sockets handed over.
                for (id, p) in snap.live_ports() {
                    if again.port_by_name(&p.name).is_none() {
                        let cmd = WorkerCmd::RemoveSocket { port: id, queue: 0 };
                        assert!(matches!(w.apply(now, cmd), Applied::Removed { lost: 0, .. }));
                    }
                }
                let before = rx(&w);
                w.apply(now, WorkerCmd::Install(again.clone()));
                cleared += before - rx(&w);
                for (id, p) in again.live_ports() {
                    if snap.port_by_name(&p.name).is_none() {
                        let driver = Box::new(MemPort::new(256));
                        assert!(matches!(
                            w.apply(now, WorkerCmd::AddSocket { port: id, driver }),
                            Applied::Done
                        ));
                        nports = nports.max(id.index() + 1);
                    }
                }
                (gone_tenants, gone_ports) = (tenants, ports);
                snap = again;
                snaps.push(snap.clone());
            }
        }
        for p in 0..nports {
            let p = PortId(p as u16);
            let sent = w.take_sent(p);
            check_sent(&snaps, p, sent, &seen);
        }
    }
    // Let every queue drain (shapers may hold frames for a while).
    for _ in 0..64 {
        now = now.add(Nanos::from_millis(10));
        w.poll(now);
        for p in 0..nports {
            let p = PortId(p as u16);
            let sent = w.take_sent(p);
            check_sent(&snaps, p, sent, &seen);
        }
    }
    let c = &w.pipeline().counters;
    let received: u64 = c.port_rx.iter().map(|r| r.packets).sum();
    assert_eq!(received + cleared, injected, "every injected frame is counted as received");
    let census = w.census();
    assert!(census.balanced(), "frame accounting: {census:?}");
});
