//! Upgrades that lose nothing: `xswitch run --takeover` hands the running switch over to a new
//! process, as HAProxy and Envoy hand over their listening sockets.
//!
//! The new process connects to the running one's control socket and offers to take over
//! ([`control::api::TakeoverOffer`]: the state version it reads, the frame area, workers, rings
//! and ports it would run). The running one refuses what it cannot hand over as it is, saying
//! why, and keeps switching untouched. Otherwise its main thread stops the workers between two
//! breaths (each sends what it had accepted), and answers on the same connection with
//! [`Handover`], a JSON line, followed by the descriptors over `SCM_RIGHTS`: the frame area's
//! memory file (so the UMEM the kernel registered stays the memory both processes map), every
//! AF_XDP socket (its rings still hold the frames the kernel is filling), and every port's
//! XSKMAP, program and link (so the programs never detach and keep redirecting into the same
//! sockets). The state is what both must agree on: which chunks were free (every other chunk
//! is in a socket's rings, so the frame census balances across both processes), learned MACs,
//! tracked connections and the counters, by name (the new process's ids may differ).
//!
//! While the handover is in flight nobody polls the sockets; the kernel keeps receiving into
//! them as long as their fill rings last (four times `ring_size` frames per socket), so nothing is
//! lost when the new process starts polling within that time. The new process confirms once
//! its workers hold the sockets; the old one then exits 0 without detaching anything.
//!
//! # Why by hand
//! Passing descriptors needs `sendmsg`/`recvmsg` with `SCM_RIGHTS`: `rustix` does it in safe
//! code. The protocol around it is small and specific to the switch.

use std::io::{IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use control::api::{Response, TakeoverOffer};
use control::config::Config;
use dataplane::policy::conntrack::{ConnMessage, retenant};
use dataplane::snapshot::{Attachment, Snapshot};
use dataplane::time::Nanos;
use dataplane::trace::Counters;
use dataplane::trace::counters::PktBytes;
use dataplane::wire::MacAddr;
use dataplane::worker::Worker;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

/// The version of [`Handover`]. A new process that reads another refuses to take over (or,
/// with `--takeover=or-restart`, starts afresh once the old one has stopped).
pub const STATE_VERSION: u32 = 1;

/// Descriptors per `sendmsg` (the kernel takes at most 253, `SCM_MAX_FD`).
const FDS_PER_MESSAGE: usize = 200;

/// A takeover asked on the control socket, with the connection it came on.
pub type Asked = (TakeoverOffer, UnixStream);

/// One AF_XDP socket handed over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SocketState {
    /// Its port's name.
    pub port: String,
    /// Its queue.
    pub queue: u32,
    /// `copy` or `zero-copy`.
    pub mode: String,
    /// Bound with `XDP_USE_SG` (multi-buffer); false from a process that predates it (its
    /// sockets were bound without).
    #[serde(default)]
    pub multi_buffer: bool,
    /// The frames it receives next are the rest of a packet whose start the old process
    /// dropped: the new one skips them.
    #[serde(default)]
    pub skip_rest: bool,
    /// Frames on its fill and RX rings.
    pub in_fill: u32,
    /// Frames on its TX and completion rings.
    pub in_tx: u32,
    /// Its descriptor (index among those sent).
    pub fd: usize,
}

/// One port handed over: its XDP program.
#[derive(Debug, Serialize, Deserialize)]
pub struct PortState {
    /// Name.
    pub name: String,
    /// Interface.
    pub interface: String,
    /// Descriptors (indexes among those sent) of its XSKMAP, program and link.
    pub map: usize,
    /// The program.
    pub prog: usize,
    /// The link.
    pub link: Option<usize>,
    /// Native (driver) XDP, else generic.
    pub native: bool,
    /// What was on before the interface was quieted: (IPv6, ARP).
    pub quiet: Option<(bool, bool)>,
}

/// Packets and bytes.
type Pb = [u64; 2];

fn pb(p: &PktBytes) -> Pb {
    [p.packets, p.bytes]
}

fn add_pb(to: &mut PktBytes, p: Pb) {
    to.packets += p[0];
    to.bytes += p[1];
}

