//! `xswitch run`: opens the configured ports through AF_XDP and switches until SIGINT or
//! SIGTERM. Wiring only: sockets and XDP programs come from `dataplane::port::afxdp`, the
//! snapshot from `control`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use control::config::Config;
use control::config::model::IdlePolicy as IdlePolicyConfig;
use dataplane::port::afxdp::{XskPort, require_root};
use dataplane::port::{FrameArea, PageSize};
use dataplane::snapshot::{PortId, Snapshot};
use dataplane::time::{Clock, MonotonicClock, Nanos};
use dataplane::trace::Counters;
use dataplane::worker::mesh::mesh;
use dataplane::worker::{Applied, IdlePolicy, LoopStats, Worker, WorkerCmd};

use crate::fabric::Fabric;
use sd_notify::NotifyState;

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

/// Applies the commands waiting for worker `i` (between breaths) and counts them in
/// `applied`, where the main thread sees that they were taken.
fn take_commands(
    w: &mut Worker<XskPort>,
    i: usize,
    cmds: &crossbeam_channel::Receiver<WorkerCmd<XskPort>>,
    applied: &AtomicU64,
    closing: &crossbeam_channel::Sender<Box<XskPort>>,
    now: Nanos,
) {
    let mut n = 0;
    while let Ok(cmd) = cmds.try_recv() {
        match w.apply(now, cmd) {
            Applied::Removed { driver, lost } => {
                if lost > 0 {
                    tracing::warn!(
                        "worker {i}: {} queue {}: {lost} frames stayed with the socket taken \
                         out and are written off",
                        driver.ifname(),
                        driver.queue()
                    );
                }
                // Closed by the main thread: closing an XDP socket waits for the kernel's
                // RCU grace period (5 to 25 ms measured here), which a worker must not.
                let _ = closing.send(driver);
            }
            Applied::NoSuchSocket => tracing::warn!("worker {i}: a command for a socket it lacks"),
            // The snapshot replaced is still held by the control state: freeing nothing here.
            _ => {}
        }
        n += 1;
    }
    if n > 0 {
        applied.fetch_add(n, Ordering::Release);
    }
}

/// What a worker thread hands back when it stops.
pub struct Finished {
    pub worker: Worker<XskPort>,
    pub loops: LoopStats,
}

/// The frame area `switch.frames` × `frame_size`, on huge pages when asked and had (else a
/// warning saying how to reserve them).
fn frame_area(cfg: &Config) -> anyhow::Result<FrameArea> {
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
    Ok(area)
}

