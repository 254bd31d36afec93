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
        let log = lab.dir.join(format!("testpmd-{name}.log"));
        let server = if server { ",server=1" } else { "" };
        let child = Command::new("dpdk-testpmd")
            .args(["-l", "0,1", "--no-huge", "-m", "256", "--no-pci", "--file-prefix"])
            .arg(format!("{}{name}", lab.tag))
            .arg("--vdev")
            .arg(format!("net_virtio_user0,path={socket},queues=1{server}"))
            .arg("--vdev")
            .arg(format!("net_af_packet1,iface={iface}"))
            .args(["--", "--total-num-mbufs=8192", "--forward-mode=io"])
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

#[test]
fn a_guest_on_a_vhost_user_port_reaches_its_tenant_and_nobody_else() {
    if !can_run("a_guest_on_a_vhost_user_port") {
        return;
    }
    let _one = one_at_a_time();
    let mut lab = Lab::new();
    let socket = lab.dir.join("vm.sock").display().to_string();
    let iface = vm_host(&mut lab, &socket, "server");
    lab.start();
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
    // The port is a port like any other: its tenant's counters saw it.
    let ports = lab.ctl_json("ports");
    eprintln!("{ports}");
    drop(pmd);
    wait_log(&lab, "vhost-user port vm: connection closed: the frontend disconnected", 1);
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