/// A port's counters.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PortCounters {
    rx: Pb,
    tx: Pb,
    drops: Vec<u64>,
}

/// A tenant's counters.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TenantCounters {
    rx: Pb,
    tx: Pb,
    queued: Pb,
    drops: Vec<u64>,
}

/// The switch's counters, by port and tenant name, so that its Prometheus series go on.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CounterState {
    ports: Vec<(String, PortCounters)>,
    tenants: Vec<(String, TenantCounters)>,
    parse_errors: Vec<u64>,
    flood_copies: u64,
    kick_errors: u64,
    checksums_completed: u64,
    /// Large TCP segments cut on their way out (none from a switch before them).
    #[serde(default)]
    segmented: u64,
    /// Overlay packets and bytes (encap, decap), replicas and ARP requests answered (none
    /// from a switch before them).
    #[serde(default)]
    overlay: [u64; 6],
    /// Neighbour solicitations answered (none from a switch before them).
    #[serde(default)]
    nd_suppressed: u64,
    /// ARP requests for the tunnel address answered (none from a switch before them).
    #[serde(default)]
    tunnel_arp: u64,
}

/// Everything handed over besides the descriptors.
#[derive(Debug, Serialize, Deserialize)]
pub struct Handover {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Chunks in the frame area.
    pub chunks: u32,
    /// Bytes per chunk.
    pub chunk_size: u32,
    /// Its pages ("4 KiB", "2 MiB", "1 GiB").
    pub pages: String,
    /// The frame area's memory file (index among the descriptors).
    pub area: usize,
    /// Descriptors sent after this header.
    pub fds: usize,
    /// The sockets.
    pub sockets: Vec<SocketState>,
    /// The ports' programs.
    pub ports: Vec<PortState>,
    /// Free chunks, as ranges of chunk indexes `[start, end)`: every other chunk is on a
    /// socket's rings.
    pub free: Vec<(u32, u32)>,
    /// Learned MACs: tenant, MAC, port, VLAN.
    pub macs: Vec<NamedMac>,
    /// Tracked connections: tenant, and the connection as the workers announce it.
    pub conns: Vec<(String, ConnMessage)>,
    /// Counters.
    pub counters: CounterState,
    /// Where the IPFIX numbering stood: (observation domain, data records sent, messages
    /// sent), so that a collector's sequence goes on.
    #[serde(default)]
    pub ipfix: Vec<(u32, u32, u32)>,
    /// The cluster map as the old process's agent last saw it (docs/CLUSTER.md): the new
    /// process switches to other hosts on it from its first breath and resumes the watch after
    /// its revision, without waiting for etcd (which may be down). None without `[cluster]`.
    #[serde(default)]
    pub cluster: Option<crate::cluster::ViewState>,
}

/// Why this process (running `cfg` over a frame area of `frames` frames) does not hand over
/// to `offer`, if it does not.
pub fn refusal(
    offer: &TakeoverOffer,
    cfg: &Config,
    frames: u32,
    down: Option<&str>,
) -> Option<String> {
    if offer.version != STATE_VERSION {
        return Some(format!(
            "the new process reads state version {}, this one writes {STATE_VERSION}",
            offer.version
        ));
    }
    let s = &cfg.switch;
    // `frames = 0` (sized from the ports) takes the running area as it is.
    let wanted = if offer.frames == 0 { frames } else { offer.frames };
    for (what, new, old) in [
        ("switch.frame_size", offer.frame_size, s.frame_size),
        ("switch.frames", wanted, frames),
        ("switch.workers", offer.workers, s.workers),
        ("switch.ring_size", offer.ring_size, s.ring_size),
    ] {
        if new != old {
            return Some(format!(
                "{what} is {old} here and {new} in the new config: it cannot change in a \
                 takeover (restart, or keep it)"
            ));
        }
    }
    let ports = port_list(cfg);
    if offer.ports != ports {
        let name = |v: &[(String, String, u32)]| {
            v.iter().map(|(n, i, q)| format!("{n} on {i} x{q}")).collect::<Vec<_>>().join(", ")
        };
        return Some(format!(
            "the new config's ports ({}) are not this switch's ({}): take over with the same \
             ports, then reload the change",
            name(&offer.ports),
            name(&ports)
        ));
    }
    if let Some((p, _)) = cfg.ports.iter().find(|(_, p)| p.vhost_user.is_some()) {
        return Some(format!(
            "port {p} is a vhost-user port, whose guest connection cannot be handed to a new \
             process yet: restart the switch instead (guests in client mode reconnect)"
        ));
    }
    down.map(|p| format!("port {p} is not up: a takeover hands over running ports only"))
}

