//! vhost-user ports with real VMs (issue 21): QEMU boots Debian's own kernel
//! (scripts/guest-image unpacks it, with busybox-static and iperf3 in an initramfs), whose
//! virtio-net driver negotiates checksum offload and TSO with the switch; guest memory is a
//! shared memfd, as libvirt gives it. TCP from a guest leaves it in segments of up to 64 KiB
//! that the switch cuts into MTU-sized ones, for the other guest and for a namespace's veth.
//! Needs root and `qemu-system-x86_64` (scripts/setup installs qemu-system-x86);
//! CI runs as root.
// Integration tests live outside `mod tests` by nature; the lint is for unit tests in src/.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A QEMU guest on a vhost-user socket; killed when dropped.
struct Vm {
    child: Child,
    console: PathBuf,
    /// QEMU's own messages.
    stderr: PathBuf,
}

impl Vm {
    /// Boots a guest with `ip` on eth0 (MAC `mac`), connected to the switch's `socket`; with
    /// `client`, it runs `iperf3 -c client` for `secs` once up. `dev` adds virtio-net-pci
    /// options (offloads turned off, say).
    fn start(
        lab: &Lab,
        name: &str,
        socket: &str,
        mac: &str,
        ip: &str,
        client: Option<(&str, u32)>,
        dev: &str,
    ) -> Vm {
        Vm::with_queues(lab, name, socket, mac, ip, client, dev, 1)
    }

