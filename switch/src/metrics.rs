//! The Prometheus endpoint: workers publish, an exporter thread sums and sets the metrics.
//!
//! Each worker copies its figures (counters, frame census, loop statistics, batch sizes, the
//! kernel's per-socket XDP statistics) into its own [`Slot`] a few times a second, between
//! breaths, with `try_lock`: if the exporter holds the slot the worker skips that round rather
//! than wait. Nothing is shared on the packet path. The exporter thread sums the slots every
//! [`EXPORT_INTERVAL`] and sets the metrics; `metrics-exporter-prometheus` serves them.
//!
//! Names follow Prometheus conventions: `xswitch_` prefix, base units, `_total` on counters,
//! a HELP text on every family (`promtool check metrics` is run by the tests).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use control::config::model::MetricsConfig;
use dataplane::flow::cache::CacheStats;
use dataplane::policy::conntrack::ConnStats;
use dataplane::port::Driver;
use dataplane::port::afxdp::XskStats;
use dataplane::snapshot::{PortId, Snapshot, TenantId};
use dataplane::trace::{Counters, DropReason, ParseError};
use dataplane::worker::{FrameCensus, LoopStats, Worker};
use metrics::{Counter, Gauge, Unit};
use metrics_exporter_prometheus::PrometheusBuilder;

/// How often workers publish their figures.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(250);
/// How often the exporter sums them into the metrics.
pub const EXPORT_INTERVAL: Duration = Duration::from_secs(1);
/// A series not set for this long is removed (the exporter sets every live one each round).
pub const IDLE: Duration = Duration::from_secs(5);

/// The upper bounds of the batch-size buckets a worker keeps (powers of two, see
/// `Worker::batch_sizes`).
const BATCH_BOUNDS: [f64; 8] = [1.0, 3.0, 7.0, 15.0, 31.0, 63.0, 64.0, 64.0];

/// One socket's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketFigures {
    /// Its port.
    pub port: PortId,
    /// Its queue.
    pub queue: u32,
    /// The kernel's counters.
    pub kernel: XskStats,
    /// Wakeups issued.
    pub wakeups: u64,
}

/// What a worker last published.
#[derive(Debug, Default)]
pub struct WorkerFigures {
    /// Pipeline counters.
    pub counters: Counters,
    /// This worker's part of the frame census.
    pub census: FrameCensus,
    /// Busy and idle polls and time.
    pub loops: LoopStats,
    /// Batches by size bucket.
    pub batch_sizes: [u64; 8],
    /// Frames in those batches, by bucket.
    pub batch_frames: [u64; 8],
    /// Per socket.
    pub sockets: Vec<SocketFigures>,
    /// Flow cache events and live entries.
    pub cache: CacheStats,
    /// Live flow-cache entries.
    pub cache_entries: u32,
    /// Connection table events.
    pub conns: ConnStats,
    /// Fragment table events.
    pub frags: dataplane::policy::fragments::FragStats,
    /// Tracked connections per tenant.
    pub conn_entries: Vec<u32>,
    /// Frames waiting in each tenant's egress queues.
    pub queue_depth: Vec<u32>,
    /// Generation of the snapshot the worker runs.
    pub generation: u64,
    /// That snapshot (its ACL rules label the worker's rule counters).
    pub snapshot: Option<Arc<Snapshot>>,
    /// When the worker last published (for /healthz).
    pub at: Option<std::time::Instant>,
}

/// Where one worker publishes.
pub type Slot = Arc<Mutex<WorkerFigures>>;

/// Copies a worker's figures into its slot, unless the exporter is reading it right now.
/// Called between breaths; copies into buffers that keep their size, so after the first call it
/// does not allocate.
pub fn publish(slot: &Slot, w: &mut Worker<Driver>, loops: &LoopStats) {
    let Ok(mut f) = slot.try_lock() else { return };
    f.at = Some(std::time::Instant::now());
    f.counters.clone_from(&w.pipeline().counters);
    f.census = w.census();
    f.loops = *loops;
    f.batch_sizes = *w.batch_sizes();
    f.batch_frames = *w.batch_frames();
    f.generation = w.pipeline().generation();
    if f.snapshot.as_ref().is_none_or(|s| s.generation != f.generation) {
        // The reference replaced is to the previous snapshot, which the control state still
        // holds (`Shared::previous`): dropping it here frees nothing on the worker.
        f.snapshot = Some(w.snapshot().clone());
    }
    f.cache = w.pipeline().flows.stats;
    f.cache_entries = w.pipeline().flows.len();
    let p = &w.pipeline().policy;
    f.conns = p.conns.stats;
    f.frags = w.pipeline().frags.stats;
    let tenants = w.snapshot().tenants.len();
    f.conn_entries.clear();
    f.conn_entries.extend((0..tenants).map(|t| p.conns.entries_of(TenantId(t as u16))));
    f.queue_depth.clear();
    f.queue_depth.extend((0..tenants).map(|t| w.tx_queue_depth(TenantId(t as u16)).0 as u32));
    f.sockets.clear();
    for (port, s) in w.sockets_mut() {
        let Some(s) = s.xsk() else { continue };
        f.sockets.push(SocketFigures {
            port,
            queue: s.queue(),
            kernel: s.kernel_stats().unwrap_or_default(),
            wakeups: s.stats.kicks,
        });
    }
}

