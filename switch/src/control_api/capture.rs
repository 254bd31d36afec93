//! Live captures: every worker copies the frames a tap selects into a ring, a writer thread
//! turns them into a pcap or pcapng file (a named pipe for `ctl capture -w -`).

use super::*;
use dataplane::trace::capture::{CaptureFilter, MAX_SNAPLEN, Tap};

/// A capture in progress (one at a time).
pub struct CaptureRun {
    pub(super) tenant: String,
    pub(super) file: PathBuf,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) writer: JoinHandle<Result<(u64, u64), String>>,
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
pub(super) fn capture_start(req: CaptureRequest, shared: &Arc<Shared>) -> Result<Value, String> {
    let mut slot = shared.capture.lock().map_err(|_| "capture lock poisoned")?;
    if let Some(run) = slot.as_ref()
        && !run.writer.is_finished()
    {
        return Err(format!("a capture of {} into {} is running", run.tenant, run.file.display()));
    }
    let snap = shared.snapshot();
    let (scope, name) = match (req.tenant.as_deref(), req.on_port.as_deref()) {
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
    let drops_only = req.drops_only;
    let format = req.format.clone();
    let file = req.file.clone();
    let mut filter = CaptureFilter::default();
    if let Some(h) = req.host.as_deref().or(req.net.as_deref()) {
        filter.net = Some(h.parse().map_err(|e| format!("host/net: {e}"))?);
    }
    filter.port = req.port;
    if let Some(p) = &req.proto {
        let v = control::config::model::NumOrName::Name(p.clone());
        filter.proto = Some(control::config::policy::proto(&v)?);
    }
    filter.from_tenant = match req.direction.as_deref() {
        None => None,
        Some("from-tenant") => Some(true),
        Some("to-tenant") => Some(false),
        Some(other) => return Err(format!("direction: {other:?} (from-tenant or to-tenant)")),
    };
    let snaplen = req.snaplen.unwrap_or(MAX_SNAPLEN as u64) as usize;
    if !(14..=MAX_SNAPLEN).contains(&snaplen) {
        return Err(format!("snaplen: 14..={MAX_SNAPLEN}"));
    }
    let count = req.count.unwrap_or(u64::MAX);
    let bytes = req.bytes.unwrap_or(u64::MAX);
    let duration = match req.duration_secs {
        Some(d) if !(d.is_finite() && d >= 0.0) => return Err(format!("duration_secs: {d}")),
        d => d.map(Duration::from_secs_f64),
    };
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
pub(super) fn capture_stop(shared: &Shared) -> Result<Value, String> {
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