/// A config's ports as an offer lists them: (name, interface, queues), by name.
pub fn port_list(cfg: &Config) -> Vec<(String, String, u32)> {
    cfg.ports.iter().map(|(n, p)| (n.clone(), p.interface.clone(), p.queues)).collect()
}

/// What a config offers.
pub fn offer(cfg: &Config) -> TakeoverOffer {
    TakeoverOffer {
        version: STATE_VERSION,
        frames: cfg.switch.frames,
        frame_size: cfg.switch.frame_size,
        workers: cfg.switch.workers,
        ring_size: cfg.switch.ring_size,
        ports: port_list(cfg),
    }
}

/// Chunk indexes as sorted ranges.
fn ranges(mut chunks: Vec<u32>) -> Vec<(u32, u32)> {
    chunks.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::new();
    for c in chunks {
        match out.last_mut() {
            Some(r) if r.1 == c => r.1 += 1,
            _ => out.push((c, c + 1)),
        }
    }
    out
}

/// A learned MAC by name: tenant, MAC, port, VLAN.
pub type NamedMac = (String, u64, String, Option<u16>);

/// The state of stopped workers, by name.
pub struct Gathered {
    /// Learned MACs.
    pub macs: Vec<NamedMac>,
    /// Tracked connections: tenant, and the connection.
    pub conns: Vec<(String, ConnMessage)>,
    /// Counters.
    pub counters: CounterState,
}

/// The state of stopped workers, by name: MACs, connections and counters.
pub fn gather<P: dataplane::port::Port>(workers: &[&Worker<P>], snap: &Snapshot) -> Gathered {
    let mut macs = std::collections::BTreeMap::new();
    let mut conns = std::collections::BTreeSet::new();
    let mut c = Counters::default();
    for w in workers {
        let p = w.pipeline();
        c.merge(&p.counters);
        for (t, spec) in snap.live_tenants() {
            // Configured entries come from the config, the map's from etcd: learned ones only.
            let learned = |e: &dataplane::flow::FdbEntry| !e.is_static() && !e.is_remote();
            for (mac, e) in p.fdb().entries(t).filter(|(_, e)| learned(e)) {
                let port = &snap.ports[e.attachment.port.index()].name;
                macs.insert((spec.name.clone(), mac.to_u64()), (port.clone(), e.attachment.vlan));
            }
            for m in p.policy.conns.messages(t) {
                conns.insert((spec.name.clone(), m));
            }
        }
    }
    let macs = macs.into_iter().map(|((t, mac), (port, vlan))| (t, mac, port, vlan)).collect();
    let mut counters = CounterState {
        parse_errors: c.parse_errors.to_vec(),
        flood_copies: c.flood_copies,
        kick_errors: c.kick_errors,
        checksums_completed: c.checksums_completed,
        segmented: c.segmented,
        overlay: [
            c.overlay.encap.packets,
            c.overlay.encap.bytes,
            c.overlay.decap.packets,
            c.overlay.decap.bytes,
            c.overlay.replicas,
            c.overlay.arp_suppressed,
        ],
        nd_suppressed: c.overlay.nd_suppressed,
        tunnel_arp: c.overlay.tunnel_arp,
        ..CounterState::default()
    };
    for (i, p) in snap.ports.iter().enumerate().filter(|(_, p)| !p.is_vacant()) {
        let (Some(rx), Some(tx), Some(d)) =
            (c.port_rx.get(i), c.port_tx.get(i), c.port_drops.get(i))
        else {
            continue;
        };
        let pc = PortCounters { rx: pb(rx), tx: pb(tx), drops: d.to_vec() };
        counters.ports.push((p.name.clone(), pc));
    }
    for (t, spec) in snap.live_tenants() {
        let i = t.index();
        let get = |v: &[PktBytes]| v.get(i).map(pb).unwrap_or_default();
        counters.tenants.push((
            spec.name.clone(),
            TenantCounters {
                rx: get(&c.tenant_rx),
                tx: get(&c.tenant_tx),
                queued: get(&c.tenant_queued),
                drops: c.tenant_drops.get(i).map(|d| d.to_vec()).unwrap_or_default(),
            },
        ));
    }
    Gathered { macs, conns: conns.into_iter().collect(), counters }
}

