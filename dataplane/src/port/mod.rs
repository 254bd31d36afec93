//! Ports: everything that moves frames between the switch and the outside.
//!
//! A [`Port`] is thin glue in the manner of Snabb's `XDP:pull`/`XDP:push`: it refills its
//! receive side from the [`FramePool`], moves up to a batch of frame references in or out, and
//! returns completed frames to the pool. It never copies frame bytes and never parses them.
//! Drivers: [`mem::MemPort`] (tests, benches, fuzzing) and, behind the same trait, AF_XDP
//! ([`afxdp::XskPort`]) and vhost-user ([`vhost::VhostPort`]); the switch's workers poll
//! [`Driver`], either of the last two.
//!
//! Frames live in the shared [`FrameArea`]; the pool holds the chunk addresses nobody uses.

pub mod afxdp;
pub mod mem;
pub mod vhost;

use std::io;

pub use crate::frame::{FRAME_HEADROOM, FrameArea, FramePool, PageSize};

use crate::batch::Batch;
use crate::frame::FrameRef;
use crate::pipeline::Egress;
use crate::pipeline::output::Owner;
use crate::vocab::PortId;

/// A port driver failed. Names the interface and queue so an operator can act on it.
#[derive(Debug, thiserror::Error)]
#[error("{ifname} queue {queue}: {what}")]
pub struct PortError {
    /// Kernel interface name.
    pub ifname: String,
    /// Queue id.
    pub queue: u32,
    /// What was being done.
    pub what: &'static str,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

/// Where a port's frames are, for the frame accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCensus {
    /// Given to the kernel to receive into (fill ring).
    pub fill: u32,
    /// Received, not yet taken by the worker.
    pub rx: u32,
    /// Handed to the kernel to send, not yet completed.
    pub tx: u32,
    /// Sent, waiting in the completion ring.
    pub completion: u32,
}

impl PortCensus {
    /// All frames the port holds.
    pub fn total(&self) -> u32 {
        self.fill + self.rx + self.tx + self.completion
    }
}

/// What the worker's last breath found, as a hint for batching wakeups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breath {
    /// Nothing was received: no burst is building up, wake the kernel now.
    Idle,
    /// Frames were received: more may follow, a wakeup may wait for a fuller burst.
    Received,
}

/// Burst I/O of frame references.
pub trait Port {
    /// Tops up the receive side from `pool`, then appends up to `batch.room()` received frames
    /// (a packet received as several frames is one chain, linked in `area`). Returns how
    /// many were appended.
    fn rx(&mut self, area: &mut FrameArea, pool: &mut FramePool, batch: &mut Batch) -> usize;

    /// Frees the frames of a packet whose first frames arrived and whose last has not (before
    /// the port is handed to another process, which skips the rest). True when there was one
    /// (a dropped packet). Nothing by default.
    fn drop_partial(&mut self, _area: &FrameArea, _pool: &mut FramePool) -> bool {
        false
    }

    /// Packets the receive side dropped since the last call (a chain longer than the longest
    /// the switch takes), for the worker to count as `too_big`. None by default.
    fn take_rx_drops(&mut self) -> u32 {
        0
    }

    /// Gives the receive side every frame it has room for, from `pool`, without receiving:
    /// the most room to receive into while nobody polls (a takeover). Nothing by default.
    fn fill_up(&mut self, _pool: &mut FramePool) {}

    /// Queues frames for transmission, in order: takes a prefix of `frames` (as many as its
    /// TX side has room for), removing it from the list. Returns how many it took; the rest
    /// stay in `frames`, still the caller's. A chain is taken whole or not at all (its
    /// segments are read from `area`).
    fn tx(&mut self, area: &FrameArea, frames: &mut Vec<FrameRef>) -> usize;

    /// Returns frames whose transmission completed to `pool`. Returns how many chunks.
    fn reclaim(&mut self, area: &FrameArea, pool: &mut FramePool) -> usize;

    /// Tells the kernel about queued TX work when it needs telling; `breath` says whether more
    /// traffic is likely to follow at once. Returns false if a wakeup failed (the caller
    /// counts it).
    fn kick(&mut self, breath: Breath) -> bool;

    /// Where this port's frames are.
    fn census(&self) -> PortCensus;

