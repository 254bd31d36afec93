//! The flow-log writer: records from the workers to one JSON-lines file per tenant, rotated
//! to `FILE.1` when it grows past its size, and as IPFIX over UDP to a collector for the
//! tenants that ask (`control::ipfix`, one observation domain per tenant).

use std::io::Write;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use control::config::Config;
use crossbeam_channel::{Receiver, Sender};
use dataplane::snapshot::Snapshot;
use dataplane::time::{Clock, MonotonicClock, Nanos};
use dataplane::trace::flowlog::{FlowExport, FlowRecord};
use serde_json::json;

/// Records in flight between the workers and the writer.
const CHANNEL: usize = 65_536;

struct Sink {
    tenant: String,
    /// Its IPFIX observation domain.
    domain: u32,
    /// Its tenant (or the tenant's flow log) was removed by the last reload: kept until the
    /// next one for the records its workers flush, then closed.
    retiring: bool,
    /// The JSON-lines file, if the tenant has one.
    path: Option<PathBuf>,
    max: u64,
    file: Option<std::fs::File>,
    written: u64,
    /// Also export as IPFIX.
    ipfix: bool,
    /// IPFIX records waiting for the next message.
    pending: Vec<control::ipfix::Record>,
}

impl Sink {
    fn write(&mut self, line: &str) -> std::io::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        if self.file.is_none() || self.written + line.len() as u64 > self.max {
            if self.file.take().is_some() {
                let mut rotated = path.clone().into_os_string();
                rotated.push(".1");
                std::fs::rename(path, rotated)?;
            }
            let f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            self.written = f.metadata().map(|m| m.len()).unwrap_or(0);
            self.file = Some(f);
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(line.as_bytes())?;
            self.written += line.len() as u64;
        }
        Ok(())
    }
}

/// The writer and the channel the workers' tables report to.
pub struct Writer {
    tx: Sender<FlowRecord>,
    /// New sinks and port names after a reload.
    updates: Sender<Update>,
    /// It ends with where its IPFIX numbering stands.
    thread: JoinHandle<Vec<(u32, u32, u32)>>,
}

/// What the writer needs from a config: per tenant id, its sink; per port id, its name; and
/// after a takeover, where the old process's IPFIX numbering stood (domain, records,
/// messages).
struct Update {
    sinks: Vec<Option<Sink>>,
    ports: Vec<String>,
    resume: Vec<(u32, u32, u32)>,
}

/// The sinks of `cfg`'s tenants, by id in `snap`.
fn sinks_of(cfg: &Config, snap: &Snapshot) -> Vec<Option<Sink>> {
    snap.tenants
        .iter()
        .map(|t| {
            let tc = cfg.tenants.get(&t.name)?;
            tc.flow_log.as_ref().map(|f| Sink {
                tenant: t.name.clone(),
                domain: tc.observation_domain(&t.name),
                path: f.file.as_ref().map(PathBuf::from),
                max: f.max_bytes,
                file: None,
                written: 0,
                ipfix: f.ipfix,
                pending: Vec::new(),
                retiring: false,
            })
        })
        .collect()
}

impl Writer {
    /// Where one worker's flow cache reports, through this writer.
    pub fn export(&self, cfg: &Config) -> FlowExport {
        let s = &cfg.switch;
        FlowExport::new(
            Nanos::from_secs(u64::from(s.flow_log_interval_secs)),
            Nanos::from_secs(u64::from(s.flow_log_idle_secs)),
            self.tx.clone(),
        )
    }

    /// A reload changed the tenants or ports: records from now on go to `cfg`'s sinks (a
    /// tenant whose sink did not change keeps its open file).
    pub fn update(&self, cfg: &Config, snap: &Snapshot) {
        let ports = snap.ports.iter().map(|p| p.name.clone()).collect();
        let _ = self.updates.send(Update { sinks: sinks_of(cfg, snap), ports, resume: Vec::new() });
        // It may be parked for good (no tenant logged flows).
        self.thread.thread().unpark();
    }

    /// After a takeover, before the first record: IPFIX messages go on numbering where the old
    /// process's stood (`positions`: domain, data records sent, messages sent), so that a
    /// collector sees no gap.
    pub fn resume_ipfix(&self, cfg: &Config, snap: &Snapshot, positions: &[(u32, u32, u32)]) {
        let ports = snap.ports.iter().map(|p| p.name.clone()).collect();
        let resume = positions.to_vec();
        let _ = self.updates.send(Update { sinks: sinks_of(cfg, snap), ports, resume });
        self.thread.thread().unpark();
    }

    /// Waits until every table has been dropped and every record written; says where the
    /// IPFIX numbering stands (for a takeover).
    pub fn finish(self) -> Vec<(u32, u32, u32)> {
        drop(self.tx);
        // It may be sleeping between polls: it sees the channel closed at once.
        self.thread.thread().unpark();
        self.thread.join().unwrap_or_default()
    }
}

