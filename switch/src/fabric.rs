//! The ports of the running switch as the main thread holds them: per port its interface, its
//! AF_XDP sockets (which worker polls each), its XDP program and what was changed on the
//! host's stack. Ports are opened at start and by reloads that add them, closed by reloads that
//! remove them, and reopened when their interface vanishes and comes back (a VM's tap or a veth
//! deleted and created again, a VF reset). Nothing here runs on a worker: the workers are told
//! through [`WorkerCmd`]s, applied between breaths.
//!
//! - **Opening** ([`Fabric::open`]): the host's stack is quieted on the interface, one socket
//!   per queue is opened (the interface's first socket registers the frame area as its UMEM,
//!   the others share it) and put in a new XSKMAP. Nothing is handed over yet, so a failure
//!   leaves the switch as it was.
//! - **Handing over** ([`Fabric::hand_over`]): each socket goes to its worker, which fills its
//!   fill ring at once; every worker learns who polls the port and how many share its rates.
//! - **Attaching** ([`Fabric::attach_pending`]): only once the workers have taken the sockets
//!   is the XDP program attached, so the first frame redirected finds frames to land in.
//! - **Removing** ([`Fabric::remove`]): the XDP program is detached first (nothing new
//!   arrives), then the workers give the sockets' frames back and close them; frames queued for
//!   the port are dropped as `port_down`; the host's stack gets back IPv6 and ARP.
//! - **Vanishing** ([`Fabric::check`], every 200 ms, one `if_nametoindex` per port): a port
//!   whose interface is gone (or has a new index) is marked down in its workers (frames for it
//!   dropped as `port_down`); when it is back, new sockets replace the old ones, which give
//!   back what frames they can; what the kernel kept with the vanished device is written off in
//!   the frame census and logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use control::config::model::{PortConfig, SwitchConfig, VhostMode, VhostUserConfig, XdpMode};
use crossbeam_channel::Sender;
use dataplane::port::Driver;
use dataplane::port::FrameArea;
use dataplane::port::afxdp::{BindMode, XdpAttachment, XskPort, ifindex};
use dataplane::port::vhost::{self, Link};
use dataplane::snapshot::{PortId, Snapshot};
use dataplane::worker::WorkerCmd;

use crate::control_api::{Placement, Shared};
use crate::netdev::Quieted;

/// `EBUSY` (Linux): the queue is bound to another socket.
const EBUSY: i32 = 16;

/// How often and how long a bind that finds its queue busy is tried again.
const BUSY_TRIES: u32 = 40;
const BUSY_WAIT: Duration = Duration::from_millis(50);

/// Frames a worker with `sockets` sockets of rings of `ring_size` needs in its share.
pub fn worker_frames(sockets: usize, ring_size: u32) -> u64 {
    sockets as u64 * SwitchConfig::frames_per_socket(ring_size) + SPARE_FRAMES
}

/// Frames a worker keeps beyond its sockets' rings (for TX lists and handoffs).
const SPARE_FRAMES: u64 = 256;

/// One socket of a port: its queue, the worker polling it, the mode it got.
#[derive(Debug, Clone)]
struct Queue {
    queue: u32,
    worker: usize,
    mode: &'static str,
}

/// The protocol side of a vhost-user port: what it shares with the worker's port, and the
/// thread serving its socket. Dropped, it stops the thread (within 200 ms) and waits for it,
/// which unlinks a server socket.
struct VhostHeld {
    /// A link per queue pair; the first counts the connections.
    links: Vec<Arc<Link>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for VhostHeld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VhostHeld")
    }
}

