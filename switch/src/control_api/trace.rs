//! `trace`: what every stage of the pipeline would decide for a frame described by the
//! request: the worker that polls its port runs the frame through its stages with learning,
//! caching, connections and counting off, and the stages' records are put in words
//! ([`crate::explain`]).

use super::*;

/// `trace`: the verdict of every stage for the frame `req` describes, from the stages and tables
/// of the worker that polls its port's first queue (a dry run: nothing changes).
pub(super) fn trace(mut req: TraceRequest, shared: &Shared) -> Result<Value, String> {
    let snap = shared.snapshot();
    let name = req.port.clone();
    let port = snap.port_by_name(&name).ok_or(format!("no port {name:?}"))?;
    // The worker that polls the port's first queue: its tables are the ones the frame
    // would meet.
    let w = shared.placement().iter().find(|p| p.port == name).map_or(0, |p| p.worker);
    let q = shared.workers.queries.get(w).ok_or("no such worker")?;
    // The destination MAC: given, else the one the tenant's tables know for the
    // destination address, else broadcast; the answer says which.
    let (dst_mac, from) = match req.dst_mac.clone() {
        Some(m) => (m, "given".to_string()),
        None => {
            let vlan = req.vlan;
            let dst = req.dst.as_str();
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
    req.dst_mac = Some(dst_mac.clone());
    let frame = trace_frame(&req)?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    q.send(Query::Trace(port, frame, tx)).map_err(|_| "the worker has stopped")?;
    let mut steps = rx
        .recv_timeout(Duration::from_secs(3))
        .map_err(|_| "the worker did not answer within 3 s")?;
    if steps.is_empty() {
        return Err(format!(
            "worker {w} had no free frame to run the trace through (all in flight); try again"
        ));
    }
    let verdict = steps.pop().unwrap_or(Value::Null);
    Ok(json!({
        "worker": w, "dst_mac": dst_mac, "dst_mac_from": from, "steps": steps,
        "verdict": verdict,
    }))
}

/// The frame a `trace` request describes: `src`, `dst` (IPv4 or IPv6), `proto` (tcp, udp or
/// icmp; default tcp), `sport`, `dport`, `flags` (TCP, default "syn"), `vlan`, `src_mac`,
/// `dst_mac` (default broadcast: set it to a known host's MAC to see the FDB forward it).
fn trace_frame(req: &TraceRequest) -> Result<Vec<u8>, String> {
    use etherparse::PacketBuilder;
    let mac = |k: &str, v: &Option<String>, d: [u8; 6]| -> Result<[u8; 6], String> {
        match v {
            Some(m) => m
                .parse::<dataplane::wire::MacAddr>()
                .map(|m| m.0)
                .map_err(|_| format!("{k}: {m:?} is not a MAC address")),
            None => Ok(d),
        }
    };
    let ip = |k: &str, v: &str| -> Result<std::net::IpAddr, String> {
        v.parse().map_err(|_| format!("{k}: {v:?} is not an address"))
    };
    let src_mac = mac("src_mac", &req.src_mac, [2, 0, 0, 0, 0, 1])?;
    let dst_mac = mac("dst_mac", &req.dst_mac, [0xff; 6])?;
    let (src, dst) = (ip("src", &req.src)?, ip("dst", &req.dst)?);
    let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
    let (sport, dport) = (req.sport, req.dport);
    let proto = req.proto.as_str();
    let mut out = Vec::new();
    let payload = [0u8; 8];
    // One arm per (family, tagged) below; the transport part is the same for all of them.
    macro_rules! l4 {
        ($b:expr, $echo:ident) => {
            match proto {
                "tcp" => {
                    let mut t = $b.tcp(sport, dport, 1, 1000);
                    for f in req.flags.split(',').map(str::trim) {
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
    let vlan = req.vlan;
    let r = match (src, dst, vlan) {
        (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b), None) => {
            l4!(eth.ipv4(a.octets(), b.octets(), 64), icmpv4_echo_request)
        }
        (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b), Some(v)) => {
            let v: etherparse::VlanId = v.try_into().map_err(|_| "vlan: 1..=4094")?;
            l4!(eth.single_vlan(v).ipv4(a.octets(), b.octets(), 64), icmpv4_echo_request)
        }
        (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b), None) => {
            l4!(eth.ipv6(a.octets(), b.octets(), 64), icmpv6_echo_request)
        }
        (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b), Some(v)) => {
            let v: etherparse::VlanId = v.try_into().map_err(|_| "vlan: 1..=4094")?;
            l4!(eth.single_vlan(v).ipv6(a.octets(), b.octets(), 64), icmpv6_echo_request)
        }
        _ => return Err("src and dst must both be IPv4 or both IPv6".into()),
    };
    r.map_err(|e| format!("building the frame: {e}"))?;
    Ok(out)
}
