//! `status`, `ports`, `tenants` and `counters`: what the workers last published (at most a
//! publishing interval old), summed, by name.

use super::*;

fn drops(row: &[u64; DropReason::COUNT]) -> Value {
    let m: serde_json::Map<String, Value> = DropReason::ALL
        .iter()
        .filter(|r| row[r.index()] > 0)
        .map(|r| (r.as_label().to_string(), json!(row[r.index()])))
        .collect();
    Value::Object(m)
}

pub(super) fn status(shared: &Shared) -> Value {
    let snap = shared.snapshot();
    let (c, census, workers) = gather(shared);
    let st = shared.reloads.lock().map(|s| s.clone()).unwrap_or_default();
    let host = shared.host();
    json!({
        "config": shared.name(),
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "binary": shared.exe.as_ref().map(|p| p.display().to_string()),
        "took_over_from": shared.took_over_from.get(),
        "generation": snap.generation,
        "uptime_secs": shared.started.elapsed().as_secs(),
        "ports": snap.live_ports().count(),
        "tenants": snap.live_tenants().count(),
        "workers": workers,
        "reloads": { "applied": st.applied, "rejected": st.rejected, "last_error": st.last_error },
        "cluster": shared.cluster.get().and_then(|c| c.lock().ok().map(|s| json!(*s))),
        "overlay": {
            "encap_packets": c.overlay.encap.packets,
            "encap_bytes": c.overlay.encap.bytes,
            "decap_packets": c.overlay.decap.packets,
            "decap_bytes": c.overlay.decap.bytes,
            "replicas": c.overlay.replicas,
            "arp_suppressed": c.overlay.arp_suppressed,
            "nd_suppressed": c.overlay.nd_suppressed,
            "tunnel_arp_replies": c.overlay.tunnel_arp,
        },
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

pub(super) fn ports(shared: &Shared) -> Value {
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

pub(super) fn tenants(shared: &Shared) -> Value {
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

pub(super) fn counters(shared: &Shared) -> Value {
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
        "segmented": c.segmented,
    })
}