/// Puts the handed-over state into the new process's workers before their first breath:
/// MACs and connections into every worker (each keeps its own tables), the counters into the
/// first (the switch's figures are the sum over the workers).
pub fn restore<P: dataplane::port::Port>(
    workers: &mut [Worker<P>],
    snap: &Snapshot,
    state: &Handover,
    now: Nanos,
) {
    for w in workers.iter_mut() {
        let p = w.pipeline_mut();
        for (tenant, mac, port, vlan) in &state.macs {
            let (Some(t), Some(port)) = (snap.tenant_by_name(tenant), snap.port_by_name(port))
            else {
                continue;
            };
            p.adopt_mac(now, t, MacAddr::from_u64(*mac), Attachment { port, vlan: *vlan });
        }
        let stats = p.policy.conns.stats;
        for (tenant, m) in &state.conns {
            if let Some(t) = snap.tenant_by_name(tenant) {
                p.policy.conns.apply(now, retenant(*m, t));
            }
        }
        // Not openings of another worker: the table's events stay as they were.
        p.policy.conns.stats = stats;
    }
    let Some(w) = workers.first_mut() else { return };
    let c = &mut w.pipeline_mut().counters;
    let s = &state.counters;
    let add = |to: &mut [u64], from: &[u64]| {
        for (a, b) in to.iter_mut().zip(from) {
            *a += b;
        }
    };
    add(&mut c.parse_errors, &s.parse_errors);
    c.flood_copies += s.flood_copies;
    c.kick_errors += s.kick_errors;
    c.checksums_completed += s.checksums_completed;
    c.segmented += s.segmented;
    let [ep, eb, dp, db, r, arp] = s.overlay;
    c.overlay.encap.add_all(dataplane::trace::counters::PktBytes { packets: ep, bytes: eb });
    c.overlay.decap.add_all(dataplane::trace::counters::PktBytes { packets: dp, bytes: db });
    c.overlay.replicas += r;
    c.overlay.arp_suppressed += arp;
    c.overlay.nd_suppressed += s.nd_suppressed;
    c.overlay.tunnel_arp += s.tunnel_arp;
    for (name, pc) in &s.ports {
        let Some(id) = snap.port_by_name(name) else { continue };
        let i = id.index();
        if let (Some(rx), Some(tx), Some(d)) =
            (c.port_rx.get_mut(i), c.port_tx.get_mut(i), c.port_drops.get_mut(i))
        {
            add_pb(rx, pc.rx);
            add_pb(tx, pc.tx);
            add(d, &pc.drops);
        }
    }
    for (name, tc) in &s.tenants {
        let Some(t) = snap.tenant_by_name(name) else { continue };
        let i = t.index();
        if let Some(x) = c.tenant_rx.get_mut(i) {
            add_pb(x, tc.rx);
        }
        if let Some(x) = c.tenant_tx.get_mut(i) {
            add_pb(x, tc.tx);
        }
        if let Some(x) = c.tenant_queued.get_mut(i) {
            add_pb(x, tc.queued);
        }
        if let Some(d) = c.tenant_drops.get_mut(i) {
            add(d, &tc.drops);
        }
    }
}

/// The free chunks of the handover that worker `share` owns, as addresses.
pub fn free_in(state: &Handover, share: std::ops::Range<u32>) -> impl Iterator<Item = u64> + '_ {
    let size = u64::from(state.chunk_size);
    state.free.iter().flat_map(move |&(a, b)| {
        (a.max(share.start)..b.min(share.end)).map(move |c| u64::from(c) * size)
    })
}

