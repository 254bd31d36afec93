//! The AF_XDP boundary: the shared frame area (UMEM memory), the rings, the sockets and the
//! XDP program that steers frames to them. This is the only module of the dataplane allowed
//! `unsafe`; each block states the invariants it relies on in a `// SAFETY:` comment.
//!
//! # Why a thin layer of our own, not the `afxdp` crate
//! The project chose `afxdp` (0.4, libbpf 0.3 era). It cannot do what the switch needs: its
//! sockets are created with `xsk_socket__create`, so every interface registers the area as a
//! UMEM of its own instead of sharing one (`XDP_SHARED_UMEM` with per-socket fill and
//! completion rings), its buffers are `BufMmap` objects with their own ownership model rather
//! than frame addresses, and libbpf 0.3 attaches its XDP program through netlink, so a crashed
//! switch leaves the program on the interface and the next start fails
//! (`XDP_FLAGS_UPDATE_IF_NOEXIST`). The ring protocol is small and stable; `libc` carries the
//! structs. See docs/PERFORMANCE.md for the measurements.
#![allow(unsafe_code)] // the memory boundary (docs/ARCHITECTURE.md); every block has its SAFETY comment

pub mod bpf;
pub mod ring;
pub mod socket;
pub mod wait;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

pub use socket::{BindMode, BoundMode, FILL_RINGS, XskPort, XskStats, ifindex};

use crate::port::PortError;

/// The XDP program of one interface, its XSKMAP and its link. Dropping it detaches the program.
#[derive(Debug)]
pub struct XdpAttachment {
    ifname: String,
    map: OwnedFd,
    _prog: OwnedFd,
    link: Option<OwnedFd>,
    /// True when native (driver) XDP was used, false for generic XDP.
    pub native: bool,
}

impl XdpAttachment {
    /// The interface.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Creates the map (one slot per queue) and loads the program for `ifname`.
    pub fn new(ifname: &str, queues: u32) -> Result<Self, PortError> {
        let e = |what, source| PortError { ifname: ifname.into(), queue: 0, what, source };
        let map =
            bpf::create_xskmap(queues).map_err(|s| e("creating the XSKMAP (are we root?)", s))?;
        let prog = bpf::load_redirect_prog(&map).map_err(|s| e("loading the XDP program", s))?;
        Ok(XdpAttachment { ifname: ifname.into(), map, _prog: prog, link: None, native: false })
    }

    /// The map, the program and the link (when attached), for handing them to another
    /// process (a takeover): while it holds them the program stays attached.
    pub fn fds(&self) -> (BorrowedFd<'_>, BorrowedFd<'_>, Option<BorrowedFd<'_>>) {
        (self.map.as_fd(), self._prog.as_fd(), self.link.as_ref().map(AsFd::as_fd))
    }

    /// The attachment of `ifname` another process made and handed over: its map, program
    /// and link (the program attached, `native` or generic).
    pub fn adopt(
        ifname: &str,
        map: OwnedFd,
        prog: OwnedFd,
        link: Option<OwnedFd>,
        native: bool,
    ) -> Self {
        XdpAttachment { ifname: ifname.into(), map, _prog: prog, link, native }
    }

    /// Puts a socket in the map at its queue.
    pub fn register(&self, sock: &XskPort) -> Result<(), PortError> {
        bpf::xskmap_set(&self.map, sock.queue(), sock.raw_fd()).map_err(|source| PortError {
            ifname: self.ifname.clone(),
            queue: sock.queue(),
            what: "adding the socket to the XSKMAP",
            source,
        })
    }

    /// Attaches the program (native XDP, falling back to generic).
    pub fn attach(&mut self) -> Result<(), PortError> {
        let e = |what, source| PortError { ifname: self.ifname.clone(), queue: 0, what, source };
        let idx = ifindex(&self.ifname).map_err(|s| e("interface lookup", s))?;
        let prog = &self._prog;
        match bpf::link_xdp(prog, idx, bpf::XDP_FLAGS_DRV_MODE) {
            Ok(l) => {
                self.link = Some(l);
                self.native = true;
            }
            Err(first)
                if first.raw_os_error() == Some(libc::EBUSY)
                    || first.raw_os_error() == Some(libc::EEXIST) =>
            {
                return Err(e(
                    "attaching XDP: another XDP program is attached (remove it: ip link set dev IF xdp off)",
                    first,
                ));
            }
            Err(_) => {
                let l = bpf::link_xdp(prog, idx, bpf::XDP_FLAGS_SKB_MODE)
                    .map_err(|s| e("attaching XDP (native and generic both failed)", s))?;
                self.link = Some(l);
                self.native = false;
            }
        }
        Ok(())
    }
}

/// Checks for root-only operations early, with a clear message.
pub fn require_root() -> io::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "xswitch needs root (CAP_NET_ADMIN, CAP_BPF, CAP_NET_RAW) to open AF_XDP sockets",
        ));
    }
    Ok(())
}
