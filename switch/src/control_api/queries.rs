//! Questions for the workers: each answers from its own tables between breaths (within one
//! publishing interval), only when asked, so the answers may allocate.

use super::*;
use dataplane::port::Driver;
use dataplane::trace::capture::Tap;

use crate::explain;

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
    w: &mut Worker<Driver>,
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
            // What the stages recorded as they decided the frame.
            let steps: Vec<Value> = explain::steps(&snap, &s.trace, false)
                .into_iter()
                .map(
                    |st| json!({ "stage": st.stage, "outcome": st.outcome, "dropped": st.dropped }),
                )
                .collect();
            json!({
                "worker": worker,
                "port": port_name(s.trace.port),
                "len": s.len,
                "ago_ms": now.since(s.at).0 as f64 / 1e6,
                "outcome": explain::outcome(&snap, s.trace.disposition),
                "flow_cache": s.trace.flow_path().as_str(),
                "steps": steps,
            })
        })
        .collect();
    if let Some(p) = pending.take() {
        let _ = p.reply.send(rows);
    }
}

/// An address as people write it (IPv4 unmapped).
fn ip_str(a: [u8; 16]) -> String {
    let v6 = std::net::Ipv6Addr::from(a);
    v6.to_ipv4_mapped().map_or_else(|| v6.to_string(), |v4| v4.to_string())
}

/// Answers `q` from worker `w`'s tables at time `now`. Runs on the worker thread between
/// breaths, only when asked (it allocates the answer).
pub fn answer_query(w: &Worker<Driver>, worker: usize, now: Nanos, q: Query) {
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
                        "static": e.is_static(),
                        // The cluster map's: behind the underlay, on another host.
                        "remote": e.is_remote(),
                        "age_secs": if e.is_static() || e.is_remote() {
                            0.0
                        } else {
                            secs(e.last_seen)
                        },
                        "worker": worker,
                    })
                })
                .collect();
            let _ = reply.send(rows);
        }
        Query::ResolveMac(t, ip, reply) => {
            let _ = reply.send(w.pipeline().resolve_mac(snap, t, ip));
        }
        // Only `answer_query_mut` may change the taps or run a frame through the stages; it
        // never passes these here.
        Query::CaptureStart(..)
        | Query::CaptureStop(_)
        | Query::LiveTrace { .. }
        | Query::Trace(..) => {}
        Query::Flows(t, top, order, reply) => {
            let mut flows: Vec<_> = w.pipeline().flows.flows(t).collect();
            let rank = |f: &dataplane::trace::flowlog::FlowView| match order {
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
    w: &mut Worker<Driver>,
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
        Query::Trace(port, frame, reply) => {
            // The frame through the real stages, nothing learned or counted; the words from
            // what they recorded.
            let rows = match w.trace(now, port, &frame) {
                Some(t) => {
                    let snap = w.snapshot().clone();
                    let steps = explain::steps(&snap, &t, true);
                    let v = explain::verdict(&steps);
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
                    rows
                }
                None => Vec::new(),
            };
            let _ = reply.send(rows);
        }
        other => answer_query(w, worker, now, other),
    }
}

/// `trace_live`: `count` samples (1..=100) of one in `every` frames of tenant `name`, within
/// `secs` (0.1..=60). Every worker samples the tenant's frames it sees; the answer comes when
/// they are full or the time is up.
pub(super) fn trace_live(
    name: &str,
    count: u64,
    every: u64,
    secs: f64,
    shared: &Shared,
) -> Result<Value, String> {
    use dataplane::trace::sample::MAX_SAMPLES;
    let tenant = shared.snapshot().tenant_by_name(name).ok_or(format!("no tenant {name:?}"))?;
    let count = count as usize;
    if !(1..=MAX_SAMPLES).contains(&count) {
        return Err(format!("count: 1..={MAX_SAMPLES}"));
    }
    let every = u32::try_from(every).ok().filter(|&e| e >= 1).ok_or("every: at least 1")?;
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
