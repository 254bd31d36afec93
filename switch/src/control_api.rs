//! The control plane of a running switch: hot reload and the control API.
//!
//! # Reload
//! [`reload`] loads, validates and compiles the config file off the dataplane, then hands the
//! new snapshot to every worker over a channel; each worker adopts it between breaths (within
//! one publishing interval, 250 ms). A bad file, or a change that cannot be applied live, is
//! rejected with the reason, counted, and the running config stays. Live: everything about
//! tenants (attachments, rules, groups, guards, quotas, shaping) and the ports' rates. Not live, rejected with a message that
//! says a restart is needed: ports, the `[switch]` section, `[metrics]`, `[control]`, and the
//! set of tenant names (tenant ids index the workers' counters and tables; a tenant added or
//! removed would shift them).
//!
//! # Control API
//! A Unix socket (mode 0600, so only root reaches it) speaking one JSON object per line: a
//! request `{"cmd": "status"}` gets one response `{"ok": true, "data": ...}` or
//! `{"ok": false, "error": "..."}`. Documented in `docs/CONTROL.md`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use control::config::Config;
use crossbeam_channel::Sender;
use dataplane::port::afxdp::XskPort;
use dataplane::snapshot::{PortId, PortKind, Snapshot, TenantId};
use dataplane::time::Nanos;
use dataplane::trace::{Counters, DropReason, ParseError};
use dataplane::worker::FrameCensus;
use dataplane::worker::Worker;
use serde_json::{Value, json};

use crate::metrics::Slot;
use dataplane::trace::capture::{CaptureFilter, MAX_SNAPLEN, Tap};

/// One socket of the plan, for `ports`.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Port name.
    pub port: String,
    /// Queue.
    pub queue: u32,
    /// Worker polling it.
    pub worker: usize,
    /// Bind mode it got.
    pub mode: String,
}

/// What the host gave the switch at start: the ports' devices, where the workers run, the
/// pages of the frame area.
#[derive(Debug, Clone, Default)]
pub struct HostInfo {
    /// Per port (config order): interface, VF, NUMA node.
    pub ports: Vec<control::sriov::PortHost>,
    /// Per worker: its ports' NUMA node and the CPU it is pinned to.
    pub workers: Vec<(Option<u32>, Option<u32>)>,
    /// The pages backing the frame area ("2 MiB", "4 KiB").
    pub pages: String,
}

/// A question for the workers, answered between breaths (within 250 ms) by each of them.
pub enum Query {
    /// The MAC table entries of a tenant.
    Fdb(TenantId, Sender<Vec<Value>>),
    /// The tracked connections of a tenant.
    Connections(TenantId, Sender<Vec<Value>>),
    /// A tenant's flows with the most packets or bytes: at most this many, by this count.
    Flows(TenantId, usize, FlowOrder, Sender<Vec<Value>>),
    /// The decision trace of a frame arriving on a port.
    Trace(PortId, Vec<u8>, Sender<Vec<Value>>),
    /// A MAC for an address of a tenant (for a trace that names no destination MAC), and
    /// where it was found.
    ResolveMac(TenantId, [u8; 16], Sender<Option<(dataplane::wire::MacAddr, String)>>),
    /// Start tapping frames for a capture; acknowledge once tapping.
    CaptureStart(Tap, Sender<()>),
    /// Stop tapping; answer (frames copied, copies skipped).
    CaptureStop(Sender<(u64, u64)>),
    /// Sample one in `every` real frames of a tenant, at most `count`, until `until`; answer
    /// the samples with their outcome and a per-stage explanation.
    LiveTrace {
        tenant: TenantId,
        count: usize,
        every: u32,
        until: Instant,
        reply: Sender<Vec<Value>>,
    },
}

/// A live trace a worker is taking: where its answer goes, and until when.
pub struct PendingTrace {
    reply: Sender<Vec<Value>>,
    until: Instant,
}

/// Between breaths on a worker: answers a live trace once its sampler is full or its time is
/// up (the explanations are built here, off the packet path).
pub fn finish_live_trace(
    w: &mut Worker<XskPort>,
    worker: usize,
    now: Nanos,
    pending: &mut Option<PendingTrace>,
) {
    let Some(p) = pending.as_ref() else { return };
    let full = w.pipeline().sampler.as_ref().is_none_or(|s| s.is_full());
    if !full && Instant::now() < p.until {
        return;
    }
    let samples = w.pipeline_mut().sampler.take().map(|s| s.into_samples()).unwrap_or_default();
    let snap = w.snapshot().clone();
    let port_name = |p: PortId| snap.ports.get(p.index()).map_or("?".into(), |s| s.name.clone());
    let rows = samples
        .iter()
        .map(|s| {
            let steps: Vec<Value> =
                dataplane::pipeline::trace::trace(w.pipeline(), &snap, s.at, s.port, &s.bytes)
                    .into_iter()
                    // The cache's part as it happened, not as the cache looks now.
                    .map(|st| {
                        let outcome = if st.stage == "flow cache" {
                            s.flow.as_str().into()
                        } else {
                            st.outcome
                        };
                        json!({ "stage": st.stage, "outcome": outcome, "dropped": st.dropped })
                    })
                    .collect();
            let outcome = match s.disposition {
                dataplane::pipeline::Disposition::Tx { port, vlan } => {
                    format!(
                        "tx on {} {}",
                        port_name(port),
                        dataplane::pipeline::trace::vlan_name(vlan)
                    )
                }
                dataplane::pipeline::Disposition::Flood => "flood".into(),
                dataplane::pipeline::Disposition::Drop(r) => format!("drop ({})", r.as_label()),
            };
            json!({
                "worker": worker,
                "port": port_name(s.port),
                "len": s.len,
                "ago_ms": now.since(s.at).0 as f64 / 1e6,
                "outcome": outcome,
                "flow_cache": s.flow.as_str(),
                "steps": steps,
            })
        })
        .collect();
    if let Some(p) = pending.take() {
        let _ = p.reply.send(rows);
    }
}

/// What `flows` ranks by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowOrder {
    /// Bytes.
    Bytes,
    /// Packets.
    Packets,
}

/// An address as people write it (IPv4 unmapped).
fn ip_str(a: [u8; 16]) -> String {
    let v6 = std::net::Ipv6Addr::from(a);
    v6.to_ipv4_mapped().map_or_else(|| v6.to_string(), |v4| v4.to_string())
}