impl Drop for VhostHeld {
    fn drop(&mut self) {
        self.links.iter().for_each(|l| l.closing.store(true, Ordering::Release));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A port the switch holds.
#[derive(Debug)]
struct Held {
    id: PortId,
    name: String,
    interface: String,
    bind: BindMode,
    queues: Vec<Queue>,
    /// The interface index the sockets are bound to.
    bound: u32,
    up: bool,
    /// Its XDP program (`None` until attached, and while the interface is gone).
    attachment: Option<XdpAttachment>,
    /// An XSKMAP holding the sockets, waiting to be attached.
    pending: Option<XdpAttachment>,
    /// What [`crate::netdev::quiet`] changed, put back when the port is removed or the switch
    /// stops.
    quiet: Option<Quieted>,
    /// The last reason a reopen failed (logged once per reason).
    last_error: Option<String>,
    /// Its sockets were handed to the workers (false: added while its interface did not
    /// exist; opened when it appears).
    handed: bool,
    /// A vhost-user port's protocol side (`interface` is then its socket's path).
    vhost: Option<VhostHeld>,
}

/// A port as a takeover hands it on: its XDP program and what quieting its interface changed
/// (IPv6, ARP were on).
pub struct Given {
    /// The port's name.
    pub name: String,
    /// Its interface.
    pub interface: String,
    /// Its program, map and link.
    pub attachment: Option<XdpAttachment>,
    /// What was on before the switch quieted the interface.
    pub quiet: Option<(bool, bool)>,
}

/// A port opened but not handed to the workers yet.
pub struct Opened {
    held: Held,
    sockets: Vec<Driver>,
}

/// The ports of the running switch.
pub struct Fabric {
    area: FrameArea,
    ring_size: u32,
    busy_poll: (u32, u32),
    ports: Vec<Held>,
    workers: Vec<Sender<WorkerCmd<Driver>>>,
    /// Commands sent to each worker, and how many each has applied (its thread counts them).
    sent: Vec<u64>,
    applied: Vec<Arc<AtomicU64>>,
    /// Frames in each worker's share of the area.
    shares: Vec<u64>,
    /// The kernel refused multi-buffer on the socket that registered the frame area, so every
    /// socket sharing it is single-buffer: no port carries more than one frame.
    single_buffer: bool,
}

fn bind_mode(m: XdpMode) -> BindMode {
    match m {
        XdpMode::Auto => BindMode::Auto,
        XdpMode::ZeroCopy => BindMode::ZeroCopy,
        XdpMode::Copy => BindMode::Copy,
    }
}

impl Fabric {
    /// No ports yet; `workers` are the workers' command channels, `applied` the commands each
    /// has applied, `shares` their frames.
    pub fn new(
        area: FrameArea,
        ring_size: u32,
        busy_poll: (u32, u32),
        workers: Vec<Sender<WorkerCmd<Driver>>>,
        applied: Vec<Arc<AtomicU64>>,
        shares: Vec<u64>,
    ) -> Fabric {
        let sent = vec![0; workers.len()];
        let ports = Vec::new();
        let single_buffer = false;
        Fabric { area, ring_size, busy_poll, ports, workers, sent, applied, shares, single_buffer }
    }

    /// Sends `cmd` to worker `w`.
    fn send(&mut self, w: usize, cmd: WorkerCmd<Driver>) {
        if self.workers[w].send(cmd).is_ok() {
            self.sent[w] += 1;
        }
    }

    /// Sends a snapshot to every worker.
    pub fn install(&mut self, snap: &Arc<Snapshot>) {
        for w in 0..self.workers.len() {
            self.send(w, WorkerCmd::Install(snap.clone()));
        }
    }

    /// Caps the MTU of every port of `snap` to what one frame carries when the sockets are
    /// single-buffer (this one's or those in `opened` said so): a packet the kernel cannot put
    /// in one frame is never received, and one longer than a frame sent there (a chain from a
    /// vhost-user port) is dropped as `too_big` by the egress check instead of being handed to
    /// a socket that takes no chains. Returns a line per port capped, for the log.
    pub fn cap_mtus(&mut self, snap: &mut Snapshot, opened: &[Opened]) -> Vec<String> {
        if !self.single_buffer_with(opened) {
            return Vec::new();
        }
        let room = self.area.chunk_size() - dataplane::port::FRAME_HEADROOM as u32;
        let cap = control::config::model::single_frame_mtu(self.area.chunk_size());
        let mut log = Vec::new();
        for i in 0..snap.ports.len() {
            let p = &snap.ports[i];
            // A vhost-user port (no interface) is no AF_XDP socket: it takes chains.
            if p.is_vacant() || p.interface.is_empty() || p.mtu.is_some_and(|m| m <= cap) {
                continue;
            }
            log.push(format!(
                "port {}: MTU {} capped to {cap}: the sockets are single-buffer (the kernel \
                 refused XDP_USE_SG), one frame of {room} bytes a packet",
                p.name,
                p.mtu.map_or_else(|| "unknown".to_string(), |m| m.to_string())
            ));
            snap.set_port_mtu(PortId(i as u16), cap);
        }
        log
    }

    /// True when a socket of `opened`, or one opened before, runs single-buffer (the kernel
    /// refused `XDP_USE_SG`): the ports' MTUs must then fit one frame ([`Fabric::cap_mtus`]).
    pub fn single_buffer_with(&mut self, opened: &[Opened]) -> bool {
        let refused = |d: &Driver| matches!(d, Driver::Xsk(x) if !x.multi_buffer());
        self.single_buffer |= opened.iter().flat_map(|o| &o.sockets).any(refused);
        self.single_buffer
    }

    /// Sends a cluster map to every worker.
    pub fn overlay(&mut self, map: &Arc<dataplane::flow::overlay::OverlayMap>) {
        for w in 0..self.workers.len() {
            self.send(w, WorkerCmd::Overlay(map.clone()));
        }
    }

    /// True when every worker has applied every command sent to it.
    pub fn caught_up(&self) -> bool {
        self.sent.iter().zip(&self.applied).all(|(s, a)| a.load(Ordering::Acquire) >= *s)
    }

    /// Waits until [`Fabric::caught_up`], at most `limit` (the workers take commands between
    /// breaths, a few times a second). False when it timed out.
    pub fn wait(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while !self.caught_up() {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Frames a worker with `sockets` sockets needs.
    fn need(&self, sockets: usize) -> u64 {
        worker_frames(sockets, self.ring_size)
    }

    /// Sockets each worker polls (those opened but not handed over in `extra` included).
    fn load(&self, extra: &[Opened]) -> Vec<usize> {
        let mut load = vec![0; self.workers.len()];
        for q in self.ports.iter().chain(extra.iter().map(|o| &o.held)).flat_map(|h| &h.queues) {
            load[q.worker] += 1;
        }
        load
    }

    /// Workers for `queues` new sockets: each to the least loaded worker whose frames cover one
    /// more socket; `extra` are ports opened in the same reload. Says why when none has room.
    pub fn choose(&self, queues: u32, extra: &[Opened]) -> Result<Vec<usize>, String> {
        let mut load = self.load(extra);
        (0..queues)
            .map(|_| {
                let w = (0..load.len())
                    .filter(|&w| self.shares[w] >= self.need(load[w] + 1))
                    .min_by_key(|&w| load[w])
                    .ok_or_else(|| {
                        format!(
                            "switch.frames: no worker has frames for one more socket (each \
                             needs {} of its share); raise switch.frames (at a restart)",
                            SwitchConfig::frames_per_socket(self.ring_size)
                        )
                    })?;
                load[w] += 1;
                Ok(w)
            })
            .collect()
    }

    /// Opens port `name` (id `id`) on `interface`: the host's stack quieted, one socket per
    /// queue, each registered in a new XSKMAP; `workers[q]` will poll queue `q`. Nothing is
    /// handed over or attached yet: dropping the result undoes it.
    pub fn open(
        &self,
        id: PortId,
        name: &str,
        interface: &str,
        pc: &PortConfig,
        workers: &[usize],
    ) -> anyhow::Result<Opened> {
        if let Some(v) = &pc.vhost_user {
            return self.open_vhost(id, name, v, workers);
        }
        let bound = ifindex(interface)
            .with_context(|| format!("port {name}: no interface named {interface}"))?;
        let (quiet, log) = crate::netdev::quiet(interface)
            .with_context(|| format!("port {name}: taking {interface}"))?;
        for l in log {
            tracing::info!("port {name}: {l}");
        }
        let bind = bind_mode(pc.mode);
        let mut held = Held {
            id,
            name: name.to_string(),
            interface: interface.to_string(),
            bind,
            queues: Vec::new(),
            bound,
            up: true,
            attachment: None,
            pending: None,
            quiet: Some(quiet),
            last_error: None,
            handed: true,
            vhost: None,
        };
        let (attachment, sockets) = self.sockets(&held.interface, bind, pc.queues)?;
        if sockets.iter().any(|s| !s.multi_buffer()) {
            let room = u64::from(self.area_handle().chunk_size()) - dataplane::port::FRAME_HEADROOM;
            tracing::warn!(
                "port {name}: the kernel refused multi-buffer AF_XDP (XDP_USE_SG): single-buffer, \
                 packets longer than one frame ({room} bytes) are dropped"
            );
        }
        for (sock, &worker) in sockets.iter().zip(workers) {
            held.queues.push(Queue { queue: sock.queue(), worker, mode: sock.mode().as_str() });
        }
        held.pending = Some(attachment);
        Ok(Opened { held, sockets: sockets.into_iter().map(Driver::Xsk).collect() })
    }

    /// Opens vhost-user port `name`: its socket bound (server mode) or its directory checked
    /// (client mode), its protocol thread started; queue pair `q` goes to `workers[q]`.
    fn open_vhost(
        &self,
        id: PortId,
        name: &str,
        v: &VhostUserConfig,
        workers: &[usize],
    ) -> anyhow::Result<Opened> {
        let mode = match v.mode {
            VhostMode::Server => vhost::backend::Mode::Server,
            VhostMode::Client => vhost::backend::Mode::Client,
        };
        let ep = vhost::backend::Endpoint::open(std::path::Path::new(&v.socket), mode)
            .with_context(|| format!("port {name}: vhost-user socket {}", v.socket))?;
        anyhow::ensure!(!workers.is_empty(), "no worker chosen");
        let links = workers
            .iter()
            .map(|_| vhost::Link::new())
            .collect::<std::io::Result<Vec<_>>>()
            .with_context(|| format!("port {name}: an eventfd"))?;
        let ports = (0..).zip(&links).map(|(q, l)| vhost::VhostPort::new(name, q, l.clone()));
        let sockets = ports.map(Driver::Vhost).collect();
        let thread = std::thread::Builder::new()
            .name(format!("vhost-{name}"))
            .spawn({
                let (links, name) = (links.clone(), name.to_string());
                move || vhost::backend::serve(&name, ep, links)
            })
            .with_context(|| format!("port {name}: its vhost-user thread"))?;
        let mode = match v.mode {
            VhostMode::Server => "vhost-user server",
            VhostMode::Client => "vhost-user client",
        };
        let queues = (0..).zip(workers).map(|(queue, &worker)| Queue { queue, worker, mode });
        let held = Held {
            id,
            name: name.to_string(),
            interface: v.socket.clone(),
            bind: BindMode::Auto,
            queues: queues.collect(),
            bound: 0,
            // Up once a guest's rings run (`Fabric::check`).
            up: false,
            attachment: None,
            pending: None,
            quiet: None,
            last_error: None,
            handed: true,
            vhost: Some(VhostHeld { links, thread: Some(thread) }),
        };
        Ok(Opened { held, sockets })
    }

    /// Port `name` (id `id`) whose interface does not exist yet: held down, and opened by
    /// [`Fabric::check`] when the interface appears (a VM's tap created after the config that
    /// names it was reloaded).
    pub fn wait_for(
        &mut self,
        id: PortId,
        name: &str,
        interface: &str,
        pc: &PortConfig,
        workers: &[usize],
    ) {
        self.ports.push(Held {
            id,
            name: name.to_string(),
            interface: interface.to_string(),
            bind: bind_mode(pc.mode),
            queues: (0..pc.queues)
                .zip(workers)
                .map(|(queue, &worker)| Queue { queue, worker, mode: "waiting" })
                .collect(),
            bound: 0,
            up: false,
            attachment: None,
            pending: None,
            quiet: None,
            last_error: None,
            handed: false,
            vhost: None,
        });
    }

    /// Opens port `i`, added while its interface did not exist, now that it does: its sockets
    /// go to their workers and its program is attached by the next [`Fabric::check`].
    fn open_late(&mut self, i: usize, ports: usize) -> anyhow::Result<()> {
        let h = &self.ports[i];
        let (quiet, log) = crate::netdev::quiet(&h.interface)?;
        for l in log {
            tracing::info!("port {}: {l}", h.name);
        }
        let (a, socks) = self.sockets(&h.interface, h.bind, h.queues.len() as u32)?;
        let id = h.id;
        let h = &mut self.ports[i];
        h.quiet = Some(quiet);
        h.pending = Some(a);
        h.handed = true;
        let mut cmds = Vec::new();
        for (sock, q) in socks.into_iter().zip(&mut h.queues) {
            q.mode = sock.mode().as_str();
            let driver = Box::new(Driver::Xsk(sock));
            cmds.push((q.worker, WorkerCmd::AddSocket { port: id, driver }));
        }
        for (w, cmd) in cmds {
            self.send(w, cmd);
        }
        self.plan(ports);
        Ok(())
    }

    /// Sockets for queues `0..queues` of `interface`, in a new XSKMAP (not attached).
    fn sockets(
        &self,
        interface: &str,
        bind: BindMode,
        queues: u32,
    ) -> anyhow::Result<(XdpAttachment, Vec<XskPort>)> {
        let mut socks: Vec<XskPort> = Vec::new();
        for queue in 0..queues {
            let mut tries = 0;
            let sock = loop {
                match XskPort::open(
                    &self.area,
                    interface,
                    queue,
                    self.ring_size,
                    bind,
                    socks.first(),
                ) {
                    // The queue is still bound to a socket that is going away (a switch that
                    // just exited: the kernel releases its sockets' pools from a work queue).
                    Err(e) if e.source.raw_os_error() == Some(EBUSY) && tries < BUSY_TRIES => {
                        tries += 1;
                        std::thread::sleep(BUSY_WAIT);
                    }
                    r => break r?,
                }
            };
            if tries > 0 {
                tracing::info!("{interface} queue {queue}: bound after {tries} retries (was busy)");
            }
            if self.busy_poll.0 > 0
                && let Err(e) = sock.set_busy_poll(self.busy_poll.0, self.busy_poll.1)
            {
                tracing::warn!(
                    "{interface} queue {queue}: busy polling not accepted ({e}); polling without"
                );
            }
            socks.push(sock);
        }
        let a = XdpAttachment::new(interface, queues)?;
        for s in &socks {
            a.register(s)?;
        }
        Ok((a, socks))
    }

    /// Hands the sockets of `opened` to their workers and tells every worker who polls which
    /// port now. The programs stay detached until [`Fabric::attach_pending`].
    pub fn hand_over(&mut self, opened: Vec<Opened>, ports: usize) {
        for o in opened {
            for (sock, q) in o.sockets.into_iter().zip(&o.held.queues) {
                tracing::info!(
                    "port {} on {} queue {}: {} mode, worker {}",
                    o.held.name,
                    o.held.interface,
                    q.queue,
                    q.mode,
                    q.worker
                );
                self.send(
                    q.worker,
                    WorkerCmd::AddSocket { port: o.held.id, driver: Box::new(sock) },
                );
            }
            self.ports.push(o.held);
        }
        self.plan(ports);
    }

    /// Tells every worker, for each of the `ports` ids, which worker polls it, and how many
    /// workers share each port's rates.
    fn plan(&mut self, ports: usize) {
        let mut owners = vec![None; ports];
        let mut sharing = vec![1u64; ports];
        // A port still waiting for its interface has no socket anywhere yet.
        for h in self.ports.iter().filter(|h| h.handed) {
            if let Some(o) = owners.get_mut(h.id.index()) {
                *o = h.queues.first().map(|q| q.worker);
            }
            let mut ws: Vec<usize> = h.queues.iter().map(|q| q.worker).collect();
            ws.sort_unstable();
            ws.dedup();
            if let Some(s) = sharing.get_mut(h.id.index()) {
                *s = ws.len().max(1) as u64;
            }
        }
        for w in 0..self.workers.len() {
            let plan = WorkerCmd::Plan { owners: owners.clone(), shares: sharing.clone() };
            self.send(w, plan);
        }
    }

    /// Attaches the XDP programs of the ports handed over since the last call (the workers
    /// have taken their sockets). A port whose program cannot be attached is marked down and
    /// retried by [`Fabric::check`]; the errors are returned.
    pub fn attach_pending(&mut self, shared: &Shared) -> Vec<String> {
        let mut errors = Vec::new();
        let mut down = Vec::new();
        for h in &mut self.ports {
            let Some(mut a) = h.pending.take() else { continue };
            match a.attach() {
                Ok(()) => {
                    tracing::info!(
                        "XDP program on {} ({})",
                        h.interface,
                        if a.native { "native" } else { "generic" }
                    );
                    h.attachment = Some(a);
                }
                Err(e) => {
                    let e = format!("port {}: {e}", h.name);
                    tracing::warn!("{e}; the port stays down until it can be attached");
                    for q in &h.queues {
                        down.push((q.worker, WorkerCmd::SocketDown { port: h.id, queue: q.queue }));
                    }
                    h.up = false;
                    h.bound = 0;
                    shared.set_port_down(&h.name, true);
                    errors.push(e);
                }
            }
        }
        for (w, cmd) in down {
            self.send(w, cmd);
        }
        errors
    }

    /// Removes port `name`: its program detached, its sockets closed by their workers (which
    /// give their frames back), the host's stack on its interface as it was. The workers'
    /// plan of who polls what follows with the next [`Fabric::hand_over`].
    pub fn remove(&mut self, name: &str) {
        let Some(i) = self.ports.iter().position(|h| h.name == name) else { return };
        let mut h = self.ports.remove(i);
        // Detached first: nothing new arrives while the workers take the sockets out.
        drop(h.attachment.take());
        drop(h.pending.take());
        // (A port still waiting for its interface has no sockets to take out.)
        for q in h.queues.iter().filter(|_| h.handed) {
            self.send(q.worker, WorkerCmd::RemoveSocket { port: h.id, queue: q.queue });
        }
        if h.vhost.take().is_some() {
            tracing::info!("port {name} removed (vhost-user {}: connection closed)", h.interface);
            return;
        }
        tracing::info!("port {name} removed ({}: XDP program detached)", h.interface);
        // IPv6 and ARP back on the interface given back.
        drop(h.quiet.take());
    }

    /// Which worker polls which socket.
    pub fn placement(&self) -> Vec<Placement> {
        self.ports
            .iter()
            .flat_map(|h| {
                h.queues.iter().map(|q| Placement {
                    port: h.name.clone(),
                    queue: q.queue,
                    worker: q.worker,
                    mode: q.mode.to_string(),
                })
            })
            .collect()
    }

    /// Looks at every port's interface once; tells the workers what changed. `ports` is the
    /// number of port ids of the running snapshot.
    pub fn check(&mut self, shared: &Shared, ports: usize) {
        // Ports handed over since the last look, once their workers have them.
        if self.caught_up() && self.ports.iter().any(|h| h.pending.is_some()) {
            self.attach_pending(shared);
        }
        for i in 0..self.ports.len() {
            if let Some(v) = &self.ports[i].vhost {
                // No interface: the port is up while a guest's rings run.
                // Up while the rings of one queue pair at least run.
                let running = v.links.iter().any(|l| l.running.load(Ordering::Acquire));
                let h = &mut self.ports[i];
                shared.set_port_down(&h.name, !running);
                if running != h.up {
                    h.up = running;
                    let now = if running { "up: a guest's rings run" } else { "down: no guest" };
                    tracing::info!("port {}: {now}", h.name);
                }
                continue;
            }
            let now = ifindex(&self.ports[i].interface).ok();
            let h = &mut self.ports[i];
            if h.up && now != Some(h.bound) {
                h.up = false;
                drop(h.attachment.take());
                let (id, name) = (h.id, h.name.clone());
                let queues: Vec<(usize, u32)> =
                    h.queues.iter().map(|q| (q.worker, q.queue)).collect();
                for (w, queue) in queues {
                    self.send(w, WorkerCmd::SocketDown { port: id, queue });
                }
                let h = &self.ports[i];
                shared.set_port_down(&name, true);
                tracing::warn!(
                    "port {}: interface {} is gone; port down (frames for it are dropped as \
                     port_down until it returns)",
                    h.name,
                    h.interface
                );
            } else if !h.up
                && let Some(idx) = now
            {
                let done =
                    if self.ports[i].handed { self.reopen(i) } else { self.open_late(i, ports) };
                match done {
                    Ok(()) => {
                        let h = &mut self.ports[i];
                        h.bound = idx;
                        h.up = true;
                        h.last_error = None;
                        shared.set_port_down(&h.name, false);
                        tracing::info!(
                            "port {}: interface {} is back (index {idx}); port up",
                            h.name,
                            h.interface
                        );
                    }
                    Err(e) => {
                        let h = &mut self.ports[i];
                        let e = format!("{e:#}");
                        if h.last_error.as_ref() != Some(&e) {
                            tracing::warn!(
                                "port {}: interface {} is back but cannot be opened yet \
                                 (retrying): {e}",
                                h.name,
                                h.interface
                            );
                            h.last_error = Some(e);
                        }
                    }
                }
            }
        }
    }

    /// New sockets for every queue of port `i`'s returned interface, swapped in by its workers,
    /// and its program attached.
    fn reopen(&mut self, i: usize) -> anyhow::Result<()> {
        let h = &self.ports[i];
        // A new interface: the host's stack is quiet on it again before frames flow.
        let (q, log) = crate::netdev::quiet(&h.interface)?;
        q.keep();
        for l in log {
            tracing::info!("port {}: {l}", h.name);
        }
        let queues = h.queues.iter().map(|q| q.queue + 1).max().unwrap_or(1);
        let (mut a, socks) = self.sockets(&h.interface, h.bind, queues)?;
        if socks.len() != h.queues.len() {
            bail!("{} sockets for {} queues", socks.len(), h.queues.len());
        }
        a.attach()?;
        let (id, workers): (PortId, Vec<usize>) =
            (h.id, h.queues.iter().map(|q| q.worker).collect());
        for (sock, w) in socks.into_iter().zip(workers) {
            let driver = Box::new(Driver::Xsk(sock));
            self.send(w, WorkerCmd::ReplaceSocket { port: id, driver });
        }
        self.ports[i].attachment = Some(a);
        Ok(())
    }

    /// The frame area (a handle, for handing its memory file over).
    pub fn area_handle(&self) -> &FrameArea {
        &self.area
    }

    /// A port that is not up (down, or waiting for its interface), if any: a takeover hands
    /// over only ports that run.
    pub fn not_up(&self) -> Option<&str> {
        self.ports.iter().find(|h| !h.up || !h.handed || h.attachment.is_none()).map(|h| &*h.name)
    }

    /// At a takeover, after the workers have given up their sockets: every port's program
    /// (still attached) and what was changed on its interface, for the new process. Nothing
    /// is detached or put back here. The frame area comes back too (its memory file goes with
    /// them).
    pub fn give_up(mut self) -> (FrameArea, Vec<Given>) {
        let given = self
            .ports
            .iter_mut()
            .map(|h| {
                let quiet = h.quiet.take().map(|q| {
                    let was = q.was_on();
                    q.keep(); // the new process puts it back at its stop
                    was
                });
                Given {
                    name: h.name.clone(),
                    interface: h.interface.clone(),
                    attachment: h.attachment.take(),
                    quiet,
                }
            })
            .collect();
        (self.area, given)
    }

    /// Port `name` (id `id`) handed over by another process: its program attached already,
    /// its `sockets` (queue order) to go to `workers[q]`, its interface quieted as `quiet`
    /// says. Handed to the workers by [`Fabric::hand_over`], like an opened port.
    pub fn adopt(
        &self,
        id: PortId,
        given: Given,
        pc: &PortConfig,
        sockets: Vec<XskPort>,
        workers: &[usize],
    ) -> anyhow::Result<Opened> {
        let bound = ifindex(&given.interface).with_context(|| {
            format!("port {}: no interface named {}", given.name, given.interface)
        })?;
        let queues = sockets
            .iter()
            .zip(workers)
            .map(|(s, &worker)| Queue { queue: s.queue(), worker, mode: s.mode().as_str() })
            .collect();
        let quiet = given.quiet.map(|(v6, arp)| Quieted::resume(&given.interface, v6, arp));
        let held = Held {
            id,
            name: given.name,
            interface: given.interface,
            bind: bind_mode(pc.mode),
            queues,
            bound,
            up: true,
            attachment: given.attachment,
            pending: None,
            quiet,
            last_error: None,
            handed: true,
            vhost: None,
        };
        Ok(Opened { held, sockets: sockets.into_iter().map(Driver::Xsk).collect() })
    }

    /// The switch is stopping: vhost-user threads stop waiting for their workers (who stop
    /// too) and close their connections.
    pub fn stopping(&self) {
        for v in self.ports.iter().filter_map(|h| h.vhost.as_ref()) {
            v.links.iter().for_each(|l| l.closing.store(true, Ordering::Release));
        }
    }

    /// At a stop, after the workers have closed their sockets: the programs detached, then the
    /// host's stack given back.
    pub fn close(mut self) {
        for h in &self.ports {
            if let Some(v) = &h.vhost {
                let l = &v.links[0];
                let faults: u64 = v.links.iter().map(|l| l.faults.load(Ordering::Relaxed)).sum();
                tracing::info!(
                    "vhost-user port {}: {} connections, {} guest faults, {} protocol errors",
                    h.name,
                    l.connections.load(Ordering::Relaxed),
                    faults,
                    l.protocol_errors.load(Ordering::Relaxed)
                );
            }
        }
        for h in &mut self.ports {
            drop(h.attachment.take());
            drop(h.pending.take());
            drop(h.vhost.take());
        }
        tracing::info!("XDP programs detached");
        for h in &mut self.ports {
            drop(h.quiet.take());
        }
    }
}
