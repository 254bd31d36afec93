//! Ports whose interface vanishes and comes back (a VM's tap or a veth deleted and created
//! again, a VF reset). Checked by the main thread every breath of its loop (200 ms), never by
//! the workers: one `if_nametoindex` per interface.
//!
//! - Gone (no interface of that name, or one with another index): its sockets are marked down
//!   in their workers, which stop polling them and drop frames for the port as `port_down`.
//! - Back: new sockets are opened on the new interface (registering the frame area again: the
//!   old UMEM went with the old sockets' binding), the XDP program is attached to it, and each
//!   worker swaps the new socket in; the old one gives back what frames it can, and the rest
//!   (kept by the kernel with the vanished device) are written off in the frame census and
//!   logged.

use crossbeam_channel::Sender;
use dataplane::port::FrameArea;
use dataplane::port::afxdp::{BindMode, XdpAttachment, XskPort, ifindex};
use dataplane::snapshot::PortId;

use crate::control_api::Shared;

/// What the main thread tells a worker about one of its sockets.
#[derive(Debug)]
pub enum PortEvent {
    /// Socket `i`'s device is gone.
    Down(usize),
    /// Socket `i`'s device is back: the new socket (boxed: the channel's slots stay small).
    Replace(usize, Box<XskPort>),
}

/// One socket as the watch knows it.
#[derive(Debug, Clone)]
pub struct WatchedSocket {
    /// Its port and name.
    pub port: PortId,
    pub name: String,
    /// Its queue.
    pub queue: u32,
    /// The worker polling it and the socket's index there.
    pub worker: usize,
    pub index: usize,
    /// How to bind it again.
    pub mode: BindMode,
}

#[derive(Debug)]
struct Iface {
    name: String,
    /// The index the sockets are bound to.
    bound: u32,
    up: bool,
    sockets: Vec<WatchedSocket>,
    /// The last reason a reopen failed (logged once per reason).
    last_error: Option<String>,
}

/// The interfaces of all ports.
pub struct Watch {
    ifaces: Vec<Iface>,
    area: FrameArea,
    ring_size: u32,
    busy_poll: (u32, u32),
}

impl Watch {
    /// Watches the interfaces of `sockets` (as opened at start, `(interface, socket)`).
    pub fn new(
        area: FrameArea,
        ring_size: u32,
        busy_poll: (u32, u32),
        sockets: Vec<(String, WatchedSocket)>,
    ) -> Watch {
        let mut ifaces: Vec<Iface> = Vec::new();
        for (name, s) in sockets {
            match ifaces.iter_mut().find(|i| i.name == name) {
                Some(i) => i.sockets.push(s),
                None => ifaces.push(Iface {
                    bound: ifindex(&name).unwrap_or(0),
                    name,
                    up: true,
                    sockets: vec![s],
                    last_error: None,
                }),
            }
        }
        Watch { ifaces, area, ring_size, busy_poll }
    }

    /// Looks at every interface once; tells the workers what changed.
    pub fn check(
        &mut self,
        attachments: &mut Vec<XdpAttachment>,
        workers: &[Sender<PortEvent>],
        shared: &Shared,
    ) {
        for i in 0..self.ifaces.len() {
            let now = ifindex(&self.ifaces[i].name).ok();
            let iface = &mut self.ifaces[i];
            if iface.up && now != Some(iface.bound) {
                iface.up = false;
                for s in &iface.sockets {
                    let _ = workers[s.worker].send(PortEvent::Down(s.index));
                    shared.set_port_down(s.port, true);
                }
                tracing::warn!(
                    "port {}: interface {} is gone; port down (frames for it are \
                     dropped as port_down until it returns)",
                    iface.sockets[0].name,
                    iface.name
                );
            } else if !iface.up
                && let Some(idx) = now
            {
                match self.reopen(i) {
                    Ok((attachment, sockets)) => {
                        let iface = &mut self.ifaces[i];
                        match attachments.iter().position(|a| a.ifname() == iface.name) {
                            Some(k) => attachments[k] = attachment,
                            None => attachments.push(attachment),
                        }
                        for (s, sock) in iface.sockets.iter().zip(sockets) {
                            let _ =
                                workers[s.worker].send(PortEvent::Replace(s.index, Box::new(sock)));
                            shared.set_port_down(s.port, false);
                        }
                        iface.bound = idx;
                        iface.up = true;
                        iface.last_error = None;
                        tracing::info!(
                            "port {}: interface {} is back (index {idx}); port up",
                            iface.sockets[0].name,
                            iface.name
                        );
                    }
                    Err(e) => {
                        let iface = &mut self.ifaces[i];
                        let e = format!("{e:#}");
                        if iface.last_error.as_ref() != Some(&e) {
                            tracing::warn!(
                                "port {}: interface {} is back but cannot be opened \
                                 yet (retrying): {e}",
                                iface.sockets[0].name,
                                iface.name
                            );
                            iface.last_error = Some(e);
                        }
                    }
                }
            }
        }
    }

    /// New sockets for every queue of interface `i`, registered and attached.
    fn reopen(&self, i: usize) -> anyhow::Result<(XdpAttachment, Vec<XskPort>)> {
        let iface = &self.ifaces[i];
        // A new interface: the host's stack is quiet on it again before frames flow.
        let (q, log) = crate::netdev::quiet(&iface.name)?;
        q.keep();
        for l in log {
            tracing::info!("port {}: {l}", iface.sockets[0].name);
        }
        let mut socks: Vec<XskPort> = Vec::new();
        for s in &iface.sockets {
            let sock = XskPort::open(
                &self.area,
                &iface.name,
                s.queue,
                self.ring_size,
                s.mode,
                socks.first(),
            )?;
            if self.busy_poll.0 > 0 {
                let _ = sock.set_busy_poll(self.busy_poll.0, self.busy_poll.1);
            }
            socks.push(sock);
        }
        let queues = iface.sockets.iter().map(|s| s.queue + 1).max().unwrap_or(1);
        let mut a = XdpAttachment::new(&iface.name, queues)?;
        for s in &socks {
            a.register(s)?;
        }
        a.attach()?;
        Ok((a, socks))
    }
}
