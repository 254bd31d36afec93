//! vhost-user ports (issue 21), driven by a virtio driver nobody on the team wrote: DPDK's
//! testpmd with a `net_virtio_user` device on the switch's socket, forwarding (io mode) to an
//! `net_af_packet` device on a veth whose other end is host `vm`'s eth0, with its default
//! offloads. So ping and iperf3 from `vm` cross virtio-user → xswitch → an AF_XDP port → h1.
//! Needs root and `dpdk-testpmd` (scripts/setup installs dpdk-dev); CI runs as root.
// Integration tests live outside `mod tests` by nature; the lint is for unit tests in src/.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A testpmd bridging a virtio-user device on `socket` to the veth end `iface`; killed when
/// dropped.
struct Testpmd {
    child: Child,
    log: PathBuf,
}

impl Testpmd {
    /// Starts testpmd; `server`: it creates the socket (the switch's port is in client mode).
    fn start(lab: &Lab, name: &str, socket: &str, iface: &str, server: bool) -> Testpmd {
        Testpmd::with_queues(lab, name, socket, iface, server, 1)
    }

    /// As [`Testpmd::start`], with `queues` queue pairs on both devices (the af_packet
    /// device spreads the veth's flows over its queues by hash, and io forwarding takes each
    /// queue to the same queue of the virtio-user device).
    fn with_queues(
        lab: &Lab,
        name: &str,
        socket: &str,
        iface: &str,
        server: bool,
        queues: u32,
    ) -> Testpmd {
        let log = lab.dir.join(format!("testpmd-{name}.log"));
        let server = if server { ",server=1" } else { "" };
        let child = Command::new("dpdk-testpmd")
            .args(["-l", "0,1", "--no-huge", "-m", "256", "--no-pci", "--file-prefix"])
            .arg(format!("{}{name}", lab.tag))
            .arg("--vdev")
            .arg(format!("net_virtio_user0,path={socket},queues={queues}{server}"))
            .arg("--vdev")
            .arg(format!("net_af_packet1,iface={iface},qpairs={queues}"))
            .args(["--", "--total-num-mbufs=8192", "--forward-mode=io"])
            .arg(format!("--rxq={queues}"))
            .arg(format!("--txq={queues}"))
            // Without -i it forwards until its standard input ends: kept open, it runs.
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("dpdk-testpmd (scripts/setup installs dpdk-dev)");
        Testpmd { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Adds host `vm` (10.9.1.4, default offloads) whose veth's other end stays in the root
/// namespace for testpmd's af_packet device, and port `vm` of tenant red on `socket` in
/// `mode`. Returns the af_packet interface.
fn vm_host(lab: &mut Lab, socket: &str, mode: &str) -> String {
    lab.host("vm", "4");
    let iface = lab.ifname("vm");
    // The root end is testpmd's wire, not a host: its own IPv6 chatter would be the VM's.
    let off = format!("net.ipv6.conf.{iface}.disable_ipv6=1");
    must("sysctl", &["-qw", &off]);
    // testpmd's af_packet device takes frames of at most one mbuf (2 KiB) and no GSO
    // metadata, so the guest's stack segments itself (as a guest does when the port offers no
    // TSO). Checksum offload stays on: its partial checksums reach the switch as they left.
    must(
        "ip",
        &["netns", "exec", &lab.ns_name("vm"), "ethtool", "-K", "eth0", "tso", "off", "gso", "off"],
    );
    lab.edit_config(|c| {
        c.replace("{ port = \"h2\" }]", "{ port = \"h2\" }, { port = \"vm\" }]")
            + &format!(
                "[ports.vm]\nkind = \"tenant\"\nvhost_user = {{ socket = \"{socket}\", mode = \
                 \"{mode}\" }}\n"
            )
    });
    iface
}

/// Waits until the switch's log has said `what` `n` times (bounded).
fn wait_log(lab: &Lab, what: &str, n: usize) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(lab.log()).unwrap_or_default();
        if log.matches(what).count() >= n {
            return;
        }
        assert!(Instant::now() < end, "the switch did not say {what:?} {n} times:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pings `to` from `from` until one answer comes (bounded): the path is up.
fn reaches(lab: &Lab, from: &str, to: &str) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if lab.ping(from, to, "1") {
            return true;
        }
    }
    false
}

/// A lab with host `vm` behind a vhost-user port in server mode, the switch started: the lab,
/// the port's socket and testpmd's af_packet interface.
fn server_lab() -> (Lab, String, String) {
    let mut lab = Lab::new();
    let socket = lab.dir.join("vm.sock").display().to_string();
    let iface = vm_host(&mut lab, &socket, "server");
    lab.start();
    (lab, socket, iface)
}

/// `count` pings from h1 to h2, 20 a second, in the background: what the other tenants'
/// traffic must not lose meanwhile.
fn pings_h1_h2(lab: &Lab, count: &str) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &lab.ns_name("h1"), "ping", "-c", count, "-i", "0.05"])
        .args(["-W", "1", "10.9.1.2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `pings` and checks that every one of `count` came back.
fn none_lost(pings: Child, count: &str) {
    let out = pings.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{count} received")), "h1 → h2 lost pings meanwhile:\n{text}");
}

#[test]
fn a_guest_on_a_vhost_user_port_reaches_its_tenant_and_nobody_else() {
    if !can_run("a_guest_on_a_vhost_user_port") {
        return;
    }
    let _one = one_at_a_time();
    let (mut lab, socket, iface) = server_lab();
    assert!(std::path::Path::new(&socket).exists(), "the switch created {socket}");
    let pmd = Testpmd::start(&lab, "vm", &socket, &iface, false);
    wait_log(&lab, "vhost-user port vm: rings running", 1);
    // Both ways, the first pings learning the MACs.
    assert!(reaches(&lab, "h1", "10.9.1.4"), "h1 reaches the guest\n{}", pmd.log());
    assert!(lab.ping("vm", "10.9.1.1", "5"), "the guest reaches h1");
    assert!(lab.ping("h2", "10.9.1.4", "3"), "h2 reaches the guest");
    // TCP both ways, with the default offloads of every host: the guest's partial checksums
    // arrive through testpmd as they left the veth.
    let up = lab.iperf("vm", "h1", "10.9.1.1", "5201", "1");
    let down = lab.iperf("h1", "vm", "10.9.1.4", "5202", "1");
    eprintln!("TCP guest → h1 {:.0} Mbit/s, h1 → guest {:.0} Mbit/s", up / 1e6, down / 1e6);
    assert!(up > 20e6 && down > 20e6, "TCP through the vhost-user port: {up} and {down} bit/s");
    // Isolation, both ways: blue's h3 (same subnet) never reaches red's guest.
    assert!(!lab.ping("h3", "10.9.1.4", "3"), "blue's h3 reached red's guest");
    assert!(!lab.ping("vm", "10.9.1.3", "3"), "red's guest reached blue's h3");
    // Up while the guest's rings run, down once it is gone.
    wait_log(&lab, "port vm: up: a guest's rings run", 1);
    drop(pmd);
    wait_log(&lab, "vhost-user port vm: connection closed: the frontend disconnected", 1);
    wait_log(&lab, "port vm: down: no guest", 1);
    let (ok, log) = lab.stop();
    assert!(ok, "{log}");
    assert!(log.contains("balanced"), "{log}");
    assert!(!std::path::Path::new(&socket).exists(), "the switch left {socket} behind");
}

#[test]
fn a_client_mode_port_reconnects_after_the_guest_and_after_the_switch_restart() {
    if !can_run("a_client_mode_port_reconnects") {
        return;
    }
    let _one = one_at_a_time();
    let mut lab = Lab::new();
    let socket = lab.dir.join("vm.sock").display().to_string();
    let iface = vm_host(&mut lab, &socket, "client");
    // The guest first: testpmd creates the socket and waits for a backend.
    let pmd = Testpmd::start(&lab, "vm1", &socket, &iface, true);
    lab.start();
    wait_log(&lab, "vhost-user port vm: rings running", 1);
    assert!(reaches(&lab, "h1", "10.9.1.4"), "h1 reaches the guest");
    // The guest restarts: the switch connects again by itself.
    drop(pmd);
    wait_log(&lab, "vhost-user port vm: connection closed", 1);
    // Killed, it left its socket behind, which a new testpmd does not bind over (QEMU does).
    let _ = std::fs::remove_file(&socket);
    let pmd = Testpmd::start(&lab, "vm2", &socket, &iface, true);
    wait_log(&lab, "vhost-user port vm: rings running", 2);
    assert!(reaches(&lab, "h1", "10.9.1.4"), "h1 reaches the restarted guest");
    // The switch restarts: it connects to the guest that kept running.
    let (ok, log) = lab.stop();
    assert!(ok && log.contains("balanced"), "{log}");
    lab.start();
    wait_log(&lab, "vhost-user port vm: rings running", 1);
    assert!(reaches(&lab, "vm", "10.9.1.1"), "the guest reaches h1 after the switch restarted");
    let (ok, log) = lab.stop();
    assert!(ok && log.contains("balanced"), "{log}");
    drop(pmd);
}

/// A frontend nobody should write: it sets up the two rings of queue pair 0 in a file of
/// 1 MiB it shares as guest memory (guest address 0), then breaks the ring protocol in the
/// way it is told. Written with rust-vmm's vhost frontend, over the same protocol as QEMU.
mod hostile {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;

    use vhost::vhost_user::Frontend;
    use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
    use vmm_sys_util::eventfd::EventFd;

    const MEM: u64 = 1 << 20;
    /// The frontend's own (pretend) address of guest address 0.
    const UADDR: u64 = 0x7f00_0000_0000;
    const QSIZE: u16 = 16;
    /// Per vring: descriptor table, available ring, used ring.
    const RINGS: [(u64, u64, u64); 2] = [(0x0, 0x1000, 0x2000), (0x3000, 0x4000, 0x5000)];
    const VIRTQ_DESC_F_NEXT: u16 = 1;

    /// What the guest does wrong.
    pub enum Wrong {
        /// A transmit descriptor far outside its memory.
        OutOfMemory,
        /// Two transmit descriptors chained to each other.
        Loop,
        /// An available index 1 000 ahead on a ring of 16.
        Index,
        /// Its memory file truncated to nothing once shared (the switch's mapping of it then
        /// raises SIGBUS at the next access).
        Shrink,
    }

    /// One descriptor's 16 bytes.
    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        d
    }

    /// Connects to `socket`, starts both rings, then does `wrong` on the transmit ring and
    /// kicks. Returns what must stay alive until the switch has looked.
    pub fn guest(socket: &str, dir: &std::path::Path, wrong: Wrong) -> impl Drop {
        let path = dir.join("guest-memory");
        let mem = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        mem.set_len(MEM).unwrap();
        let f = Frontend::connect(socket, 2).expect("connect to the switch's socket");
        f.set_owner().unwrap();
        let offered = f.get_features().unwrap();
        // VERSION_1 only: no protocol features, so a kick enables its ring.
        assert!(offered & (1 << 32) != 0, "VERSION_1 offered: {offered:#x}");
        f.set_features(1 << 32).unwrap();
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM,
            userspace_addr: UADDR,
            mmap_offset: 0,
            mmap_handle: mem.as_raw_fd(),
        };
        f.set_mem_table(&[region]).unwrap();
        let mut fds = Vec::new();
        for (q, (d, a, u)) in RINGS.iter().enumerate() {
            f.set_vring_num(q, QSIZE).unwrap();
            let cfg = VringConfigData {
                queue_max_size: QSIZE,
                queue_size: QSIZE,
                flags: 0,
                desc_table_addr: UADDR + d,
                used_ring_addr: UADDR + u,
                avail_ring_addr: UADDR + a,
                log_addr: None,
            };
            f.set_vring_addr(q, &cfg).unwrap();
            f.set_vring_base(q, 0).unwrap();
            let (call, kick) = (EventFd::new(0).unwrap(), EventFd::new(0).unwrap());
            f.set_vring_call(q, &call).unwrap();
            f.set_vring_kick(q, &kick).unwrap();
            fds.push((call, kick));
        }
        let (d, a, _) = RINGS[1];
        let avail_idx = match wrong {
            Wrong::OutOfMemory => {
                mem.write_at(&desc(0x4000_0000, 64, 0, 0), d).unwrap();
                1u16
            }
            Wrong::Loop => {
                mem.write_at(&desc(0x10000, 64, VIRTQ_DESC_F_NEXT, 1), d).unwrap();
                mem.write_at(&desc(0x10100, 64, VIRTQ_DESC_F_NEXT, 0), d + 16).unwrap();
                1
            }
            Wrong::Index => 1000,
            Wrong::Shrink => {
                // Once the rings run (the switch polls them), the file goes.
                std::thread::sleep(std::time::Duration::from_millis(300));
                mem.set_len(0).unwrap();
                fds[1].1.write(1).unwrap();
                let _ = std::fs::remove_file(&path);
                return Alive(f, mem, fds);
            }
        };
        // ring[0] = descriptor 0, then the index.
        mem.write_at(&0u16.to_le_bytes(), a + 4).unwrap();
        mem.write_at(&avail_idx.to_le_bytes(), a + 2).unwrap();
        fds[1].1.write(1).unwrap();
        let _ = std::fs::remove_file(&path);
        Alive(f, mem, fds)
    }

    /// The frontend, its memory and eventfds, kept until dropped.
    #[allow(dead_code)] // held, never read
    struct Alive(Frontend, std::fs::File, Vec<(EventFd, EventFd)>);

    impl Drop for Alive {
        fn drop(&mut self) {}
    }

    /// Connects and sends a message the protocol does not have (request 9999).
    pub fn bad_message(socket: &str) {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
        let mut m = Vec::new();
        m.extend_from_slice(&9999u32.to_le_bytes());
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes());
        s.write_all(&m).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

#[test]
fn a_guest_that_breaks_the_ring_protocol_downs_only_its_port() {
    if !can_run("a_guest_that_breaks_the_ring_protocol") {
        return;
    }
    let _one = one_at_a_time();
    let (mut lab, socket, iface) = server_lab();
    let pings = pings_h1_h2(&lab, "200");
    let cases = [
        (hostile::Wrong::OutOfMemory, "descriptor outside guest memory"),
        (hostile::Wrong::Loop, "descriptor chain loops or is cut"),
        (hostile::Wrong::Index, "ring index beyond the ring"),
        (hostile::Wrong::Shrink, "memory region beyond the end of its file"),
    ];
    for (n, (wrong, why)) in cases.into_iter().enumerate() {
        let alive = hostile::guest(&socket, &lab.dir, wrong);
        wait_log(&lab, &format!("the guest broke the ring protocol ({why})"), 1);
        wait_log(&lab, "vhost-user port vm: connection closed: guest fault", n + 1);
        drop(alive);
    }
    hostile::bad_message(&socket);
    wait_log(&lab, "vhost-user port vm: connection closed: protocol error", 1);
    // The port took a well-behaved guest again.
    let pmd = Testpmd::start(&lab, "vm", &socket, &iface, false);
    wait_log(&lab, "vhost-user port vm: rings running", 5);
    assert!(reaches(&lab, "h1", "10.9.1.4"), "h1 reaches the guest after the hostile ones");
    none_lost(pings, "200");
    drop(pmd);
    let (ok, log) = lab.stop();
    for l in log.lines().filter(|l| l.contains("vhost-user port vm")) {
        eprintln!("{l}");
    }
    assert!(ok && log.contains("balanced"), "{log}");
    assert!(log.contains("0 dropped too big for the guest's buffers"), "{log}");
    let counted = "vhost-user port vm: 6 connections, 4 guest faults, 1 protocol errors";
    assert!(log.contains(counted), "{log}");
    assert!(!log.contains("did not stop the rings"), "{log}");
}

#[test]
fn a_vhost_user_port_comes_and_goes_with_a_reload_while_others_switch() {
    if !can_run("a_vhost_user_port_comes_and_goes") {
        return;
    }
    let _one = one_at_a_time();
    let mut lab = Lab::new();
    let socket = lab.dir.join("vm.sock").display().to_string();
    let before = std::fs::read_to_string(lab.config()).unwrap();
    let iface = vm_host(&mut lab, &socket, "server");
    let with_vm = std::fs::read_to_string(lab.config()).unwrap();
    std::fs::write(lab.config(), &before).unwrap();
    lab.start();
    let pings = pings_h1_h2(&lab, "100");
    std::fs::write(lab.config(), &with_vm).unwrap();
    let (ok, out, err) = lab.ctl(true, &["reload"]);
    assert!(ok, "reload adding the port: {out}{err}");
    assert!(std::path::Path::new(&socket).exists(), "the reload created {socket}");
    let pmd = Testpmd::start(&lab, "vm", &socket, &iface, false);
    wait_log(&lab, "vhost-user port vm: rings running", 1);
    assert!(reaches(&lab, "h1", "10.9.1.4"), "h1 reaches the guest added live");
    std::fs::write(lab.config(), &before).unwrap();
    let (ok, out, err) = lab.ctl(true, &["reload"]);
    assert!(ok, "reload removing the port: {out}{err}");
    wait_log(&lab, "port vm removed (vhost-user", 1);
    assert!(!std::path::Path::new(&socket).exists(), "the removed port left {socket}");
    assert!(!lab.ping("h1", "10.9.1.4", "2"), "the guest is still reachable after its removal");
    none_lost(pings, "100");
    drop(pmd);
    let (ok, log) = lab.stop();
    assert!(ok && log.contains("balanced"), "{log}");
}

#[test]
fn a_guest_with_two_queue_pairs_sends_on_both_and_is_reached() {
    if !can_run("a_guest_with_two_queue_pairs") {
        return;
    }
    let _one = one_at_a_time();
    let mut lab = Lab::new();
    let socket = lab.dir.join("vm.sock").display().to_string();
    let iface = vm_host(&mut lab, &socket, "server");
    lab.edit_config(|c| c.replace("vhost_user = {", "queues = 2\nvhost_user = {"));
    lab.start();
    let pmd = Testpmd::with_queues(&lab, "vm", &socket, &iface, false, 2);
    wait_log(&lab, "vhost-user port vm: rings running on queue pair 1", 1);
    wait_log(&lab, "vhost-user port vm: rings running on queue pair 0", 1);
    assert!(reaches(&lab, "h1", "10.9.1.4"), "h1 reaches the guest\n{}", pmd.log());
    // 64 UDP flows from the guest (64 source ports): testpmd's af_packet device hashes them
    // over its two queues, and io forwarding sends each queue's on the same virtio queue, so
    // both of the port's queue pairs take packets (all on one: a chance of 2 in 2^64).
    let send = "import socket\nfor p in range(40000, 40064):\n    s = socket.socket(socket.AF_INET, \
                socket.SOCK_DGRAM)\n    s.bind(('10.9.1.4', p))\n    for _ in range(5): \
                s.sendto(b'x' * 64, ('10.9.1.1', 9))\n    s.close()\n";
    must("ip", &["netns", "exec", &lab.ns_name("vm"), "python3", "-c", send]);
    // TCP both ways through the two queue pairs.
    let up = lab.iperf("vm", "h1", "10.9.1.1", "5201", "4");
    let down = lab.iperf("h1", "vm", "10.9.1.4", "5202", "4");
    eprintln!("TCP guest → h1 {:.0} Mbit/s, h1 → guest {:.0} Mbit/s", up / 1e6, down / 1e6);
    assert!(up > 20e6 && down > 20e6, "TCP through two queue pairs: {up} and {down} bit/s");
    drop(pmd);
    wait_log(&lab, "vhost-user port vm: connection closed", 1);
    let (ok, log) = lab.stop();
    assert!(ok && log.contains("balanced"), "{log}");
    for q in 0..2 {
        let at = format!("vhost-user vm queue {q}: ");
        let line = log.lines().find(|l| l.contains(&at)).unwrap_or_else(|| panic!("{at}\n{log}"));
        let from_guest: u64 = line
            .split(&at)
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        eprintln!("{}", line.trim());
        assert!(from_guest >= 5, "queue pair {q} took {from_guest} packets from the guest: {line}");
    }
}
