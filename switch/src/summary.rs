//! What a stopping switch logs: traffic, drops by reason, rule matches, per worker its loop and
//! its sockets' kernel counters, and the frame census.

use dataplane::port::Driver;
use dataplane::port::afxdp::XskStats;
use dataplane::snapshot::Snapshot;
use dataplane::trace::{Counters, DropReason};
use dataplane::worker::FrameCensus;

use crate::run::Finished;

/// The CPU clock as the kernel reports it (for cycles from nanoseconds; 0 if unknown).
fn cpu_mhz() -> f64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// A socket taken out while the switch ran (its port removed, or its interface gone and back),
/// with its kernel counters as they were when it was closed: its losses belong in the summary.
pub struct Retired {
    name: String,
    stats: Option<XskStats>,
    kicks: u64,
    kick_errors: u64,
}

impl Retired {
    /// Reads `sock`'s counters, before it is closed.
    pub fn of(driver: &Driver) -> Retired {
        let sock = driver.xsk();
        Retired {
            name: driver.label(),
            stats: sock.and_then(|s| s.kernel_stats().ok()),
            kicks: sock.map_or(0, |s| s.stats.kicks),
            kick_errors: sock.map_or(0, |s| s.stats.kick_errors),
        }
    }
}

/// One row of the socket table.
fn socket_row(name: &str, s: &XskStats, kicks: u64, kick_errors: u64) {
    tracing::info!(
        "  {:<20} {:>12} {:>10} {:>10} {:>10} {:>10} {:>9} {:>10} {:>11}",
        name,
        s.rx_ring_full,
        s.rx_dropped,
        s.rx_fill_ring_empty_descs,
        s.rx_invalid_descs,
        s.tx_invalid_descs,
        s.tx_ring_empty_descs,
        kicks,
        kick_errors
    );
}

/// The socket table's header.
fn socket_header() {
    tracing::info!(
        "  {:<20} {:>12} {:>10} {:>10} {:>10} {:>10} {:>9} {:>10} {:>11}",
        "socket",
        "rx_ring_full",
        "rx_dropped",
        "fill_empty",
        "rx_invalid",
        "tx_invalid",
        "tx_empty",
        "wakeups",
        "wake_errors"
    );
}