/// What the exporter sets again on every round besides the workers' figures: where ports and
/// workers are, the config's ports and attachments, ports up or down, reloads. Read from the
/// control state every round (a closure given to [`start`]), never kept here, and set every
/// round, because a series not set for [`IDLE`] is removed: that is how a removed port's or
/// tenant's series disappear.
#[derive(Default)]
pub struct Facts {
    /// The ports' devices and the workers' placement.
    pub host: crate::control_api::HostInfo,
    /// The running config.
    pub snap: Option<Arc<Snapshot>>,
    /// Ports whose interface is gone, by name.
    pub down: std::collections::BTreeSet<String>,
    /// Reloads applied and rejected.
    pub reloads: [u64; 2],
}

/// Sets the facts' series (every round, see [`Facts`]).
fn set_facts(f: &Facts) {
    let node = |n: Option<u32>| n.map_or(-1.0, f64::from);
    {
        for (w, (n, _)) in f.host.workers.iter().enumerate() {
            metrics::gauge!("xswitch_worker_numa_node", "worker" => w.to_string()).set(node(*n));
        }
        for (r, n) in ["applied", "rejected"].iter().zip(f.reloads) {
            metrics::counter!("xswitch_config_reloads_total", "result" => *r).absolute(n);
        }
        metrics::gauge!(
            "xswitch_build_info",
            "version" => env!("CARGO_PKG_VERSION"),
            "build" => env!("XSWITCH_BUILD")
        )
        .set(1.0);
        let Some(snap) = &f.snap else { return };
        metrics::gauge!("xswitch_config_generation").set(snap.generation as f64);
        for (_, p) in snap.live_ports() {
            let host = f.host.ports.iter().find(|h| h.port == p.name);
            let numa = host.and_then(|h| h.numa_node);
            metrics::gauge!("xswitch_port_numa_node", "port" => p.name.clone()).set(node(numa));
            let (pf, vf) = host
                .and_then(|h| h.vf.clone())
                .map_or((String::new(), String::new()), |(pf, i)| (pf, i.to_string()));
            let kind = match p.kind {
                dataplane::snapshot::PortKind::Uplink => "uplink",
                dataplane::snapshot::PortKind::Tenant => "tenant",
                dataplane::snapshot::PortKind::Underlay => "underlay",
            };
            // Info metrics: 1, for joining a port's series to its interface, kind and VF.
            metrics::gauge!(
                "xswitch_port_info",
                "port" => p.name.clone(),
                "interface" => p.interface.clone(),
                "kind" => kind,
                "pf" => pf,
                "vf" => vf
            )
            .set(1.0);
            let up = if f.down.contains(&p.name) { 0.0 } else { 1.0 };
            metrics::gauge!("xswitch_port_up", "port" => p.name.clone()).set(up);
        }
        for (_, t) in snap.live_tenants() {
            for a in &t.attachments {
                let port = snap.ports.get(a.port.index()).map_or(String::new(), |p| p.name.clone());
                let vlan = a.vlan.map_or("untagged".to_string(), |v| v.to_string());
                metrics::gauge!(
                    "xswitch_tenant_attachment_info",
                    "tenant" => t.name.clone(),
                    "port" => port,
                    "vlan" => vlan
                )
                .set(1.0);
            }
        }
    }
}

