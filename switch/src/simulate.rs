//! `xswitch demo --simulate`: the embedded demo config (`configs/demo.toml`) switching
//! simulated traffic over in-memory ports, for a machine where the veth lab cannot run (no
//! root). Every host sends to a peer of its own tenant, to the broadcast address and, as an
//! attacker would, to a host of another tenant with a forged VLAN tag; the table shows per
//! tenant what passed and what was dropped, and why.

use std::sync::Arc;

use anyhow::{Context, bail};
use dataplane::port::mem::MemPort;
use dataplane::port::{FrameArea, PageSize};
use dataplane::snapshot::{PortId, Snapshot};
use dataplane::time::Nanos;
use dataplane::worker::Worker;

use crate::lab::DEMO_CONFIG;

struct Host {
    tenant: &'static str,
    port: &'static str,
    vlan: Option<u16>,
    mac: [u8; 6],
}

const HOSTS: &[Host] = &[
    Host { tenant: "red", port: "red1", vlan: None, mac: [2, 0, 0, 0, 1, 1] },
    Host { tenant: "red", port: "red2", vlan: None, mac: [2, 0, 0, 0, 1, 2] },
    Host { tenant: "red", port: "uplink", vlan: Some(100), mac: [2, 0, 0, 0, 1, 3] },
    Host { tenant: "blue", port: "blue1", vlan: None, mac: [2, 0, 0, 0, 2, 1] },
    Host { tenant: "blue", port: "uplink", vlan: Some(200), mac: [2, 0, 0, 0, 2, 2] },
    Host { tenant: "green", port: "green1", vlan: None, mac: [2, 0, 0, 0, 3, 1] },
];

fn frame(src: [u8; 6], dst: [u8; 6], vlan: Option<u16>, seq: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(v) = vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&v.to_be_bytes());
    }
    // IPv4/UDP, 10.0.0.x, checksum left zero (UDP allows it; the switch does not verify L3).
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 32, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&[10, 0, 0, src[5], 10, 0, 0, dst[5]]);
    f.extend_from_slice(&[0x13, 0x88, 0x13, 0x88, 0, 12, 0, 0]);
    f.extend_from_slice(&seq.to_be_bytes());
    f
}

/// Runs the simulation and prints the table.
pub fn simulate(frames: u32) -> anyhow::Result<()> {
    let cfg = control::config::load_str("configs/demo.toml (embedded)", DEMO_CONFIG)?;
    let snap: Snapshot = control::compile(&cfg, 1)?;
    let area = FrameArea::new(cfg.frames(), cfg.frame_size(|_| None), PageSize::Normal)
        .context("frame area")?;
    let ports = snap.ports.iter().map(|_| MemPort::new(4096)).collect();
    let snap = Arc::new(snap);
    let mut w = Worker::new(area, ports, snap.clone());
    let port_of = |name: &str| snap.port_by_name(name).context("demo config lost a port");

    println!(
        "xswitch demo: {} ports, {} tenants, in-memory ports",
        snap.ports.len(),
        snap.tenants.len()
    );
    let mut now = Nanos::from_secs(1);
    let mut sent = 0u64;
    let mut delivered = 0u64;
    for seq in 0..frames {
        for (i, h) in HOSTS.iter().enumerate() {
            let peer = HOSTS
                .iter()
                .cycle()
                .skip(i + 1)
                .take(HOSTS.len() - 1)
                .find(|p| p.tenant == h.tenant);
            let other = &HOSTS[(i + 3) % HOSTS.len()];
            let dst = match seq % 4 {
                0 => [0xff; 6],
                1 | 2 => peer.map_or([0xff; 6], |p| p.mac),
                // An attacker: aims at another tenant's host, forging that host's VLAN tag.
                _ => other.mac,
            };
            let vlan = if seq % 4 == 3 { other.vlan.or(Some(200)) } else { h.vlan };
            let p = port_of(h.port)?;
            if !w.inject(p, &frame(h.mac, dst, vlan, seq)) {
                bail!("no free frame for injection");
            }
            sent += 1;
        }
        now = now.add(Nanos::from_millis(1));
        w.poll(now);
        for i in 0..snap.ports.len() {
            delivered += w.take_sent(PortId(i as u16)).len() as u64;
        }
    }
    w.poll(now);

    let c = &w.pipeline().counters;
    crate::table::print_tenants(&snap, c, &[]);
    println!(
        "frames sent {sent}, frames delivered {delivered} (flood copies {}), MACs learned {}",
        c.flood_copies, c.fdb.learned
    );
    let census = w.census();
    println!(
        "frame accounting: {} free + {} held by ports = {} total: {}",
        census.free,
        census.ports.total(),
        census.total,
        if census.balanced() { "balanced" } else { "LEAK" }
    );
    if !census.balanced() {
        bail!("frame accounting does not balance: {census:?}");
    }
    Ok(())
}
