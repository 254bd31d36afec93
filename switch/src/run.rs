//! `xswitch run`: opens the configured ports through AF_XDP and switches until SIGINT or
//! SIGTERM. Wiring only: sockets and XDP programs come from `dataplane::port::afxdp`, the
//! snapshot from `control`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use control::config::Config;
use control::config::model::{IdlePolicy as IdlePolicyConfig, XdpMode};
use dataplane::port::afxdp::{BindMode, XdpAttachment, XskPort, require_root};
use dataplane::port::{FrameArea, PageSize};
use dataplane::snapshot::{PortId, Snapshot};
use dataplane::time::{Clock, MonotonicClock, Nanos};
use dataplane::trace::{Counters, DropReason};
use dataplane::worker::mesh::mesh;
use dataplane::worker::{FrameCensus, IdlePolicy, LoopStats, Worker};
use sd_notify::NotifyState;

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
    serve(&cfg, Some(file), stop, &AtomicBool::new(false)).map(|_| ())
}

/// Tells systemd (when it started the switch with `Type=notify`); a failure to tell it is
/// logged, never fatal.
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("telling systemd ({states:?}): {e}");
    }
}

/// Which (port, queue) sockets each worker polls: the sockets in (queue, port) order, cut into
/// contiguous runs, one per worker. Queue 0 of every port goes to the first worker(s), so with
/// one queue per port a worker tends to hold both ends of a conversation and frames cross
/// between workers only when they must.
fn plan_sockets(snap: &Snapshot, cfg: &Config, workers: usize) -> Vec<Vec<(PortId, u32)>> {
    let mut all = Vec::new();
    let most = cfg.ports.values().map(|p| p.queues).max().unwrap_or(1);
    for q in 0..most {
        for (i, spec) in snap.ports.iter().enumerate() {
            if q < cfg.ports[&spec.name].queues {
                all.push((PortId(i as u16), q));
            }
        }
    }
    let mut plan = vec![Vec::new(); workers];
    let n = all.len();
    for (k, s) in all.into_iter().enumerate() {
        plan[k * workers / n.max(1)].push(s);
    }
    plan
}

/// What a worker thread hands back when it stops.
struct Finished {
    worker: Worker<XskPort>,
    loops: LoopStats,
}

