//! The XDP side of an AF_XDP port: an XSKMAP, a five-instruction program that redirects every
//! frame to the socket of its RX queue (or passes it to the kernel stack when the queue has no
//! socket), and its attachment to the interface through a BPF link.
//!
//! # Why by hand
//! The program is fixed and tiny, so it is emitted as bytecode here instead of pulling in a
//! BPF toolchain and loader; the `bpf(2)` calls are three. Attaching through a *link* (not
//! netlink) ties the program's life to a file descriptor: a clean exit, a panic or a `kill -9`
//! all close it and the kernel detaches the program, so no crash leaves a program behind that
//! would block the next start.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const XDP_PASS: i32 = 2;
/// `XDP_FLAGS_DRV_MODE`: native XDP in the driver (veth, NIC drivers).
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// `XDP_FLAGS_SKB_MODE`: generic XDP, for devices without native support.
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;

/// `union bpf_attr` is at most this large for the commands used here; unused bytes must be 0.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<RawFd> {
    // SAFETY: `attr` is a zero-initialised, 8-aligned buffer of the size passed; the kernel
    // reads (and for some commands writes) only within it. Pointers stored in it by the callers
    // point to live buffers for the duration of the call.
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), std::mem::size_of::<Attr>())
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as RawFd) }
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Creates an XSKMAP with `entries` slots (one per queue).
pub fn create_xskmap(entries: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, BPF_MAP_TYPE_XSKMAP).u32(4, 4).u32(8, 4).u32(12, entries);
    a.0[28..28 + 9].copy_from_slice(b"xswitch_x");
    bpf(BPF_MAP_CREATE, &mut a).map(owned)
}

/// Puts socket `sock` in slot `queue` of the map.
pub fn xskmap_set(map: &OwnedFd, queue: u32, sock: RawFd) -> io::Result<()> {
    let key = queue;
    let value = sock as u32;
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32)
        .u64(8, &key as *const u32 as u64)
        .u64(16, &value as *const u32 as u64)
        .u64(24, 0);
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(|_| ())
}

/// One BPF instruction.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (src << 4) | (dst & 0x0f);
    b[2..4].copy_from_slice(&off.to_ne_bytes());
    b[4..8].copy_from_slice(&imm.to_ne_bytes());
    b
}

/// Loads `return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);`.
pub fn load_redirect_prog(map: &OwnedFd) -> io::Result<OwnedFd> {
    // Marked `xdp.frags` (BPF_F_XDP_HAS_FRAGS, Linux 5.18): the program only redirects, so it
    // is right for packets of several buffers, and a driver lets such a program run at an MTU
    // larger than a page (veth: up to about 73 000). A kernel that does not know the flag
    // gets the program without it.
    match load(map, BPF_F_XDP_HAS_FRAGS) {
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => load(map, 0),
        r => r,
    }
}

/// The program's `prog_flags` for packets of several buffers.
const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;

fn load(map: &OwnedFd, flags: u32) -> io::Result<OwnedFd> {
    let prog: Vec<[u8; 8]> = vec![
        insn(0x61, 2, 1, 16, 0), // r2 = *(u32 *)(r1 + 16): rx_queue_index
        insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map.as_raw_fd()), // r1 = map (ld_imm64)
        insn(0, 0, 0, 0, 0),
        insn(0xb7, 3, 0, 0, XDP_PASS), // r3 = XDP_PASS: the action when the slot is empty
        insn(0x85, 0, 0, 0, BPF_FUNC_REDIRECT_MAP), // call bpf_redirect_map
        insn(0x95, 0, 0, 0, 0),        // exit
    ];
    let code: Vec<u8> = prog.concat();
    let license = CString::new("GPL").map_err(io::Error::other)?;
    let mut log = vec![0u8; 4096];
    let mut a = Attr::new();
    a.u32(0, BPF_PROG_TYPE_XDP)
        .u32(4, prog.len() as u32)
        .u64(8, code.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .u32(24, 1) // log level
        .u32(28, log.len() as u32)
        .u64(32, log.as_mut_ptr() as u64)
        .u32(44, flags);
    a.0[48..48 + 10].copy_from_slice(b"xswitch_rx");
    a.u32(68, BPF_XDP); // expected_attach_type
    bpf(BPF_PROG_LOAD, &mut a).map(owned).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        io::Error::new(e.kind(), format!("loading the XDP program: {e}; verifier: {}", text.trim()))
    })
}

/// Attaches `prog` to interface `ifindex` through a BPF link; the program stays attached as
/// long as the returned descriptor is open.
pub fn link_xdp(prog: &OwnedFd, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, prog.as_raw_fd() as u32).u32(4, ifindex).u32(8, BPF_XDP).u32(12, flags);
    bpf(BPF_LINK_CREATE, &mut a).map(owned)
}