/// Starts the writer (also when no tenant logs flows yet: a reload may add one; it then
/// sleeps, and the workers' flow caches sweep nothing).
pub fn start(cfg: &Config, snap: &Snapshot, clock: MonotonicClock) -> anyhow::Result<Writer> {
    let sinks = sinks_of(cfg, snap);
    let ipfix = match &cfg.switch.flow_log_ipfix {
        Some(addr) => {
            let to: std::net::SocketAddr =
                addr.parse().with_context(|| format!("switch.flow_log_ipfix: {addr:?}"))?;
            let any: std::net::SocketAddr =
                if to.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
            // Not connected: on a connected UDP socket the ICMP "port unreachable" of one
            // datagram (a collector restarting) fails the next send, losing a message that the
            // collector, back by then, would have taken.
            let sock = std::net::UdpSocket::bind(any)
                .with_context(|| format!("switch.flow_log_ipfix: cannot send to {to}"))?;
            tracing::info!("flow records as IPFIX to {to}");
            Some((sock, to))
        }
        None => None,
    };
    let (tx, rx) = crossbeam_channel::bounded(CHANNEL);
    let (updates, news) = crossbeam_channel::unbounded();
    // Port names for the records, by id (a reload sends new ones).
    let ports: Vec<String> = snap.ports.iter().map(|p| p.name.clone()).collect();
    let thread = std::thread::Builder::new()
        .name("xswitch-flowlog".into())
        .spawn(move || write_all(rx, news, sinks, ipfix, clock, ports))
        .context("starting the flow-log writer")?;
    Ok(Writer { tx, updates, thread })
}

/// Adopts new sinks: a tenant whose file and export did not change keeps its sink (open file,
/// IPFIX records waiting); a sink the reload dropped is kept until the next reload, so the
/// records its workers flush when they forget the tenant are still written, and closed then.
fn adopt(sinks: &mut Vec<Option<Sink>>, mut new: Vec<Option<Sink>>) {
    let len = new.len().max(sinks.len());
    new.resize_with(len, || None);
    sinks.resize_with(len, || None);
    for (old, new) in sinks.iter_mut().zip(new.iter_mut()) {
        match (old.as_ref(), new.as_ref()) {
            (Some(o), Some(n))
                if o.tenant == n.tenant
                    && o.path == n.path
                    && o.max == n.max
                    && o.ipfix == n.ipfix
                    && o.domain == n.domain =>
            {
                *new = old.take();
                if let Some(n) = new.as_mut() {
                    n.retiring = false;
                }
            }
            (Some(o), None) if !o.retiring => {
                *new = old.take();
                if let Some(n) = new.as_mut() {
                    n.retiring = true;
                }
            }
            _ => {}
        }
    }
    *sinks = new;
}

/// Sends the IPFIX records every sink has waiting.
fn send_ipfix(
    sinks: &mut [Option<Sink>],
    (sock, to): &(std::net::UdpSocket, std::net::SocketAddr),
    exporter: &mut control::ipfix::Exporter,
) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as u32;
    for sink in sinks.iter_mut().flatten() {
        if sink.pending.is_empty() {
            continue;
        }
        for m in exporter.encode(sink.domain, now, &sink.pending) {
            // UDP: a lost datagram is lost (counted by the collector's sequence numbers).
            if let Err(e) = sock.send_to(&m, to) {
                tracing::info!("IPFIX export: {e}");
            }
        }
        sink.pending.clear();
    }
}