/// Runs the switch on a loaded config until `stop` is set; sets `ready` once it switches.
/// `file` is where the config came from (reloads read it again); `None` for the demo's
/// embedded config.
pub fn serve(
    cfg: &Config,
    file: Option<&Path>,
    stop: Arc<AtomicBool>,
    ready: &AtomicBool,
) -> anyhow::Result<Report> {
    let name_owned = file
        .map_or_else(|| "configs/demo.toml (embedded)".to_string(), |f| f.display().to_string());
    let name = name_owned.as_str();
    require_root()?;
    // VFs provisioned and resolved to interfaces: from here on every port has one.
    let (resolved, hosts) = crate::host::prepare(cfg, control::sriov::Resolve::Provision)
        .with_context(|| format!("{name}: preparing the ports"))?;
    let cfg = &resolved;
    let mut snap = control::compile(cfg, 1)?;
    for l in crate::netdev::fill_mtus(&mut snap) {
        tracing::info!("{l}");
    }
    // Every missing interface in one sentence, before anything is taken.
    let missing: Vec<String> = snap
        .ports
        .iter()
        .filter(|p| !std::path::Path::new("/sys/class/net").join(&p.interface).exists())
        .map(|p| format!("port {} (no interface named {})", p.name, p.interface))
        .collect();
    if !missing.is_empty() {
        bail!("{name}: these ports' interfaces do not exist on this host: {}", missing.join(", "));
    }
    // The host's own stack goes quiet on every interface the switch takes.
    let mut quieted = Vec::new();
    for p in &snap.ports {
        if quieted.iter().any(|(name, _): &(String, _)| *name == p.interface) {
            continue;
        }
        let (q, log) = crate::netdev::quiet(&p.interface)
            .with_context(|| format!("{name}: port {}: taking {}", p.name, p.interface))?;
        for l in log {
            tracing::info!("port {}: {l}", p.name);
        }
        quieted.push((p.interface.clone(), q));
    }
    let workers = cfg.switch.workers as usize;
    let sockets: usize = cfg.ports.values().map(|p| p.queues as usize).sum();
    if workers > sockets {
        bail!(
            "{name}: switch.workers = {workers} but the ports have only {sockets} queue(s) in \
             all: a worker would have nothing to poll (lower workers or raise ports.*.queues)"
        );
    }
    let plan = plan_sockets(&snap, cfg, workers);

    let pages = match (cfg.switch.huge_pages, cfg.switch.huge_page_size.as_str()) {
        (false, _) => PageSize::Normal,
        (true, "1G") => PageSize::Huge1G,
        (true, _) => PageSize::Huge2M,
    };
    let area = FrameArea::new(cfg.switch.frames, cfg.switch.frame_size, pages)
        .context("allocating the frame area")?;
    if pages != PageSize::Normal && !area.huge_pages() {
        let (size, dir) = if pages == PageSize::Huge1G {
            ("1 GiB", "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages")
        } else {
            ("2 MiB", "/proc/sys/vm/nr_hugepages")
        };
        tracing::warn!(
            "switch.huge_pages: no {size} huge pages could be had for {} MiB \
             (reserve them in {dir}; the area must be a multiple of the page size); using normal \
             pages",
            area.len() >> 20
        );
    }
    tracing::info!(
        "frame area {} frames x {} B ({} MiB, {} pages)",
        area.chunks(),
        area.chunk_size(),
        area.len() >> 20,
        area.page_size().as_str()
    );
    let links = mesh(workers, area.chunks());
    // Where the workers run: by their ports' NUMA nodes (switch.numa), or as configured.
    let sys = crate::host::sysfs();
    let ports_of: Vec<Vec<String>> = plan
        .iter()
        .map(|socks| socks.iter().map(|&(p, _)| snap.ports[p.index()].interface.clone()).collect())
        .collect();
    let numa = match cfg.switch.numa {
        control::config::model::NumaPolicy::Auto => {
            control::sriov::place(&sys, &ports_of, &cfg.switch.cores)
        }
        control::config::model::NumaPolicy::Off => control::sriov::Placement {
            nodes: vec![None; workers],
            cores: (0..workers).map(|w| cfg.switch.cores.get(w).copied()).collect(),
            warnings: Vec::new(),
        },
    };
    for w in &numa.warnings {
        tracing::warn!("{w}");
    }
    if sys.nodes().len() > 1 {
        for (w, node) in numa.nodes.iter().enumerate() {
            if let Some(n) = node {
                if let Err(e) = area.prefer_node(links[w].shares.range(w), *n) {
                    tracing::warn!("worker {w}'s frames on NUMA node {n}: {e}");
                } else {
                    tracing::info!("worker {w}'s frames kept on NUMA node {n}");
                }
            }
        }
    }
    for (w, socks) in plan.iter().enumerate() {
        let share = links[w].shares.range(w).len() as u64;
        let need = socks.len() as u64 * 3 * u64::from(cfg.switch.ring_size) + 256;
        if share < need {
            bail!(
                "{name}: switch.frames: worker {w} gets {share} frames for {} socket(s) with rings \
                 of {}, needs at least {need}; raise switch.frames",
                socks.len(),
                cfg.switch.ring_size
            );
        }
    }

    // Sockets, in plan order; the first one registers the frame area as the UMEM.
    let mut attachments: Vec<XdpAttachment> = Vec::new();
    let mut by_worker: Vec<Vec<(PortId, XskPort)>> = plan.iter().map(|_| Vec::new()).collect();
    let mut placement = Vec::new();
    let mut watched = Vec::new();
    for (w, socks) in plan.iter().enumerate() {
        for (index, &(port, queue)) in socks.iter().enumerate() {
            let spec = &snap.ports[port.index()];
            let pc = &cfg.ports[&spec.name];
            let mode = match pc.mode {
                XdpMode::Auto => BindMode::Auto,
                XdpMode::ZeroCopy => BindMode::ZeroCopy,
                XdpMode::Copy => BindMode::Copy,
            };
            let shared = by_worker.iter().flatten().next().map(|s| &s.1);
            let sock = XskPort::open(
                &area,
                &spec.interface,
                queue,
                cfg.switch.ring_size,
                mode,
                shared,
            )
            .with_context(|| match shared {
                Some(s) => format!(
                    "port {}: sockets sharing the frame area are bound in the first one's mode \
                     ({})",
                    spec.name,
                    s.mode().as_str()
                ),
                None => format!("port {}", spec.name),
            })?;
            if let Err(e) = match cfg.switch.busy_poll_us {
                0 => Ok(()),
                us => sock.set_busy_poll(us, cfg.switch.busy_poll_budget),
            } {
                tracing::warn!(
                    "{} queue {queue}: busy polling not accepted ({e}); \
                     polling without",
                    spec.interface
                );
            }
            let ai = match attachments.iter().position(|a| a.ifname() == spec.interface) {
                Some(i) => i,
                None => {
                    attachments.push(XdpAttachment::new(&spec.interface, pc.queues)?);
                    attachments.len() - 1
                }
            };
            attachments[ai].register(&sock)?;
            tracing::info!(
                "port {} on {} queue {queue}: {} mode, worker {w}",
                spec.name,
                spec.interface,
                sock.mode().as_str()
            );
            watched.push((
                spec.interface.clone(),
                crate::hotplug::WatchedSocket {
                    port,
                    name: spec.name.clone(),
                    queue,
                    worker: w,
                    index,
                    mode,
                },
            ));
            placement.push(crate::control_api::Placement {
                port: spec.name.clone(),
                queue,
                worker: w,
                mode: sock.mode().as_str().to_string(),
            });
            by_worker[w].push((port, sock));
        }
    }
    for a in &mut attachments {
        a.attach()?;
        tracing::info!(
            "XDP program on {} ({})",
            a.ifname(),
            if a.native { "native" } else { "generic" }
        );
    }

    let snap = Arc::new(snap);
    // Frames for a port go to the first worker polling one of its queues.
    let mut owners: Vec<Option<usize>> = vec![None; snap.ports.len()];
    for (w, socks) in plan.iter().enumerate() {
        for &(port, _) in socks {
            owners[port.index()].get_or_insert(w);
        }
    }
    // Rates are enforced by each worker for its part: per port, how many workers poll it.
    let mut workers_per_port = vec![0u64; snap.ports.len()];
    for socks in &plan {
        let mut seen: Vec<PortId> = socks.iter().map(|&(p, _)| p).collect();
        seen.sort_unstable();
        seen.dedup();
        for p in seen {
            workers_per_port[p.index()] += 1;
        }
    }
    let mut ws: Vec<Worker<XskPort>> = Vec::new();
    for (socks, l) in by_worker.into_iter().zip(links) {
        let mut w = Worker::in_mesh(area.share(), socks, l, &owners, snap.clone());
        w.share_rates(workers_per_port.iter().map(|&n| n.max(1)).collect());
        ws.push(w);
    }
    // One clock for every worker and every writer that turns its readings into wall time.
    let clock = MonotonicClock::new();
    let flowlog = crate::flowlogs::start(cfg, &snap, clock)?;
    if let Some(fl) = &flowlog {
        for w in &mut ws {
            w.pipeline_mut().flows.log_flows(fl.export(cfg));
        }
    }
    let total_chunks = area.chunks();
    let pages_got = area.page_size();
    let mut watch = crate::hotplug::Watch::new(
        area,
        cfg.switch.ring_size,
        (cfg.switch.busy_poll_us, cfg.switch.busy_poll_budget),
        watched,
    );
    let idle = match cfg.switch.idle {
        IdlePolicyConfig::Busy => IdlePolicy::Busy,
        IdlePolicyConfig::Adaptive => IdlePolicy::Adaptive,
    };
    let cores = &numa.cores;
    let slots: Vec<crate::metrics::Slot> = ws.iter().map(|_| Default::default()).collect();
    let exporter = crate::metrics::start(&cfg.metrics, &snap, &slots, snap.generation)?;
    let every = Nanos::from_millis(crate::metrics::PUBLISH_INTERVAL.as_millis() as u64);
    let (to_workers, from_control): (Vec<_>, Vec<_>) =
        ws.iter().map(|_| crossbeam_channel::bounded::<Arc<Snapshot>>(8)).unzip();
    let (queries, questions): (Vec<_>, Vec<_>) =
        ws.iter().map(|_| crossbeam_channel::bounded::<crate::control_api::Query>(4)).unzip();
    let (port_events, port_news): (Vec<_>, Vec<_>) =
        ws.iter().map(|_| crossbeam_channel::unbounded::<crate::hotplug::PortEvent>()).unzip();
    let shared = Arc::new(crate::control_api::Shared::new(
        file.map(Path::to_path_buf),
        cfg.clone(),
        snap.clone(),
        crate::control_api::WorkerLinks {
            snapshots: to_workers,
            queries,
            slots: slots.clone(),
            clock,
        },
        placement,
        total_chunks,
        crate::control_api::HostInfo {
            ports: hosts,
            workers: numa.nodes.iter().copied().zip(numa.cores.iter().copied()).collect(),
            pages: pages_got.as_str().to_string(),
        },
    ));
    crate::metrics::record_host(&shared.host, &snap);
    let server = if cfg.control.enabled {
        Some(crate::control_api::serve(Path::new(&cfg.control.socket), shared.clone())?)
    } else {
        None
    };
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
        .context("registering SIGHUP")?;
    let finished: Vec<anyhow::Result<Finished>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ws
            .into_iter()
            .enumerate()
            .zip(from_control.into_iter().zip(questions).zip(port_news))
            .map(|((i, mut worker), ((snaps, questions), port_news))| {
                let stop = &stop;
                let slot = slots[i].clone();
                let core = cores.get(i).copied().flatten();
                std::thread::Builder::new().name(format!("xswitch-w{i}")).spawn_scoped(
                    scope,
                    move || {
                        if let Some(core) = core {
                            let id = core_affinity::CoreId { id: core as usize };
                            if !core_affinity::set_for_current(id) {
                                stop.store(true, Ordering::SeqCst);
                                bail!("cannot pin worker {i} to core {core}");
                            }
                            tracing::info!("worker {i} pinned to core {core}");
                        }
                        let clock = clock;
                        let mut live = None;
                        let loops = worker.run_reporting(&clock, idle, stop, every, |w, l| {
                            // New snapshots from a reload, adopted between breaths. The
                            // previous one stays alive in the control state, so dropping
                            // this reference frees nothing here.
                            while let Ok(s) = snaps.try_recv() {
                                drop(w.install(s));
                            }
                            while let Ok(ev) = port_news.try_recv() {
                                match ev {
                                    crate::hotplug::PortEvent::Down(s) => w.socket_down(s),
                                    crate::hotplug::PortEvent::Replace(s, sock) => {
                                        let lost = w.replace_socket(s, *sock);
                                        if lost > 0 {
                                            tracing::warn!(
                                                "worker {i}: {lost} frames stayed with \
                                                 the vanished interface and are written off"
                                            );
                                        }
                                    }
                                }
                            }
                            while let Ok(q) = questions.try_recv() {
                                let now = clock.now();
                                crate::control_api::answer_query_mut(w, i, now, q, &mut live);
                            }
                            crate::control_api::finish_live_trace(w, i, clock.now(), &mut live);
                            crate::metrics::publish(&slot, w, l)
                        });
                        // A clean stop sends what was already accepted.
                        let left = worker.drain(&clock, Duration::from_millis(200));
                        if left > 0 {
                            tracing::info!("worker {i}: {left} frames still queued at stop");
                        }
                        worker.pipeline_mut().flows.flush();
                        crate::metrics::publish(&slot, &mut worker, &loops);
                        Ok(Finished { worker, loops })
                    },
                )
            })
            .collect();
        tracing::info!("switching {} tenants; SIGINT or SIGTERM stops", snap.tenants.len());
        ready.store(true, Ordering::SeqCst);
        // Under systemd (Type=notify): ready now, a watchdog ping at half its interval while
        // every worker runs, reloads and the stop announced. Nothing without NOTIFY_SOCKET.
        let status = format!("switching {} tenants", snap.tenants.len());
        notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
        let mut pinged = Instant::now();
        // Until stopped: SIGHUP reloads. (A worker that ends early sets `stop` itself.)
        while !stop.load(Ordering::Relaxed)
            && handles.iter().all(|h| h.as_ref().is_ok_and(|h| !h.is_finished()))
        {
            if hup.swap(false, Ordering::SeqCst) {
                // systemd (v253 on) wants the reload's start time with RELOADING=1.
                match NotifyState::monotonic_usec_now() {
                    Ok(t) => notify(&[NotifyState::Reloading, t]),
                    Err(_) => notify(&[NotifyState::Reloading]),
                }
                let result = crate::control_api::reload(&shared);
                let status = match &result {
                    Ok(g) => format!("switching {} tenants, generation {g}", snap.tenants.len()),
                    Err(e) => format!("reload rejected: {e}"),
                };
                notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
            }
            if let Some(every) = watchdog
                && pinged.elapsed() >= every
            {
                notify(&[NotifyState::Watchdog]);
                pinged = Instant::now();
            }
            watch.check(&mut attachments, &port_events, &shared);
            // Rarely: this thread may share a core with a busy-polling worker.
            std::thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, Ordering::SeqCst);
        notify(&[NotifyState::Stopping]);
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a worker panicked"))),
                Err(e) => {
                    stop.store(true, Ordering::SeqCst);
                    Err(anyhow::anyhow!("starting a worker thread: {e}"))
                }
            })
            .collect()
    });
    // Its last update sees the workers' final figures.
    drop(exporter);
    drop(server);
    let snap = shared.snapshot();
    let mut done = Vec::new();
    for f in finished {
        done.push(f?);
    }

    let mut c = Counters::default();
    let mut census = FrameCensus { total: total_chunks, ..FrameCensus::default() };
    for f in &done {
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
        .map(|f| f.worker.sockets_mut().map(|(_, p)| p.kernel_stats().ok()).collect())
        .collect();
    let kernel_lost: u64 = kernel.iter().flatten().flatten().map(|s| s.lost()).sum();
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
        // The XDP sockets' kernel counters and the wakeups, a row per socket.
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
        for ((_, p), s) in f.worker.sockets_mut().zip(&kernel[i]) {
            if let Some(s) = s {
                tracing::info!(
                    "  {:<20} {:>12} {:>10} {:>10} {:>10} {:>10} {:>9} {:>10} {:>11}",
                    format!("{} queue {}", p.ifname(), p.queue()),
                    s.rx_ring_full,
                    s.rx_dropped,
                    s.rx_fill_ring_empty_descs,
                    s.rx_invalid_descs,
                    s.tx_invalid_descs,
                    s.tx_ring_empty_descs,
                    p.stats.kicks,
                    p.stats.kick_errors
                );
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
    // The flow tables go with the workers; then the writer has every record.
    let flowlog_stats: Vec<_> =
        done.iter().filter_map(|f| f.worker.pipeline().flows.log_stats()).collect();
    // Sockets first, then the links: dropping a link detaches its XDP program.
    drop(done);
    shared.end_capture();
    if let Some(fl) = flowlog {
        fl.finish();
        let exported: u64 = flowlog_stats.iter().map(|s| s.exported).sum();
        let lost: u64 = flowlog_stats.iter().map(|s| s.lost + s.full).sum();
        tracing::info!("flow logs: {exported} records written, {lost} lost or untracked");
    }
    drop(attachments);
    tracing::info!("XDP programs detached");
    // IPv6 and ARP back as they were on the interfaces given back.
    drop(quieted);
    if !census.balanced() {
        bail!("frame accounting does not balance: {census:?}");
    }
    Ok(Report { snap, counters: c })
}