/// Logs the summary of the workers that stopped (`done`) and of the sockets taken out while
/// they ran (`retired`); returns the workers' counters and census summed (the area has
/// `total_chunks` frames), and what the kernel lost by port.
pub fn log(
    done: &mut [Finished],
    retired: &[Retired],
    snap: &Snapshot,
    total_chunks: u32,
    workers: usize,
) -> (Counters, FrameCensus, Vec<u64>) {
    let mut c = Counters::default();
    let mut census = FrameCensus { total: total_chunks, ..FrameCensus::default() };
    for f in done.iter() {
        c.merge(&f.worker.pipeline().counters);
        census = census.merge(f.worker.census());
    }
    let rx: u64 = c.port_rx.iter().map(|p| p.packets).sum();
    let tx: u64 = c.port_tx.iter().map(|p| p.packets).sum();
    // The XDP sockets' kernel counters, read once: what the kernel dropped before the switch
    // saw it goes in the summary line (a summary of "0 dropped" must not hide the kernel's
    // loss), and the same figures in the table per socket below.
    let kernel: Vec<Vec<_>> = done
        .iter_mut()
        .map(|f| {
            f.worker
                .sockets_mut()
                .map(|(_, p)| p.xsk().and_then(|x| x.kernel_stats().ok()))
                .collect()
        })
        .collect();
    // By port, for the demo's table (sockets taken out while running are in the total only).
    let mut by_port = vec![0u64; snap.ports.len()];
    for (f, k) in done.iter_mut().zip(&kernel) {
        for ((port, _), s) in f.worker.sockets_mut().zip(k) {
            if let (Some(n), Some(s)) = (by_port.get_mut(port.index()), s) {
                *n += s.lost();
            }
        }
    }
    let kernel_lost: u64 = kernel
        .iter()
        .flatten()
        .flatten()
        .chain(retired.iter().filter_map(|r| r.stats.as_ref()))
        .map(|s| s.lost())
        .sum();
    tracing::info!(
        "stopping: {rx} frames received, {tx} sent, {} dropped by the switch, {kernel_lost} lost \
     in the kernel (XDP socket RX)",
        c.total_drops()
    );
    for r in DropReason::ALL {
        let n = c.drops(*r);
        if n > 0 {
            tracing::info!("  dropped {}: {n}", r.as_label());
        }
    }
    for (t, hits) in snap.tenants.iter().zip(&c.acl_hits) {
        for ((dir, r), n) in t.policy.rules().zip(hits) {
            if *n > 0 {
                tracing::info!("  acl {} {} {}: {n} matches", t.name, dir.as_str(), r.name);
            }
        }
    }
    if workers > 1 {
        tracing::info!(
            "  MAC announcements applied from other workers: {}, lost: {}",
            c.fdb.remote,
            c.fdb.unannounced
        );
    }
    for (i, f) in done.iter_mut().enumerate() {
        let loops = f.loops;
        let total = loops.busy.0 + loops.idle.0;
        tracing::info!(
            "  worker {i}: {} busy polls, {} idle polls, busy {:.1} % of the time, {:.1} ns ({:.0} cycles at {:.0} MHz) busy per packet",
            loops.busy_polls,
            loops.idle_polls,
            100.0 * loops.busy.0 as f64 / total.max(1) as f64,
            loops.busy_ns_per_packet(),
            loops.busy_ns_per_packet() * cpu_mhz() / 1000.0,
            cpu_mhz()
        );
        let [s50, s200, s1, s5] = loops.stalls;
        tracing::info!(
            "  worker {i}: breaths over 50 µs: {s50}, over 200 µs: {s200}, over 1 ms: {s1}, over 5 ms: {s5}; longest {} µs",
            loops.longest.0 / 1000
        );
        // The XDP sockets' kernel counters and the wakeups, a row per socket.
        socket_header();
        for ((_, p), s) in f.worker.sockets_mut().zip(&kernel[i]) {
            if let (Some(s), Some(x)) = (s, p.xsk()) {
                socket_row(&p.label(), s, x.stats.kicks, x.stats.kick_errors);
            }
        }
        // Vhost-user ports: what they dropped themselves (a frame larger than the guest's
        // receive buffers take) is not among the switch's drop reasons above.
        for (_, p) in f.worker.sockets_mut() {
            if let Some(v) = p.vhost() {
                let s = v.stats;
                tracing::info!(
                    "  {}: {} packets from the guest, {} to it, {} dropped too big for the \
                     guest's buffers, {} left in its ring for want of frames, {} notifications; \
                     offloads: {} large TCP segments cut into {}, {} taken whole, {} written \
                     whole, {} cut for the guest, {} checksums completed, {} dropped as not \
                     doable",
                    p.label(),
                    s.rx_packets,
                    s.tx_packets,
                    s.too_big_for_guest,
                    s.no_frame,
                    s.calls,
                    s.segmented,
                    s.segments,
                    s.whole_in,
                    s.whole_out,
                    s.cut_out,
                    s.checksums,
                    s.bad_offload
                );
            }
        }
    }
    if !retired.is_empty() {
        tracing::info!("  sockets taken out while running (ports removed, interfaces replaced):");
        socket_header();
        for r in retired {
            if let Some(s) = &r.stats {
                socket_row(&r.name, s, r.kicks, r.kick_errors);
            }
        }
    }
    tracing::info!(
        "frame accounting: {} free, {} in fill rings, {} in TX, {} waiting, {} going \
     home, {} in handoff rings, {} written off, {} total: {}",
        census.free,
        census.ports.fill,
        census.ports.tx,
        census.pending,
        census.returning,
        census.handoff,
        census.lost,
        census.total,
        if census.balanced() { "balanced" } else { "UNBALANCED" }
    );
    (c, census, by_port)
}