/// The running exporter; stops its thread when dropped.
pub struct Exporter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    http: Option<crate::bounded::Served>,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The listener closes with its threads.
        drop(self.http.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long a worker may go without publishing before /healthz says it is stuck.
const STALE: Duration = Duration::from_secs(2);

/// An HTTP/1.0-style answer: status, plain text, the body, and the connection closed.
fn write_http(conn: &mut std::net::TcpStream, code: u16, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let ct = "text/plain; version=0.0.4; charset=utf-8";
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    use std::io::Write;
    conn.write_all(head.as_bytes())?;
    conn.write_all(body.as_bytes())
}

/// Answers one request: `GET /metrics` (the exposition and the families rendered here),
/// `GET /healthz` (200 while every worker publishes, else 503 with the reason), 404 elsewhere.
fn answer_http(
    mut conn: std::net::TcpStream,
    request: &[u8],
    handle: &metrics_exporter_prometheus::PrometheusHandle,
    slots: &[Slot],
) {
    let line = request.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let _ = match (method == "GET", path) {
        (true, "/metrics") => {
            let mut body = handle.render();
            render_busy(&mut body, slots);
            render_batches(&mut body, slots);
            render_process(&mut body);
            write_http(&mut conn, 200, &body)
        }
        (true, "/healthz") => match health(slots) {
            Ok(()) => write_http(&mut conn, 200, "ok\n"),
            Err(why) => write_http(&mut conn, 503, &format!("unhealthy: {why}\n")),
        },
        (true, _) => write_http(&mut conn, 404, "not found: /metrics or /healthz\n"),
        (false, _) => write_http(&mut conn, 405, "GET only\n"),
    };
}

/// Ok while every worker has published within [`STALE`].
fn health(slots: &[Slot]) -> Result<(), String> {
    for (w, slot) in slots.iter().enumerate() {
        let at = slot.lock().map_err(|_| format!("worker {w}: its figures are poisoned"))?.at;
        match at {
            Some(t) if t.elapsed() <= STALE => {}
            Some(t) => {
                return Err(format!(
                    "worker {w} has not reported for {:.1} s",
                    t.elapsed().as_secs_f64()
                ));
            }
            None => return Err(format!("worker {w} has not started")),
        }
    }
    Ok(())
}

/// Busy time per worker as a counter of seconds (fractional: the exporter's counters are
/// integers), so PromQL computes busy ratios over any window.
fn render_busy(out: &mut String, slots: &[Slot]) {
    use std::fmt::Write;
    out.push_str("# HELP xswitch_worker_busy_seconds_total Time a worker spent in polls that received frames.\n");
    out.push_str("# TYPE xswitch_worker_busy_seconds_total counter\n");
    for (w, slot) in slots.iter().enumerate() {
        if let Ok(f) = slot.lock() {
            let _ = writeln!(
                out,
                "xswitch_worker_busy_seconds_total{{worker=\"{w}\"}} {}",
                f.loops.busy.0 as f64 / 1e9
            );
        }
    }
}

/// The batch-size histogram, rendered from the workers' cumulative bucket counts rather than
/// recorded into the exporter: recording hundreds of thousands of batches a second one by one
/// (`record_many` loops) cost the exporter thread 5 ms slices on the workers' core, long
/// enough for a fill ring to run dry (PERF(stalls) in docs/PERFORMANCE.md). The sum is exact
/// (the frames of the batches).
fn render_batches(out: &mut String, slots: &[Slot]) {
    use std::fmt::Write;
    let name = "xswitch_worker_batch_size";
    let _ = writeln!(
        out,
        "# HELP {name} Frames per received batch (bucketed by powers of two).\n# TYPE {name} histogram"
    );
    for (w, slot) in slots.iter().enumerate() {
        let Ok(f) = slot.lock() else { continue };
        let (sizes, frames) = (f.batch_sizes, f.batch_frames);
        drop(f);
        let mut seen = 0;
        for (bound, n) in BATCH_BOUNDS[..7].iter().zip(sizes) {
            seen += n;
            let _ = writeln!(out, "{name}_bucket{{worker=\"{w}\",le=\"{bound}\"}} {seen}");
        }
        let count: u64 = sizes.iter().sum();
        let sum: u64 = frames.iter().sum();
        let _ = writeln!(out, "{name}_bucket{{worker=\"{w}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{worker=\"{w}\"}} {sum}\n{name}_count{{worker=\"{w}\"}} {count}"
        );
    }
}

/// The usual process collector, from /proc/self: CPU seconds, resident and virtual memory,
/// open and allowed file descriptors (user-space ticks of 1/100 s and 4 KiB pages, Linux's
/// on this architecture).
fn render_process(out: &mut String) {
    use std::fmt::Write;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command (which may hold spaces), counted from the state (field 3).
    let f: Vec<&str> =
        stat.rsplit_once(')').map_or(Vec::new(), |(_, r)| r.split_whitespace().collect());
    let n = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse::<f64>().ok()))
        })
        .unwrap_or(0.0);
    for (name, kind, help, v) in [
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time.",
            (n(14) + n(15)) / 100.0,
        ),
        ("process_resident_memory_bytes", "gauge", "Resident memory.", n(24) * 4096.0),
        ("process_virtual_memory_bytes", "gauge", "Virtual memory.", n(23)),
        ("process_open_fds", "gauge", "Open file descriptors.", fds as f64),
        ("process_max_fds", "gauge", "Most open file descriptors allowed.", max_fds),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
}