/// Answers `q` from worker `w`'s tables at time `now`. Runs on the worker thread between
/// breaths, only when asked (it allocates the answer).
pub fn answer_query(w: &Worker<XskPort>, worker: usize, now: Nanos, q: Query) {
    let snap = w.snapshot();
    let port_name = |p: PortId| snap.ports.get(p.index()).map_or("?".into(), |s| s.name.clone());
    let secs = |t: Nanos| now.since(t).0 as f64 / 1e9;
    match q {
        Query::Fdb(t, reply) => {
            let rows = w
                .pipeline()
                .fdb()
                .entries(t)
                .map(|(mac, e)| {
                    json!({
                        "mac": mac.to_string(),
                        "port": port_name(e.attachment.port),
                        "vlan": e.attachment.vlan,
                        "static": e.is_static,
                        "age_secs": if e.is_static { 0.0 } else { secs(e.last_seen) },
                        "worker": worker,
                    })
                })
                .collect();
            let _ = reply.send(rows);
        }
        Query::Trace(port, frame, reply) => {
            let steps = dataplane::pipeline::trace::trace(w.pipeline(), snap, now, port, &frame);
            let v = dataplane::pipeline::trace::verdict(&steps);
            let mut rows: Vec<Value> = steps
                .into_iter()
                .map(|s| {
                    json!({
                        "stage": s.stage, "outcome": s.outcome, "dropped": s.dropped,
                        "reason": s.reason, "rule": s.rule,
                    })
                })
                .collect();
            // The verdict last, as one row the control thread takes off.
            rows.push(json!({
                "action": v.action, "reason": v.reason, "rule": v.rule, "to": v.to,
            }));
            let _ = reply.send(rows);
        }
        Query::ResolveMac(t, ip, reply) => {
            let _ = reply.send(dataplane::pipeline::trace::resolve_mac(w.pipeline(), snap, t, ip));
        }
        // Only `answer_query_mut` may change the taps; it never passes these here.
        Query::CaptureStart(..) | Query::CaptureStop(_) | Query::LiveTrace { .. } => {}
        Query::Flows(t, top, order, reply) => {
            let mut flows: Vec<_> = w.pipeline().flows.flows(t).collect();
            let rank = |f: &dataplane::flow::cache::FlowView| match order {
                FlowOrder::Bytes => f.bytes,
                FlowOrder::Packets => f.packets,
            };
            flows.sort_unstable_by_key(|f| std::cmp::Reverse(rank(f)));
            flows.truncate(top);
            let rows = flows
                .iter()
                .map(|f| {
                    let ports = f.proto == 6 || f.proto == 17;
                    let end = |(a, p): ([u8; 16], u16)| {
                        if ports { format!("{}:{p}", ip_str(a)) } else { ip_str(a) }
                    };
                    json!({
                        "in_port": port_name(f.in_port),
                        "proto": f.proto,
                        "ethertype": format!("{:#06x}", f.ethertype),
                        "from": end(f.src),
                        "to": end(f.dst),
                        "packets": f.packets,
                        "bytes": f.bytes,
                        "secs": f.last.since(f.start).0 as f64 / 1e9,
                        "idle_secs": secs(f.last),
                        "action": if f.accepted { "accept" } else { "reject" },
                        "reason": f.reason.map(|r| r.as_label()),
                        "worker": worker,
                    })
                })
                .collect();
            let _ = reply.send(rows);
        }
        Query::Connections(t, reply) => {
            let ip = ip_str;
            let rows = w
                .pipeline()
                .policy
                .conns
                .connections(t)
                .map(|c| {
                    json!({
                        "proto": c.proto,
                        "from": format!("{}:{}", ip(c.from.0), c.from.1),
                        "to": format!("{}:{}", ip(c.to.0), c.to.1),
                        "state": c.conn.state.as_str(),
                        "idle_secs": secs(c.conn.last_seen),
                        "worker": worker,
                    })
                })
                .collect();
            let _ = reply.send(rows);
        }
    }
}

/// Like [`answer_query`], for the questions that change what the worker taps; a live trace
/// is answered later by [`finish_live_trace`].
pub fn answer_query_mut(
    w: &mut Worker<XskPort>,
    worker: usize,
    now: Nanos,
    q: Query,
    pending: &mut Option<PendingTrace>,
) {
    match q {
        Query::LiveTrace { tenant, count, every, until, reply } => {
            w.pipeline_mut().sampler =
                Some(dataplane::trace::sample::Sampler::new(tenant, count, every));
            *pending = Some(PendingTrace { reply, until });
        }
        Query::CaptureStart(tap, ack) => {
            w.pipeline_mut().capture = Some(tap);
            let _ = ack.send(());
        }
        Query::CaptureStop(reply) => {
            let stats = w.pipeline_mut().capture.take().map_or((0, 0), |t| (t.copied, t.skipped));
            let _ = reply.send(stats);
        }
        other => answer_query(w, worker, now, other),
    }
}

/// `trace_live`: `tenant`; optional `count` (1..=100, default 10), `every` (default 1) and
/// `timeout_secs` (default 10, at most 60). Every worker samples the tenant's frames it sees;
/// the answer comes when they are full or the time is up.
fn trace_live(req: &Value, shared: &Shared) -> Result<Value, String> {
    use dataplane::trace::sample::MAX_SAMPLES;
    let name = req.get("tenant").and_then(Value::as_str).ok_or("missing \"tenant\"")?;
    let tenant = shared.snapshot().tenant_by_name(name).ok_or(format!("no tenant {name:?}"))?;
    let count = req.get("count").and_then(Value::as_u64).unwrap_or(10) as usize;
    if !(1..=MAX_SAMPLES).contains(&count) {
        return Err(format!("count: 1..={MAX_SAMPLES}"));
    }
    let every = req.get("every").and_then(Value::as_u64).unwrap_or(1);
    let every = u32::try_from(every).ok().filter(|&e| e >= 1).ok_or("every: at least 1")?;
    let secs = req.get("timeout_secs").and_then(Value::as_f64).unwrap_or(10.0);
    if !(0.1..=60.0).contains(&secs) {
        return Err("timeout_secs: 0.1..=60".into());
    }
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let queries = &shared.workers.queries;
    let (tx, rx) = crossbeam_channel::bounded(queries.len());
    for q in queries {
        let reply = tx.clone();
        q.send(Query::LiveTrace { tenant, count, every, until, reply })
            .map_err(|_| "a worker has stopped")?;
    }
    drop(tx);
    let mut samples = Vec::new();
    for _ in 0..queries.len() {
        // A worker answers between breaths, at most a publishing interval after its time.
        let left = until.saturating_duration_since(Instant::now()) + Duration::from_secs(2);
        samples.extend(rx.recv_timeout(left).map_err(|_| "a worker did not answer in time")?);
    }
    // The oldest first, across workers.
    samples.sort_by(|a, b| {
        b["ago_ms"].as_f64().partial_cmp(&a["ago_ms"].as_f64()).unwrap_or(std::cmp::Ordering::Equal)
    });
    samples.truncate(count);
    Ok(json!({ "tenant": name, "samples": samples }))
}

