//! `xswitch run`: opens the configured ports through AF_XDP and switches until SIGINT or
//! SIGTERM. Wiring only: sockets and XDP programs come from `dataplane::port::afxdp`, the
//! snapshot from `control`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use control::config::Config;
use control::config::model::IdlePolicy as IdlePolicyConfig;
use dataplane::pipeline::Pipeline;
use dataplane::port::Driver;
use dataplane::port::afxdp::XskPort;
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
    /// Frames the kernel dropped before the switch saw them, by port (`PortId` index).
    pub kernel_lost: Vec<u64>,
}

/// How a start treats a switch already running on the same control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Takeover {
    /// Take its ports and state over, or fail (it keeps switching).
    Required,
    /// Take over; where it refuses (or none runs), stop it and start afresh.
    OrRestart,
}

/// Runs the switch on `file` until `stop` is set (by a signal); with `takeover`, from the
/// switch running on the config's control socket.
pub fn run(file: &Path, stop: Arc<AtomicBool>, takeover: Option<Takeover>) -> anyhow::Result<()> {
    let cfg = control::config::load(file)?;
    serve(&cfg, Some(file), stop, &AtomicBool::new(false), takeover).map(|_| ())
}

/// Asks the switch on `cfg`'s control socket for its ports and state. `None`: start afresh
/// (`OrRestart` after a refusal, with the old switch stopped first, or with none running).
fn take_over(cfg: &Config, mode: Takeover) -> anyhow::Result<Option<crate::takeover::Received>> {
    use crate::takeover::{Answer, ask, offer};
    let socket = Path::new(&cfg.control.socket);
    if !cfg.control.enabled {
        bail!("--takeover: control.enabled is false, so no switch can be reached to take over");
    }
    let started = Instant::now();
    match ask(socket, &offer(cfg)) {
        Ok(Answer::Taken(r)) => {
            tracing::info!(
                "took over from the running switch in {} ms: {} sockets, {} ports, {} MACs, {} \
                 connections",
                started.elapsed().as_millis(),
                r.state.sockets.len(),
                r.state.ports.len(),
                r.state.macs.len(),
                r.state.conns.len()
            );
            Ok(Some(*r))
        }
        Ok(Answer::Refused { why, pid }) if mode == Takeover::OrRestart => {
            tracing::warn!(
                "the running switch refused the takeover ({why}); stopping it (pid {pid}) to start afresh"
            );
            crate::takeover::stop_process(pid, Duration::from_secs(15))?;
            Ok(None)
        }
        Ok(Answer::Refused { why, .. }) => {
            bail!("the running switch refused the takeover and keeps switching: {why}")
        }
        Ok(Answer::NoSwitch(why)) if mode == Takeover::OrRestart => {
            tracing::warn!("{why}: starting afresh");
            Ok(None)
        }
        Ok(Answer::NoSwitch(why)) => bail!("--takeover: {why}; is a switch running?"),
        Err(e) => Err(e),
    }
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
    w: &mut Worker<Driver>,
    i: usize,
    cmds: &crossbeam_channel::Receiver<WorkerCmd<Driver>>,
    applied: &AtomicU64,
    closing: &crossbeam_channel::Sender<Box<Driver>>,
    now: Nanos,
) {
    let mut n = 0;
    while let Ok(cmd) = cmds.try_recv() {
        match w.apply(now, cmd) {
            Applied::Removed { driver, lost } => {
                if lost > 0 {
                    tracing::warn!(
                        "worker {i}: {}: {lost} frames stayed with the socket taken out and \
                         are written off",
                        driver.label()
                    );
                }
                // Closed by the main thread: closing an XDP socket waits for the kernel's
                // RCU grace period (5 to 25 ms measured here), which a worker must not.
                let _ = closing.send(driver);
            }
            Applied::NoSuchSocket => tracing::warn!("worker {i}: a command for a socket it lacks"),
            // A cluster map replaced: freed here between breaths (memory only: `munmap` at
            // most, which the workers' filter allows).
            Applied::MapReplaced(_) => {}
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
    pub worker: Worker<Driver>,
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
    let area = FrameArea::new(cfg.frames(), cfg.switch.frame_size, pages)
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
    takeover: Option<Takeover>,
) -> anyhow::Result<Report> {
    let name_owned = file
        .map_or_else(|| "configs/demo.toml (embedded)".to_string(), |f| f.display().to_string());
    let name = name_owned.as_str();
    crate::privilege::require_running_capabilities()?;
    // VFs provisioned and resolved to interfaces: from here on every port has one.
    let (mut resolved, hosts) = crate::host::prepare(cfg, control::sriov::Resolve::Provision)
        .with_context(|| format!("{name}: preparing the ports"))?;
    if resolved.switch.frame_size == 0 {
        resolved.switch.frame_size = resolved.frame_size(crate::netdev::mtu);
        tracing::info!(
            "frames of {} bytes (switch.frame_size = 0: from the ports' MTUs, 4096 when one needs \
             more than one frame of 2048)",
            resolved.switch.frame_size
        );
    }
    let cfg = &resolved;
    let mut snap = control::compile(cfg, 1)?;
    for (warn, l) in crate::netdev::fill_mtus(&mut snap, cfg.switch.frame_size) {
        if warn {
            tracing::warn!("{l}");
        } else {
            tracing::info!("{l}");
        }
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
    let mut snap = Arc::new(snap);
    // From here on the switch needs only what ports coming and going need (every thread it
    // starts inherits this; `crate::privilege`, docs/SECURITY.md), and its workers less.
    let keep = crate::privilege::keep(cfg.metrics.enabled.then_some(cfg.metrics.listen.as_str()));
    if let Some(user) = &cfg.switch.user {
        let (uid, gid) = crate::privilege::account(user, cfg.switch.group.as_deref())?;
        crate::privilege::become_account(uid, gid)?;
        tracing::info!("running as {user} (uid {uid}, gid {gid})");
    }
    crate::privilege::drop_to(keep).context("dropping capabilities")?;
    if cfg.switch.user.is_some() {
        crate::privilege::keep_across_exec(keep)?;
    }
    crate::privilege::confine_process()?;
    tracing::info!("capabilities kept: {keep:?}");
    let filter = crate::privilege::worker_filter()?;
    // The workers' tables, and the flow-log writer they report to, before the old process (in
    // a takeover) stops switching: what happens from there to the first poll is the gap.
    let mut pipelines: Vec<Pipeline> = (0..workers).map(|_| Pipeline::new(&snap)).collect();
    // One clock for every worker and every writer that turns its readings into wall time.
    let clock = MonotonicClock::new();
    let flowlog = crate::flowlogs::start(cfg, &snap, clock)?;
    for p in &mut pipelines {
        p.flows.log_flows(flowlog.export(cfg));
    }
    let mut from = match takeover {
        None => None,
        Some(mode) => take_over(cfg, mode)?,
    };
    if let Some(r) = &from {
        flowlog.resume_ipfix(cfg, &snap, &r.state.ipfix);
    }

    let area = match &mut from {
        None => frame_area(cfg)?,
        Some(r) => {
            let fd = r.fd(r.state.area)?;
            // As the old process wrote it (`PageSize::as_str`).
            let pages = [PageSize::Huge2M, PageSize::Huge1G]
                .into_iter()
                .find(|p| p.as_str() == r.state.pages)
                .unwrap_or(PageSize::Normal);
            FrameArea::adopt(fd, r.state.chunks, r.state.chunk_size, pages)
                .context("mapping the handed-over frame area")?
        }
    };
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

    let n = plan.len();
    let shares: Vec<u64> = links.iter().map(|l| l.shares.range(l.me).len() as u64).collect();
    let (cmds, cmds_in): (Vec<_>, Vec<_>) =
        (0..n).map(|_| crossbeam_channel::unbounded::<WorkerCmd<Driver>>()).unzip();
    let applied: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::new(AtomicU64::new(0))).collect();
    // The workers start without sockets: the fabric opens every port and hands its sockets
    // over with commands, as a reload that adds a port does.
    let mut ws: Vec<Worker<Driver>> = links
        .into_iter()
        .zip(pipelines)
        .map(|(l, p)| Worker::in_mesh_with(worker_area(&area), Vec::new(), l, &[], snap.clone(), p))
        .collect();
    if let Some(r) = &from {
        // The chunks the old process held free; the others are on the sockets' rings.
        let now = MonotonicClock::new().now();
        for (w, worker) in ws.iter_mut().enumerate() {
            let share = dataplane::worker::mesh::Shares::new(area.chunks(), workers).range(w);
            worker.take_free(crate::takeover::free_in(&r.state, share));
        }
        crate::takeover::restore(&mut ws, &snap, &r.state, now);
    }
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
        match &mut from {
            None => opened.push(fabric.open(id, &spec.name, &spec.interface, pc, &workers)?),
            Some(r) => opened.push(adopt_port(r, cfg, id, &spec.name, &workers, &fabric)?),
        }
    }
    // Single-buffer sockets (the kernel refused multi-buffer): the workers get the snapshot
    // again with the ports' MTUs capped to one frame, before the sockets.
    if fabric.single_buffer_with(&opened) {
        let mut capped = (*snap).clone();
        for l in fabric.cap_mtus(&mut capped, &opened) {
            tracing::warn!("{l}");
        }
        snap = Arc::new(capped);
        fabric.install(&snap);
    }
    fabric.hand_over(opened, snap.ports.len());
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
    let (takeovers_to, takeovers) = crossbeam_channel::bounded::<crate::takeover::Asked>(1);
    // Sockets the workers took out, for the main thread to close.
    let (closing, closed) = crossbeam_channel::unbounded::<Box<Driver>>();
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
        (reloads_to, takeovers_to),
    ));
    if let Ok(mut p) = shared.placement.lock() {
        *p = fabric.placement();
    }
    if let Some(r) = &from {
        let _ = shared.took_over_from.set(r.from_pid);
    }
    // The cluster map (docs/CLUSTER.md): registered and watched off the packet path; the
    // workers get each new map from the main loop.
    let agent = match (&cfg.cluster, crate::cluster::Local::of(cfg, &snap)) {
        (Some(c), Some(local)) => {
            let handed = from.as_mut().and_then(|r| r.state.cluster.take());
            let handed = handed.map(crate::cluster::View::from_state);
            if let Some(v) = &handed {
                // Queued before the workers' first breath: no frame for another host waits
                // for etcd after an upgrade.
                let map = Arc::new(v.map(&local.host, &local.carried()));
                let (macs, hosts, _) = map.sizes();
                tracing::info!(
                    "takeover: the cluster map of revision {} handed over ({hosts} other hosts, \
                     {macs} remote MACs)",
                    v.revision
                );
                fabric.overlay(&map);
            }
            let a = crate::cluster::Agent::start(c, local, handed)?;
            let _ = shared.cluster.set(a.status.clone());
            Some(a)
        }
        _ => None,
    };
    let mut cluster_generation = snap.generation;
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
        .context("registering SIGHUP")?;
    let mut live = crate::reload::Live { fabric, flowlog };
    let mut handing: Option<std::os::unix::net::UnixStream> = None;
    // Workers that have left their poll loop (they drain once all have).
    let out_of_loop = AtomicUsize::new(0);
    let mut failed: Option<anyhow::Error> = None;
    let (mut exporter, mut server) = (None, None);
    let finished: Vec<anyhow::Result<Finished>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ws
            .into_iter()
            .enumerate()
            .zip(cmds_in.into_iter().zip(questions))
            .map(|((i, mut worker), (cmds, questions))| {
                let stop = &stop;
                let out_of_loop = &out_of_loop;
                let filter = &filter;
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
                        if let Err(e) = crate::privilege::confine_worker(filter) {
                            stop.store(true, Ordering::SeqCst);
                            bail!("worker {i}: {e:#}");
                        }
                        // A test-only hook (switch/tests/privilege.rs): a call the filter does
                        // not allow, which must kill the process.
                        if std::env::var_os("XSWITCH_TEST_FORBIDDEN_CALL").is_some() {
                            tracing::warn!("worker {i}: making a forbidden call (test hook)");
                            let _ = std::os::unix::process::parent_id();
                        }
                        let clock = clock;
                        // The sockets of the start, before the first breath.
                        take_commands(&mut worker, i, &cmds, &applied, &closing, clock.now());
                        // Figures from the start (after a takeover, the counters it continues).
                        crate::metrics::publish(&slot, &mut worker, &LoopStats::default());
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
                        // Every worker out of its loop first (none hands a frame over after
                        // that; bounded, for a worker that failed to start), then each sends
                        // what was already accepted, what the others handed it included.
                        out_of_loop.fetch_add(1, Ordering::SeqCst);
                        let since = Instant::now();
                        while out_of_loop.load(Ordering::SeqCst) < n
                            && since.elapsed() < Duration::from_millis(200)
                        {
                            std::thread::sleep(Duration::from_micros(100));
                        }
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
        // The metrics listener and the control socket once the workers run (after a takeover
        // the old process has just given them up; the workers poll already).
        match listen(cfg, &snap, &slots, &shared, from.is_some()) {
            Ok(l) => (exporter, server) = l,
            Err(e) => {
                // Nothing attached, nothing announced: the workers stop and the start fails.
                stop.store(true, Ordering::SeqCst);
                failed = Some(e);
            }
        }
        let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
        let mut pinged = Instant::now();
        if failed.is_none() {
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
            if from.is_some() {
                // Started by the old process (`ctl upgrade`): this one is the service's process
                // now (the unit has NotifyAccess=all), before the old one exits.
                let me = std::process::id();
                notify(&[
                    NotifyState::MainPid(me),
                    NotifyState::Ready,
                    NotifyState::Status(&status),
                ]);
            } else {
                notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
            }
            if let Some(r) = from.take() {
                // The new process switches: the old one may go.
                r.confirm();
            }
        }
        let _ = shared.main_thread.set(std::thread::current());
        // Until stopped: SIGHUP reloads. (A worker that ends early sets `stop` itself.)
        while !stop.load(Ordering::Relaxed)
            && handles.iter().all(|h| h.as_ref().is_ok_and(|h| !h.is_finished()))
        {
            if let Ok((offer, stream)) = takeovers.try_recv() {
                let cfg = shared.running.lock().map(|r| r.0.clone());
                let why = match &cfg {
                    Ok(cfg) => crate::takeover::refusal(
                        &offer,
                        cfg,
                        live.fabric.area_handle().chunks(),
                        live.fabric.not_up(),
                    ),
                    Err(_) => Some("the running config is unreadable".to_string()),
                };
                match why {
                    Some(why) => {
                        tracing::warn!("takeover refused: {why}");
                        crate::control_api::reply_error(&stream, &why);
                    }
                    None => {
                        tracing::info!("handing the switch over to a new process");
                        // The listeners first, while the workers still switch: the new
                        // process binds them once it has the sockets.
                        exporter = None;
                        server = None;
                        handing = Some(stream);
                        break;
                    }
                }
            }
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
            if let Some(a) = &agent {
                // The newest map only: the ones before it are history.
                if let Some(m) = a.maps.try_iter().last() {
                    live.fabric.overlay(&m);
                }
                // A reload may have changed this host's tenants, ports or MACs.
                let now = shared.snapshot();
                if now.generation != cluster_generation {
                    cluster_generation = now.generation;
                    if let Ok(r) = shared.running.lock()
                        && let Some(l) = crate::cluster::Local::of(&r.0, &r.1)
                    {
                        a.update(l);
                    }
                }
            }
            while let Ok(sock) = closed.try_recv() {
                // Its kernel counters first: what it lost belongs in the stop summary.
                retired.push(crate::summary::Retired::of(&sock));
            }
            // Rarely (this thread may share a core with a busy-polling worker), or at once when
            // `ctl reload` asks.
            if let Ok(req) = reload_requests.try_recv() {
                crate::reload::serve(&mut live, &shared, req);
            } else {
                // PERF(helpers): parked on a futex, woken by `Shared::wake_main`. A blocking
                // channel receive spins and calls `sched_yield` before it sleeps and after it
                // wakes; on a core it shares with a busy-polling worker each yield handed the
                // worker the core until the next scheduler tick (4 ms), and each return took
                // it back: four preemptions of the worker per round instead of one.
                std::thread::park_timeout(Duration::from_millis(200));
            }
        }
        // Vhost-user threads first: a guest leaving now must not wait for a worker that stops.
        live.fabric.stopping();
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
    // A stop takes this host out of the cluster at once (its lease revoked); an upgrade leaves
    // its entries to the new process.
    let cluster = agent.map(|a| a.stop(handing.is_none()));
    // Its last update sees the workers' final figures.
    drop(exporter);
    drop(server);
    let snap = shared.snapshot();
    let mut done = Vec::new();
    for f in finished {
        done.push(f?);
    }
    if let Some(e) = failed {
        return Err(e);
    }
    if let Some(stream) = handing {
        return hand_off(&stream, done, live, &shared, &snap, cluster);
    }

    // Sockets taken out in the workers' last breaths.
    retired.extend(closed.try_iter().map(|sock| crate::summary::Retired::of(&sock)));
    let (c, census, kernel_lost) =
        crate::summary::log(&mut done, &retired, &snap, total_chunks, workers);
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
    Ok(Report { snap, counters: c, kernel_lost })
}

/// The metrics exporter and the control socket's server (each when enabled). After a takeover
/// (`after_takeover`) the old process has just closed its metrics listener: binding is retried
/// for a moment.
fn listen(
    cfg: &Config,
    snap: &Arc<Snapshot>,
    slots: &[crate::metrics::Slot],
    shared: &Arc<crate::control_api::Shared>,
    after_takeover: bool,
) -> anyhow::Result<(Option<crate::metrics::Exporter>, Option<crate::control_api::Server>)> {
    let tries = if after_takeover { 40 } else { 1 };
    let mut k = 0;
    let exporter = loop {
        let s = shared.clone();
        match crate::metrics::start(&cfg.metrics, snap, slots, move || s.facts()) {
            Err(_) if k + 1 < tries => {
                k += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            r => break r?,
        }
    };
    let server = if cfg.control.enabled {
        Some(crate::control_api::serve(Path::new(&cfg.control.socket), shared.clone())?)
    } else {
        None
    };
    Ok((exporter, server))
}

/// Port `name` (id `id`) from a takeover: its sockets adopted (queue order, to `workers[q]`),
/// its program as the old process left it, attached.
fn adopt_port(
    r: &mut crate::takeover::Received,
    cfg: &Config,
    id: PortId,
    name: &str,
    workers: &[usize],
    fabric: &Fabric,
) -> anyhow::Result<crate::fabric::Opened> {
    use dataplane::port::afxdp::{BoundMode, XdpAttachment};
    let pc = &cfg.ports[name];
    let p = r.state.ports.iter().position(|p| p.name == name);
    let p = p.with_context(|| format!("the handover has no port {name}"))?;
    let (map, prog, link, native, interface, quiet) = {
        let p = &r.state.ports[p];
        (p.map, p.prog, p.link, p.native, p.interface.clone(), p.quiet)
    };
    let link = link.map(|l| r.fd(l)).transpose()?;
    let attachment = XdpAttachment::adopt(&interface, r.fd(map)?, r.fd(prog)?, link, native);
    let mut socks: Vec<crate::takeover::SocketState> =
        r.state.sockets.iter().filter(|s| s.port == name).cloned().collect();
    socks.sort_by_key(|s| s.queue);
    if socks.len() != pc.queues as usize {
        bail!("the handover has {} sockets of port {name}, the config {}", socks.len(), pc.queues);
    }
    let mut sockets = Vec::new();
    for s in socks {
        let (queue, in_fill, in_tx, fd) = (s.queue, s.in_fill, s.in_tx, s.fd);
        let mode = if s.mode == "zero-copy" { BoundMode::ZeroCopy } else { BoundMode::Copy };
        let mode = (mode, s.multi_buffer);
        let fd = r.fd(fd)?;
        let ring = cfg.switch.ring_size;
        let area = fabric.area_handle();
        let mut sock = XskPort::adopt(fd, area, &interface, queue, ring, mode, in_fill, in_tx)?;
        if s.skip_rest {
            tracing::info!(
                "port {name} queue {queue}: skipping the rest of a packet the old process \
                 was receiving when it handed over"
            );
            sock.skip_rest();
        }
        sockets.push(sock);
    }
    let given = crate::fabric::Given {
        name: name.to_string(),
        interface,
        attachment: Some(attachment),
        quiet,
    };
    fabric.adopt(id, given, pc, sockets, workers)
}

/// The old process's side of a takeover, once its workers have stopped: their sockets, the
/// frame area, the programs and the state go to the new process on `stream`; it exits when the
/// new one says it switches. Nothing is detached or put back.
fn hand_off(
    stream: &std::os::unix::net::UnixStream,
    mut done: Vec<Finished>,
    live: crate::reload::Live,
    shared: &Arc<crate::control_api::Shared>,
    snap: &Arc<Snapshot>,
    cluster: Option<crate::cluster::ViewState>,
) -> anyhow::Result<Report> {
    use crate::takeover::{Handover, PortState, SocketState};
    use std::os::fd::BorrowedFd;
    let mut sockets = Vec::new();
    let mut free = Vec::new();
    for f in &mut done {
        let (socks, fr) = f.worker.hand_over();
        sockets.extend(socks);
        free.extend(fr);
    }
    let workers: Vec<&Worker<Driver>> = done.iter().map(|f| &f.worker).collect();
    let crate::takeover::Gathered { macs, conns, counters } =
        crate::takeover::gather(&workers, snap);
    let crate::reload::Live { fabric, flowlog } = live;
    let (area, given) = fabric.give_up();
    let (chunks, chunk_size, pages) = (area.chunks(), area.chunk_size(), area.page_size());
    let mut fds: Vec<BorrowedFd<'_>> = vec![area.file()];
    let mut in_rings = 0u64;
    let mut socket_states = Vec::new();
    for (port, s) in &sockets {
        // Vhost-user ports refuse a takeover before it starts (`Fabric::not_up`).
        let Some(s) = s.xsk() else { continue };
        let c = dataplane::port::Port::census(s);
        in_rings += u64::from(c.fill + c.tx);
        socket_states.push(SocketState {
            port: snap.ports[port.index()].name.clone(),
            queue: s.queue(),
            mode: s.mode().as_str().to_string(),
            multi_buffer: s.multi_buffer(),
            skip_rest: s.skipping(),
            in_fill: c.fill,
            in_tx: c.tx,
            fd: fds.len(),
        });
        fds.push(s.fd());
    }
    let mut port_states = Vec::new();
    for g in &given {
        let Some(a) = &g.attachment else { continue };
        let (map, prog, link) = a.fds();
        let at = fds.len();
        fds.push(map);
        fds.push(prog);
        if let Some(l) = link {
            fds.push(l);
        }
        port_states.push(PortState {
            name: g.name.clone(),
            interface: g.interface.clone(),
            map: at,
            prog: at + 1,
            link: link.map(|_| at + 2),
            native: a.native,
            quiet: g.quiet,
        });
    }
    let total = u64::from(chunks);
    if free.len() as u64 + in_rings != total {
        tracing::error!(
            "takeover: {} free frames and {in_rings} on the sockets' rings, of {total}: the \
             census does not balance",
            free.len()
        );
    }
    let mut c = Counters::default();
    for f in &done {
        c.merge(&f.worker.pipeline().counters);
    }
    // The flow tables go with the workers; then the writer has every record, and its IPFIX
    // numbering is final (the new process goes on from it).
    drop(done);
    shared.end_capture();
    let ipfix = flowlog.finish();
    let state = Handover {
        version: crate::takeover::STATE_VERSION,
        chunks,
        chunk_size,
        pages: pages.as_str().to_string(),
        area: 0,
        fds: fds.len(),
        sockets: socket_states,
        ports: port_states,
        free: crate::takeover::free_ranges(&free, chunk_size),
        macs,
        conns,
        counters,
        ipfix,
        cluster,
    };
    crate::takeover::send(stream, &state, &fds)?;
    tracing::info!(
        "handed over: {} sockets, {} ports, {} free frames and {in_rings} on the rings, {} MACs, \
         {} connections",
        state.sockets.len(),
        state.ports.len(),
        free.len(),
        state.macs.len(),
        state.conns.len()
    );
    let confirmed = crate::takeover::wait_confirmed(stream, Duration::from_secs(30));
    drop(sockets);
    drop(given);
    if !confirmed {
        bail!("the new process did not say it took over (it may have failed: see its log)");
    }
    tracing::info!("the new process switches; exiting");
    Ok(Report { snap: snap.clone(), counters: c, kernel_lost: Vec::new() })
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