/// Starts the endpoint (if enabled) and the thread that feeds it from `slots` and `facts`.
pub fn start(
    cfg: &MetricsConfig,
    snap: &Arc<Snapshot>,
    slots: &[Slot],
    facts: impl Fn() -> Facts + Send + 'static,
) -> anyhow::Result<Option<Exporter>> {
    if !cfg.enabled {
        return Ok(None);
    }
    let addr: SocketAddr =
        cfg.listen.parse().with_context(|| format!("metrics.listen: {:?}", cfg.listen))?;
    // Our own listener rather than the exporter's: /metrics on its path only, /healthz, the
    // families the exporter cannot hold (fractional counters, the process), and clients
    // served with bounds (`crate::bounded`).
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("metrics.listen: cannot serve metrics on {addr}: {e}"))?;
    let recorder = PrometheusBuilder::new()
        // A counter or gauge not set for this long is dropped: the exporter sets every live
        // one each round, so only a removed port's, tenant's or rule's go.
        .idle_timeout(
            metrics_util::MetricKindMask::COUNTER | metrics_util::MetricKindMask::GAUGE,
            Some(IDLE),
        )
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).context("metrics: a recorder is installed already")?;
    describe();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut families = Families::new(snap, slots.len(), started);
    let stop = Arc::new(AtomicBool::new(false));
    let (slots, stop2) = (slots.to_vec(), stop.clone());
    let (http_slots, http_handle) = (slots.clone(), handle.clone());
    let thread = std::thread::Builder::new()
        .name("xswitch-metrics".into())
        .spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                families.update(&slots, &facts());
                handle.run_upkeep();
                std::thread::sleep(EXPORT_INTERVAL);
            }
            families.update(&slots, &facts());
        })
        .context("starting the metrics thread")?;
    let bounds = crate::bounded::Bounds {
        name: "xswitch-http",
        connections: crate::bounded::connection_limit(),
        request_deadline: Duration::from_secs(5),
        request_max: 16 * 1024,
        answer_deadline: Duration::from_secs(5),
        answerers: 2,
        end: |b| b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4),
    };
    let http = crate::bounded::serve(
        listener,
        bounds,
        move |conn, request| answer_http(conn, &request, &http_handle, &http_slots),
        |conn, why| {
            let _ = write_http(conn, 503, &format!("{why}\n"));
        },
    )
    .context("starting the metrics listener")?;
    tracing::info!("metrics on http://{addr}/metrics, health on http://{addr}/healthz");
    Ok(Some(Exporter { stop, thread: Some(thread), http: Some(http) }))
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    let c = |n: &'static str, u: Unit, h: &'static str| describe_counter!(n, u, h);
    c("xswitch_port_received_packets_total", Unit::Count, "Frames received on a port.");
    c("xswitch_port_received_bytes_total", Unit::Bytes, "Bytes received on a port.");
    c("xswitch_port_sent_packets_total", Unit::Count, "Frames sent on a port.");
    c("xswitch_port_sent_bytes_total", Unit::Bytes, "Bytes sent on a port.");
    c(
        "xswitch_port_dropped_packets_total",
        Unit::Count,
        "Frames dropped, by ingress port and reason (exactly one reason per drop).",
    );
    c("xswitch_tenant_received_packets_total", Unit::Count, "Frames received from a tenant.");
    c("xswitch_tenant_received_bytes_total", Unit::Bytes, "Bytes received from a tenant.");
    c("xswitch_tenant_sent_packets_total", Unit::Count, "Frames of a tenant sent on any port.");
    c("xswitch_tenant_sent_bytes_total", Unit::Bytes, "Bytes of a tenant sent on any port.");
    c(
        "xswitch_tenant_dropped_packets_total",
        Unit::Count,
        "Frames of a tenant dropped, by reason (the same drops as the port view).",
    );
    c(
        "xswitch_tenant_queued_packets_total",
        Unit::Count,
        "Frames of a tenant put into an egress scheduler's queue.",
    );
    c(
        "xswitch_tenant_queued_bytes_total",
        Unit::Bytes,
        "Bytes of a tenant put into an egress scheduler's queue.",
    );
    describe_gauge!(
        "xswitch_tenant_queue_frames",
        Unit::Count,
        "Frames waiting in a tenant's egress queues, all ports."
    );
    c("xswitch_parse_errors_total", Unit::Count, "Malformed frames, by the check they failed.");
    c("xswitch_fdb_events_total", Unit::Count, "MAC learning events, by kind.");
    c("xswitch_flood_copies_total", Unit::Count, "Flood copies made beyond the original frame.");
    c(
        "xswitch_checksums_completed_total",
        Unit::Count,
        "TCP and UDP checksums a sender left to its device (checksum offload) that the switch completed.",
    );
    c(
        "xswitch_segments_cut_total",
        Unit::Count,
        "Large TCP segments (a guest's TSO) that crossed the switch whole, cut into MTU-sized ones on their way out of a port that does not take them whole.",
    );
    c(
        "xswitch_overlay_packets_total",
        Unit::Count,
        "Tenant frames that crossed the overlay (VXLAN), by direction: encap (to other hosts, \
         every replica counted) or decap (from them).",
    );
    c(
        "xswitch_overlay_bytes_total",
        Unit::Bytes,
        "Inner bytes of the tenant frames that crossed the overlay, by direction.",
    );
    c(
        "xswitch_overlay_replicas_total",
        Unit::Count,
        "Copies made for head-end replication to the other hosts of a tenant, beyond the original.",
    );
    c(
        "xswitch_overlay_arp_suppressed_total",
        Unit::Count,
        "ARP requests for another host's address answered from the cluster map.",
    );
    c(
        "xswitch_overlay_nd_suppressed_total",
        Unit::Count,
        "IPv6 neighbour solicitations for another host's address answered from the cluster map.",
    );
    c(
        "xswitch_overlay_tunnel_arp_replies_total",
        Unit::Count,
        "ARP requests for this host's tunnel address answered on the underlay.",
    );
    c(
        "xswitch_fragment_events_total",
        Unit::Count,
        "Fragmented datagrams of tenants with policy: tracked, completed, expired, evicted.",
    );
    c("xswitch_worker_polls_total", Unit::Count, "Worker poll rounds, busy (received) or idle.");
    c("xswitch_worker_received_packets_total", Unit::Count, "Frames a worker received.");
    for (n, h) in XSK_HELP {
        c(n, Unit::Count, h);
    }
    c("xswitch_xsk_wakeups_total", Unit::Count, "sendto/recvfrom wakeups issued on a socket.");
    c(
        "xswitch_config_reloads_total",
        Unit::Count,
        "Config reloads, by result (applied or rejected).",
    );
    c(
        "xswitch_acl_rule_matches_total",
        Unit::Count,
        "Packets an ACL rule decided (allow, deny) or counted (count).",
    );
    c("xswitch_flow_cache_lookups_total", Unit::Count, "Flow-cache lookups, by result.");
    c("xswitch_flow_cache_evictions_total", Unit::Count, "Flow-cache entries replaced.");
    c(
        "xswitch_conntrack_events_total",
        Unit::Count,
        "Connections opened, expired, refused (full), applied from other workers (remote), not \
         announced, or half-open ones evicted by a new SYN (evicted).",
    );
    describe_gauge!("xswitch_flow_cache_entries", Unit::Count, "Live flow-cache entries.");
    describe_gauge!("xswitch_conntrack_entries", Unit::Count, "Tracked connections, per tenant.");
    describe_gauge!("xswitch_umem_frames", Unit::Count, "Frames of the UMEM, by where they are.");
    describe_gauge!("xswitch_config_generation", "Generation of the running config.");
    describe_gauge!(
        "xswitch_worker_numa_node",
        "NUMA node of the ports a worker polls (-1: unknown)."
    );
    describe_gauge!("xswitch_port_numa_node", "NUMA node of a port's device (-1: unknown).");
    describe_gauge!(
        "xswitch_port_up",
        "1 while a port's interface is there (a vhost-user port: while a guest's rings run), 0 \
         while it is gone."
    );
    describe_gauge!("xswitch_port_info", "1 for each port: its interface, kind and VF (pf, vf).");
    describe_gauge!(
        "xswitch_tenant_attachment_info",
        "1 for each attachment of a tenant: the port and the VLAN (or untagged)."
    );
    describe_gauge!("xswitch_build_info", "1, labelled with the version and the git commit.");
    describe_gauge!(
        "process_start_time_seconds",
        Unit::Seconds,
        "Start time of the process since the Unix epoch."
    );
    describe_gauge!(
        "xswitch_worker_busy_ratio",
        "Share of the last export interval a worker spent in polls that received frames."
    );
    describe_gauge!(
        "xswitch_worker_busy_seconds_per_packet",
        Unit::Seconds,
        "Busy poll time per received frame since start (times the CPU clock: busy cycles per \
         packet)."
    );
}