/// A capture in progress (one at a time).
pub struct CaptureRun {
    tenant: String,
    file: PathBuf,
    stop: Arc<AtomicBool>,
    writer: JoinHandle<Result<(u64, u64), String>>,
}

/// How the control thread reaches the workers: per worker, a channel for questions and the
/// slot it publishes its figures in (their commands come from the main thread, see `fabric`
/// and `reload`).
pub struct WorkerLinks {
    /// Questions.
    pub queries: Vec<Sender<Query>>,
    /// Published figures.
    pub slots: Vec<Slot>,
    /// The clock the workers stamp captures and flow records with (one origin for all).
    pub clock: dataplane::time::MonotonicClock,
}

/// Reload outcomes.
#[derive(Debug, Default, Clone)]
pub struct ReloadState {
    /// Reloads applied.
    pub applied: u64,
    /// Reloads rejected.
    pub rejected: u64,
    /// Why the last rejected one was rejected.
    pub last_error: Option<String>,
}

/// What the control thread, the signal handling and the exit report share.
pub struct Shared {
    /// The config file reloads read (`None`: the demo's embedded config).
    pub path: Option<PathBuf>,
    /// The running config and its snapshot.
    pub running: Mutex<(Config, Arc<Snapshot>)>,
    /// The snapshot before the last reload, kept so that a worker dropping its reference does
    /// not free it on the packet thread.
    previous: Mutex<Option<Arc<Snapshot>>>,
    /// Reload outcomes.
    pub reloads: Mutex<ReloadState>,
    /// The workers.
    pub workers: WorkerLinks,
    /// Which worker polls which socket.
    pub placement: Mutex<Vec<Placement>>,
    /// Frames in the area.
    pub chunks: u32,
    /// Ports' devices, workers' placement, frame-area pages.
    pub host: Mutex<HostInfo>,
    /// Reloads go to the main thread, which holds the ports (see `reload`).
    pub reloads_to: Sender<crate::reload::Request>,
    /// The capture running, if any.
    capture: Mutex<Option<CaptureRun>>,
    /// When the switch started.
    pub started: Instant,
    /// The ports whose interface is gone (see `fabric`), by name.
    port_down: Mutex<std::collections::BTreeSet<String>>,
}

impl Shared {
    /// The state of a switch that has just started.
    pub fn new(
        path: Option<PathBuf>,
        cfg: Config,
        snap: Arc<Snapshot>,
        workers: WorkerLinks,
        chunks: u32,
        host: HostInfo,
        reloads_to: Sender<crate::reload::Request>,
    ) -> Self {
        Shared {
            host: Mutex::new(host),
            path,
            running: Mutex::new((cfg, snap)),
            previous: Mutex::new(None),
            reloads: Mutex::new(ReloadState::default()),
            workers,
            placement: Mutex::new(Vec::new()),
            chunks,
            reloads_to,
            capture: Mutex::new(None),
            started: Instant::now(),
            port_down: Mutex::new(Default::default()),
        }
    }

    /// Whether port `name`'s interface is gone (see `fabric`).
    pub fn port_is_down(&self, name: &str) -> bool {
        self.port_down.lock().is_ok_and(|d| d.contains(name))
    }

    /// Marks port `name` down or up again.
    pub fn set_port_down(&self, name: &str, down: bool) {
        if let Ok(mut d) = self.port_down.lock() {
            if down {
                d.insert(name.to_string());
            } else {
                d.remove(name);
            }
        }
        crate::metrics::record_port_up(name, !down);
    }

    /// Which worker polls which socket.
    pub fn placement(&self) -> Vec<Placement> {
        self.placement.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// The ports' devices, the workers' placement, the frame area's pages.
    pub fn host(&self) -> HostInfo {
        self.host.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Keeps the snapshot a reload replaced alive until the next reload, so that a worker
    /// dropping its reference does not free it on the packet thread.
    pub fn keep_previous(&self, old: Arc<Snapshot>) {
        if let Ok(mut p) = self.previous.lock() {
            *p = Some(old);
        }
    }

    /// At a stop, after the workers are gone: lets a running capture's writer write what is
    /// in flight and close its file.
    pub fn end_capture(&self) {
        let run = self.capture.lock().ok().and_then(|mut c| c.take());
        if let Some(run) = run {
            run.stop.store(true, Ordering::SeqCst);
            match run.writer.join() {
                Ok(Ok((n, _))) => {
                    tracing::info!("capture into {} closed: {n} frames", run.file.display())
                }
                Ok(Err(e)) => tracing::info!("capture into {}: {e}", run.file.display()),
                Err(_) => tracing::info!("the capture writer panicked"),
            }
        }
    }

    /// The config file, for messages.
    pub fn name(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "the embedded demo config".into(), |p| p.display().to_string())
    }

    /// The running snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.running.lock().map(|r| r.1.clone()).unwrap_or_else(|p| p.into_inner().1.clone())
    }
}