/// Where the workers run: by their ports' NUMA nodes (`switch.numa`), or as configured; each
/// worker's share of the frames kept on its node.
fn place_workers(
    cfg: &Config,
    snap: &Snapshot,
    plan: &[Vec<(PortId, u32)>],
    area: &FrameArea,
    links: &[dataplane::worker::mesh::Links],
) -> control::sriov::Placement {
    let workers = plan.len();
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
    numa
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
    let workers = cfg.switch.workers as usize;
    let sockets: usize = cfg.ports.values().map(|p| p.queues as usize).sum();
    if workers > sockets {
        bail!(
            "{name}: switch.workers = {workers} but the ports have only {sockets} queue(s) in \
             all: a worker would have nothing to poll (lower workers or raise ports.*.queues)"
        );
    }
    let plan = plan_sockets(&snap, cfg, workers);

    let area = frame_area(cfg)?;
    let links = mesh(workers, area.chunks());
    let numa = place_workers(cfg, &snap, &plan, &area, &links);
    for (w, socks) in plan.iter().enumerate() {
        let share = links[w].shares.range(w).len() as u64;
        let need = crate::fabric::worker_frames(socks.len(), cfg.switch.ring_size);
        if share < need {
            bail!(
                "{name}: switch.frames: worker {w} gets {share} frames for {} socket(s) with rings \
                 of {}, needs at least {need}; raise switch.frames",
                socks.len(),
                cfg.switch.ring_size
            );
        }
    }

    let snap = Arc::new(snap);
    let n = plan.len();
    let shares: Vec<u64> = links.iter().map(|l| l.shares.range(l.me).len() as u64).collect();
    let (cmds, cmds_in): (Vec<_>, Vec<_>) =
        (0..n).map(|_| crossbeam_channel::unbounded::<WorkerCmd<XskPort>>()).unzip();
    let applied: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::new(AtomicU64::new(0))).collect();
    // The workers start without sockets: the fabric opens every port and hands its sockets
    // over with commands, as a reload that adds a port does.
    let mut ws: Vec<Worker<XskPort>> = links
        .into_iter()
        .map(|l| Worker::in_mesh(worker_area(&area), Vec::new(), l, &[], snap.clone()))
        .collect();
    let total_chunks = area.chunks();
    let pages_got = area.page_size();
    let mut fabric = Fabric::new(
        area,
        cfg.switch.ring_size,
        (cfg.switch.busy_poll_us, cfg.switch.busy_poll_budget),
        cmds,
        applied.clone(),
        shares,
    );
    let mut opened = Vec::new();
    for (id, spec) in snap.live_ports() {
        let pc = &cfg.ports[&spec.name];
        let workers: Vec<usize> = (0..pc.queues)
            .map(|q| plan.iter().position(|socks| socks.contains(&(id, q))).unwrap_or(0))
            .collect();
        opened.push(fabric.open(id, &spec.name, &spec.interface, pc, &workers)?);
    }
    fabric.hand_over(opened, snap.ports.len());
    // One clock for every worker and every writer that turns its readings into wall time.
    let clock = MonotonicClock::new();
    let flowlog = crate::flowlogs::start(cfg, &snap, clock)?;
    for w in &mut ws {
        w.pipeline_mut().flows.log_flows(flowlog.export(cfg));
    }
    let idle = match cfg.switch.idle {
        IdlePolicyConfig::Busy => IdlePolicy::Busy,
        IdlePolicyConfig::Adaptive => IdlePolicy::Adaptive,
    };
    let cores = &numa.cores;
    let slots: Vec<crate::metrics::Slot> = ws.iter().map(|_| Default::default()).collect();
    let every = Nanos::from_millis(crate::metrics::PUBLISH_INTERVAL.as_millis() as u64);
    let (queries, questions): (Vec<_>, Vec<_>) =
        ws.iter().map(|_| crossbeam_channel::bounded::<crate::control_api::Query>(4)).unzip();
    let (reloads_to, reload_requests) = crossbeam_channel::bounded::<crate::reload::Request>(4);
    // Sockets the workers took out, for the main thread to close.
    let (closing, closed) = crossbeam_channel::unbounded::<Box<XskPort>>();
    let mut retired = Vec::new();
    let shared = Arc::new(crate::control_api::Shared::new(
        file.map(Path::to_path_buf),
        cfg.clone(),
        snap.clone(),
        crate::control_api::WorkerLinks { queries, slots: slots.clone(), clock },
        total_chunks,
        crate::control_api::HostInfo {
            ports: hosts,
            workers: numa.nodes.iter().copied().zip(numa.cores.iter().copied()).collect(),
            pages: pages_got.as_str().to_string(),
        },
        reloads_to,
    ));
    if let Ok(mut p) = shared.placement.lock() {
        *p = fabric.placement();
    }
    let exporter = {
        let s = shared.clone();
        crate::metrics::start(&cfg.metrics, &snap, &slots, move || s.facts())?
    };
    let server = if cfg.control.enabled {
        Some(crate::control_api::serve(Path::new(&cfg.control.socket), shared.clone())?)
    } else {
        None
    };
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
        .context("registering SIGHUP")?;
    let mut live = crate::reload::Live { fabric, flowlog };
    let finished: Vec<anyhow::Result<Finished>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ws
            .into_iter()
            .enumerate()
            .zip(cmds_in.into_iter().zip(questions))
            .map(|((i, mut worker), (cmds, questions))| {
                let stop = &stop;
                let slot = slots[i].clone();
                let applied = applied[i].clone();
                let closing = closing.clone();
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
                        // The sockets of the start, before the first breath.
                        take_commands(&mut worker, i, &cmds, &applied, &closing, clock.now());
                        let mut pending_trace = None;
                        let loops = worker.run_reporting(&clock, idle, stop, every, |w, l| {
                            // Reloads and ports coming and going, between breaths.
                            take_commands(w, i, &cmds, &applied, &closing, clock.now());
                            while let Ok(q) = questions.try_recv() {
                                let now = clock.now();
                                let t = &mut pending_trace;
                                crate::control_api::answer_query_mut(w, i, now, q, t);
                            }
                            let t = &mut pending_trace;
                            crate::control_api::finish_live_trace(w, i, clock.now(), t);
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
        // The programs attached once the workers hold their sockets (their fill rings full).
        if !live.fabric.wait(Duration::from_secs(5)) {
            tracing::warn!("the workers are slow to take their sockets");
        }
        for e in live.fabric.attach_pending(&shared) {
            tracing::warn!("{e}");
        }
        let tenants = snap.live_tenants().count();
        tracing::info!("switching {tenants} tenants; SIGINT or SIGTERM stops");
        ready.store(true, Ordering::SeqCst);
        // Under systemd (Type=notify): ready now, a watchdog ping at half its interval while
        // every worker runs, reloads and the stop announced. Nothing without NOTIFY_SOCKET.
        let status = format!("switching {tenants} tenants");
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
                let result = crate::reload::reload(&mut live, &shared);
                let status = match &result {
                    Ok(v) => format!(
                        "switching {} tenants, generation {}",
                        shared.snapshot().live_tenants().count(),
                        v["generation"]
                    ),
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
            live.fabric.check(&shared, shared.snapshot().ports.len());
            while let Ok(sock) = closed.try_recv() {
                // Its kernel counters first: what it lost belongs in the stop summary.
                retired.push(crate::summary::Retired::of(&sock));
            }
            // Rarely (this thread may share a core with a busy-polling worker), or at once when
            // `ctl reload` asks.
            if let Ok(req) = reload_requests.recv_timeout(Duration::from_millis(200)) {
                crate::reload::serve(&mut live, &shared, req);
            }
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

    // Sockets taken out in the workers' last breaths.
    retired.extend(closed.try_iter().map(|sock| crate::summary::Retired::of(&sock)));
    let (c, census) = crate::summary::log(&mut done, &retired, &snap, total_chunks, workers);
    // The flow tables go with the workers; then the writer has every record.
    let flowlog_stats: Vec<_> =
        done.iter().filter_map(|f| f.worker.pipeline().flows.log_stats()).collect();
    // Sockets first, then the programs (and the host's stack given back).
    drop(done);
    shared.end_capture();
    let crate::reload::Live { fabric, flowlog } = live;
    flowlog.finish();
    if !flowlog_stats.is_empty() {
        let exported: u64 = flowlog_stats.iter().map(|s| s.exported).sum();
        let lost: u64 = flowlog_stats.iter().map(|s| s.lost + s.full).sum();
        tracing::info!("flow logs: {exported} records written, {lost} lost or untracked");
    }
    fabric.close();
    if !census.balanced() {
        bail!("frame accounting does not balance: {census:?}");
    }
    Ok(Report { snap, counters: c })
}

/// A worker's handle on the frame area.
///
/// The one `unsafe` outside the dataplane's memory and AF_XDP boundaries: the promise
/// [`FrameArea::share`] asks for is kept by the workers' design, not by anything this call
/// could check, so it is made here, where the workers are made, once per worker.
#[allow(unsafe_code)]
fn worker_area(area: &FrameArea) -> FrameArea {
    // SAFETY: each handle goes to one worker, which touches only frames it owns: chunks of its
    // own pool range, frames it received or was handed as owned `FrameRef`s (not `Copy`), and
    // it gives a frame to another worker only through a handoff ring (release/acquire), after
    // which it keeps no reference. The main thread's handle (the fabric's) only registers the
    // area with the kernel and never reads or writes a frame.
    unsafe { area.share() }
}
