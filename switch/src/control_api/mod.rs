//! The control API of a running switch: a Unix socket (mode 0600, so only root reaches it)
//! speaking `control::api` (one JSON request per line, one answer). Documented in
//! `docs/CONTROL.md`. Reloads are the main thread's (`crate::reload`); this thread asks it.
//!
//! - `mod.rs`: the state the control thread shares with the main thread and the workers
//!   ([`Shared`]), the socket's server, the dispatch of a request;
//! - `queries`: questions answered by the workers between breaths from their own tables;
//! - `views`: `status`, `ports`, `tenants`, `counters` from what the workers published;
//! - `trace`: the decision trace of a made-up frame;
//! - `capture`: live captures into pcap or pcapng files.

mod capture;
mod queries;
mod trace;
mod views;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use control::api::{CaptureRequest, FlowOrder, Request, Response, TraceRequest};
use control::config::Config;
use crossbeam_channel::Sender;
use dataplane::snapshot::{PortId, PortKind, Snapshot, TenantId};
use dataplane::time::Nanos;
use dataplane::trace::{Counters, DropReason, ParseError};
use dataplane::worker::FrameCensus;
use dataplane::worker::Worker;
use serde_json::{Value, json};

use crate::metrics::Slot;

pub use capture::CaptureRun;
pub use queries::{Query, answer_query_mut, finish_live_trace};

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
    /// So do takeovers, with the connection they came on (see `takeover`).
    pub takeovers_to: Sender<crate::takeover::Asked>,
    /// The main thread, unparked when a reload or a takeover is sent to it.
    pub main_thread: std::sync::OnceLock<std::thread::Thread>,
    /// The capture running, if any.
    capture: Mutex<Option<CaptureRun>>,
    /// When the switch started.
    pub started: Instant,
    /// The binary it was started from (read at start: an upgrade replaces the file).
    pub exe: Option<PathBuf>,
    /// The process this one took the switch over from, if it did.
    pub took_over_from: std::sync::OnceLock<i32>,
    /// The cluster agent's status, when the switch belongs to a cluster.
    pub cluster: std::sync::OnceLock<Arc<Mutex<crate::cluster::Status>>>,
    /// The ports whose interface is gone (see `fabric`), by name.
    port_down: Mutex<std::collections::BTreeSet<String>>,
}

impl Shared {
    /// Wakes the main thread (it parks between its rounds) to take what was just sent to it.
    pub fn wake_main(&self) {
        if let Some(t) = self.main_thread.get() {
            t.unpark();
        }
    }

    /// The state of a switch that has just started.
    pub fn new(
        path: Option<PathBuf>,
        cfg: Config,
        snap: Arc<Snapshot>,
        workers: WorkerLinks,
        chunks: u32,
        host: HostInfo,
        (reloads_to, takeovers_to): (
            Sender<crate::reload::Request>,
            Sender<crate::takeover::Asked>,
        ),
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
            takeovers_to,
            main_thread: std::sync::OnceLock::new(),
            capture: Mutex::new(None),
            started: Instant::now(),
            exe: std::env::current_exe().ok(),
            took_over_from: std::sync::OnceLock::new(),
            cluster: std::sync::OnceLock::new(),
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
    }

