//! Least privilege (issue 24): the capabilities the running switch keeps, its workers'
//! seccomp filter, and what a forbidden call does.
//! Network namespaces and veth pairs built per test (unique names, torn down even when a
//! test fails), `xswitch run` on the host ends. Needs root; CI runs as root.
// Integration tests live outside `mod tests` by nature; the lint is for unit tests in src/.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::*;

/// `CAP_NET_ADMIN` (12), `CAP_NET_RAW` (13), `CAP_IPC_LOCK` (14), `CAP_BPF` (39).
const KEPT: u64 = 1 << 12 | 1 << 13 | 1 << 14 | 1 << 39;

/// A field of a `/proc/.../status` file.
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
        .to_string()
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap()
}

/// The worker threads of process `pid`: (name, status).
fn workers(pid: u32) -> Vec<(String, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?.path();
            let comm = std::fs::read_to_string(t.join("comm")).ok()?.trim().to_string();
            let status = std::fs::read_to_string(t.join("status")).ok()?;
            comm.starts_with("xswitch-w").then_some((comm, status))
        })
        .collect()
}

/// The process keeps only `CAP_NET_ADMIN`, `CAP_NET_RAW`, `CAP_IPC_LOCK` and `CAP_BPF`
/// (effective, permitted and bounding), every worker thread has no capability and runs under
/// its seccomp filter (`Seccomp: 2`), and everything still works: ping, iperf3 (the hosts keep
/// their offloads), a reload that adds a port, a capture, an interface that vanishes and
/// returns (its port reopened).
#[test]
fn the_running_switch_keeps_four_capabilities_and_its_workers_none_under_seccomp() {
    if !can_run("the_running_switch_keeps_four_capabilities") {
        return;
    }
    let mut lab = Lab::new();
    lab.edit_config(|c| c.replace("[switch]\n", "[switch]\nworkers = 2\n"));
    lab.start();
    let pid = lab.switch.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for f in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(hex(&status_field(&status, f)), KEPT, "{f}:\n{status}");
    }
    assert_eq!(hex(&status_field(&status, "CapInh")), 0, "{status}");
    let ws = workers(pid);
    assert_eq!(ws.len(), 2, "{ws:?}");
    for (name, st) in &ws {
        assert_eq!(status_field(st, "Seccomp"), "2", "{name}:\n{st}");
        assert_eq!(hex(&status_field(st, "CapEff")), 0, "{name}:\n{st}");
        assert_eq!(hex(&status_field(st, "CapPrm")), 0, "{name}:\n{st}");
        assert_eq!(status_field(st, "NoNewPrivs"), "1", "{name}:\n{st}");
    }
    assert!(lab.ping("h1", "10.9.1.2", "2"));
    let bps = lab.iperf("h1", "h2", "10.9.1.2", "5311", "1");
    assert!(bps > 10e6, "iperf3: {bps} bit/s");
    // A reload that adds a port (a socket opened, a program loaded and attached).
    lab.red_host("h4", "4");
    let (ok, out, err) = lab.ctl(false, &["reload"]);
    assert!(ok, "{out}{err}");
    assert!(lab.ping("h1", "10.9.1.4", "3"), "h1 -> the added h4");
    // A capture.
    let file = lab.dir.join("cap.pcap").display().to_string();
    let (ok, _, err) = lab.ctl(false, &["capture", "start", "red", "-w", &file]);
    assert!(ok, "{err}");
    assert!(lab.ping("h1", "10.9.1.2", "2"));
    let (ok, _, err) = lab.ctl(false, &["capture", "stop"]);
    assert!(ok, "{err}");
    let captured = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    assert!(captured > 24 + 4 * 16, "capture of {captured} bytes");
    // Hotplug: h2's interface vanishes and returns; its port is reopened.
    let h2 = lab.ifname("h2");
    let h2_mac = lab.mac("h2");
    must("ip", &["link", "del", &h2]);
    std::thread::sleep(Duration::from_millis(1500));
    lab.recreate_host_if("h2", "2", &h2_mac);
    let back = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(200));
        lab.ping("h1", "10.9.1.2", "1")
    });
    // Still confined after all that.
    let ws = workers(pid);
    let (ok, log) = lab.stop();
    assert!(back, "no traffic to h2 after its interface returned:\n{log}");
    assert!(ws.iter().all(|(_, st)| status_field(st, "Seccomp") == "2"), "{ws:?}");
    assert!(ok && log.contains("balanced") && log.contains("is back"), "{log}");
}