    /// A descriptor that turns readable when frames arrive, for an idle worker to wait on
    /// (`poll`); None for ports that have none (the worker then sleeps in short steps).
    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// The queue of its interface this port drives (0 for ports without queues).
    fn queue(&self) -> u32 {
        0
    }

    /// The port is being replaced (its device went away and came back): returns every frame
    /// it can to `pool` and says how many it cannot (the kernel kept them with the vanished
    /// device), so the frame accounting can write them off. Called once, between breaths.
    fn retire(&mut self, area: &FrameArea, pool: &mut FramePool) -> u32;
}

/// Port drivers indexed by `PortId`, all owned by one worker.
impl<P: Port> Egress for [P] {
    #[inline]
    fn send(
        &mut self,
        area: &FrameArea,
        port: PortId,
        frames: &mut Vec<FrameRef>,
        _: &[Owner],
    ) -> usize {
        self.get_mut(port.index()).map_or(0, |p| p.tx(area, frames))
    }
}

/// A port of the running switch: an AF_XDP socket or a vhost-user device. One match per call
/// (a burst), so the worker stays generic over one type.
// Held in place in the worker's list of sockets: boxing the larger variant would add a pointer
// to follow on every call.
#[allow(clippy::large_enum_variant)]
pub enum Driver {
    /// An AF_XDP socket on one queue of an interface.
    Xsk(afxdp::XskPort),
    /// A vhost-user device (a VM's virtio-net).
    Vhost(vhost::VhostPort),
}

impl Driver {
    /// The AF_XDP socket, if it is one.
    pub fn xsk(&self) -> Option<&afxdp::XskPort> {
        match self {
            Driver::Xsk(x) => Some(x),
            Driver::Vhost(_) => None,
        }
    }

    /// The AF_XDP socket, mutable, if it is one.
    pub fn xsk_mut(&mut self) -> Option<&mut afxdp::XskPort> {
        match self {
            Driver::Xsk(x) => Some(x),
            Driver::Vhost(_) => None,
        }
    }

    /// What the logs call it: "IFNAME queue Q", or "vhost-user NAME".
    pub fn label(&self) -> String {
        match self {
            Driver::Xsk(x) => format!("{} queue {}", x.ifname(), x.queue()),
            Driver::Vhost(v) => format!("vhost-user {} queue {}", v.name(), v.queue()),
        }
    }

    /// The vhost-user device, if it is one.
    pub fn vhost(&self) -> Option<&vhost::VhostPort> {
        match self {
            Driver::Vhost(v) => Some(v),
            Driver::Xsk(_) => None,
        }
    }
}

/// Calls `$body` with `$p` bound to whichever driver `$d` holds.
macro_rules! each {
    ($d:expr, $p:ident => $body:expr) => {
        match $d {
            Driver::Xsk($p) => $body,
            Driver::Vhost($p) => $body,
        }
    };
}

impl Port for Driver {
    #[inline]
    fn rx(&mut self, area: &mut FrameArea, pool: &mut FramePool, batch: &mut Batch) -> usize {
        each!(self, p => p.rx(area, pool, batch))
    }
    fn drop_partial(&mut self, area: &FrameArea, pool: &mut FramePool) -> bool {
        each!(self, p => p.drop_partial(area, pool))
    }
    #[inline]
    fn take_rx_drops(&mut self) -> u32 {
        each!(self, p => p.take_rx_drops())
    }
    fn fill_up(&mut self, pool: &mut FramePool) {
        each!(self, p => p.fill_up(pool))
    }
    #[inline]
    fn tx(&mut self, area: &FrameArea, frames: &mut Vec<FrameRef>) -> usize {
        each!(self, p => p.tx(area, frames))
    }
    #[inline]
    fn reclaim(&mut self, area: &FrameArea, pool: &mut FramePool) -> usize {
        each!(self, p => p.reclaim(area, pool))
    }
    #[inline]
    fn kick(&mut self, breath: Breath) -> bool {
        each!(self, p => p.kick(breath))
    }
    fn census(&self) -> PortCensus {
        each!(self, p => p.census())
    }
    fn wait_fd(&self) -> Option<std::os::fd::RawFd> {
        each!(self, p => p.wait_fd())
    }
    fn queue(&self) -> u32 {
        each!(self, p => p.queue())
    }
    fn retire(&mut self, area: &FrameArea, pool: &mut FramePool) -> u32 {
        each!(self, p => p.retire(area, pool))
    }
}