/// The free chunks as ranges, from the workers' lists of free chunk addresses.
pub fn free_ranges(free: &[u64], chunk_size: u32) -> Vec<(u32, u32)> {
    ranges(free.iter().map(|a| (a / u64::from(chunk_size)) as u32).collect())
}

/// Sends the handover: the header line, then the descriptors (in the order the header's
/// indexes say), a few hundred per message.
pub fn send(stream: &UnixStream, state: &Handover, fds: &[BorrowedFd<'_>]) -> anyhow::Result<()> {
    let reply = Response::of(Ok(serde_json::to_value(state).context("encoding the state")?));
    let mut w = stream;
    writeln!(w, "{}", serde_json::to_string(&reply).context("encoding the state")?)
        .context("sending the state")?;
    for chunk in fds.chunks(FDS_PER_MESSAGE) {
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(chunk.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(chunk)) {
            bail!("no room for {} descriptors in one message", chunk.len());
        }
        let byte = [b'F'];
        rustix::net::sendmsg(stream, &[IoSlice::new(&byte)], &mut control, SendFlags::empty())
            .context("sending the descriptors")?;
    }
    Ok(())
}

/// What the new process received.
pub struct Received {
    /// The state.
    pub state: Handover,
    /// The descriptors, taken one by one by index.
    fds: Vec<Option<OwnedFd>>,
    /// The connection to the old process (confirmed on when the workers hold the sockets).
    stream: UnixStream,
    /// The old process.
    pub from_pid: i32,
}

impl Received {
    /// Descriptor `i` of the handover (each can be taken once).
    pub fn fd(&mut self, i: usize) -> anyhow::Result<OwnedFd> {
        self.fds
            .get_mut(i)
            .and_then(Option::take)
            .with_context(|| format!("the handover has no descriptor {i} (or it was taken)"))
    }

    /// Tells the old process that this one switches now: it exits.
    pub fn confirm(mut self) {
        if let Err(e) = writeln!(self.stream, "taken") {
            tracing::warn!("telling the old process the takeover is done: {e}");
        }
    }
}

/// What asking for a takeover gave.
pub enum Answer {
    /// The switch's ports and state.
    Taken(Box<Received>),
    /// No switch answers on the control socket.
    NoSwitch(String),
    /// The running switch refused (it keeps switching): why, and its process id.
    Refused {
        /// Its reason.
        why: String,
        /// Its process.
        pid: i32,
    },
}

/// Asks the switch on control socket `socket` to hand itself over (the new process's side).
pub fn ask(socket: &Path, offer: &TakeoverOffer) -> anyhow::Result<Answer> {
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            let why = format!("no switch answers on {} ({e})", socket.display());
            return Ok(Answer::NoSwitch(why));
        }
    };
    // The old switch stops its workers before it answers: a few hundred milliseconds.
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let req = control::api::Request::Takeover(offer.clone());
    writeln!(stream, "{}", serde_json::to_string(&req)?)?;
    let mut bytes = Vec::new();
    let mut fds: Vec<Option<OwnedFd>> = Vec::new();
    let mut state: Option<Handover> = None;
    let mut buf = vec![0u8; 1 << 16];
    // Bounded: each round reads something (an empty read is the end), and the whole is at
    // most the header and its descriptors.
    for _ in 0..1_000_000 {
        if let Some(s) = &state
            && fds.len() >= s.fds
        {
            break;
        }
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &stream,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .context("receiving the handover")?;
        if got.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
            bail!("the handover's descriptors were cut short");
        }
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(it) = m {
                fds.extend(it.map(Some));
            }
        }
        if got.bytes == 0 {
            bail!("the running switch closed the connection before handing over");
        }
        if state.is_none() {
            bytes.extend_from_slice(&buf[..got.bytes]);
            if let Some(end) = bytes.iter().position(|&b| b == b'\n') {
                let reply: Response = serde_json::from_slice(&bytes[..end])
                    .context("reading the running switch's answer")?;
                match reply.into_result() {
                    Err(why) => {
                        let pid = peer_pid(&stream);
                        return Ok(Answer::Refused { why, pid });
                    }
                    Ok(v) => {
                        let s: Handover =
                            serde_json::from_value(v).context("reading the handed-over state")?;
                        if s.version != STATE_VERSION {
                            bail!("the running switch wrote state version {}", s.version);
                        }
                        state = Some(s);
                    }
                }
            }
        }
    }
    let state = state.context("the handover ended early")?;
    if fds.len() != state.fds {
        bail!("the handover announced {} descriptors and carried {}", state.fds, fds.len());
    }
    stream.set_read_timeout(None)?;
    let from_pid = peer_pid(&stream);
    Ok(Answer::Taken(Box::new(Received { state, fds, stream, from_pid })))
}

