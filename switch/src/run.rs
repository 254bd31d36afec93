//! `xswitch run`: opens the configured ports through AF_XDP and switches until SIGINT or
//! SIGTERM. Wiring only: sockets and XDP programs come from `dataplane::port::afxdp`, the
//! snapshot from `control`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use control::config::Config;
use control::config::model::{IdlePolicy as IdlePolicyConfig, XdpMode};
use dataplane::port::afxdp::{BindMode, XdpAttachment, XskPort, require_root};
use dataplane::port::{FrameArea, PageSize};
use dataplane::snapshot::Snapshot;
use dataplane::time::MonotonicClock;
use dataplane::trace::{Counters, DropReason};
use dataplane::worker::{IdlePolicy, Worker};

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

/// What a run leaves behind: the final counters and where every frame was.
pub struct Report {
    /// The snapshot the switch ran with.
    pub snap: Arc<Snapshot>,
    /// The worker's counters.
    pub counters: Counters,
}

/// Runs the switch on `file` until `stop` is set (by a signal).
pub fn run(file: &Path, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let cfg = control::config::load(file)?;
    serve(&cfg, &file.display().to_string(), stop, &AtomicBool::new(false)).map(|_| ())
}

/// Runs the switch on a loaded config until `stop` is set; sets `ready` once it switches.
/// `name` stands for the file in messages.
pub fn serve(
    cfg: &Config,
    name: &str,
    stop: Arc<AtomicBool>,
    ready: &AtomicBool,
) -> anyhow::Result<Report> {
    let snap = control::compile(cfg, 1)?;
    require_root()?;
    if cfg.switch.workers != 1 {
        bail!("{}: switch.workers = {}: this build runs one worker", name, cfg.switch.workers);
    }
    if let Some((name, _)) = cfg.ports.iter().find(|(_, p)| p.queues != 1) {
        bail!("{}: ports.{name}.queues: this build opens one queue per port", name);
    }
    if let Some(&core) = cfg.switch.cores.first() {
        let ok = core_affinity::set_for_current(core_affinity::CoreId { id: core as usize });
        if !ok {
            bail!("{}: switch.cores[0]: cannot pin to core {core}", name);
        }
        eprintln!("xswitch: worker 0 pinned to core {core}");
    }

    let pages = if cfg.switch.huge_pages { PageSize::Huge2M } else { PageSize::Normal };
    let area = FrameArea::new(cfg.switch.frames, cfg.switch.frame_size, pages)
        .context("allocating the frame area")?;
    if cfg.switch.huge_pages && !area.huge_pages() {
        eprintln!(
            "xswitch: warning: switch.huge_pages: no 2 MiB huge pages could be had \
             (reserve them in /proc/sys/vm/nr_hugepages); using normal pages"
        );
    }
    eprintln!(
        "xswitch: frame area {} frames x {} B ({} MiB, {} pages)",
        area.chunks(),
        area.chunk_size(),
        area.len() >> 20,
        if area.huge_pages() { "2 MiB huge" } else { "normal" }
    );
    let mut attachments = Vec::new();
    let mut ports: Vec<XskPort> = Vec::new();
    for spec in &snap.ports {
        let pc = &cfg.ports[&spec.name];
        let mode = match pc.mode {
            XdpMode::Auto => BindMode::Auto,
            XdpMode::ZeroCopy => BindMode::ZeroCopy,
            XdpMode::Copy => BindMode::Copy,
        };
        let mut xdp = XdpAttachment::new(&spec.interface, pc.queues)?;
        let sock =
            XskPort::open(&area, &spec.interface, 0, cfg.switch.ring_size, mode, ports.first())?;
        let busy = match cfg.switch.busy_poll_us {
            0 => Ok(()),
            us => sock.set_busy_poll(us, cfg.switch.busy_poll_budget),
        };
        if let Err(e) = busy {
            eprintln!(
                "xswitch: warning: {}: busy polling not accepted ({e}); polling without",
                spec.interface
            );
        }
        xdp.register(&sock)?;
        xdp.attach()?;
        eprintln!(
            "xswitch: port {} on {} queue 0: {:?} mode, {} XDP",
            spec.name,
            spec.interface,
            sock.mode(),
            if xdp.native { "native" } else { "generic" }
        );
        attachments.push(xdp);
        ports.push(sock);
    }
    let snap = Arc::new(snap);
    let mut w = Worker::new(area, ports, snap.clone());
    eprintln!("xswitch: switching {} tenants; SIGINT or SIGTERM stops", snap.tenants.len());
    ready.store(true, Ordering::SeqCst);

    let clock = MonotonicClock::new();
    let idle = match cfg.switch.idle {
        IdlePolicyConfig::Busy => IdlePolicy::Busy,
        IdlePolicyConfig::Adaptive => IdlePolicy::Adaptive,
    };
    let loops = w.run(&clock, idle, &stop);

    let c = w.pipeline().counters.clone();
    let rx: u64 = c.port_rx.iter().map(|p| p.packets).sum();
    let tx: u64 = c.port_tx.iter().map(|p| p.packets).sum();
    eprintln!("xswitch: stopping: {rx} frames received, {tx} sent, {} dropped", c.total_drops());
    for r in DropReason::ALL {
        let n = c.drops(*r);
        if n > 0 {
            eprintln!("xswitch:   dropped {}: {n}", r.as_label());
        }
    }
    let total = loops.busy.0 + loops.idle.0;
    eprintln!(
        "xswitch:   worker 0: {} busy polls, {} idle polls, busy {:.1} % of the time, {:.1} ns ({:.0} cycles at {:.0} MHz) busy per packet",
        loops.busy_polls,
        loops.idle_polls,
        100.0 * loops.busy.0 as f64 / total.max(1) as f64,
        loops.busy_ns_per_packet(),
        loops.busy_ns_per_packet() * cpu_mhz() / 1000.0,
        cpu_mhz()
    );
    for p in w.ports_mut() {
        if let Ok(s) = p.kernel_stats() {
            eprintln!("xswitch:   {} kernel: {s:?}, glue: {:?}", p.ifname(), p.stats);
        }
    }
    let census = w.census();
    eprintln!(
        "xswitch: frame accounting: {} free, {} in fill rings, {} in TX, {} total: {}",
        census.free,
        census.ports.fill,
        census.ports.tx,
        census.total,
        if census.balanced() { "balanced" } else { "UNBALANCED" }
    );
    // Sockets first, then the links: dropping a link detaches its XDP program.
    drop(w);
    drop(attachments);
    eprintln!("xswitch: XDP programs detached");
    if !census.balanced() {
        bail!("frame accounting does not balance: {census:?}");
    }
    Ok(Report { snap, counters: c })
}
