//! The kernel side of the interfaces the switch takes: their MTU, and keeping the host's own
//! stack off them.
//!
//! The kernel still owns an interface whose frames AF_XDP takes: left alone, it sends its own
//! IPv6 router solicitations, multicast listener reports and ARP out of it, straight to the
//! tenants and past the switch. When the switch takes a port (at start, and when a vanished
//! interface returns) it therefore disables IPv6 on it (`net.ipv6.conf.IF.disable_ipv6`), turns
//! ARP off (`IFF_NOARP`), removes its IPv4 addresses, and logs what it found and changed. At a
//! clean stop it restores IPv6 and ARP as they were; removed addresses are not put back (they
//! are logged when removed: an interface the switch drives carries no host traffic).
//!
//! Through rtnetlink and /proc/sys, never a command line.

use std::net::IpAddr;

use anyhow::{Context, bail};
use dataplane::snapshot::{PortId, Snapshot};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The MTU of interface `ifname`, from sysfs.
pub fn mtu(ifname: &str) -> Option<u32> {
    let path = format!("/sys/class/net/{ifname}/mtu");
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Gives every port of `snap` whose config sets no MTU its interface's; returns a line per
/// port for the log, and whether it is a warning: an interface MTU larger than a chain of
/// frames of `frame_size` carries (the config's own MTUs are checked by validation), whose
/// larger packets the socket drops (`chains_too_long`).
pub fn fill_mtus(snap: &mut Snapshot, frame_size: u32) -> Vec<(bool, String)> {
    let mut log = Vec::new();
    let limit = control::config::validate::longest_mtu(frame_size);
    for i in 0..snap.ports.len() {
        let p = &snap.ports[i];
        if p.is_vacant() {
            // An id a reload emptied: no port, no interface, nothing to say.
            continue;
        }
        if let Some(m) = p.mtu {
            log.push((false, format!("port {}: MTU {m} (config)", p.name)));
            continue;
        }
        if p.interface.is_empty() {
            // A vhost-user port: no interface; the guest's buffers bound what it takes.
            log.push((false, format!("port {}: no MTU set: frames are not checked", p.name)));
            continue;
        }
        match mtu(&p.interface) {
            Some(m) if m > limit => {
                log.push((
                    true,
                    format!(
                        "port {}: MTU {m} of interface {} is more than 18 frames of {frame_size} \
                         bytes carry ({limit}): larger packets are dropped (set \
                         switch.frame_size = 4096, or a smaller MTU)",
                        p.name, p.interface
                    ),
                ));
                snap.set_port_mtu(PortId(i as u16), m);
            }
            Some(m) => {
                log.push((false, format!("port {}: MTU {m} (interface {})", p.name, p.interface)));
                snap.set_port_mtu(PortId(i as u16), m);
            }
            None => log.push((
                false,
                format!(
                    "port {}: MTU of {} unknown: frames are not checked against it",
                    p.name, p.interface
                ),
            )),
        }
    }
    log
}

/// What [`quiet`] changed on one interface, to put back at a clean stop.
#[derive(Debug)]
pub struct Quieted {
    ifname: String,
    /// `disable_ipv6` was 0 before (set to 1).
    ipv6_was_on: bool,
    /// ARP was on before (turned off).
    arp_was_on: bool,
}

/// Makes the host's stack silent on `ifname`: IPv6 off, ARP off, IPv4 addresses removed. The
/// lines say what was found and changed.
pub fn quiet(ifname: &str) -> anyhow::Result<(Quieted, Vec<String>)> {
    let mut log = Vec::new();
    let index = ifindex(ifname)?;
    let v6 = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    let ipv6_was_on = match std::fs::read_to_string(&v6) {
        Ok(s) if s.trim() == "0" => {
            std::fs::write(&v6, "1").with_context(|| format!("{ifname}: disabling IPv6"))?;
            log.push(format!("{ifname}: IPv6 disabled (the host would solicit routers on it)"));
            true
        }
        // Already off, or IPv6 is not in this kernel.
        _ => false,
    };
    let flags = link_flags(ifname)?;
    let arp_was_on = flags & NOARP == 0;
    if arp_was_on {
        set_noarp(index, true).with_context(|| format!("{ifname}: turning ARP off"))?;
        log.push(format!("{ifname}: ARP off"));
    }
    for (addr, prefix, msg) in ipv4_addresses(index)? {
        request(RouteNetlinkMessage::DelAddress(msg), NLM_F_ACK)
            .with_context(|| format!("{ifname}: removing {addr}/{prefix}"))?;
        log.push(format!("{ifname}: address {addr}/{prefix} removed (not restored at stop)"));
    }
    Ok((Quieted { ifname: ifname.to_string(), ipv6_was_on, arp_was_on }, log))
}

impl Quieted {
    /// What was on before the switch quieted the interface: (IPv6, ARP).
    pub fn was_on(&self) -> (bool, bool) {
        (self.ipv6_was_on, self.arp_was_on)
    }

    /// What another process quieted on `ifname` and handed over (a takeover): put back at
    /// this one's stop.
    pub fn resume(ifname: &str, ipv6_was_on: bool, arp_was_on: bool) -> Quieted {
        Quieted { ifname: ifname.to_string(), ipv6_was_on, arp_was_on }
    }

    /// Leaves the interface quiet when this is dropped (a returning interface: the change
    /// made at start puts it back by name at stop).
    pub fn keep(mut self) {
        self.ipv6_was_on = false;
        self.arp_was_on = false;
    }
}

impl Drop for Quieted {
    /// Puts IPv6 and ARP back as they were (the interface may be gone: then nothing to do),
    /// also when a start fails after the port was taken.
    fn drop(&mut self) {
        if self.ipv6_was_on {
            let v6 = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", self.ifname);
            let _ = std::fs::write(v6, "0");
        }
        if self.arp_was_on
            && let Ok(i) = ifindex(&self.ifname)
        {
            let _ = set_noarp(i, false);
        }
    }
}

const NOARP: u32 = 0x80;

fn ifindex(ifname: &str) -> anyhow::Result<u32> {
    let path = format!("/sys/class/net/{ifname}/ifindex");
    std::fs::read_to_string(path)
        .map_err(|_| anyhow::anyhow!("no interface named {ifname}"))?
        .trim()
        .parse()
        .context("ifindex")
}

fn link_flags(ifname: &str) -> anyhow::Result<u32> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{ifname}/flags"))
        .map_err(|_| anyhow::anyhow!("no interface named {ifname}"))?;
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).context("interface flags")
}