    /// As [`Vm::start`], with `queues` queue pairs on the device (`mq=on`) and as many vCPUs
    /// (Linux's virtio-net enables one pair per CPU).
    #[allow(clippy::too_many_arguments)]
    fn with_queues(
        lab: &Lab,
        name: &str,
        socket: &str,
        mac: &str,
        ip: &str,
        client: Option<(&str, u32)>,
        dev: &str,
        queues: u32,
    ) -> Vm {
        let guest = guest_image();
        let mq = if queues > 1 { ",mq=on" } else { "" };
        let console = lab.dir.join(format!("console-{name}.log"));
        let stderr = lab.dir.join(format!("qemu-{name}.log"));
        let mut append = format!("console=ttyS0 quiet panic=-1 xs.ip={ip}");
        if let Some((to, secs)) = client {
            append += &format!(" xs.client={to} xs.time={secs}");
        }
        let child = Command::new("qemu-system-x86_64")
            .args(accel())
            .args(["-machine", "q35", "-smp", &queues.to_string(), "-m", "256"])
            .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(guest.join("vmlinuz"))
            .arg("-initrd")
            .arg(guest.join("initrd.gz"))
            .args(["-append", &append])
            .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
            .args(["-numa", "node,memdev=mem"])
            .args(["-chardev", &format!("socket,id=c0,path={socket}")])
            .args(["-netdev", &format!("vhost-user,id=n0,chardev=c0,queues={queues}")])
            // vectors=0: no MSI-X. Under TCG, QEMU 7.2 crashes (SIGSEGV in
            // msix_set_vector_notifiers) as it starts a vhost-user device with MSI-X vectors.
            .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac},vectors=0{dev}{mq}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("qemu-system-x86_64 (scripts/setup installs qemu-system-x86)");
        Vm { child, console, stderr }
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Waits until the console says `what` (bounded by `secs`); the console so far.
    fn wait(&mut self, what: &str, secs: u64) -> String {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let c = self.console();
            if c.contains(what) {
                return c;
            }
            let gone = self.child.try_wait().ok().flatten();
            assert!(
                gone.is_none() && Instant::now() < end,
                "the guest did not say {what:?} ({gone:?}):\n{c}\nQEMU: {}",
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// QEMU's accelerator: `XSWITCH_VM_ACCEL=kvm` for KVM; by default TCG (software emulation),
/// because this machine's /dev/kvm, although it opens, gives guests a CPU without SSE3 on
/// which Debian's kernel hangs right after it decompresses itself (see docs/VM-PORTS.md).
fn accel() -> [&'static str; 4] {
    match std::env::var("XSWITCH_VM_ACCEL").as_deref() {
        Ok("kvm") => ["-accel", "kvm", "-cpu", "host,-arch-capabilities"],
        _ => ["-accel", "tcg", "-cpu", "qemu64"],
    }
}

/// The guest's kernel and initramfs, built by scripts/guest-image if missing.
fn guest_image() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = root.join("target/guest");
    let out = Command::new(root.join("scripts/guest-image"))
        .env("GUEST_DIR", &dir)
        .output()
        .expect("scripts/guest-image");
    assert!(out.status.success(), "scripts/guest-image: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

/// The received rate of an iperf3 run (its text output: the "receiver" line), bit/s.
fn receiver_rate(text: &str) -> f64 {
    text.lines()
        .find(|l| l.contains("receiver"))
        .and_then(|l| l.split("Mbits/sec").next())
        .and_then(|l| l.split_whitespace().last())
        .and_then(|m| m.parse::<f64>().ok())
        .map_or(0.0, |m| m * 1e6)
}

/// Red's ports vm1 and vm2 (vhost-user, server mode) in the lab's config; their sockets.
fn two_vm_ports(lab: &Lab) -> (String, String) {
    let s1 = lab.dir.join("vm1.sock").display().to_string();
    let s2 = lab.dir.join("vm2.sock").display().to_string();
    lab.edit_config(|c| {
        let mut c = c.replace(
            "{ port = \"h2\" }]",
            "{ port = \"h2\" }, { port = \"vm1\" }, { port = \"vm2\" }]",
        );
        for (p, s) in [("vm1", &s1), ("vm2", &s2)] {
            c += &format!(
                "[ports.{p}]\nkind = \"tenant\"\nvhost_user = {{ socket = \"{s}\", mode = \"server\" }}\n"
            );
        }
        c
    });
    (s1, s2)
}

/// The count before `what` in the stop summary's line of port `port` (a vhost-user port's
/// counters).
fn port_stat(log: &str, port: &str, what: &str) -> u64 {
    log.lines()
        .find(|l| l.contains(&format!("vhost-user {port} queue 0: ")))
        .and_then(|l| l.split(what).next())
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {what:?} for {port} in the summary:\n{log}"))
}

#[test]
fn tcp_between_two_vms_and_a_namespace_with_tso_through_vhost_user_ports() {
    if !can_run("tcp_between_two_vms") {
        return;
    }
    let _one = one_at_a_time();
    let mut lab = Lab::new();
    let (s1, s2) = two_vm_ports(&lab);
    lab.start();
    let mut vm1 = Vm::start(&lab, "vm1", &s1, "52:54:00:00:01:11", "10.9.1.11/24", None, "");
    vm1.wait("xs: ready", 60);
    // The second guest sends to the first with TSO as soon as it is up.
    let mut vm2 = Vm::start(
        &lab,
        "vm2",
        &s2,
        "52:54:00:00:01:12",
        "10.9.1.12/24",
        Some(("10.9.1.11", 4)),
        "",
    );
    let out = vm2.wait("xs: done", 90);
    let vm_vm = receiver_rate(&out);
    // A namespace's veth (default offloads) and a guest, both ways.
    assert!(lab.ping("h1", "10.9.1.11", "3"), "h1 reaches vm1\n{}", vm1.console());
    let run = |reverse: bool| {
        let mut args = vec!["timeout", "30", "iperf3", "-c", "10.9.1.11", "-t", "3", "-f", "m"];
        if reverse {
            args.push("-R");
        }
        // The guest's iperf3 server (under TCG, slow) may still be closing the last test
        // and answer "busy": a few tries, a second apart.
        let mut tries = Vec::new();
        for _ in 0..4 {
            let o = lab.ns_run("h1", &args);
            let text = String::from_utf8_lossy(&o.stdout).to_string();
            if o.status.success() {
                return receiver_rate(&text);
            }
            tries.push(format!("{text}{}", String::from_utf8_lossy(&o.stderr)));
            std::thread::sleep(Duration::from_secs(1));
        }
        panic!("iperf3 h1 → vm1 (reverse {reverse}):\n{}\n{}", tries.join("\n--\n"), vm1.console());
    };
    let vm_ns = run(true);
    let ns_vm = run(false);
    eprintln!(
        "TCP vm2 → vm1 {:.0} Mbit/s, vm1 → h1 {:.0} Mbit/s, h1 → vm1 {:.0} Mbit/s",
        vm_vm / 1e6,
        vm_ns / 1e6,
        ns_vm / 1e6
    );
    assert!(vm_vm > 50e6, "TCP between the guests: {vm_vm} bit/s\n{out}");
    assert!(vm_ns > 50e6 && ns_vm > 50e6, "TCP guest ↔ namespace: {vm_ns} and {ns_vm} bit/s");
    // Isolation: blue's h3, on the same subnet, reaches neither guest.
    assert!(!lab.ping("h3", "10.9.1.11", "2"), "blue's h3 reached red's guest");
    drop(vm2);
    drop(vm1);
    let (ok, log) = lab.stop();
    assert!(ok && log.contains("balanced"), "{log}");
    // The guests sent large segments (HOST_TSO negotiated), which crossed the switch whole:
    // vm2's reached vm1 whole (GUEST_TSO negotiated), vm1's were cut on their way out to h1
    // (iperf3 above carried them, so every segment was right).
    for vm in ["vm1", "vm2"] {
        let whole = port_stat(&log, vm, "taken whole");
        let bad = port_stat(&log, vm, "dropped as not doable");
        assert!(whole > 100, "{vm} sent {whole} large segments: TSO was not used\n{log}");
        assert_eq!(bad, 0, "{log}");
    }
    let written = port_stat(&log, "vm1", "written whole");
    assert!(written > 100, "vm1 took {written} large segments whole\n{log}");
    assert_eq!(port_stat(&log, "vm1", "cut for the guest"), 0, "{log}");
}

#[test]
fn a_guest_with_two_queue_pairs_negotiates_both_and_switches() {
    if !can_run("a_guest_with_two_queue_pairs") {
        return;
    }
    let _one = one_at_a_time();
    let mut lab = Lab::new();
    let (s1, _) = two_vm_ports(&lab);
    lab.edit_config(|c| {
        c.replacen(
            "[ports.vm1]\nkind = \"tenant\"\n",
            "[ports.vm1]\nkind = \"tenant\"\nqueues = 2\n",
            1,
        )
    });
    lab.start();
    let mut vm1 =
        Vm::with_queues(&lab, "vm1", &s1, "52:54:00:00:01:11", "10.9.1.11/24", None, "", 2);
    vm1.wait("xs: ready", 90);
    // QEMU asked how many pairs there are (GET_QUEUE_NUM), and the guest's driver, with a CPU
    // for each, enabled both.
    let end = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(lab.log())
        .unwrap_or_default()
        .contains("vm1: rings running on queue pair 1")
    {
        assert!(
            Instant::now() < end,
            "queue pair 1 never ran:\n{}",
            std::fs::read_to_string(lab.log()).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(lab.ping("h1", "10.9.1.11", "3"), "h1 reaches vm1\n{}", vm1.console());
    let o = lab.ns_run(
        "h1",
        &["timeout", "30", "iperf3", "-c", "10.9.1.11", "-t", "3", "-P", "4", "-f", "m"],
    );
    let rate = receiver_rate(&String::from_utf8_lossy(&o.stdout));
    eprintln!("TCP h1 → vm1 (two queue pairs) {:.0} Mbit/s", rate / 1e6);
    assert!(rate > 50e6, "TCP h1 → vm1 over two queue pairs: {rate} bit/s\n{}", vm1.console());
    drop(vm1);
    let (ok, log) = lab.stop();
    assert!(ok && log.contains("balanced"), "{log}");
    let taken: u64 = (0..2)
        .map(|q| {
            log.lines()
                .find(|l| l.contains(&format!("vhost-user vm1 queue {q}: ")))
                .unwrap_or_else(|| panic!("no line of queue pair {q}:\n{log}"))
        })
        .map(|l| {
            eprintln!("{}", l.trim());
            l.split(" queue ")
                .nth(1)
                .and_then(|r| r.split(' ').nth(1))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert!(taken > 1000, "the guest's packets over both pairs: {taken}\n{log}");
}