/// A worker that makes a call its filter does not allow (a test-only hook: `getppid`, call 110
/// on x86-64) kills the process at once with SIGSYS, and the kernel's audit line names the
/// call and the worker.
#[test]
fn a_forbidden_call_in_a_worker_kills_the_switch_and_the_kernel_names_it() {
    if !can_run("a_forbidden_call_in_a_worker_kills_the_switch") {
        return;
    }
    let mut lab = Lab::new();
    lab.env.push(("XSWITCH_TEST_FORBIDDEN_CALL".into(), "1".into()));
    let (st, log, pid) = lab.start_and_fail_pid();
    assert_eq!(st.signal(), Some(libc_sigsys()), "{st:?}\n{log}");
    assert!(log.contains("forbidden call (test hook)"), "{log}");
    // The audit line of this very process (by its pid: a line count taken before the start
    // says nothing once the kernel's ring buffer is full and old lines roll out).
    let mine = format!(" pid={pid} ");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (audit, tail) = loop {
        let dmesg = run("dmesg", &[]);
        let text = String::from_utf8_lossy(&dmesg.stdout).into_owned();
        let audit =
            text.lines().find(|l| l.contains("type=1326") && l.contains(&mine)).map(str::to_string);
        if audit.is_some() || std::time::Instant::now() > deadline {
            let tail: Vec<String> = text.lines().rev().take(20).map(str::to_string).collect();
            break (audit, tail);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let audit = audit.unwrap_or_else(|| panic!("no audit line for pid {pid} in dmesg:\n{tail:?}"));
    assert!(audit.contains("comm=\"xswitch-w0\"") && audit.contains("syscall=110"), "{audit}");
}

/// SIGSYS.
fn libc_sigsys() -> i32 {
    31
}

/// `switch.user = "nobody"`: the switch runs as that user once set up, with the same four
/// capabilities, and still switches, answers root's `ctl` (its socket, mode 0600, is the
/// user's) and adds a port on a reload.
#[test]
fn switch_user_runs_the_switch_as_nobody_with_the_four_capabilities() {
    if !can_run("switch_user_runs_the_switch_as_nobody") {
        return;
    }
    let mut lab = Lab::new();
    lab.edit_config(|c| c.replace("[switch]\n", "[switch]\nuser = \"nobody\"\n"));
    // The control socket's directory must be the user's to create the socket in.
    must("chmod", &["0777", lab.dir.to_str().unwrap()]);
    lab.start();
    let pid = lab.switch.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status_field(&status, "Uid").starts_with("65534"), "{status}");
    assert_eq!(hex(&status_field(&status, "CapEff")), KEPT, "{status}");
    assert_eq!(hex(&status_field(&status, "CapAmb")), KEPT, "{status}");
    assert!(lab.ping("h1", "10.9.1.2", "2"));
    lab.red_host("h4", "4");
    let (ok, out, err) = lab.ctl(false, &["reload"]);
    assert!(ok, "{out}{err}");
    assert!(lab.ping("h1", "10.9.1.4", "3"), "h1 -> the added h4");
    // An upgrade: the new process, started by nobody, has the four capabilities (ambient).
    let copy = lab.dir.join("xswitch-up");
    std::fs::copy(env!("CARGO_BIN_EXE_xswitch"), &copy).unwrap();
    let (ok, out, err) = lab.ctl(false, &["upgrade", "--binary", copy.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let mut old = lab.switch.take().unwrap();
    let st = exits_within(&mut old, Duration::from_secs(20));
    let log = std::fs::read_to_string(lab.log()).unwrap();
    assert!(st.is_some_and(|s| s.success()), "{log}");
    let new_pid = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(copy.to_str().unwrap()))
        })
        .unwrap_or_else(|| panic!("no new process:\n{log}"));
    let status = std::fs::read_to_string(format!("/proc/{new_pid}/status")).unwrap();
    let pinged = lab.ping("h1", "10.9.1.4", "3");
    must("kill", &["-TERM", &new_pid.to_string()]);
    assert!(wait_gone(new_pid, Duration::from_secs(10)), "the new process did not stop");
    let log = std::fs::read_to_string(lab.log()).unwrap();
    assert!(pinged, "no traffic after the upgrade:\n{log}");
    assert!(status_field(&status, "Uid").starts_with("65534"), "{status}");
    assert_eq!(hex(&status_field(&status, "CapEff")), KEPT, "{status}");
    assert!(log.contains("running as nobody") && log.contains("took over"), "{log}");
    assert_eq!(log.matches("balanced").count(), 1, "the new process's stop:\n{log}");
}