/// The running control server; stops its thread and removes the socket when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept; if the connect fails the thread is not waiting there.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the control socket (refusing to replace one a running switch answers on) and serves
/// it from a thread.
pub fn serve(path: &Path, shared: Arc<Shared>) -> anyhow::Result<Server> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("control.socket: creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!("control.socket: {} is in use: is another xswitch running?", path.display());
        }
        // Left behind by a switch that was killed: nobody answers on it.
        std::fs::remove_file(path)
            .with_context(|| format!("control.socket: removing stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("control.socket: cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("control.socket: chmod 0600 {}", path.display()))?;
    // A blocking accept: the thread sleeps in the kernel until a client comes, and takes no
    // CPU from the workers otherwise (the switch may be pinned to the workers' cores; a
    // polling loop here showed up in their latency). `Server::drop` wakes it with a connection
    // of its own after setting `stop`.
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new().name("xswitch-control".into()).spawn(move || {
        for conn in listener.incoming() {
            if stop2.load(Ordering::SeqCst) {
                break;
            }
            match conn {
                Ok(conn) => {
                    if let Err(e) = handle(conn, &shared) {
                        tracing::info!("control: {e}");
                    }
                }
                Err(e) => {
                    tracing::info!("control: accept: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    })?;
    tracing::info!("control socket {}", path.display());
    Ok(Server { stop, thread: Some(thread), path: path.to_path_buf() })
}

/// One request, one response.
fn handle(conn: UnixStream, shared: &Arc<Shared>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    // Bounded: a request is a short JSON object.
    BufReader::new(std::io::Read::take(&conn, 64 * 1024)).read_line(&mut line)?;
    let reply = match serde_json::from_str::<Value>(&line) {
        Ok(req) => match answer(&req, shared) {
            Ok(data) => json!({ "ok": true, "data": data }),
            Err(e) => json!({ "ok": false, "error": e }),
        },
        Err(e) => json!({ "ok": false, "error": format!("request is not JSON: {e}") }),
    };
    let mut w = &conn;
    writeln!(w, "{reply}")
}

fn answer(req: &Value, shared: &Arc<Shared>) -> Result<Value, String> {
    let cmd = req.get("cmd").and_then(Value::as_str).ok_or("missing \"cmd\"")?;
    match cmd {
        "status" => Ok(status(shared)),
        "ports" => Ok(ports(shared)),
        "tenants" => Ok(tenants(shared)),
        "counters" => Ok(counters(shared)),
        "reload" => crate::reload::ask(shared, req),
        "flows" => {
            let snap = shared.snapshot();
            let name = req.get("tenant").and_then(Value::as_str).ok_or("missing \"tenant\"")?;
            let t = snap.tenant_by_name(name).ok_or(format!("no tenant {name:?}"))?;
            if !snap.uses_flows(t) {
                return Err(format!(
                    "tenant {name:?} has no per-flow counters: they are kept for tenants with \
                     ACL rules, a security group or a flow log"
                ));
            }
            let top = req.get("top").and_then(Value::as_u64).unwrap_or(20).clamp(1, 10_000);
            let order = match req.get("by").and_then(Value::as_str).unwrap_or("bytes") {
                "bytes" => FlowOrder::Bytes,
                "packets" => FlowOrder::Packets,
                other => return Err(format!("by: {other:?} (bytes or packets)")),
            };
            let mut rows = match ask(shared, |reply| Query::Flows(t, top as usize, order, reply))? {
                Value::Array(rows) => rows,
                _ => Vec::new(),
            };
            // Each worker sent its own top; the switch's top is among them.
            let key = if order == FlowOrder::Bytes { "bytes" } else { "packets" };
            rows.sort_by_key(|r| std::cmp::Reverse(r[key].as_u64().unwrap_or(0)));
            rows.truncate(top as usize);
            Ok(Value::Array(rows))
        }
        "fdb" | "connections" => {
            let name = req.get("tenant").and_then(Value::as_str).ok_or("missing \"tenant\"")?;
            let t = shared.snapshot().tenant_by_name(name).ok_or(format!("no tenant {name:?}"))?;
            ask(shared, |reply| match cmd {
                "fdb" => Query::Fdb(t, reply),
                _ => Query::Connections(t, reply),
            })
        }
        "capture_start" => capture_start(req, shared),
        "log_level" => {
            let level = req.get("level").and_then(Value::as_str).ok_or("missing \"level\"")?;
            let was = crate::logging::set_level(level)?;
            tracing::info!("log level {level} (was {was})");
            Ok(json!({ "level": level, "was": was }))
        }
        "trace_live" => trace_live(req, shared),
        "capture_stop" => capture_stop(shared),
        "trace" => {
            let snap = shared.snapshot();
            let name = req.get("port").and_then(Value::as_str).ok_or("missing \"port\"")?;
            let port = snap.port_by_name(name).ok_or(format!("no port {name:?}"))?;
            // The worker that polls the port's first queue: its tables are the ones the frame
            // would meet.
            let w = shared.placement().iter().find(|p| p.port == name).map_or(0, |p| p.worker);
            let q = shared.workers.queries.get(w).ok_or("no such worker")?;
            // The destination MAC: given, else the one the tenant's tables know for the
            // destination address, else broadcast; the answer says which.
            let mut req = req.clone();
            let given = req.get("dst_mac").and_then(Value::as_str).map(str::to_string);
            let (dst_mac, from) = match given {
                Some(m) => (m, "given".to_string()),
                None => {
                    let vlan = req.get("vlan").and_then(Value::as_u64).map(|v| v as u16);
                    let dst = req.get("dst").and_then(Value::as_str).unwrap_or_default();
                    let ip = dst.parse::<std::net::IpAddr>().ok().map(|a| match a {
                        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                        std::net::IpAddr::V6(v6) => v6.octets(),
                    });
                    // Every worker: the destination's flows may have come in on a port that
                    // another worker polls.
                    let mut found = None;
                    if let (Some((t, _)), Some(ip)) = (snap.resolve(port, vlan), ip) {
                        let all = &shared.workers.queries;
                        let (tx, rx) = crossbeam_channel::bounded(all.len());
                        for wq in all {
                            wq.send(Query::ResolveMac(t, ip, tx.clone()))
                                .map_err(|_| "a worker has stopped")?;
                        }
                        for _ in 0..all.len() {
                            let answer = rx
                                .recv_timeout(Duration::from_secs(3))
                                .map_err(|_| "a worker did not answer within 3 s")?;
                            found = found.or(answer);
                        }
                    }
                    match found {
                        Some((mac, from)) => (mac.to_string(), from),
                        None => (
                            "ff:ff:ff:ff:ff:ff".to_string(),
                            format!("assumed broadcast: no MAC known for {dst} in this tenant"),
                        ),
                    }
                }
            };
            req["dst_mac"] = json!(dst_mac);
            let frame = trace_frame(&req)?;
            let (tx, rx) = crossbeam_channel::bounded(1);
            q.send(Query::Trace(port, frame, tx)).map_err(|_| "the worker has stopped")?;
            let mut steps = rx
                .recv_timeout(Duration::from_secs(3))
                .map_err(|_| "the worker did not answer within 3 s")?;
            let verdict = steps.pop().unwrap_or(Value::Null);
            Ok(json!({
                "worker": w, "dst_mac": dst_mac, "dst_mac_from": from, "steps": steps,
                "verdict": verdict,
            }))
        }
        other => Err(format!(
            "unknown command {other:?} (status, ports, tenants, counters, fdb, connections, \
             flows, trace, trace_live, capture_start, capture_stop, reload, log_level)"
        )),
    }
}

/// Ring messages (128 frame bytes each) between each worker and the capture writer.
const CAPTURE_RING: usize = 16_384;

/// Where a capture goes: classic pcap, or pcapng with an interface per switch port and, per
/// frame, its direction and the pipeline's verdict (a comment Wireshark shows).
struct CaptureSink {
    format: CaptureFormat,
    /// What the format writer wrote since the last flush.
    buf: SharedBuf,
    file: std::fs::File,
}

enum CaptureFormat {
    Pcap(pcap_file::pcap::PcapWriter<SharedBuf>),
    PcapNg(pcap_file::pcapng::PcapNgWriter<SharedBuf>),
}

/// The buffer a format writer writes into and the sink empties into the file once per batch
/// (the pcap writer gives no access to the writer it owns, so it cannot be flushed itself).
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let mut v = self.0.lock().map_err(|_| std::io::Error::other("capture buffer poisoned"))?;
        v.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CaptureSink {
    /// Opens `file` in `format` (`pcap` or `pcapng`); pcapng gets one interface description
    /// per port of `snap` (interface id = port id).
    fn open(file: &Path, format: &str, snap: &Snapshot, snaplen: usize) -> Result<Self, String> {
        use pcap_file::pcapng::blocks::interface_description::{
            InterfaceDescriptionBlock, InterfaceDescriptionOption,
        };
        let out = std::fs::File::create(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let buf = SharedBuf::default();
        let err = |e: pcap_file::PcapError| format!("{}: {e}", file.display());
        let format = match format {
            "pcap" => {
                CaptureFormat::Pcap(pcap_file::pcap::PcapWriter::new(buf.clone()).map_err(err)?)
            }
            "pcapng" => {
                let mut w = pcap_file::pcapng::PcapNgWriter::new(buf.clone()).map_err(err)?;
                for p in &snap.ports {
                    let idb = InterfaceDescriptionBlock {
                        linktype: pcap_file::DataLink::ETHERNET,
                        snaplen: snaplen as u32,
                        options: vec![
                            InterfaceDescriptionOption::IfName(p.name.clone().into()),
                            InterfaceDescriptionOption::IfDescription(
                                format!("xswitch port {} on {}", p.name, p.interface).into(),
                            ),
                        ],
                    };
                    w.write_pcapng_block(idb).map_err(err)?;
                }
                CaptureFormat::PcapNg(w)
            }
            other => return Err(format!("format: {other:?} (pcap or pcapng)")),
        };
        let mut sink = CaptureSink { format, buf, file: out };
        // The header now: a reader of a pipe can start.
        sink.flush().map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(sink)
    }

    fn write(
        &mut self,
        at: Duration,
        c: &dataplane::trace::capture::Captured<'_>,
    ) -> Result<(), pcap_file::PcapError> {
        use pcap_file::pcapng::blocks::enhanced_packet::{
            EnhancedPacketBlock, EnhancedPacketOption,
        };
        match &mut self.format {
            CaptureFormat::Pcap(w) => {
                w.write_packet(&pcap_file::pcap::PcapPacket::new(at, c.orig_len, c.data))?;
            }
            CaptureFormat::PcapNg(w) => {
                let verdict = dataplane::trace::capture::verdict::text(c.verdict);
                let from = if c.from_tenant { "from the tenant" } else { "from the fabric" };
                let epb = EnhancedPacketBlock {
                    interface_id: u32::from(c.port.0),
                    timestamp: at,
                    original_len: c.orig_len,
                    data: std::borrow::Cow::Borrowed(c.data),
                    options: vec![
                        // Direction bits 01: inbound (the switch saw it arrive on the port).
                        EnhancedPacketOption::Flags(1),
                        EnhancedPacketOption::Comment(format!("{verdict}; {from}").into()),
                    ],
                };
                w.write_pcapng_block(epb)?;
            }
        }
        Ok(())
    }

    /// What was written reaches the file (a reader of a pipe sees frames as they come).
    fn flush(&mut self) -> std::io::Result<()> {
        use std::io::Write;
        let mut v =
            self.buf.0.lock().map_err(|_| std::io::Error::other("capture buffer poisoned"))?;
        self.file.write_all(&v)?;
        v.clear();
        Ok(())
    }
}

/// `capture_start`: `tenant` (or `on_port`, a port capture), `file`, optional `format` (pcap or
/// pcapng), `drops_only`, filter (`host`, `net`, `port` (L4), `proto`, `direction` from-tenant or
/// to-tenant) and limits (`count`, `bytes`, `duration_secs`, `snaplen`).
fn capture_start(req: &Value, shared: &Arc<Shared>) -> Result<Value, String> {
    let s = |k: &str| req.get(k).and_then(Value::as_str);
    let mut slot = shared.capture.lock().map_err(|_| "capture lock poisoned")?;
    if let Some(run) = slot.as_ref()
        && !run.writer.is_finished()
    {
        return Err(format!("a capture of {} into {} is running", run.tenant, run.file.display()));
    }
    let snap = shared.snapshot();
    let (scope, name) = match (s("tenant"), s("on_port")) {
        (Some(t), None) => {
            let id = snap.tenant_by_name(t).ok_or(format!("no tenant {t:?}"))?;
            (dataplane::trace::capture::Scope::Tenant(id), t.to_string())
        }
        (None, Some(p)) => {
            let id = snap.port_by_name(p).ok_or(format!("no port {p:?}"))?;
            (dataplane::trace::capture::Scope::Port(id), format!("port {p}"))
        }
        _ => return Err("give a tenant, or a port (\"on_port\"), not both".into()),
    };
    let drops_only = req.get("drops_only").and_then(Value::as_bool).unwrap_or(false);
    let format = s("format").unwrap_or("pcap").to_string();
    let file = PathBuf::from(s("file").ok_or("missing \"file\"")?);
    let mut filter = CaptureFilter::default();
    if let Some(h) = s("host").or(s("net")) {
        filter.net = Some(h.parse().map_err(|e| format!("host/net: {e}"))?);
    }
    if let Some(p) = req.get("port").and_then(Value::as_u64) {
        filter.port = Some(u16::try_from(p).map_err(|_| "port: 0..=65535")?);
    }
    if let Some(p) = s("proto") {
        let v = control::config::model::NumOrName::Name(p.into());
        filter.proto = Some(control::config::policy::proto(&v)?);
    }
    filter.from_tenant = match s("direction") {
        None => None,
        Some("from-tenant") => Some(true),
        Some("to-tenant") => Some(false),
        Some(other) => return Err(format!("direction: {other:?} (from-tenant or to-tenant)")),
    };
    let snaplen = req.get("snaplen").and_then(Value::as_u64).unwrap_or(MAX_SNAPLEN as u64) as usize;
    if !(14..=MAX_SNAPLEN).contains(&snaplen) {
        return Err(format!("snaplen: 14..={MAX_SNAPLEN}"));
    }
    let count = req.get("count").and_then(Value::as_u64).unwrap_or(u64::MAX);
    let bytes = req.get("bytes").and_then(Value::as_u64).unwrap_or(u64::MAX);
    let duration = req.get("duration_secs").and_then(Value::as_f64).map(Duration::from_secs_f64);
    // A named pipe blocks here until its reader opens it (`ctl capture -w -` does first).
    let mut pcap = CaptureSink::open(&file, &format, &snap, snaplen)?;
    let (ack_tx, ack_rx) = crossbeam_channel::bounded(shared.workers.queries.len());
    let mut readers = Vec::new();
    for q in &shared.workers.queries {
        let (ring, reader) = dataplane::trace::capture::ring(CAPTURE_RING);
        readers.push(reader);
        let mut tap = Tap::new(scope, filter.clone(), snaplen, ring);
        tap.drops_only = drops_only;
        q.send(Query::CaptureStart(tap, ack_tx.clone())).map_err(|_| "a worker has stopped")?;
    }
    // Answer only once every worker taps, so traffic sent after the answer is captured.
    for _ in 0..shared.workers.queries.len() {
        ack_rx
            .recv_timeout(Duration::from_secs(3))
            .map_err(|_| "a worker did not start tapping within 3 s")?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (stop2, shared2) = (stop.clone(), shared.clone());
    // Worker timestamps are on the switch's monotonic clock (one origin for every worker and
    // this writer); pcap wants wall time: both read now, at one moment. (A clock of its own
    // here, origin now, stamped every frame late by the switch's uptime.)
    let wall0 =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mono0 = dataplane::time::Clock::now(&shared.workers.clock).0;
    let started = Instant::now();
    let writer = std::thread::Builder::new()
        .name("xswitch-capture".into())
        .spawn(move || {
            let (mut written, mut written_bytes) = (0u64, 0u64);
            let mut limited = false;
            let mut error = None;
            loop {
                let timed_out = duration.is_some_and(|d| started.elapsed() >= d);
                if !limited && (written >= count || written_bytes >= bytes || timed_out) {
                    limited = true;
                    // The limit is reached: the workers stop tapping (their figures are
                    // collected by capture_stop, which finds the run finished).
                    for q in &shared2.workers.queries {
                        let (tx, _rx) = crossbeam_channel::bounded(1);
                        let _ = q.send(Query::CaptureStop(tx));
                    }
                }
                // Polled, never blocking: the workers only publish into their rings.
                let mut got = 0;
                for r in &mut readers {
                    got += r.drain(|c| {
                        if limited || error.is_some() {
                            return;
                        }
                        let at = wall0 + Duration::from_nanos(c.at_ns.saturating_sub(mono0));
                        match pcap.write(at, &c) {
                            Ok(_) => {
                                written += 1;
                                written_bytes += c.data.len() as u64;
                            }
                            Err(e) => error = Some(format!("writing the capture: {e}")),
                        }
                    });
                }
                if got > 0
                    && let Err(e) = pcap.flush()
                {
                    error = Some(format!("writing the capture: {e}"));
                }
                if let Some(e) = error {
                    return Err(e);
                }
                if got == 0 {
                    if stop2.load(Ordering::SeqCst) || limited {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            drop(pcap);
            Ok((written, written_bytes))
        })
        .map_err(|e| format!("starting the capture writer: {e}"))?;
    tracing::info!("capturing {name} into {}", file.display());
    *slot = Some(CaptureRun { tenant: name.clone(), file: file.clone(), stop, writer });
    Ok(json!({ "tenant": name, "file": file.display().to_string() }))
}

/// `capture_stop`: the workers stop tapping, the writer writes what is in flight and closes
/// the file. Answers the frames written, bytes, and copies the workers skipped.
fn capture_stop(shared: &Shared) -> Result<Value, String> {
    let run = shared.capture.lock().map_err(|_| "capture lock poisoned")?.take();
    let run = run.ok_or("no capture is running")?;
    let (tx, rx) = crossbeam_channel::bounded(shared.workers.queries.len());
    for q in &shared.workers.queries {
        let _ = q.send(Query::CaptureStop(tx.clone()));
    }
    drop(tx);
    let (mut copied, mut skipped) = (0, 0);
    for _ in 0..shared.workers.queries.len() {
        if let Ok((c, s)) = rx.recv_timeout(Duration::from_secs(3)) {
            copied += c;
            skipped += s;
        }
    }
    // Give the writer the buffers still in flight, then stop it.
    std::thread::sleep(Duration::from_millis(300));
    run.stop.store(true, Ordering::SeqCst);
    let (written, bytes) = run.writer.join().map_err(|_| "the capture writer panicked")??;
    tracing::info!("capture of {} into {}: {written} frames", run.tenant, run.file.display());
    Ok(json!({
        "tenant": run.tenant,
        "file": run.file.display().to_string(),
        "frames": written,
        "bytes": bytes,
        "copied": copied,
        "skipped": skipped,
    }))
}

/// The frame a `trace` request describes: `src`, `dst` (IPv4 or IPv6), `proto` (tcp, udp or
/// icmp; default tcp), `sport`, `dport`, `flags` (TCP, default "syn"), `vlan`, `src_mac`,
/// `dst_mac` (default broadcast: set it to a known host's MAC to see the FDB forward it).
fn trace_frame(req: &Value) -> Result<Vec<u8>, String> {
    use etherparse::PacketBuilder;
    let s = |k: &str| req.get(k).and_then(Value::as_str);
    let n = |k: &str, d: u64| req.get(k).and_then(Value::as_u64).unwrap_or(d);
    let mac = |k: &str, d: [u8; 6]| -> Result<[u8; 6], String> {
        match s(k) {
            Some(m) => m
                .parse::<dataplane::wire::MacAddr>()
                .map(|m| m.0)
                .map_err(|_| format!("{k}: {m:?} is not a MAC address")),
            None => Ok(d),
        }
    };
    let ip = |k: &str| -> Result<std::net::IpAddr, String> {
        let v = s(k).ok_or(format!("missing \"{k}\""))?;
        v.parse().map_err(|_| format!("{k}: {v:?} is not an address"))
    };
    let (src_mac, dst_mac) = (mac("src_mac", [2, 0, 0, 0, 0, 1])?, mac("dst_mac", [0xff; 6])?);
    let (src, dst) = (ip("src")?, ip("dst")?);
    let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
    let (sport, dport) = (n("sport", 40000) as u16, n("dport", 80) as u16);
    let proto = s("proto").unwrap_or("tcp");
    let mut out = Vec::new();
    let payload = [0u8; 8];
    // One arm per (family, tagged) below; the transport part is the same for all of them.
    macro_rules! l4 {
        ($b:expr, $echo:ident) => {
            match proto {
                "tcp" => {
                    let mut t = $b.tcp(sport, dport, 1, 1000);
                    for f in s("flags").unwrap_or("syn").split(',').map(str::trim) {
                        t = match f {
                            "syn" => t.syn(),
                            "ack" => t.ack(1),
                            "fin" => t.fin(),
                            "rst" => t.rst(),
                            "psh" => t.psh(),
                            "" => t,
                            other => return Err(format!("flags: unknown TCP flag {other:?}")),
                        };
                    }
                    t.write(&mut out, &payload)
                }
                "udp" => $b.udp(sport, dport).write(&mut out, &payload),
                "icmp" => $b.$echo(1, 1).write(&mut out, &payload),
                other => return Err(format!("proto: {other:?} (tcp, udp or icmp)")),
            }
        };
    }
    let vlan = req.get("vlan").and_then(Value::as_u64);
    let r = match (src, dst, vlan) {
        (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b), None) => {
            l4!(eth.ipv4(a.octets(), b.octets(), 64), icmpv4_echo_request)
        }
        (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b), Some(v)) => {
            let v: etherparse::VlanId = (v as u16).try_into().map_err(|_| "vlan: 1..=4094")?;
            l4!(eth.single_vlan(v).ipv4(a.octets(), b.octets(), 64), icmpv4_echo_request)
        }
        (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b), None) => {
            l4!(eth.ipv6(a.octets(), b.octets(), 64), icmpv6_echo_request)
        }
        (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b), Some(v)) => {
            let v: etherparse::VlanId = (v as u16).try_into().map_err(|_| "vlan: 1..=4094")?;
            l4!(eth.single_vlan(v).ipv6(a.octets(), b.octets(), 64), icmpv6_echo_request)
        }
        _ => return Err("src and dst must both be IPv4 or both IPv6".into()),
    };
    r.map_err(|e| format!("building the frame: {e}"))?;
    Ok(out)
}

/// Asks every worker and concatenates their answers (each worker has its own tables).
fn ask(shared: &Shared, q: impl Fn(Sender<Vec<Value>>) -> Query) -> Result<Value, String> {
    let queries = &shared.workers.queries;
    let (tx, rx) = crossbeam_channel::bounded(queries.len());
    for w in queries {
        w.send(q(tx.clone())).map_err(|_| "a worker has stopped".to_string())?;
    }
    drop(tx);
    let mut rows = Vec::new();
    for _ in 0..queries.len() {
        match rx.recv_timeout(Duration::from_secs(3)) {
            Ok(r) => rows.extend(r),
            Err(_) => return Err("a worker did not answer within 3 s".into()),
        }
    }
    Ok(Value::Array(rows))
}

/// The workers' counters summed, their census summed, and per worker (generation, loops).
fn gather(shared: &Shared) -> (Counters, FrameCensus, Vec<Value>) {
    let mut c = Counters::default();
    let mut census = FrameCensus { total: shared.chunks, ..FrameCensus::default() };
    let mut workers = Vec::new();
    for (i, slot) in shared.workers.slots.iter().enumerate() {
        let Ok(f) = slot.lock() else { continue };
        c.merge(&f.counters);
        census = census.merge(f.census);
        workers.push(json!({
            "worker": i,
            "generation": f.generation,
            "busy_polls": f.loops.busy_polls,
            "idle_polls": f.loops.idle_polls,
            "packets": f.loops.packets,
            "busy_ns_per_packet": f.loops.busy_ns_per_packet(),
        }));
    }
    (c, census, workers)
}

fn drops(row: &[u64; DropReason::COUNT]) -> Value {
    let m: serde_json::Map<String, Value> = DropReason::ALL
        .iter()
        .filter(|r| row[r.index()] > 0)
        .map(|r| (r.as_label().to_string(), json!(row[r.index()])))
        .collect();
    Value::Object(m)
}

fn status(shared: &Shared) -> Value {
    let snap = shared.snapshot();
    let (_, census, workers) = gather(shared);
    let st = shared.reloads.lock().map(|s| s.clone()).unwrap_or_default();
    let host = shared.host();
    json!({
        "config": shared.name(),
        "generation": snap.generation,
        "uptime_secs": shared.started.elapsed().as_secs(),
        "ports": snap.live_ports().count(),
        "tenants": snap.live_tenants().count(),
        "workers": workers,
        "reloads": { "applied": st.applied, "rejected": st.rejected, "last_error": st.last_error },
        "placement": host.workers.iter().enumerate().map(|(w, (node, core))| {
            json!({ "worker": w, "numa_node": node, "core": core })
        }).collect::<Vec<_>>(),
        "frames": {
            "total": census.total,
            "free": census.free,
            "fill": census.ports.fill,
            "rx": census.ports.rx,
            "tx": census.ports.tx,
            "completion": census.ports.completion,
            "pending": census.pending,
            "pages": host.pages,
            "in_flight_between_workers": census.returning + census.handoff,
        },
    })
}

fn ports(shared: &Shared) -> Value {
    let snap = shared.snapshot();
    let (c, _, _) = gather(shared);
    let sockets: Vec<crate::metrics::SocketFigures> = shared
        .workers
        .slots
        .iter()
        .filter_map(|s| s.lock().ok().map(|f| f.sockets.clone()))
        .flatten()
        .collect();
    // What the kernel dropped before the switch saw it (a full RX ring: the switch fell behind).
    let stats = |port: usize, queue: u32| {
        sockets
            .iter()
            .find(|s| s.port.index() == port && s.queue == queue)
            .map(|s| s.kernel)
            .unwrap_or_default()
    };
    let kernel = |port: usize, queue: u32| {
        let k = stats(port, queue);
        json!({
            "rx_ring_full": k.rx_ring_full,
            "rx_dropped": k.rx_dropped,
            "rx_fill_ring_empty_descs": k.rx_fill_ring_empty_descs,
        })
    };
    let placement = shared.placement();
    let hosts = shared.host().ports;
    // By name: ids are positions that reloads leave gaps in.
    let mut live: Vec<_> = snap.live_ports().collect();
    live.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    let list: Vec<Value> = live
        .into_iter()
        .map(|(id, p)| {
            let i = id.index();
            let queues: Vec<Value> = placement
                .iter()
                .filter(|q| q.port == p.name)
                .map(|q| {
                    json!({
                        "queue": q.queue, "worker": q.worker, "mode": q.mode,
                        "kernel": kernel(i, q.queue),
                    })
                })
                .collect();
            let host = hosts.iter().find(|h| h.port == p.name);
            let kernel_lost: u64 = placement
                .iter()
                .filter(|q| q.port == p.name)
                .map(|q| stats(i, q.queue).lost())
                .sum();
            json!({
                "name": p.name,
                "interface": p.interface,
                "pf": host.and_then(|h| h.vf.as_ref()).map(|v| v.0.clone()),
                "vf": host.and_then(|h| h.vf.as_ref()).map(|v| v.1),
                "numa_node": host.and_then(|h| h.numa_node),
                "kind": if p.kind == PortKind::Uplink { "uplink" } else { "tenant" },
                "state": if shared.port_is_down(&p.name) { "down" } else { "up" },
                "queues": queues,
                "rx_packets": c.port_rx.get(i).map_or(0, |x| x.packets),
                "rx_bytes": c.port_rx.get(i).map_or(0, |x| x.bytes),
                "tx_packets": c.port_tx.get(i).map_or(0, |x| x.packets),
                "tx_bytes": c.port_tx.get(i).map_or(0, |x| x.bytes),
                "drops": c.port_drops.get(i).map_or(json!({}), drops),
                "kernel_lost": kernel_lost,
            })
        })
        .collect();
    Value::Array(list)
}

fn tenants(shared: &Shared) -> Value {
    let snap = shared.snapshot();
    let (c, _, _) = gather(shared);
    let conns: Vec<u32> =
        shared.workers.slots.iter().fold(vec![0; snap.tenants.len()], |mut acc, s| {
            if let Ok(f) = s.lock() {
                for (a, b) in acc.iter_mut().zip(&f.conn_entries) {
                    *a += b;
                }
            }
            acc
        });
    let mut live: Vec<_> = snap.live_tenants().collect();
    live.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    let list: Vec<Value> = live
        .into_iter()
        .map(|(id, t)| {
            let i = id.index();
            let attach: Vec<Value> = t
                .attachments
                .iter()
                .map(|a| {
                    json!({
                        "port": snap.ports.get(a.port.index()).map_or("?", |p| p.name.as_str()),
                        "vlan": a.vlan,
                    })
                })
                .collect();
            json!({
                "name": t.name,
                "attachments": attach,
                "acl_rules": t.policy.acl[0].rules.len() + t.policy.acl[1].rules.len(),
                "security_group": t.policy.group.is_some(),
                "connections": conns.get(i).copied().unwrap_or(0),
                "rx_packets": c.tenant_rx.get(i).map_or(0, |x| x.packets),
                "rx_bytes": c.tenant_rx.get(i).map_or(0, |x| x.bytes),
                "tx_packets": c.tenant_tx.get(i).map_or(0, |x| x.packets),
                "tx_bytes": c.tenant_tx.get(i).map_or(0, |x| x.bytes),
                "drops": c.tenant_drops.get(i).map_or(json!({}), drops),
            })
        })
        .collect();
    Value::Array(list)
}

fn counters(shared: &Shared) -> Value {
    let (c, _, _) = gather(shared);
    let by_reason: serde_json::Map<String, Value> =
        DropReason::ALL.iter().map(|r| (r.as_label().to_string(), json!(c.drops(*r)))).collect();
    let malformed: serde_json::Map<String, Value> = ParseError::ALL
        .iter()
        .map(|e| (e.as_label().to_string(), json!(c.parse_errors[e.index()])))
        .collect();
    let f = &c.fdb;
    json!({
        "rx_packets": c.port_rx.iter().map(|p| p.packets).sum::<u64>(),
        "tx_packets": c.port_tx.iter().map(|p| p.packets).sum::<u64>(),
        "drops": by_reason,
        "malformed": malformed,
        "fdb": {
            "learned": f.learned, "moved": f.moved, "quota_exceeded": f.quota_exceeded,
            "aged": f.aged, "remote": f.remote, "unannounced": f.unannounced,
        },
        "flood_copies": c.flood_copies,
        "checksums_completed": c.checksums_completed,
    })
}