fn set_noarp(index: u32, on: bool) -> anyhow::Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = if on { LinkFlags::Noarp } else { LinkFlags::empty() };
    msg.header.change_mask = LinkFlags::Noarp;
    request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK).map(drop)
}

/// The IPv4 addresses of interface `index`, each with the message that removes it.
fn ipv4_addresses(index: u32) -> anyhow::Result<Vec<(IpAddr, u8, AddressMessage)>> {
    let mut q = AddressMessage::default();
    q.header.family = AddressFamily::Inet;
    let all = request(RouteNetlinkMessage::GetAddress(q), NLM_F_DUMP)?;
    Ok(all
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a)
                if a.header.index == index && a.header.family == AddressFamily::Inet =>
            {
                let addr = a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })?;
                Some((addr, a.header.prefix_len, a))
            }
            _ => None,
        })
        .collect())
}

/// Sends one rtnetlink request (`flags` besides NLM_F_REQUEST) and collects the answer: the
/// messages of a dump, or nothing for an acknowledged change; a kernel error as an error.
pub fn request(msg: RouteNetlinkMessage, flags: u16) -> anyhow::Result<Vec<RouteNetlinkMessage>> {
    let mut nl = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
    nl.header.flags = NLM_F_REQUEST | flags;
    nl.header.sequence_number = 1;
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    let mut sock = Socket::new(NETLINK_ROUTE).context("netlink socket")?;
    sock.bind_auto().context("netlink bind")?;
    sock.connect(&SocketAddr::new(0, 0)).context("netlink connect")?;
    sock.send(&buf, 0).context("netlink send")?;
    let mut out = Vec::new();
    let mut reply = vec![0u8; 1 << 16];
    // Bounded: a dump ends with NLMSG_DONE, a change with its acknowledgement.
    for _ in 0..10_000 {
        let n = sock.recv(&mut &mut reply[..], 0).context("netlink receive")?;
        let mut at = 0;
        while at < n {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[at..n])
                .map_err(|e| anyhow::anyhow!("netlink answer: {e}"))?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io().into()),
                NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += (len + 3) & !3; // messages are 4-byte aligned
        }
    }
    bail!("netlink: no end to the answer")
}