const XSK_HELP: [(&str, &str); 6] = [
    ("xswitch_xsk_rx_dropped_total", "Kernel XDP socket: frames dropped for other reasons."),
    ("xswitch_xsk_rx_invalid_descs_total", "Kernel XDP socket: invalid fill descriptors."),
    ("xswitch_xsk_tx_invalid_descs_total", "Kernel XDP socket: invalid TX descriptors."),
    ("xswitch_xsk_rx_ring_full_total", "Kernel XDP socket: frames dropped on a full RX ring."),
    (
        "xswitch_xsk_rx_fill_ring_empty_descs_total",
        "Kernel XDP socket: frames that found the fill ring empty.",
    ),
    ("xswitch_xsk_tx_ring_empty_descs_total", "Kernel XDP socket: wakeups with an empty TX ring."),
];

fn xsk_fields(s: &XskStats) -> [u64; 6] {
    [
        s.rx_dropped,
        s.rx_invalid_descs,
        s.tx_invalid_descs,
        s.rx_ring_full,
        s.rx_fill_ring_empty_descs,
        s.tx_ring_empty_descs,
    ]
}

/// Both directions of a packet-and-byte counter pair.
struct PktBytesPair {
    packets: Counter,
    bytes: Counter,
}

/// Registered metric handles, so an update is a loop over handles and no lookups by name.
/// A rule counter's labels: tenant, direction, rule.
type AclKey = (String, &'static str, String);

struct Families {
    port_rx: Vec<PktBytesPair>,
    port_tx: Vec<PktBytesPair>,
    port_drops: Vec<Vec<Counter>>,
    tenant_rx: Vec<PktBytesPair>,
    tenant_tx: Vec<PktBytesPair>,
    tenant_queued: Vec<PktBytesPair>,
    queue_depth: Vec<Gauge>,
    tenant_drops: Vec<Vec<Counter>>,
    parse_errors: Vec<Counter>,
    fdb: [Counter; 6],
    flood_copies: Counter,
    checksums_completed: Counter,
    segmented: Counter,
    /// Overlay packets and bytes (encap, decap), and replicas.
    overlay: [Counter; 8],
    frag_events: [Counter; 4],
    umem: [Gauge; 9],
    workers: Vec<WorkerFamilies>,
    /// Per (port, queue): the six kernel counters and wakeups.
    sockets: Vec<((PortId, u32), [Counter; 7])>,
    port_names: Vec<String>,
    /// The generation of the snapshot the per-port and per-tenant handles were made for.
    built_for: u64,
    /// When the process started (seconds since the epoch).
    started: f64,
    /// Per (tenant, direction, rule) name: a rule's series follows the rule through reloads
    /// that move, add or remove rules (created when first seen).
    acl: HashMap<AclKey, Counter>,
    cache_lookups: [Counter; 2],
    cache_evictions: Counter,
    cache_entries: Gauge,
    conn_events: [Counter; 6],
    conn_entries: Vec<Gauge>,
}

struct WorkerFamilies {
    busy_polls: Counter,
    idle_polls: Counter,
    busy_ratio: Gauge,
    per_packet: Gauge,
    packets: Counter,
    last_loops: LoopStats,
}

fn pair(prefix: &str, dir: &str, label: &'static str, value: &str) -> PktBytesPair {
    PktBytesPair {
        packets: metrics::counter!(format!("{prefix}_{dir}_packets_total"), label => value.to_owned()),
        bytes: metrics::counter!(format!("{prefix}_{dir}_bytes_total"), label => value.to_owned()),
    }
}

impl Families {
    fn new(snap: &Snapshot, workers: usize, started: f64) -> Self {
        let fdb = ["learned", "moved", "quota_exceeded", "aged", "remote", "unannounced"]
            .map(|e| metrics::counter!("xswitch_fdb_events_total", "event" => e));
        let umem = [
            "free",
            "fill",
            "rx",
            "tx",
            "completion",
            "pending",
            "returning",
            "handoff",
            "unaccounted",
        ]
        .map(|s| metrics::gauge!("xswitch_umem_frames", "state" => s));
        let mut f = Families {
            port_rx: Vec::new(),
            port_tx: Vec::new(),
            port_drops: Vec::new(),
            tenant_rx: Vec::new(),
            tenant_tx: Vec::new(),
            tenant_queued: Vec::new(),
            queue_depth: Vec::new(),
            tenant_drops: Vec::new(),
            parse_errors: ParseError::ALL
                .iter()
                .map(|e| metrics::counter!("xswitch_parse_errors_total", "error" => e.as_label()))
                .collect(),
            fdb,
            flood_copies: metrics::counter!("xswitch_flood_copies_total"),
            checksums_completed: metrics::counter!("xswitch_checksums_completed_total"),
            segmented: metrics::counter!("xswitch_segments_cut_total"),
            overlay: [
                metrics::counter!("xswitch_overlay_packets_total", "direction" => "encap"),
                metrics::counter!("xswitch_overlay_bytes_total", "direction" => "encap"),
                metrics::counter!("xswitch_overlay_packets_total", "direction" => "decap"),
                metrics::counter!("xswitch_overlay_bytes_total", "direction" => "decap"),
                metrics::counter!("xswitch_overlay_replicas_total"),
                metrics::counter!("xswitch_overlay_arp_suppressed_total"),
                metrics::counter!("xswitch_overlay_nd_suppressed_total"),
                metrics::counter!("xswitch_overlay_tunnel_arp_replies_total"),
            ],
            frag_events: ["tracked", "completed", "expired", "evicted"]
                .map(|e| metrics::counter!("xswitch_fragment_events_total", "event" => e)),
            umem,
            workers: (0..workers)
                .map(|w| {
                    let w = w.to_string();
                    WorkerFamilies {
                        busy_polls: metrics::counter!("xswitch_worker_polls_total", "worker" => w.clone(), "result" => "busy"),
                        idle_polls: metrics::counter!("xswitch_worker_polls_total", "worker" => w.clone(), "result" => "idle"),
                        busy_ratio: metrics::gauge!("xswitch_worker_busy_ratio", "worker" => w.clone()),
                        per_packet: metrics::gauge!("xswitch_worker_busy_seconds_per_packet", "worker" => w.clone()),
                        last_loops: LoopStats::default(),
                        packets: metrics::counter!("xswitch_worker_received_packets_total", "worker" => w.clone()),
                    }
                })
                .collect(),
            sockets: Vec::new(),
            port_names: Vec::new(),
            built_for: 0,
            started,
            acl: HashMap::new(),
            cache_lookups: ["hit", "miss"]
                .map(|r| metrics::counter!("xswitch_flow_cache_lookups_total", "result" => r)),
            cache_evictions: metrics::counter!("xswitch_flow_cache_evictions_total"),
            cache_entries: metrics::gauge!("xswitch_flow_cache_entries"),
            conn_events: ["opened", "expired", "full", "remote", "unannounced", "evicted"]
                .map(|e| metrics::counter!("xswitch_conntrack_events_total", "event" => e)),
            conn_entries: Vec::new(),
        };
        f.build(snap);
        f
    }

    /// (Re)makes the handles of the per-port and per-tenant families for `snap`'s names, by
    /// id (a vacant id gets handles that record nothing). A name that stays keeps its series
    /// (the recorder hands out the same one); the handles of a removed port, tenant, socket or
    /// rule are let go, and its series go after [`IDLE`].
    fn build(&mut self, snap: &Snapshot) {
        let drops = |metric: &'static str, label: &'static str, v: &str| -> Vec<Counter> {
            if v.is_empty() {
                return DropReason::ALL.iter().map(|_| Counter::noop()).collect();
            }
            DropReason::ALL
                .iter()
                .map(|r| metrics::counter!(metric, label => v.to_owned(), "reason" => r.as_label()))
                .collect()
        };
        let pair = |prefix: &str, dir: &str, label: &'static str, v: &str| {
            if v.is_empty() {
                PktBytesPair { packets: Counter::noop(), bytes: Counter::noop() }
            } else {
                pair(prefix, dir, label, v)
            }
        };
        let gauge = |metric: &'static str, v: &str| {
            if v.is_empty() {
                Gauge::noop()
            } else {
                metrics::gauge!(metric, "tenant" => v.to_owned())
            }
        };
        let ports: Vec<&str> = snap.ports.iter().map(|p| p.name.as_str()).collect();
        let tenants: Vec<&str> = snap.tenants.iter().map(|t| t.name.as_str()).collect();
        self.port_rx = ports.iter().map(|p| pair("xswitch_port", "received", "port", p)).collect();
        self.port_tx = ports.iter().map(|p| pair("xswitch_port", "sent", "port", p)).collect();
        self.port_drops =
            ports.iter().map(|p| drops("xswitch_port_dropped_packets_total", "port", p)).collect();
        self.tenant_rx =
            tenants.iter().map(|t| pair("xswitch_tenant", "received", "tenant", t)).collect();
        self.tenant_tx =
            tenants.iter().map(|t| pair("xswitch_tenant", "sent", "tenant", t)).collect();
        self.tenant_queued =
            tenants.iter().map(|t| pair("xswitch_tenant", "queued", "tenant", t)).collect();
        self.queue_depth =
            tenants.iter().map(|t| gauge("xswitch_tenant_queue_frames", t)).collect();
        self.tenant_drops = tenants
            .iter()
            .map(|t| drops("xswitch_tenant_dropped_packets_total", "tenant", t))
            .collect();
        self.conn_entries = tenants.iter().map(|t| gauge("xswitch_conntrack_entries", t)).collect();
        self.port_names = ports.iter().map(|p| (*p).to_owned()).collect();
        self.sockets.clear();
        self.acl.clear();
        self.built_for = snap.generation;
    }

    /// Counter handles of one socket, registered the first time it is seen.
    fn socket(&mut self, port: PortId, queue: u32) -> &[Counter; 7] {
        let i = match self.sockets.iter().position(|(k, _)| *k == (port, queue)) {
            Some(i) => i,
            None => {
                let name = self.port_names.get(port.index()).cloned().unwrap_or_default();
                if name.is_empty() {
                    // A socket of a port its snapshot no longer has (being removed).
                    self.sockets.push(((port, queue), std::array::from_fn(|_| Counter::noop())));
                    return &self.sockets[self.sockets.len() - 1].1;
                }
                let q = queue.to_string();
                let mk = |n: &'static str| metrics::counter!(n, "port" => name.clone(), "queue" => q.clone());
                let c = [
                    mk(XSK_HELP[0].0),
                    mk(XSK_HELP[1].0),
                    mk(XSK_HELP[2].0),
                    mk(XSK_HELP[3].0),
                    mk(XSK_HELP[4].0),
                    mk(XSK_HELP[5].0),
                    mk("xswitch_xsk_wakeups_total"),
                ];
                self.sockets.push(((port, queue), c));
                self.sockets.len() - 1
            }
        };
        &self.sockets[i].1
    }

    fn update(&mut self, slots: &[Slot], facts: &Facts) {
        // The newest snapshot a worker runs: the handles follow its names.
        let newest = slots
            .iter()
            .filter_map(|s| s.lock().ok().and_then(|f| f.snapshot.clone()))
            .max_by_key(|s| s.generation);
        if let Some(s) = newest.filter(|s| s.generation > self.built_for) {
            self.build(&s);
        }
        set_facts(facts);
        metrics::gauge!("process_start_time_seconds").set(self.started);
        let mut sum = Counters::new(self.port_rx.len(), self.tenant_rx.len());
        let mut census = FrameCensus::default();
        let (mut cache, mut cache_entries, mut conns) =
            (CacheStats::default(), 0u32, ConnStats::default());
        let mut frags = [0u64; 4];
        // Rule counters by name, each worker's labelled by the snapshot it counts under (the
        // workers adopt a new one a few breaths apart).
        let mut acl: HashMap<AclKey, u64> = HashMap::new();
        let mut conn_entries = vec![0u32; self.conn_entries.len()];
        let mut queue_depth = vec![0u32; self.queue_depth.len()];
        for (w, slot) in slots.iter().enumerate() {
            let Ok(f) = slot.lock() else { continue };
            sum.merge(&f.counters);
            census = census.merge(f.census);
            cache.hits += f.cache.hits;
            cache.misses += f.cache.misses;
            cache.evictions += f.cache.evictions;
            cache_entries += f.cache_entries;
            conns.opened += f.conns.opened;
            conns.expired += f.conns.expired;
            conns.full += f.conns.full;
            conns.remote += f.conns.remote;
            conns.unannounced += f.conns.unannounced;
            conns.evicted += f.conns.evicted;
            if let Some(s) = &f.snapshot {
                for (t, hits) in s.tenants.iter().zip(&f.counters.acl_hits) {
                    for ((d, r), n) in t.policy.rules().zip(hits) {
                        *acl.entry((t.name.clone(), d.as_str(), r.name.clone())).or_default() += n;
                    }
                }
            }
            let g = &f.frags;
            for (a, b) in frags.iter_mut().zip([g.tracked, g.completed, g.expired, g.evicted]) {
                *a += b;
            }
            for (a, b) in conn_entries.iter_mut().zip(&f.conn_entries) {
                *a += b;
            }
            for (a, b) in queue_depth.iter_mut().zip(&f.queue_depth) {
                *a += b;
            }
            if let Some(wf) = self.workers.get_mut(w) {
                let l = &f.loops;
                wf.busy_polls.absolute(l.busy_polls);
                wf.idle_polls.absolute(l.idle_polls);
                let (busy, idle) = (
                    l.busy.0.saturating_sub(wf.last_loops.busy.0),
                    l.idle.0.saturating_sub(wf.last_loops.idle.0),
                );
                if busy + idle > 0 {
                    wf.busy_ratio.set(busy as f64 / (busy + idle) as f64);
                }
                wf.per_packet.set(l.busy_ns_per_packet() * 1e-9);
                wf.last_loops = *l;
                wf.packets.absolute(l.packets);
            }
            let sockets = f.sockets.clone();
            drop(f);
            for s in sockets {
                let c = self.socket(s.port, s.queue);
                for (h, v) in c.iter().zip(xsk_fields(&s.kernel).iter().chain([&s.wakeups])) {
                    h.absolute(*v);
                }
            }
        }
        let set = |h: &[PktBytesPair], v: &[dataplane::trace::counters::PktBytes]| {
            for (h, v) in h.iter().zip(v) {
                h.packets.absolute(v.packets);
                h.bytes.absolute(v.bytes);
            }
        };
        set(&self.port_rx, &sum.port_rx);
        set(&self.port_tx, &sum.port_tx);
        set(&self.tenant_rx, &sum.tenant_rx);
        set(&self.tenant_tx, &sum.tenant_tx);
        set(&self.tenant_queued, &sum.tenant_queued);
        for (h, v) in self.queue_depth.iter().zip(&queue_depth) {
            h.set(f64::from(*v));
        }
        for (hs, vs) in self.port_drops.iter().zip(&sum.port_drops) {
            for (h, v) in hs.iter().zip(vs) {
                h.absolute(*v);
            }
        }
        for (hs, vs) in self.tenant_drops.iter().zip(&sum.tenant_drops) {
            for (h, v) in hs.iter().zip(vs) {
                h.absolute(*v);
            }
        }
        for (h, v) in self.parse_errors.iter().zip(&sum.parse_errors) {
            h.absolute(*v);
        }
        let f = &sum.fdb;
        for (h, v) in self.fdb.iter().zip([
            f.learned,
            f.moved,
            f.quota_exceeded,
            f.aged,
            f.remote,
            f.unannounced,
        ]) {
            h.absolute(v);
        }
        self.flood_copies.absolute(sum.flood_copies);
        self.checksums_completed.absolute(sum.checksums_completed);
        self.segmented.absolute(sum.segmented);
        let o = &sum.overlay;
        let overlay = [
            o.encap.packets,
            o.encap.bytes,
            o.decap.packets,
            o.decap.bytes,
            o.replicas,
            o.arp_suppressed,
            o.nd_suppressed,
            o.tunnel_arp,
        ];
        for (h, v) in self.overlay.iter().zip(overlay) {
            h.absolute(v);
        }
        for (h, v) in self.frag_events.iter().zip(frags) {
            h.absolute(v);
        }
        for (k, v) in acl {
            let h = self.acl.entry(k).or_insert_with_key(|(t, d, r)| {
                metrics::counter!(
                    "xswitch_acl_rule_matches_total",
                    "tenant" => t.clone(),
                    "direction" => *d,
                    "rule" => r.clone()
                )
            });
            h.absolute(v);
        }
        self.cache_lookups[0].absolute(cache.hits);
        self.cache_lookups[1].absolute(cache.misses);
        self.cache_evictions.absolute(cache.evictions);
        self.cache_entries.set(f64::from(cache_entries));
        let events = [
            conns.opened,
            conns.expired,
            conns.full,
            conns.remote,
            conns.unannounced,
            conns.evicted,
        ];
        for (h, v) in self.conn_events.iter().zip(events) {
            h.absolute(v);
        }
        for (h, v) in self.conn_entries.iter().zip(&conn_entries) {
            h.set(f64::from(*v));
        }
        let c = &census;
        let unaccounted = i64::from(c.total) - i64::from(c.counted());
        for (h, v) in self.umem.iter().zip([
            c.free,
            c.ports.fill,
            c.ports.rx,
            c.ports.tx,
            c.ports.completion,
            c.pending,
            c.returning,
            c.handoff,
        ]) {
            h.set(f64::from(v));
        }
        // Workers publish at different moments, so frames in flight between them can show
        // here for a moment; a value that stays non-zero is a leak.
        self.umem[8].set(unaccounted as f64);
    }
}

#[cfg(test)]
mod health_tests {
    use super::*;

    #[test]
    fn healthz_says_which_worker_is_silent() {
        let slots: Vec<Slot> = (0..2).map(|_| Slot::default()).collect();
        assert_eq!(health(&slots), Err("worker 0 has not started".into()));
        for s in &slots {
            s.lock().unwrap().at = Some(std::time::Instant::now());
        }
        assert_eq!(health(&slots), Ok(()));
        let old = std::time::Instant::now().checked_sub(Duration::from_secs(5)).unwrap();
        slots[1].lock().unwrap().at = Some(old);
        assert!(health(&slots).unwrap_err().starts_with("worker 1 has not reported for 5."));
    }
}