    /// What the metrics exporter sets every round besides the workers' figures.
    pub fn facts(&self) -> crate::metrics::Facts {
        let st = self.reloads.lock().map(|s| s.clone()).unwrap_or_default();
        crate::metrics::Facts {
            host: self.host(),
            snap: Some(self.snapshot()),
            down: self.port_down.lock().map(|d| d.clone()).unwrap_or_default(),
            reloads: [st.applied, st.rejected],
        }
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
    served: Option<crate::bounded::Served>,
    path: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.served.take());
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
    // Clients served concurrently, with bounds (`crate::bounded`): an idle or slow client
    // holds a descriptor, never the threads that answer the others.
    let bounds = crate::bounded::Bounds {
        name: "xswitch-ctl",
        connections: crate::bounded::connection_limit(),
        request_deadline: Duration::from_secs(5),
        request_max: 64 * 1024,
        answer_deadline: Duration::from_secs(5),
        answerers: 4,
        end: |b| b.iter().position(|&c| c == b'\n'),
    };
    let served = crate::bounded::serve(
        listener,
        bounds,
        move |conn, request| {
            let line = String::from_utf8_lossy(&request);
            if let Err(e) = handle(conn, &line, &shared) {
                tracing::info!("control: {e}");
            }
        },
        |conn, why| reply_error(conn, &format!("control socket: {why}")),
    )
    .context("control.socket: starting its threads")?;
    tracing::info!("control socket {}", path.display());
    Ok(Server { served: Some(served), path: path.to_path_buf() })
}

/// Answers a request with `why` it is not served (best effort: the client may be gone).
pub fn reply_error(conn: &UnixStream, why: &str) {
    let reply = Response::of(Err(why.to_string()));
    let mut w = conn;
    let _ = writeln!(w, "{}", serde_json::to_string(&reply).unwrap_or_default());
}

/// One request, one response (the write within the server's deadline).
fn handle(conn: UnixStream, line: &str, shared: &Arc<Shared>) -> std::io::Result<()> {
    let reply = match control::api::parse(line) {
        // The main thread answers it, on this connection (it carries descriptors back).
        Ok(Request::Takeover(offer)) => match shared.takeovers_to.try_send((offer, conn)) {
            Ok(()) => {
                shared.wake_main();
                return Ok(());
            }
            Err(e) => {
                let conn = e.into_inner().1;
                reply_error(&conn, "another takeover is being handled");
                return Ok(());
            }
        },
        req => Response::of(req.and_then(|req| answer(req, shared))),
    };
    let mut w = &conn;
    writeln!(w, "{}", serde_json::to_string(&reply).unwrap_or_default())
}

fn answer(req: Request, shared: &Arc<Shared>) -> Result<Value, String> {
    match req {
        Request::Status {} => Ok(views::status(shared)),
        Request::Ports {} => Ok(views::ports(shared)),
        Request::Tenants {} => Ok(views::tenants(shared)),
        Request::Counters {} => Ok(views::counters(shared)),
        Request::Reload { dry_run, file } => crate::reload::ask(shared, dry_run, file),
        Request::Flows { tenant: name, top, by: order } => {
            let snap = shared.snapshot();
            let t = snap.tenant_by_name(&name).ok_or(format!("no tenant {name:?}"))?;
            if !snap.uses_flows(t) {
                return Err(format!(
                    "tenant {name:?} has no per-flow counters: they are kept for tenants with \
                     ACL rules, a security group or a flow log"
                ));
            }
            let top = top.clamp(1, 10_000);
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
        Request::Fdb { tenant: name } => {
            let t = shared.snapshot().tenant_by_name(&name).ok_or(format!("no tenant {name:?}"))?;
            ask(shared, |reply| Query::Fdb(t, reply))
        }
        Request::Connections { tenant: name } => {
            let t = shared.snapshot().tenant_by_name(&name).ok_or(format!("no tenant {name:?}"))?;
            ask(shared, |reply| Query::Connections(t, reply))
        }
        Request::CaptureStart(req) => capture::capture_start(req, shared),
        Request::LogLevel { level } => {
            let was = crate::logging::set_level(&level)?;
            tracing::info!("log level {level} (was {was})");
            Ok(json!({ "level": level, "was": was }))
        }
        Request::TraceLive { tenant, count, every, timeout_secs } => {
            queries::trace_live(&tenant, count, every, timeout_secs, shared)
        }
        Request::CaptureStop {} => capture::capture_stop(shared),
        Request::Trace(req) => trace::trace(req, shared),
        Request::Upgrade { binary } => crate::takeover::spawn_upgrade(binary, shared),
        Request::Takeover(_) => Err("a takeover is answered by the main thread".into()),
    }
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