fn write_all(
    rx: Receiver<FlowRecord>,
    news: Receiver<Update>,
    mut sinks: Vec<Option<Sink>>,
    ipfix: Option<(std::net::UdpSocket, std::net::SocketAddr)>,
    clock: MonotonicClock,
    mut ports: Vec<String>,
) -> Vec<(u32, u32, u32)> {
    let mut exporter = control::ipfix::Exporter::default();
    // Record times are on the workers' clock (the switch's one monotonic clock); files want
    // wall time: both read now, at one moment.
    let wall0 = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let mono0 = clock.now();
    let wall = |t: Nanos| (wall0 + Duration::from_nanos(t.0.saturating_sub(mono0.0))).as_secs_f64();
    let ip = |a: [u8; 16]| {
        let v6 = std::net::Ipv6Addr::from(a);
        v6.to_ipv4_mapped().map_or_else(|| v6.to_string(), |v4| v4.to_string())
    };
    // Polled rather than a blocking receive, so that a worker's send never has to wake this
    // thread with a syscall. Idle, the polls space out from 20 to 160 ms (an idle switch's
    // writer woke 50 times a second, 0.4 % of a core here); the channel holds 65 536 records,
    // 400 000 a second for the longest sleep.
    let mut empty = 0u32;
    loop {
        // A reload's sinks before the next record (one empty-channel check per record).
        while let Ok(u) = news.try_recv() {
            if let Some(sock) = &ipfix {
                send_ipfix(&mut sinks, sock, &mut exporter);
            }
            adopt(&mut sinks, u.sinks);
            ports = u.ports;
            exporter.resume(&u.resume);
        }
        let r = match rx.try_recv() {
            Ok(r) => r,
            Err(crossbeam_channel::TryRecvError::Empty) => {
                if let Some(sock) = &ipfix {
                    send_ipfix(&mut sinks, sock, &mut exporter);
                }
                if sinks.iter().all(Option::is_none) {
                    // PERF(helpers): no tenant logs flows, so no worker sends a record: parked
                    // until a reload (`update`) or the end (`finish`) wakes it, never taking
                    // the core from a worker it shares.
                    std::thread::park();
                    continue;
                }
                std::thread::park_timeout(Duration::from_millis(20) * (1 << empty.min(3)));
                empty = empty.saturating_add(1);
                continue;
            }
            Err(crossbeam_channel::TryRecvError::Disconnected) => break,
        };
        empty = 0;
        let Some(Some(sink)) = sinks.get_mut(r.flow.tenant.index()) else { continue };
        if sink.ipfix {
            use control::ipfix::EndReason;
            use dataplane::trace::flowlog::RecordReason;
            let ms = |t: Nanos| (wall(t) * 1000.0) as u64;
            sink.pending.push(control::ipfix::Record {
                src: r.flow.src,
                dst: r.flow.dst,
                proto: r.flow.proto,
                packets: r.flow.packets,
                bytes: r.flow.bytes,
                start_ms: ms(r.flow.start),
                end_ms: ms(r.flow.last),
                reason: match r.why {
                    RecordReason::Ended => EndReason::EndOfFlow,
                    RecordReason::Idle => EndReason::Idle,
                    RecordReason::Interval | RecordReason::Evicted => EndReason::Active,
                    RecordReason::Flushed => EndReason::Forced,
                },
                status: control::ipfix::forwarding_status(
                    r.flow.accepted,
                    r.flow.reason.map(|x| x.as_label()),
                ),
                in_port: u32::from(r.flow.in_port.0),
                vlan: r.flow.vlan.unwrap_or(0),
                tenant: sink.tenant.clone(),
            });
        }
        if sink.path.is_none() {
            continue;
        }
        let port = ports.get(r.flow.in_port.index()).cloned().unwrap_or_default();
        let mut line = json!({
            "tenant": sink.tenant,
            "proto": r.flow.proto,
            "in_port": port,
            "vlan": r.flow.vlan,
            "src": ip(r.flow.src.0), "sport": r.flow.src.1,
            "dst": ip(r.flow.dst.0), "dport": r.flow.dst.1,
            "packets": r.flow.packets,
            "bytes": r.flow.bytes,
            "start": wall(r.flow.start),
            "end": wall(r.flow.last),
            "action": if r.flow.accepted { "accept" } else { "reject" },
            "reason": r.flow.reason.map(|x| x.as_label()),
            "ended": r.ended(),
        });
        // ICMP: the flow key holds type and code where the ports would be.
        if matches!(r.flow.proto, 1 | 58) {
            let m = line.as_object_mut().expect("a JSON object");
            m.remove("sport");
            m.remove("dport");
            m.insert("icmp_type".into(), json!(r.flow.src.1));
            m.insert("icmp_code".into(), json!(r.flow.dst.1));
        }
        let line = line.to_string() + "\n";
        if let Err(e) = sink.write(&line) {
            let file = sink.path.as_ref().map_or(String::new(), |p| p.display().to_string());
            tracing::info!("flow log {file}: {e}");
        }
    }
    // Records flushed at the stop.
    if let Some(sock) = &ipfix {
        send_ipfix(&mut sinks, sock, &mut exporter);
    }
    exporter.positions()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(tenant: &str) -> Option<Sink> {
        Some(Sink {
            tenant: tenant.into(),
            domain: 1,
            path: Some(PathBuf::from(format!("/tmp/{tenant}.jsonl"))),
            max: 4096,
            file: None,
            written: 7,
            ipfix: false,
            pending: Vec::new(),
            retiring: false,
        })
    }

    // Review of issue 17: a sink a reload dropped was kept for ever (an open file per removed
    // tenant); it is kept one reload, for the records flushed with the tenant, then closed.
    #[test]
    fn a_dropped_sink_lives_one_reload_and_an_unchanged_one_keeps_its_state() {
        let mut sinks = vec![sink("red"), sink("blue")];
        // blue removed (its id vacant): kept, retiring; red unchanged keeps what it wrote.
        adopt(&mut sinks, vec![sink("red"), None]);
        assert_eq!(sinks[0].as_ref().map(|s| s.written), Some(7));
        assert!(sinks[1].as_ref().is_some_and(|s| s.retiring));
        // The next reload closes it.
        adopt(&mut sinks, vec![sink("red"), None]);
        assert!(sinks[1].is_none());
        // A sink whose file changed is the new one, not the old one's state.
        let mut moved = sink("red");
        if let Some(s) = moved.as_mut() {
            s.path = Some(PathBuf::from("/tmp/elsewhere.jsonl"));
            s.written = 0;
        }
        adopt(&mut sinks, vec![moved, None]);
        assert_eq!(sinks[0].as_ref().map(|s| s.written), Some(0));
    }
}