/// The process at the other end of a control connection (0 when unknown).
fn peer_pid(stream: &UnixStream) -> i32 {
    rustix::net::sockopt::socket_peercred(stream).map_or(0, |c| c.pid.as_raw_nonzero().get())
}

/// The old process's side, after it sent the handover: waits (bounded) for the new process to
/// say it switches. False when it did not.
pub fn wait_confirmed(stream: &UnixStream, limit: Duration) -> bool {
    let _ = stream.set_read_timeout(Some(limit));
    let mut line = String::new();
    let mut r = std::io::BufReader::new(stream);
    std::io::BufRead::read_line(&mut r, &mut line).is_ok() && line.trim() == "taken"
}

/// `ctl upgrade`: starts `binary` (default: the running switch's own path, which the upgrade
/// has replaced) as `run --takeover` with the running switch's own arguments, as a child (under
/// systemd it stays in the service's cgroup, and says it is the main process once it
/// switches). Returns at once: the child asks for the takeover on the control socket like any
/// other process; a thread reaps it and logs how it ended if it ends first (a refusal).
pub fn spawn_upgrade(
    binary: Option<String>,
    shared: &crate::control_api::Shared,
) -> Result<serde_json::Value, String> {
    if shared.path.is_none() {
        return Err("the demo's switch has no config file to start again from".into());
    }
    let binary = match binary {
        Some(b) => std::path::PathBuf::from(b),
        None => shared.exe.clone().ok_or("the running switch's binary path is unknown")?,
    };
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("run") {
        return Err("only a switch started with `xswitch run` can be upgraded".into());
    }
    args.retain(|a| !a.starts_with("--takeover"));
    args.push("--takeover".into());
    let mut child = std::process::Command::new(&binary)
        .args(&args)
        // The watchdog is the new process's once it is the service's main process.
        .env_remove("WATCHDOG_PID")
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", binary.display()))?;
    let pid = child.id();
    tracing::info!("upgrade: started {} {} (pid {pid})", binary.display(), args.join(" "));
    let _ = std::thread::Builder::new().name("xswitch-upgrade".into()).spawn(move || {
        if let Ok(st) = child.wait() {
            tracing::warn!("upgrade: the new process (pid {pid}) ended before taking over: {st}");
        }
    });
    Ok(serde_json::json!({ "binary": binary.display().to_string(), "pid": pid }))
}

/// Stops process `pid` (SIGTERM) and waits, bounded, until it is gone: a clean restart after
/// a refused takeover (`--takeover=or-restart`).
pub fn stop_process(pid: i32, limit: Duration) -> anyhow::Result<()> {
    if pid <= 0 {
        bail!("the running switch's process id is unknown: stop it by hand");
    }
    let proc = std::path::PathBuf::from(format!("/proc/{pid}"));
    let p = rustix::process::Pid::from_raw(pid).context("process id")?;
    rustix::process::kill_process(p, rustix::process::Signal::TERM)
        .with_context(|| format!("stopping the running switch (pid {pid})"))?;
    let start = std::time::Instant::now();
    while proc.exists() && start.elapsed() < limit {
        // A zombie (its parent has not reaped it yet) has stopped too.
        let state = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
        if state.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if proc.exists() && start.elapsed() >= limit {
        bail!("the running switch (pid {pid}) did not stop within {limit:?}");
    }
    Ok(())
}
